"""`from dserve import LLM` (docs/python-api.md): in-process generation through the server's own
scheduler and runners, so its outputs are the server's and do not depend on the batch."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from dserve import LLM
from dserve.modeling.tokenizer import chat_prompt_ids
from dserve_ops.evaluation import generate_examples
from e2e.conftest import MODEL_ARGS

EXAMPLES = generate_examples(4, seed=7, split="heldout")


@pytest.fixture(scope="module")
def llm():
    model = MODEL_ARGS[1] if MODEL_ARGS else None
    with LLM(model, device="cpu", max_batch_size=16) as llm:
        yield llm
    # LLM configured structlog for this process (warning level, as a library in a user's process
    # is quiet); the tests after this module capture info-level events
    structlog.reset_defaults()


def _chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


@pytest.mark.parametrize(
    "fields",
    [{}, {"generation_algorithm": "dual_cache", "threshold": 0.9}, {"generation_algorithm": "dinfer_blockwise"}],
    ids=["default", "fastdllm-dual_cache", "dinfer"],
)
def test_outputs_equal_the_servers(llm, client, model_id, fields):
    prompts = [e.prompt for e in EXAMPLES]
    local = llm.chat([_chat(p) for p in prompts], max_tokens=24, use_tqdm=False, **fields)

    async def over_http():
        from openai import AsyncOpenAI

        aclient = AsyncOpenAI(base_url=str(client.base_url), api_key="unused", max_retries=0, timeout=120)
        replies = await asyncio.gather(
            *(
                aclient.chat.completions.create(model=model_id, messages=_chat(p), max_tokens=24, extra_body=fields)
                for p in prompts
            )
        )
        return [(r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens) for r in replies]

    assert [(g.text, g.finish_reason, len(g.token_ids)) for g in local] == asyncio.run(over_http())
    assert sum(g.text == e.answer for g, e in zip(local, EXAMPLES)) >= 3  # and they are the model's answers


def test_batch_invariance_and_the_result_fields(llm):
    alone = llm.chat(_chat(EXAMPLES[0].prompt), max_tokens=24, use_tqdm=False)
    together = llm.chat([_chat(e.prompt) for e in EXAMPLES], max_tokens=24, use_tqdm=False)
    assert len(alone) == 1 and alone[0] == together[0]
    g = together[0]
    assert g.prompt == _chat(EXAMPLES[0].prompt) and g.finish_reason == "stop" and g.nfe > 0
    assert llm.tokenizer.decode(g.token_ids) == g.text == EXAMPLES[0].answer
    assert g.prompt_token_ids == chat_prompt_ids(llm.tokenizer, _chat(EXAMPLES[0].prompt))


def test_generate_prompts_and_token_ids_with_limits(llm):
    text = "Reverse the word: planet"
    by_text, by_ids = llm.generate(
        [text, llm.tokenizer(text, add_special_tokens=False)["input_ids"]], max_tokens=2, ignore_eos=True, use_tqdm=False
    )
    assert by_text.text == by_ids.text and by_text.prompt_token_ids == by_ids.prompt_token_ids
    assert by_text.finish_reason == "length" and len(by_text.token_ids) == 2


def test_bad_fields_raise_value_errors_naming_them(llm):
    with pytest.raises(ValueError, match="steps"):
        llm.generate("x", steps=0, use_tqdm=False)
    with pytest.raises(ValueError, match="tools"):
        llm.generate("x", tools=[{"type": "function"}], use_tqdm=False)
    with pytest.raises(ValueError, match="unknown generation_algorithm"):
        llm.generate("x", generation_algorithm="nope", use_tqdm=False)
