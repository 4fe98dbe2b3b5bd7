"""dserve from the official OpenAI client: chat, streaming, and diffusion parameters.

dserve                      # in another terminal: serves the embedded tiny model
python examples/client.py   # or: python examples/client.py --url http://host:8000/v1
"""

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    client = OpenAI(base_url=args.url, api_key=args.api_key)
    model = client.models.list().data[0].id
    question = [{"role": "user", "content": "Reverse the word: planet"}]

    # 1. a plain chat completion with the server's default engine and algorithm
    reply = client.chat.completions.create(model=model, messages=question, max_tokens=32)
    print("chat:", reply.choices[0].message.content, f"({reply.usage.completion_tokens} tokens)")

    # 2. streaming: chunks arrive as the final prefix of the answer grows
    print("stream:", end=" ", flush=True)
    for chunk in client.chat.completions.create(model=model, messages=question, max_tokens=32, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    # 3. diffusion parameters ride in extra_body: engine, algorithm, steps, block length, ...
    reply = client.chat.completions.create(
        model=model,
        messages=question,
        max_tokens=32,
        extra_body={"engine": "llada", "generation_algorithm": "reference", "steps": 16, "block_length": 16},
    )
    print("16 steps:", reply.choices[0].message.content, f"(forward passes: {reply.usage.model_extra['nfe']})")


if __name__ == "__main__":
    main()
