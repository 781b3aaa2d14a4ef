"""Window N, read in one place: what a run with window N (or with the window off) keeps, when it resets, and what
each cache row must hold. The local decoder (decoding.py), its cache (fast.py), the batch's admission
(generation.Engine) and a run on a server (remote/run.py) all ask this object, so the rule is written once.

The rule (docs/engine.md, "Window N"): after every N-th generated token the run drops what it holds and reads the
last N ids of prompt + generated again, so the model holds at most max(prompt, N) + N - 1 tokens. With the window
off the whole context is kept until it reaches the model's limit, then read again from the most recent half.
A prompt longer than the model allows keeps its most recent tokens: the limit less N with the window on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    size: int | None  # N; None: the window is off
    n_positions: int  # the model's limit

    def prompt_room(self) -> int:
        """The most prompt tokens a run keeps (those before are dropped)."""
        return self.n_positions - (self.size or 0)

    def kept(self) -> int:
        """The ids a reset reads again: the last N, or the most recent half of the limit with the window off."""
        return self.size if self.size is not None else self.n_positions // 2

    def reset_keep(self, generated: int, held: int) -> int | None:
        """The ids read again before the next token (`kept`), once `generated` tokens are written and `held` are
        held (the newest id not read yet): at every N-th token, or, with the window off, when the context is full;
        None when the newest id is simply read on. (With the window on the context never fills: the prompt keeps
        room for N.)"""
        due = generated % self.size == 0 if self.size is not None else held + 1 > self.n_positions
        return self.kept() if due else None

    def until_reset(self, generated: int, held: int) -> int:
        """Tokens a run can write before it resets (a server run asks for this many a request)."""
        if self.size is not None:
            return self.size - generated % self.size
        return self.n_positions - held

    def row_positions(self, prompt_tokens: int) -> int:
        """The most tokens a cache row holds after reading `prompt_tokens` ids (a prompt, or a reset's N):
        max(those, N) + N with the window on, the model's limit with it off."""
        if self.size is None:
            return self.n_positions
        return min(max(prompt_tokens, self.size) + self.size, self.n_positions)

    def shadow_positions(self) -> int:
        """What the shadow row holds at most once it is the main row: the window and the next window's tokens."""
        assert self.size is not None, "a shadow row belongs to a window"
        return min(2 * self.size, self.n_positions)

    def read_ahead_from(self, generated: int, prompt_tokens: int, last: int) -> int | None:
        """How many tokens are read after the newest before the window's next reset, for a shadow row to read the
        next window ahead; None when the run (`last` tokens at most) ends first, or when reading ahead would hold
        more than the window off ever holds in this run (the reset then reads the window in one pass)."""
        if self.size is None:
            return None
        window = self.size
        reset_at = (generated // window + 1) * window  # the reset is read once this many tokens are written
        held = (prompt_tokens if reset_at == window else window) + window - 1  # the context, just before it
        off_holds = min(prompt_tokens + last, self.n_positions)  # the most the window off holds
        if reset_at >= last or held + window > off_holds:
            return None
        return reset_at - generated - 1
