"""From committed tokens to response text: the final contiguous prefix, incremental
detokenization, EOS / end-of-turn, `stop` strings and the `max_tokens` cut."""

from __future__ import annotations

from typing import Any

_MASKED = -1


class OutputTracker:
    """Follows one sequence's generation region as the engine commits tokens.

    Text is released only from the longest contiguous run of committed tokens from the start,
    and held back while it could still turn into a stop string or ends in a partial character.
    """

    def __init__(
        self,
        tokenizer: Any,
        gen_length: int,
        max_tokens: int,
        stop_ids: tuple[int, ...],
        stop_strings: list[str] | None = None,
    ):
        self.tokenizer = tokenizer
        self.slots = [_MASKED] * gen_length
        self.max_tokens = max_tokens
        self.stop_ids = set(stop_ids)
        self.stop_strings = stop_strings or []
        self.prefix_len = 0  # committed tokens from the start, contiguous
        self.output_ids: list[int] = []  # the answer's tokens (no stop token, within max_tokens)
        self.text = ""  # decoded text of output_ids, cut at a stop string
        self.sent = 0  # characters of self.text already released
        self.finish_reason: str | None = None
        self.slot_logprobs: dict[int, Any] = {}  # offset -> (logprob, top alternatives), when reported
        self.output_logprobs: list[Any] = []  # aligned with output_ids (None where not reported)
        self.stop_token: tuple[int, Any] | None = None  # the stop id that ended the answer, with its logprob

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def apply(self, committed: list[tuple[int, int]], logprobs: list[Any] | None = None) -> str:
        """Record committed (offset, token) pairs (and their log-probabilities, when the runner
        reports them); return newly final text (may be "")."""
        if self.finished:
            return ""
        for i, (offset, token) in enumerate(committed):
            if 0 <= offset < len(self.slots):
                self.slots[offset] = token
                if logprobs is not None:
                    self.slot_logprobs[offset] = logprobs[i]
        grew = False
        while self.prefix_len < len(self.slots) and self.slots[self.prefix_len] != _MASKED:
            token = self.slots[self.prefix_len]
            self.prefix_len += 1
            if token in self.stop_ids:
                self.finish_reason = "stop"
                self.stop_token = (token, self.slot_logprobs.get(self.prefix_len - 1))
                break
            self.output_ids.append(token)
            self.output_logprobs.append(self.slot_logprobs.get(self.prefix_len - 1))
            grew = True
            if len(self.output_ids) >= self.max_tokens:
                self.finish_reason = "length"
                break
        if grew:
            self._decode()
        return self._release()

    def canvas_complete(self) -> str:
        """The engine has nothing more for this sequence: whatever is final is the answer."""
        if not self.finished:
            self.finish_reason = "length"
        return self._release()

    def _decode(self) -> None:
        text = self.tokenizer.decode(self.output_ids, skip_special_tokens=True)
        for stop in self.stop_strings:
            cut = text.find(stop)
            if cut != -1:
                text = text[:cut]
                self.finish_reason = "stop"
        self.text = text

    def _release(self) -> str:
        end = len(self.text)
        if not self.finished:
            if self.text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                end -= 1
            end = min(end, self._stop_safe_end())
        if end <= self.sent:
            return ""
        delta = self.text[self.sent : end]
        self.sent = end
        return delta

    def _stop_safe_end(self) -> int:
        """Hold back a tail that is the beginning of a stop string."""
        end = len(self.text)
        for stop in self.stop_strings:
            for k in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:k]):
                    end = min(end, len(self.text) - k)
                    break
        return end
