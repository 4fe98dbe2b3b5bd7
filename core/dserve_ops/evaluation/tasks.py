"""A seeded synthetic instruction-task family with exactly checkable answers.

The embedded default model (``llada-tiny-instruct``) is trained on this family, and the quality
harness measures decoding algorithms on its held-out split. Standard library only (no torch).

Kinds (answers are 1..~40 ASCII characters; kept small enough for a few-million-parameter model)::

    reverse  "Reverse the word: planet"                           -> "tenalp"    (3..8 letters)
    sort     "Sort these numbers: 5 2 9 1"                        -> "1 2 5 9"   (3..6 digits)
    add      "What is 37 plus 5?"                                 -> "42"        (0..99 plus 0..9)
    swap     "Swap the two words: red car"                        -> "car red"
    upper    "Convert to uppercase: the quick fox"                -> "THE QUICK FOX" (1..4 words)
    repeat   "Repeat the word cat 3 times."                       -> "cat cat cat"   (2..6 times)
    replace  "Replace every a with o in: banana"                  -> "bonono"    (3..8 letters)

Every instance (the task data, not its wording) hashes into the ``train`` or the ``heldout``
split (about one in ten is held out), so no held-out instance is ever seen in training, in any
phrasing. ``generate_examples(n, seed, split)`` is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KINDS: tuple[str, ...] = ("reverse", "sort", "add", "swap", "upper", "repeat", "replace")
SPLITS: tuple[str, ...] = ("train", "heldout")
MAX_ANSWER_CHARS = 40
# Canvas for evaluation: the longest answer plus end-of-turn, rounded up to blocks of 32.
EVAL_GEN_LENGTH = 64
HELDOUT_PERCENT = 10

LETTERS = string.ascii_lowercase

# Short common English words (2..6 letters) for phrases.
WORDS: tuple[str, ...] = tuple(
    """
    a an the and or but if of to in on at by for with from up down out over under into
    cat dog cow pig hen fox owl bee ant bat rat elk yak emu eel cod ram ewe
    red blue green gold pink gray black white brown
    sun moon star sky sea lake river hill rock sand tree leaf root seed rose lily
    rain snow wind fog ice fire smoke cloud storm
    car bus van ship boat train plane bike cart
    book pen desk lamp door wall roof room bed chair table cup bowl fork spoon knife
    bread milk tea cake rice egg apple pear plum lemon grape melon corn bean soup
    one two three four five six seven eight nine ten
    big small tall short long wide new old hot cold warm cool fast slow happy sad
    run walk jump swim fly sing read write play sleep eat drink cook bake draw paint
    open close push pull give take make find keep send
    king queen boy girl man woman child baby friend mother father
    city town road park farm shop bank home school house garden
    red day night week month year today noon dawn dusk
    good bad kind calm brave quick lazy quiet loud soft hard
    """.split()
)
WORDS = tuple(dict.fromkeys(WORDS))  # deduplicate, keep order


@dataclass(frozen=True)
class Example:
    kind: str
    prompt: str
    answer: str


def _norm(text: str) -> str:
    return text.strip()


def is_correct(example: Example, text: str) -> bool:
    """Exact match after stripping surrounding whitespace."""
    return _norm(text) == example.answer


def has_trailing_garbage(example: Example, text: str) -> bool:
    """The expected answer followed by anything more (e.g. text after a missed end-of-turn)."""
    t = _norm(text)
    return t != example.answer and t.startswith(example.answer)


def split_of(kind: str, key: str) -> str:
    """Which split an instance belongs to: a hash of the kind and the instance data."""
    h = int.from_bytes(hashlib.sha256(f"{kind}|{key}".encode()).digest()[:8], "big")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


def _rand_word(rng: random.Random, lo: int, hi: int, alphabet: str = LETTERS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


# Each maker returns (instance key, prompt, answer). The key identifies the instance
# independently of the prompt's wording. The task data always ends the prompt.
def _reverse(rng: random.Random) -> tuple[str, str, str]:
    w = _rand_word(rng, 3, 8)
    return w, f"Reverse the word: {w}", w[::-1]


def _sort(rng: random.Random) -> tuple[str, str, str]:
    nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
    shown = " ".join(map(str, nums))
    return shown, f"Sort these numbers: {shown}", " ".join(map(str, sorted(nums)))


def _add(rng: random.Random) -> tuple[str, str, str]:
    # a two-digit number plus a one-digit number: at most one carry
    a, b = rng.randint(0, 99), rng.randint(0, 9)
    return f"{a}+{b}", f"What is {a} plus {b}?", str(a + b)


def _swap(rng: random.Random) -> tuple[str, str, str]:
    # (replaced "count the letter": the tiny model stayed at chance on it; see the model card)
    a, b = rng.sample(WORDS, 2)
    return f"{a} {b}", f"Swap the two words: {a} {b}", f"{b} {a}"


def _phrase(rng: random.Random, max_chars: int) -> str:
    words: list[str] = []
    target = rng.randint(1, 4)
    while len(words) < target:
        w = rng.choice(WORDS)
        if len(" ".join(words + [w])) > max_chars:
            break
        words.append(w)
    return " ".join(words) if words else rng.choice(WORDS)


def _upper(rng: random.Random) -> tuple[str, str, str]:
    p = _phrase(rng, 24)
    return p, f"Convert to uppercase: {p}", p.upper()


def _repeat(rng: random.Random) -> tuple[str, str, str]:
    while True:
        w = rng.choice(WORDS)
        n = rng.randint(2, 6)
        answer = " ".join([w] * n)
        if len(answer) <= MAX_ANSWER_CHARS:
            break
    return f"{w}*{n}", f"Repeat the word {w} {n} times.", answer


def _replace(rng: random.Random) -> tuple[str, str, str]:
    x, y = rng.sample(LETTERS, 2)
    k = rng.randint(1, 3)
    length = rng.randint(max(k, 3), 8)
    others = LETTERS.replace(x, "")
    chars = [x] * k + [rng.choice(others) for _ in range(length - k)]
    rng.shuffle(chars)
    w = "".join(chars)
    return f"{x}>{y}:{w}", f"Replace every {x} with {y} in: {w}", w.replace(x, y)


MAKERS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "reverse": _reverse,
    "sort": _sort,
    "add": _add,
    "swap": _swap,
    "upper": _upper,
    "repeat": _repeat,
    "replace": _replace,
}


def iter_examples(seed: int, split: str = "train", kinds: tuple[str, ...] | list[str] | None = None) -> Iterator[Example]:
    """An endless deterministic stream of examples of one split (kinds mixed uniformly)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kinds = tuple(kinds) if kinds else KINDS
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown task kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    rng = random.Random(f"dserve-tasks:{seed}:{split}")
    while True:
        kind = rng.choice(kinds)
        key, prompt, answer = MAKERS[kind](rng)
        if split_of(kind, key) == split:
            yield Example(kind, prompt, answer)


def generate_examples(
    n: int, seed: int = 0, split: str = "train", kinds: tuple[str, ...] | list[str] | None = None
) -> list[Example]:
    """`n` examples of `split` ("train" or "heldout"), deterministic for `seed`."""
    stream = iter_examples(seed, split, kinds)
    return [next(stream) for _ in range(n)]
