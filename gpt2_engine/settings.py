"""Generation settings and their validation: the one place that says which values are allowed.

Every check raises `SettingsError(field, value, allowed)`, so the command line and the page can show
the message as it is. Checks that need the model (the window's upper bound) live in `check_for`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import SettingsError

SAMPLERS = ("nucleus", "tutorial", "greedy")
MAX_NEW_TOKENS = 100_000  # memory stays bounded at any length (the window re-primes), time does not
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes
MAX_CANDIDATES = 100  # candidates shown per step: enough to see the top-p set of a sure model
TUTORIAL_PHRASE = "In a shocking finding, scientists discovered a herd of unicorns living in a remote valley."


@dataclass(frozen=True)
class GenerationSettings:
    """What to generate and how. Defaults follow the tutorial (`speak.py`, `long_speak.py`)."""

    max_new_tokens: int = 20  # speak.py's length, in tokens (GPT-2 word pieces, ~3/4 of a word)
    top_p: float = 0.7  # the tutorial's p: keep the smallest set of tokens holding 70% of the mass
    window: int | None = 50  # long_speak.py's N: re-prime from the last N tokens every N; None = off
    sampler: str = "nucleus"  # "nucleus" (by weight), "tutorial" (uniform in the set), "greedy"
    temperature: float = 1.0  # logits are divided by this before softmax; 1 = the model as it is
    top_k: int | None = None  # keep only the k most likely tokens before top-p; None = no limit
    seed: int | None = None  # None draws a fresh seed; the steps report the one used
    stop_at_eos: bool = True  # stop when the model writes <|endoftext|>
    stop_at_sentence_end: bool = False  # long_speak.py: after the length, run on to a "." ...
    sentence_end_max_extra: int = 64  # ... but at most this many extra tokens
    candidates: int = 0  # attach the top-k candidates to each Step (0 = off: no cost)
    autograd: bool = False  # tutorial mode: keep autograd on, as the tutorial did, to show its memory growth
    memory_share: float = 0.8  # stop a run before the process takes this share of the memory available at its start

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        _check_float("top_p", self.top_p, "a number greater than 0 and at most 1")
        if not 0.0 < self.top_p <= 1.0:
            raise SettingsError("top_p", self.top_p, "a number greater than 0 and at most 1")
        if self.window is not None:
            _check_int("window", self.window, 1, None, "off, or a whole number of tokens from 1")
        if self.sampler not in SAMPLERS:
            raise SettingsError("sampler", self.sampler, "one of " + ", ".join(SAMPLERS))
        _check_float("temperature", self.temperature, "a number greater than 0 (1 = unchanged)")
        if not 0.0 < self.temperature <= 100.0:
            raise SettingsError("temperature", self.temperature, "a number greater than 0 and at most 100")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1, None, "off, or a whole number from 1")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        for flag in ("stop_at_eos", "stop_at_sentence_end", "autograd"):
            if not isinstance(getattr(self, flag), bool):
                raise SettingsError(flag, getattr(self, flag), "True or False")
        _check_int("sentence_end_max_extra", self.sentence_end_max_extra, 0, 10_000)
        _check_int("candidates", self.candidates, 0, MAX_CANDIDATES)
        _check_float("memory_share", self.memory_share, "a number greater than 0 and at most 1")
        if not 0.0 < self.memory_share <= 1.0:
            raise SettingsError("memory_share", self.memory_share, "a number greater than 0 and at most 1")

    def check_for(self, n_positions: int) -> None:
        """Checks what depends on the model: the window must leave room under its context limit."""
        if self.window is not None and self.window > max_window(n_positions):
            raise SettingsError(
                "window",
                self.window,
                f"off, or 1 to {max_window(n_positions)} tokens for a model of {n_positions} positions",
            )

    def with_(self, **changes: Any) -> GenerationSettings:
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def max_window(n_positions: int) -> int:
    """The largest window N: the model holds up to 2N - 1 tokens, which must fit in n_positions."""
    return n_positions // 2


def parse_seed(text: str | int | None) -> int | None:
    """A seed typed by a person: empty means "pick one for me"; otherwise a whole number."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    allowed = f"empty (random) or a whole number from 0 to {MAX_SEED}"
    try:
        seed = int(text.strip()) if isinstance(text, str) else int(text)
    except (TypeError, ValueError):
        raise SettingsError("seed", text, allowed) from None
    if isinstance(text, float) and text != seed:
        raise SettingsError("seed", text, allowed)
    if not 0 <= seed <= MAX_SEED:
        raise SettingsError("seed", text, allowed)
    return seed


def _check_int(field: str, value: object, low: int, high: int | None, allowed: str | None = None) -> None:
    if allowed is None:
        allowed = f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(field, value, allowed)
    if value < low or (high is not None and value > high):
        raise SettingsError(field, value, allowed)


def _check_float(field: str, value: object, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingsError(field, value, allowed)
