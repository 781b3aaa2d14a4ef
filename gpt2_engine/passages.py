"""Coherence measured on real text: how well the model predicts a passage it did not write, seeing only N tokens.

A sampled text, reread to score it, is one draw: another seed reads better or worse, and a text that loops reads
as very "coherent". Reading a real passage the way a run with window N reads its own text (teacher-forced, with
the window's resets: scoring.window_logprobs) gives the same number at every press, so a comparison of windows
can be trusted at once. The passage is cut into pieces as long as the run (its length in tokens), so a window at
least as long as the run reads each piece exactly as off does, as it writes exactly what off writes.

The passages: the shipped model's held-out plays (never trained on), else a public-domain English passage that
ships here (the Declaration of Independence, 1776), or the presenter's own text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .generation import Engine
from .scoring import Coherence, window_logprobs
from .shapes import KNOWN_MODELS

ENGLISH = Path(__file__).parent / "passages" / "declaration.txt"
ENGLISH_NAME = "the Declaration of Independence"
TOKENS_READ = {"small": 4000, "large": 1000}  # a passage's tokens read per window: fewer where a token costs more
SMALL_MODEL = 50_000_000  # parameters: below this a model reads 4,000 tokens a window in about a second


@dataclass(frozen=True)
class Passage:
    name: str  # what the page calls it: "held-out plays", "the Declaration of Independence", "your text"
    ids: list[int]


def for_model(engine: Engine) -> Passage:
    """The passage a model is measured on: its own held-out text where its folder has one (the shipped model's
    plays), else the English passage."""
    known = KNOWN_MODELS.get(engine.name)
    held_out = sorted((known.folder / "held_out").glob("*.txt")) if known and known.folder else []
    if held_out:
        ids: list[int] = []
        for play in held_out:
            ids += engine.tokenizer.encode(play.read_text()) + [engine.eos_token_id or 0]
        return Passage("held-out plays", ids)
    return Passage(ENGLISH_NAME, engine.tokenizer.encode(ENGLISH.read_text()))


def own_text(engine: Engine, text: str) -> Passage:
    return Passage("your text", engine.tokenizer.encode(text))


def pieces(passage: Passage, length: int, budget: int) -> list[list[int]]:
    """The passage cut into pieces of `length` + 1 tokens (the first is context, as a run's prompt), as many as
    `budget` tokens allow and at least one, spread evenly over the passage."""
    size = length + 1
    if len(passage.ids) < 2:
        return []
    if len(passage.ids) <= size:
        return [passage.ids]
    count = max(1, min(budget // length, len(passage.ids) // size))
    step = (len(passage.ids) - size) / max(1, count - 1) if count > 1 else 0
    return [passage.ids[round(i * step) : round(i * step) + size] for i in range(count)]


def is_small(engine: Engine) -> bool:
    """A model whose runs take seconds on a CPU (the shipped one), not minutes (gpt2-xl)."""
    return sum(p.numel() for p in engine.model.parameters()) < SMALL_MODEL


def tokens_read(engine: Engine) -> int:
    return TOKENS_READ["small" if is_small(engine) else "large"]


def reading(
    engine: Engine,
    passage: Passage,
    window: int | None,
    length: int,
    progress: Callable[[int, int], None] | None = None,
) -> Coherence:
    """The mean log-likelihood (and perplexity) of the passage's pieces as a run of `length` tokens with this
    window reads them: the same number at every press. Window off, or a window the run never reaches, reads each
    piece with all of it in view (a piece longer than the model's positions: re-primed from their last half, as
    off does once the context is full)."""
    chunks = pieces(passage, length, tokens_read(engine))
    total, count, limit = 0.0, 0, engine.n_positions
    for done, piece in enumerate(chunks):
        if window is not None and window < len(piece) - 1:
            n = window
        elif len(piece) <= limit:
            n = len(piece) - 1  # the whole piece in view: one block
        else:  # longer than the model reads at once: off re-primes from the last half of its positions
            n = limit // 2
        values = window_logprobs(engine, piece, n)
        total, count = total + sum(values), count + len(values)
        if progress is not None:
            progress(done + 1, len(chunks))
    mean = total / count if count else 0.0
    return Coherence(tokens=count, mean_logprob=mean, perplexity=math.exp(-mean) if count else float("nan"))
