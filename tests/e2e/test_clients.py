"""Real clients against a real server (docs/clients.md), pinned by the `clients` extra: lm-eval's
`local-chat-completions` and `local-completions` on a small generative task over the embedded
model, and LiteLLM's OpenAI-compatible provider (sync, streaming, text completion). Slow: each
client is a heavy install and lm-eval runs a real evaluation. The official `openai` client
(sync, async, streaming) is what every other e2e test uses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_ops.evaluation import generate_examples

pytestmark = pytest.mark.slow

SAMPLES = 8

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{{field}}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 24
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory):
    pytest.importorskip("lm_eval")
    from dserve.modeling.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    tok = load_tokenizer(EMBEDDED_MODEL_DIR)
    with open(folder / "examples.jsonl", "w") as f:
        for e in generate_examples(SAMPLES, seed=3, split="heldout"):
            # completions get the chat template's text: the embedded model answers only in it
            templated = tok.apply_chat_template(
                [{"role": "user", "content": e.prompt}], tokenize=False, add_generation_prompt=True
            )
            f.write(json.dumps({"prompt": e.prompt, "templated": templated, "answer": e.answer}) + "\n")
    for name, field in (("dserve_chat", "prompt"), ("dserve_completions", "templated")):
        (folder / f"{name}.yaml").write_text(TASK.format(name=name, data=folder / "examples.jsonl", field=field))
    return folder


@pytest.mark.parametrize(
    "model, route, task, extra",
    [
        ("local-chat-completions", "chat/completions", "dserve_chat", ["--apply_chat_template"]),
        ("local-completions", "completions", "dserve_completions", []),
    ],
)
def test_lm_eval(server, model_id, lm_eval_tasks, tmp_path, model, route, task, extra):
    args = f"model={model_id},base_url={server.url}/v1/{route},num_concurrent=8,max_retries=1,tokenized_requests=False"
    if model == "local-completions":
        args += ",tokenizer_backend=None"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            model,
            "--model_args",
            args,
            "--tasks",
            task,
            "--include_path",
            str(lm_eval_tasks),
            "--output_path",
            str(tmp_path),
            *extra,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = tmp_path.rglob("results_*.json")
    score = json.loads(results.read_text())["results"][task]["exact_match,none"]
    assert score >= 0.75, run.stdout[-2000:]


def test_litellm_openai_compatible_provider(server, model_id):
    litellm = pytest.importorskip("litellm")
    common = {"model": f"openai/{model_id}", "api_base": server.url + "/v1", "api_key": "unused", "max_tokens": 8}
    messages = [{"role": "user", "content": "Reverse the word: planet"}]
    reply = litellm.completion(messages=messages, **common)
    assert reply.choices[0].message.content == "tenalp" and reply.usage.completion_tokens == 6
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in litellm.completion(messages=messages, stream=True, **common)
    )
    assert streamed == "tenalp"
    text = litellm.text_completion(prompt="Reverse the word: planet", **common)
    assert text.choices[0].text is not None and text.usage.prompt_tokens > 0
