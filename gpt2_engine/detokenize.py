"""Incremental, UTF-8-safe text from a growing list of token ids.

GPT-2's tokens are bytes: an emoji or a CJK character can be split over two or three tokens, and
decoding one token alone shows U+FFFD. `TextStream` holds such a tail back until the character is
whole, so the deltas it returns, joined, equal `tokenizer.decode(all ids)` and never show half a
character. It decodes only a short tail of ids each time, not the whole text.
"""

from __future__ import annotations

from functools import cache
from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    """Turns token ids, one at a time, into text deltas.

    >>> stream = TextStream(tokenizer)
    >>> "".join(stream.push(i) for i in ids) + stream.flush() == tokenizer.decode(ids, skip_special_tokens=True)
    True
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # ids before this index are settled; ids[_prefix:_read] give context for spacing
        self._read = 0  # ids before this index have been emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (may be "" while a character is incomplete)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def mark(self) -> tuple[int, int, int]:
        """Where the stream stands, for `rewind` (step mode's undo)."""
        return len(self.ids), self._prefix, self._read

    def rewind(self, mark: tuple[int, int, int]) -> None:
        """Back to where `mark` was taken: the ids pushed since are forgotten."""
        held, self._prefix, self._read = mark
        del self.ids[held:]

    def flush(self) -> str:
        """The text held back at the end (bytes that never became a whole character show as U+FFFD)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text) :]


@cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes: printable bytes stand for themselves, the other 68
    are shifted to code points 256 and up (GPT-2's published `bytes_to_unicode`, inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table
