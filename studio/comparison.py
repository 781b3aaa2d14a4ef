"""A comparison of two windows, and what it says in numbers and words: the runs' table (straight from each
run's own `RunStats` and coherence, its texts' mean and range) and a two- or three-sentence summary. No Streamlit
drawing here: the Compare windows tab (`compare`) lays these out; a sweep of many windows is `sweep_points`'."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from gpt2_engine import format_bytes

from .charts import xl_scale
from .coherence_view import GUESSING
from .run import Run
from .words import window_label

SAME_PERPLEXITY = 0.02  # perplexities closer than 2% are "about equally coherent": no winner is named
TABLE_COLUMNS = {  # the table's columns, and how each is shown
    "tokens": st.column_config.NumberColumn("Tokens", help="Tokens written.", format="%d"),
    "tokens_per_s": st.column_config.NumberColumn(
        "Tokens/s", help="Writing speed, after the phrase was read.", format="%.1f"
    ),
    "added": st.column_config.TextColumn(
        "Added by the run",
        help="The most the run added to the memory the program held just before it started.",
        alignment="right",
    ),
    "peak_memory": st.column_config.TextColumn(
        "Peak memory", help="The most memory the whole program held (RSS), weights included.", alignment="right"
    ),
    "peak_kv_cache": st.column_config.TextColumn(
        "Peak KV cache", help="The most the cache of keys and values grew to.", alignment="right"
    ),
    "resets": st.column_config.NumberColumn("Resets", help="How often the window forgot all but its last N tokens."),
    "on_xl": st.column_config.TextColumn(
        "On gpt2-xl",
        help="What the same tokens' keys and values would hold on gpt2-xl (from its shape).",
        alignment="right",
    ),
    "reading": st.column_config.NumberColumn(
        "Reading a passage",
        help="Perplexity of a real passage the model did not write, read with this window and length: the same at "
        "every press. Lower is more coherent.",
        format="%.2f",
    ),
    "perplexity": st.column_config.NumberColumn(
        "Its texts reread",
        help="Perplexity of the texts this window wrote (the one shown, and on a small model more with the next "
        "seeds), each reread with the whole text in view: their mean. One sample is one draw: another seed reads "
        "otherwise. Lower is more coherent.",
        format="%.1f",
    ),
    "texts_range": st.column_config.TextColumn(
        "Texts' range", help="The least and the most perplexity among this window's texts.", alignment="right"
    ),
}


@dataclass
class Comparison:
    """One phrase, one seed, two runs that differ only in their window."""

    prompt: str
    seed: int
    runs: tuple[Run, Run]  # window A, window B: the texts shown side by side
    more: tuple[list[Run], list[Run]] = field(default_factory=lambda: ([], []))  # each window's further texts,
    # scored, not shown: seeds seed + 1, seed + 2, ... (one sampled text is one draw)

    @property
    def finished(self) -> bool:
        return all(run.finished for run in self.every_run)

    @property
    def every_run(self) -> tuple[Run, ...]:
        return (*self.runs, *self.more[0], *self.more[1])

    def texts(self, which: int) -> list[Run]:
        """Window `which`'s texts: the one shown, then the further ones."""
        return [self.runs[which], *self.more[which]]

    def text_perplexities(self, which: int) -> list[float]:
        """The perplexity of each of window `which`'s texts scored so far."""
        return [run.coherence.perplexity for run in self.texts(which) if run.coherence is not None]

    def labels(self) -> tuple[str, str]:
        a, b = (window_label(run.settings.window) for run in self.runs)
        return (f"{a} (A)", f"{b} (B)") if a == b else (a, b)


def guessing_note(run: Run, short: bool = False) -> str:
    """A sentence when the model reads the passage about as well as picking tokens at random (a random-weights
    stand-in): then no window can cost it coherence, and the page says so rather than let the figures suggest it.
    `short`: the words for Compare's narrow column beside its chart."""
    if run.reading is None or not run.vocab_size or run.reading.perplexity < GUESSING * run.vocab_size:
        return ""
    if short:
        return (
            f"This model guesses at random (perplexity {run.reading.perplexity:,.0f} of {run.vocab_size:,} tokens): "
            "no window can cost it coherence."
        )
    return (
        f"This model reads the passage at perplexity {run.reading.perplexity:,.0f}, about as unsure as picking among "
        f"its {run.vocab_size:,} tokens at random: its weights have learned nothing (a stand-in with random weights), "
        "so no window can cost it coherence. The shipped gpt2-shakespeare, or the real gpt2-xl, shows what a "
        "smaller window costs."
    )


