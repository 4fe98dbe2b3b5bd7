"""Quality evaluation: a synthetic task family with exactly checkable answers (`tasks`, stdlib
only) and the `dserve eval` harness that measures engines/algorithms through a running server's
OpenAI API (`harness`, imported on use)."""

from dserve_ops.evaluation.tasks import (
    EVAL_GEN_LENGTH,
    KINDS,
    MAX_ANSWER_CHARS,
    Example,
    generate_examples,
    has_trailing_garbage,
    is_correct,
    iter_examples,
    split_of,
)

__all__ = [
    "EVAL_GEN_LENGTH",
    "KINDS",
    "MAX_ANSWER_CHARS",
    "Example",
    "generate_examples",
    "has_trailing_garbage",
    "is_correct",
    "iter_examples",
    "split_of",
]
