"""Numbers about a run, computed from its Steps: the figures under the page's chart, and the chart's rows.

A front end shows these as they are, while the run streams and after it ends; it computes nothing
itself. Knows nothing of Streamlit or of any chart library: rows are plain dicts.

    steps = []
    for step in engine.stream("The cat sat", max_new_tokens=40, window=16):
        steps.append(step)
        stats = RunStats.from_steps(steps)       # tokens, tokens/s, words, peaks, resets, seed
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .decoding import Step


def generated_text(steps: Sequence[Step]) -> str:
    """The text the model wrote (without the prompt)."""
    return "".join(step.text for step in steps)


def reset_points(steps: Sequence[Step]) -> tuple[int, ...]:
    """Tokens generated when the window re-primed: with window N, the multiples of N so far."""
    return tuple(step.index for step in steps if step.reset)


@dataclass(frozen=True)
class RunStats:
    """A run summed up, from however many steps it has so far (zero included)."""

    tokens: int  # tokens generated
    words: int  # words in the generated text (runs of characters between spaces)
    elapsed_s: float  # from the start of the stream (prompt reading included) to the last token
    tokens_per_s: float  # the writing pace: tokens after the first / time since the first (0 before 2 tokens)
    peak_rss_bytes: int  # the most resident memory the process held
    peak_anon_bytes: int  # ... of which not file-backed
    peak_kv_bytes: int  # the largest the KV cache grew
    resets: tuple[int, ...]  # tokens generated at each window reset
    seed: int | None  # the seed that repeats this run exactly (None before the first token)
    stop_reason: str | None  # "length", "eos" or "sentence_end" once the engine ended the run
    prompt_tokens: int  # prompt tokens the model was given
    prompt_tokens_dropped: int  # prompt tokens cut from the start to fit the model
    start_rss_bytes: int = 0  # the process's resident memory just before the run (see `start_rss_bytes`)

    @property
    def peak_added_bytes(self) -> int:
        """The most this run added to what the process held before it (its own growth, the weights left out)."""
        return self.peak_rss_bytes - self.start_rss_bytes if self.tokens else 0

    @classmethod
    def from_steps(cls, steps: Sequence[Step]) -> RunStats:
        if not steps:
            return cls(0, 0, 0.0, 0.0, 0, 0, 0, (), None, None, 0, 0)
        first, last = steps[0], steps[-1]
        writing_s = last.elapsed_s - first.elapsed_s  # the first token's time is mostly reading the prompt
        return cls(
            tokens=len(steps),
            words=len(generated_text(steps).split()),
            elapsed_s=last.elapsed_s,
            tokens_per_s=(len(steps) - 1) / writing_s if len(steps) > 1 and writing_s > 0 else 0.0,
            peak_rss_bytes=max(step.rss_bytes for step in steps),
            peak_anon_bytes=max(step.anon_bytes for step in steps),
            peak_kv_bytes=max(step.kv_bytes for step in steps),
            resets=reset_points(steps),
            seed=first.seed,
            stop_reason=last.stop_reason,
            prompt_tokens=first.prompt_tokens,
            prompt_tokens_dropped=first.prompt_tokens_dropped,
            start_rss_bytes=start_rss_bytes(steps),
        )


def start_rss_bytes(steps: Sequence[Step]) -> int:
    """What the process held just before the run, as its decoder read it before the prompt; for steps made
    without that reading (0), the first token's memory less its KV cache. 0 for no steps."""
    if not steps:
        return 0
    first = steps[0]
    return first.start_rss_bytes or max(0, first.rss_bytes - first.kv_bytes)


def memory_rows(steps: Sequence[Step]) -> list[dict[str, int | bool]]:
    """One row per generated token for a memory chart whose x is the number of tokens generated; `added_bytes`
    is the process's memory above what it held just before the run (`start_rss_bytes`)."""
    start = start_rss_bytes(steps)
    return [
        {
            "tokens": step.index + 1,
            "rss_bytes": step.rss_bytes,
            "added_bytes": step.rss_bytes - start,
            "anon_bytes": step.anon_bytes,
            "kv_bytes": step.kv_bytes,
            "reset": step.reset,
        }
        for step in steps
    ]