def first_difference(a: Run, b: Run) -> int | None:
    """How many tokens the two runs wrote alike before they parted (None: they never did, so far)."""
    for index, (step_a, step_b) in enumerate(zip(a.steps, b.steps)):
        if step_a.token_id != step_b.token_id:
            return index
    return None if len(a.steps) == len(b.steps) else min(len(a.steps), len(b.steps))


def table(comparison: Comparison) -> pd.DataFrame:
    """One row per run, straight from its own RunStats (and its coherence, once scored)."""
    rows = []
    for which, run in enumerate(comparison.runs):
        stats, texts = run.stats, comparison.text_perplexities(which)
        ratio = xl_scale(run.kv_per_token)
        rows.append(
            {  # the cache first: the memory the window controls; the whole program after it, as context
                "peak_kv_cache": format_bytes(stats.peak_kv_bytes),  # sizes as the page writes them everywhere
                "on_xl": format_bytes(stats.peak_kv_bytes * ratio) if ratio else None,
                "reading": run.reading.perplexity if run.reading else None,
                "perplexity": sum(texts) / len(texts) if texts else None,
                "texts_range": f"{min(texts):,.1f} to {max(texts):,.1f}" if len(texts) > 1 else None,
                "resets": len(stats.resets),
                "tokens": stats.tokens,
                "tokens_per_s": stats.tokens_per_s,
                "peak_memory": format_bytes(stats.peak_rss_bytes),
            }
        )
    frame = pd.DataFrame(rows, index=pd.Index(comparison.labels(), name="run"))
    return frame.drop(columns=[column for column in ("on_xl", "texts_range") if frame[column].isna().all()])


def summary(comparison: Comparison) -> str:
    """What window A saved and cost next to window B, in one or two sentences: the cache (and on gpt2-xl), then
    coherence as the passage read with each window says it (the same at every press), then their own texts."""
    (a, b), (label_a, label_b) = comparison.runs, comparison.labels()
    if not (a.steps and b.steps):
        return ""
    kv_a, kv_b = a.stats.peak_kv_bytes, b.stats.peak_kv_bytes
    ratio = xl_scale(a.kv_per_token)
    if kv_a and kv_b and kv_a != kv_b:
        small, big = sorted((kv_a, kv_b))
        fewer = label_a if kv_a < kv_b else label_b
        on_xl = f" ({format_bytes(small * ratio)} against {format_bytes(big * ratio)} on gpt2-xl)" if ratio else ""
        saved = (
            f"**{fewer.capitalize()}** kept the KV cache {big / small:.1f}× smaller: {format_bytes(small)} against "
            f"{format_bytes(big)}{on_xl}."
        )
    else:
        saved = f"Both kept the KV cache within {format_bytes(max(kv_a, kv_b))}: neither window reset less."
    sentences = [saved]
    if guessing_note(a, short=True):  # random weights: the passage's figures say nothing of the window
        sentences.append(guessing_note(a, short=True))
    elif a.reading is not None and b.reading is not None:
        ra, rb = a.reading.perplexity, b.reading.perplexity
        passage = a.reading_of or "a real passage"
        if abs(ra - rb) <= SAME_PERPLEXITY * min(ra, rb):
            sentences.append(f"Reading {passage}, both read it about as well (perplexity {ra:,.2f} and {rb:,.2f}).")
        else:
            (_, low), (worse, high) = sorted(((label_a, ra), (label_b, rb)), key=lambda run: run[1])
            sentences.append(
                f"Reading {passage}, **{worse} reads it {high / low - 1:.0%} worse** (perplexity {high:,.2f} "
                f"against {low:,.2f})."
            )
    if not guessing_note(a):  # random weights: their texts' perplexities are noise too (the table has them)
        sentences.append(_texts_sentence(comparison))
    return " ".join(sentence for sentence in sentences if sentence)


def _texts_sentence(comparison: Comparison) -> str:
    """What the windows' own texts say, reread: one sample each, or their means and ranges, and whether the
    ranges overlap (then the texts cannot rank the windows: the passage does)."""
    a, b = (comparison.text_perplexities(which) for which in (0, 1))
    if not (a and b):
        return ""
    if len(a) == len(b) == 1:
        return f"Their own texts, reread: perplexity {a[0]:,.1f} and {b[0]:,.1f}, one sample each."
    spread = [f"{sum(p) / len(p):,.1f} (from {min(p):,.1f} to {max(p):,.1f})" for p in (a, b)]
    overlap = min(max(a), max(b)) >= max(min(a), min(b))
    said = f"Their own texts, {min(len(a), len(b))} each with the next seeds, reread: perplexity {spread[0]} and {spread[1]}"
    return said + ("; the ranges overlap, so the texts alone cannot rank the windows." if overlap else ".")
