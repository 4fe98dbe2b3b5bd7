"""From committed tokens to text: contiguous prefix, stop ids, stop strings, max_tokens."""

import pytest

from dserve.output import OutputTracker


class CharTokenizer:
    """ids are code points; 0 and 1 are special (EOS, end of turn)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i > 1)


def tracker(gen=8, max_tokens=8, stops=None, stop_ids=(0, 1)):
    return OutputTracker(CharTokenizer(), gen, max_tokens, stop_ids, stops)


def ids(text):
    return [ord(c) for c in text]


def test_only_the_contiguous_prefix_is_released():
    t = tracker()
    assert t.apply([(2, ord("c"))]) == ""
    assert t.apply([(0, ord("a"))]) == "a"
    assert t.apply([(1, ord("b"))]) == "bc"
    assert not t.finished


def test_stop_id_ends_the_answer_and_drops_the_rest():
    t = tracker()
    t.apply([(i, tok) for i, tok in enumerate(ids("hi"))] + [(3, ord("x"))])
    assert t.apply([(2, 1)]) == ""
    assert t.finished and t.finish_reason == "stop"
    assert t.text == "hi" and t.output_ids == ids("hi")


def test_max_tokens_cuts_inside_the_canvas():
    t = tracker(gen=8, max_tokens=3)
    out = t.apply(list(enumerate(ids("abcdefgh"))))
    assert out == "abc" and t.finish_reason == "length" and len(t.output_ids) == 3


def test_stop_string_is_held_back_then_cut():
    t = tracker(stops=["cd"])
    assert t.apply(list(enumerate(ids("abc")))) == "ab"  # "c" may start "cd"
    assert t.apply([(3, ord("d"))]) == ""
    assert t.finish_reason == "stop" and t.text == "ab"


def test_stop_string_prefix_that_does_not_complete_is_released():
    t = tracker(stops=["cd"])
    t.apply(list(enumerate(ids("abc"))))
    assert t.apply([(3, ord("e"))]) == "ce"


def test_canvas_complete_without_stop_is_length():
    t = tracker(gen=2, max_tokens=2)
    t.apply([(1, ord("b"))])
    assert t.canvas_complete() == ""
    assert t.finish_reason == "length"


def test_ignore_eos_keeps_going():
    t = tracker(stop_ids=())
    t.apply(list(enumerate([ord("a"), 0, ord("b")])))
    assert t.text == "ab" and not t.finished


@pytest.mark.parametrize("text", ["é", "日本"])
def test_partial_characters_are_held(text):
    class Bytes:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    raw = list(text.encode())
    t = OutputTracker(Bytes(), len(raw), len(raw), (), None)
    out = "".join(t.apply([(i, b)]) for i, b in enumerate(raw))
    assert out == text and "\ufffd" not in out
