"""Two runs written together, as a room does: what tests of q8's kernels compare against each run written alone."""

from __future__ import annotations

import gpt2_engine

PHRASES = ("The cat", "Hello world! Is it raining? " * 20)  # the second's prompt is long enough to be read in pieces
SETTINGS = [gpt2_engine.GenerationSettings(max_new_tokens=30, seed=s, window=7, stop_at_eos=False) for s in (1, 2)]


def alone(engine) -> list[list[int]]:
    """Each run's tokens, written on its own."""
    return [[s.token_id for s in engine.stream(p, k)] for p, k in zip(PHRASES, SETTINGS)]


def together(engine) -> list[list[int]]:
    """Each run's tokens when the second joins the first after 5 steps: its prompt is read beside the first's steps,
    then both are decoded in one batch."""
    first = engine.stream(PHRASES[0], SETTINGS[0])
    written = [[next(first).token_id for _ in range(5)], []]
    for step in engine.stream(PHRASES[1], SETTINGS[1]):
        written[1].append(step.token_id)
        written[0].extend(next(first).token_id for _ in range(1) if len(written[0]) < 30)
    written[0].extend(s.token_id for s in first)
    return written
