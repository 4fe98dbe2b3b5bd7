"""Datasets of the dserve_tasks_* lm-eval tasks, built from dserve's synthetic task family
(dserve_ops.evaluation.tasks): the held-out split, seed 1234 (what `dserve eval` sends)."""

from __future__ import annotations

from typing import Any


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def multiple_choice(samples: int = 100, seed: int = 1234, **_: Any) -> Any:
    from dserve_ops.evaluation.choices import END_OF_TURN, multiple_choice_items

    rows = [
        {
            "kind": item.example.kind,
            "context": item.context,
            "choices": [c + END_OF_TURN for c in item.choices],
            "gold": item.gold,
        }
        for item in multiple_choice_items(samples, seed)
    ]
    return _dataset(rows)


def generation(samples: int = 100, seed: int = 1234, **_: Any) -> Any:
    from dserve_ops.evaluation.choices import chat_text
    from dserve_ops.evaluation.tasks import generate_examples

    rows = [
        {"kind": e.kind, "prompt": e.prompt, "context": chat_text(e.prompt), "answer": e.answer}
        for e in generate_examples(samples, seed=seed, split="heldout")
    ]
    return _dataset(rows)
