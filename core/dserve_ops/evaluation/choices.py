"""Multiple-choice items from the synthetic task family (tasks.py): the correct answer among
near misses, for likelihood-scored evaluation (the `dserve_tasks_mc` lm-eval task, the
ranking-agreement measurement in docs/eval.md). Standard library only.

Distractors, in order, keeping the first three distinct ones that differ from the answer: the
task's input itself (what a model that copies instead of transforming would say: the word
before reversing, the numbers before sorting, the words before swapping, ...), the answer
without its last character, the answer with its first two characters exchanged, then answers of
other examples of the same kind.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dserve_ops.evaluation.tasks import Example, generate_examples

NUM_CHOICES = 4
# The embedded model's prompt format (LLaDA-8B-Instruct's template, as its tokenizer applies it)
# and its end of turn, which closes every answer it was trained on.
CHAT_PREFIX = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
CHAT_SUFFIX = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
END_OF_TURN = "<|eot_id|>"


@dataclass(frozen=True)
class ChoiceItem:
    example: Example
    choices: tuple[str, ...]
    gold: int

    @property
    def context(self) -> str:
        return chat_text(self.example.prompt)


def chat_text(prompt: str) -> str:
    return CHAT_PREFIX + prompt.strip() + CHAT_SUFFIX


def _task_input(example: Example) -> str | None:
    _, sep, data = example.prompt.rpartition(": ")
    return data if sep else None


def _near_misses(example: Example) -> list[str]:
    answer = example.answer
    out = [_task_input(example) or "", answer[:-1]]
    if len(answer) > 1:
        out.append(answer[1] + answer[0] + answer[2:])
    return out


def multiple_choice_items(n: int, seed: int = 1234, split: str = "heldout") -> list[ChoiceItem]:
    """The first `n` examples of the split as multiple-choice items (deterministic for `seed`)."""
    examples = generate_examples(n, seed=seed, split=split)
    pool = generate_examples(max(4 * n, 64), seed=seed + 1, split=split)
    rng = random.Random(f"dserve-choices:{seed}:{split}")
    items = []
    for example in examples:
        others = [e.answer for e in pool if e.kind == example.kind]
        distractors: list[str] = []
        for candidate in _near_misses(example) + others:
            if candidate and candidate != example.answer and candidate not in distractors:
                distractors.append(candidate)
            if len(distractors) == NUM_CHOICES - 1:
                break
        choices = [example.answer, *distractors]
        rng.shuffle(choices)
        items.append(ChoiceItem(example, tuple(choices), choices.index(example.answer)))
    return items
