"""A comparison of two windows, and what it says in numbers and words: the runs' table (straight from each
run's own `RunStats` and coherence) and a one- or two-sentence summary. No Streamlit drawing here: the
Compare windows tab (`compare`) lays these out."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from gpt2_engine import format_bytes

from .charts import plus_bytes
from .runner import Run

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
    "log_likelihood": st.column_config.NumberColumn(
        "Log-likelihood",
        help="Per token, when the model rereads the whole text: closer to 0 is more coherent.",
        format="%.3f",
    ),
    "perplexity": st.column_config.NumberColumn(
        "Perplexity", help="As unsure as choosing among this many words: lower is more coherent.", format="%.1f"
    ),
}


@dataclass
class Comparison:
    """One phrase, one seed, two runs that differ only in their window."""

    prompt: str
    seed: int
    runs: tuple[Run, Run]  # window A, window B

    @property
    def finished(self) -> bool:
        return all(run.finished for run in self.runs)

    def labels(self) -> tuple[str, str]:
        a, b = (window_label(run.settings.window) for run in self.runs)
        return (f"{a} (A)", f"{b} (B)") if a == b else (a, b)


def window_label(window: int | None) -> str:
    return f"window {window}" if window else "window off"


def first_difference(a: Run, b: Run) -> int | None:
    """How many tokens the two runs wrote alike before they parted (None: they never did, so far)."""
    for index, (step_a, step_b) in enumerate(zip(a.steps, b.steps)):
        if step_a.token_id != step_b.token_id:
            return index
    return None if len(a.steps) == len(b.steps) else min(len(a.steps), len(b.steps))


def table(comparison: Comparison) -> pd.DataFrame:
    """One row per run, straight from its own RunStats (and its coherence, once scored)."""
    rows = []
    for run in comparison.runs:
        stats, score = run.stats, run.coherence
        rows.append(
            {
                "tokens": stats.tokens,
                "tokens_per_s": stats.tokens_per_s,
                "added": plus_bytes(stats.peak_added_bytes),  # sizes as the page writes them everywhere
                "peak_memory": format_bytes(stats.peak_rss_bytes),
                "peak_kv_cache": format_bytes(stats.peak_kv_bytes),
                "resets": len(stats.resets),
                "log_likelihood": score.mean_logprob if score else None,
                "perplexity": score.perplexity if score else None,
            }
        )
    return pd.DataFrame(rows, index=pd.Index(comparison.labels(), name="run"))


def summary(comparison: Comparison) -> str:
    """What window A saved and cost next to window B, in one or two sentences."""
    (a, b), (label_a, label_b) = comparison.runs, comparison.labels()
    if not (a.steps and b.steps):
        return ""
    kv_a, kv_b = a.stats.peak_kv_bytes, b.stats.peak_kv_bytes
    if kv_a and kv_b and kv_a != kv_b:
        small, big = sorted((kv_a, kv_b))
        fewer = label_a if kv_a < kv_b else label_b
        saved = f"**{fewer.capitalize()}** kept the KV cache {big / small:.1f}× smaller ({format_bytes(small)} against {format_bytes(big)} at most)"
    else:
        saved = f"Both kept the KV cache within {format_bytes(max(kv_a, kv_b))}"
    added_a, added_b = plus_bytes(a.stats.peak_added_bytes), plus_bytes(b.stats.peak_added_bytes)
    peak = format_bytes(max(a.stats.peak_rss_bytes, b.stats.peak_rss_bytes))
    saved += (
        f"; the runs added at most {added_a} ({label_a}) and {added_b} ({label_b}) to what the program held before "
        f"each, and the whole program peaked at {peak}."
    )
    if a.coherence is None or b.coherence is None:
        return saved
    pa, pb = a.coherence.perplexity, b.coherence.perplexity
    if abs(pa - pb) <= SAME_PERPLEXITY * min(pa, pb):
        cost = "Reread with the whole text in view, both read as about equally coherent"
        return f"{saved} {cost} (perplexity {pa:,.1f} with {label_a}, {pb:,.1f} with {label_b})."
    (better, p_better), (worse, p_worse) = sorted(((label_a, pa), (label_b, pb)), key=lambda run: run[1])
    cost = f"Reread with the whole text in view, **{better}** reads as more coherent"
    return f"{saved} {cost} (perplexity {p_better:,.1f} against {p_worse:,.1f} with {worse})."
