"""A comparison of two windows, and what it says in numbers and words: the runs' table (straight from each
run's own `RunStats` and coherence) and a one- or two-sentence summary. A sweep of many windows, and the same:
its points (one per window written in full and scored) and the sentence that reads its chart aloud. No
Streamlit drawing here: the Compare windows tab (`compare`, `sweep`) lays these out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import streamlit as st

from gpt2_engine import MB, format_bytes, sweep_rows

from .charts import xl_scale
from .run import Run
from .sweep_chart import SWEEP_LABEL_PLACES, kv_domain, perplexity_domain
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
        "Its text reread",
        help="Perplexity of this run's own text, reread with the whole text in view: one sample (another seed "
        "reads otherwise). Lower is more coherent.",
        format="%.1f",
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


GUESSING = 0.25  # a passage read at a perplexity above this share of the vocabulary: the model has learned nothing


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
    for run in comparison.runs:
        stats, score = run.stats, run.coherence
        ratio = xl_scale(run.kv_per_token)
        rows.append(
            {  # the cache first: the memory the window controls; the whole program after it, as context
                "peak_kv_cache": format_bytes(stats.peak_kv_bytes),  # sizes as the page writes them everywhere
                "on_xl": format_bytes(stats.peak_kv_bytes * ratio) if ratio else None,
                "reading": run.reading.perplexity if run.reading else None,
                "perplexity": score.perplexity if score else None,
                "resets": len(stats.resets),
                "tokens": stats.tokens,
                "tokens_per_s": stats.tokens_per_s,
                "peak_memory": format_bytes(stats.peak_rss_bytes),
            }
        )
    frame = pd.DataFrame(rows, index=pd.Index(comparison.labels(), name="run"))
    return frame.drop(columns=["on_xl"]) if frame["on_xl"].isna().all() else frame


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
    if a.coherence is not None and b.coherence is not None:
        pa, pb = a.coherence.perplexity, b.coherence.perplexity
        sentences.append(f"Their own texts, reread: perplexity {pa:,.1f} and {pb:,.1f}, one sample each.")
    return " ".join(sentences)


# ---- a sweep: one phrase and seed under many windows ------------------------------------------------------

KEEPS_MOST = 0.9  # the sentence names the smallest cache that keeps at least this share of the coherence


@dataclass
class Sweep:
    """One phrase, one seed, one length, written under several windows, one run after the other."""

    prompt: str
    seed: int
    length: int
    windows: tuple[int | None, ...]  # in the order written: the reference (off, or the largest) first
    runs: list[Run] = field(default_factory=list)  # one per text begun, a window's texts together, in that order
    texts: int = 1  # texts each window writes (seeds `seed`, `seed` + 1, ...)
    ended: bool = False  # the loop is over: every window written and scored, or stopped, or failed

    @property
    def finished(self) -> bool:
        return self.ended

    @property
    def reference(self) -> int | None:
        """The window every other is measured against: off, or the largest swept."""
        return self.windows[0]

    def rows(self) -> list[dict[str, Any]]:
        """One row per run begun (gpt2_engine.sweep_rows): what the CSV holds."""
        return sweep_rows([run.record() for run in self.runs])


def kv_unit(peak_bytes: float) -> tuple[str, float]:
    """The unit the sweep's x axis counts the cache in: MB, or kB for a tiny model's few thousand bytes."""
    return ("MB", MB) if peak_bytes >= MB else ("kB", 1e3)


# label placement: the chart's plot area as drawn beside the form at 1280 px wide, and a label's size (pixels)
PLOT_PX = (560.0, 200.0)
LABEL_CHAR_PX, LABEL_HEIGHT_PX, POINT_RADIUS_PX = 7.5, 16.0, 8.0
_ALIGN_SHIFT = {"left": 0.0, "center": 0.5, "right": 1.0}  # of the label's width, left of its anchor
_BASELINE_SHIFT = {"top": 0.0, "middle": 0.5, "bottom": 1.0}  # of its height, above its anchor


def _label_box(x: float, y: float, width: float, place: dict[str, Any]) -> tuple[float, float, float, float]:
    """A label's box (left, top, right, bottom), in pixels, at one of SWEEP_LABEL_PLACES around a point (x, y)."""
    left = x + place["dx"] - _ALIGN_SHIFT[place["align"]] * width
    top = y + place["dy"] - _BASELINE_SHIFT[place["baseline"]] * LABEL_HEIGHT_PX
    return (left, top, left + width, top + LABEL_HEIGHT_PX)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(
    points: list[tuple[float, float, str]], x_range: tuple[float, float], y_range: tuple[float, float]
) -> list[str]:
    """Where each point's label goes (a key of charts.SWEEP_LABEL_PLACES): the place that covers the least of
    the other points and the labels placed before it, inside a plot of PLOT_PX pixels spanning `x_range` and
    `y_range` (the chart's domains). Points in order of x; an empty label takes no place."""
    width, height = PLOT_PX
    (x_low, x_high), (y_low, y_high) = x_range, y_range
    pixels = [
        ((x - x_low) / ((x_high - x_low) or 1.0) * width, height - (y - y_low) / ((y_high - y_low) or 1.0) * height)
        for x, y, _ in points
    ]
    dots = [
        (px - POINT_RADIUS_PX, py - POINT_RADIUS_PX, px + POINT_RADIUS_PX, py + POINT_RADIUS_PX) for px, py in pixels
    ]
    placed: list[tuple[float, ...]] = []
    sides = []
    for (px, py), (_, _, label) in zip(pixels, points):
        if not label:
            sides.append(next(iter(SWEEP_LABEL_PLACES)))
            continue
        costs = {}
        for order, (side, place) in enumerate(SWEEP_LABEL_PLACES.items()):
            box = _label_box(px, py, LABEL_CHAR_PX * len(label), place)
            outside = max(0.0, -box[0]) + max(0.0, box[2] - width) + max(0.0, -box[1]) + max(0.0, box[3] - height)
            covered = sum(_overlap(box, other) for other in [*placed, *dots])
            costs[side] = (covered + 50.0 * outside + order, box)  # ties: the first place in SWEEP_LABEL_PLACES
        side = min(costs, key=lambda side: costs[side][0])
        sides.append(side)
        placed.append(costs[side][1])
    return sides


def by_window(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The complete rows, a list per window in the order first written (its texts in the order written)."""
    groups: dict[int | None, list[dict[str, Any]]] = {}
    for row in rows:
        if row["complete"]:
            groups.setdefault(row["window"], []).append(row)
    return list(groups.values())


def sweep_points(sweep: Sweep, rows: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """The chart's points: one row per window with a text written in full and scored, in order of their cache.
    Columns: window ("off" or N), kv_bytes (the most any of its texts held), kv (in `kv_unit`), rss_bytes,
    perplexity (the passage read with the window), log_likelihood (the same), text_perplexity (its own texts
    reread: their mean), text_low and text_high (their range), texts (how many), kept (coherence kept, a
    fraction), tokens, label (empty when another point stands at the same place and carries both names), side
    (where the label goes: place_labels)."""
    columns = ["window", "kv_bytes", "kv", "rss_bytes", "perplexity", "log_likelihood", "text_perplexity"]
    columns += ["text_low", "text_high", "texts", "kept", "tokens", "label"]
    groups = by_window(rows if rows is not None else sweep.rows())
    if not groups:
        return pd.DataFrame(columns=[*columns, "side"])
    _, unit = kv_unit(max(row["peak_kv_bytes"] for group in groups for row in group))
    groups.sort(
        key=lambda g: (max(r["peak_kv_bytes"] for r in g), math.inf if g[0]["window"] is None else g[0]["window"])
    )
    texts = [[row["perplexity"] for row in group] for group in groups]
    frame = pd.DataFrame(
        {
            "window": ["off" if group[0]["window"] is None else str(group[0]["window"]) for group in groups],
            "kv_bytes": [max(row["peak_kv_bytes"] for row in group) for group in groups],
            "kv": [max(row["peak_kv_bytes"] for row in group) / unit for group in groups],
            "rss_bytes": [max(row["peak_rss_bytes"] for row in group) for group in groups],
            "perplexity": [group[0]["reading_perplexity"] for group in groups],
            "log_likelihood": [group[0]["reading_log_likelihood"] for group in groups],
            "text_perplexity": [sum(values) / len(values) for values in texts],
            "text_low": [min(values) for values in texts],
            "text_high": [max(values) for values in texts],
            "texts": [len(values) for values in texts],
            "kept": [group[0]["coherence_kept"] for group in groups],
            "tokens": [group[0]["tokens"] for group in groups],
        }
    )
    labels = []
    for index, row in frame.iterrows():  # points at one place (a window that never reset, and off): one label
        same = frame[(frame["kv_bytes"] == row["kv_bytes"]) & (frame["perplexity"] == row["perplexity"])]
        names = [window_label(None if w == "off" else int(w)).removeprefix("window ") for w in same["window"]]
        labels.append(("window " + " = ".join(names)) if index == same.index[0] else "")
    frame["label"] = labels
    x_range = kv_domain(float(frame["kv"].max()))
    y_range = perplexity_domain(float(frame["perplexity"].min()), float(frame["perplexity"].max()))
    points = list(zip(frame["kv"], frame["perplexity"], frame["label"]))
    frame["side"] = place_labels(points, (x_range[0], x_range[1]), (y_range[0], y_range[1]))
    return frame


def _share(fraction: float) -> str:
    """A fraction as a percentage a room reads at once: 96%, 4.5%, <0.1%."""
    if fraction < 0.001:
        return "<0.1%"
    return f"{fraction:.0%}" if fraction >= 0.095 else f"{fraction:.1%}"


def sweep_reading(sweep: Sweep, rows: list[dict[str, Any]] | None = None) -> str:
    """The chart read aloud, from its measured points: which window keeps most of the reference's coherence
    for the least cache, and what the smallest window keeps; then how the sweep ended if it did not finish."""
    rows = rows if rows is not None else sweep.rows()
    done = [group[0] for group in by_window(rows)]  # a window's first text (the seed asked) speaks for it
    reference = max(done, key=lambda row: math.inf if row["window"] is None else row["window"], default=None)
    sentences = []
    if reference is not None and len(done) > 1:
        ref_name, ref_kv = window_label(reference["window"]), reference["peak_kv_bytes"]
        others = [row for row in done if row is not reference]
        saving = [row for row in others if row["peak_kv_bytes"] < ref_kv]

        def says(row: dict[str, Any], whose: str = "the", its: str = "the") -> str:
            """What a window keeps, for what share of the cache: "keeps 96% of the coherence for 15% of the cache"."""
            kept = row["coherence_kept"]
            coherence = (  # within SAME_PERPLEXITY: no share is claimed where the two read alike
                f"all of {whose} coherence" if kept >= 1 - SAME_PERPLEXITY else f"{_share(kept)} of {whose} coherence"
            )
            return f"keeps {coherence} for {_share(row['peak_kv_bytes'] / ref_kv)} of {its} cache"

        if saving:
            good = [row for row in saving if row["coherence_kept"] >= KEEPS_MOST]
            smallest = min(saving, key=lambda row: row["peak_kv_bytes"])
            if good:
                best = min(good, key=lambda row: row["peak_kv_bytes"])
                claim = says(best, f"{ref_name}'s", "its")
                sentences.append(
                    f"**{window_label(best['window']).capitalize()} {claim}** "
                    f"({format_bytes(best['peak_kv_bytes'])} of KV cache at most, against {format_bytes(ref_kv)})."
                )
            else:
                best = max(saving, key=lambda row: row["coherence_kept"])
                sentences.append(
                    f"No smaller window keeps {KEEPS_MOST:.0%} of {ref_name}'s coherence: the closest, "
                    f"**{window_label(best['window'])}, {says(best)}**."
                )
            if smallest is not best:
                sentences.append(f"The smallest, {window_label(smallest['window'])}, {says(smallest)}.")
        for row in others:
            name = window_label(row["window"]).capitalize()
            if row["peak_kv_bytes"] == ref_kv and row["resets"] == 0 and row["perplexity"] == reference["perplexity"]:
                sentences.append(f"{name} never reset in {row['tokens']:,} tokens: it wrote what {ref_name} wrote.")
            elif row["peak_kv_bytes"] == ref_kv:
                sentences.append(f"{name} needs as much cache as {ref_name}.")
            elif row["peak_kv_bytes"] > ref_kv:
                kv = format_bytes(row["peak_kv_bytes"])
                sentences.append(
                    f"{name} saves nothing on a text this short: its cache peaked at {kv}, against "
                    f"{format_bytes(ref_kv)} with {ref_name}."
                )
        guessing = next((guessing_note(run) for run in sweep.runs if guessing_note(run)), "")
        if guessing:
            sentences.insert(0, guessing)
        passage = next((run.reading_of for run in sweep.runs if run.reading_of), "a real passage")
        sentences.append(
            f"Coherence here is how well the model reads {passage} seeing only each window's tokens, the same at "
            "every press; each run's own text, reread, is one sample (in the tooltip and the CSV)."
        )
    ending = _sweep_ending(sweep, rows)
    if ending:
        sentences.append(ending)
    return " ".join(sentences)


def _sweep_ending(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    """What the sweep did not draw, and why, in a sentence or two; empty when it drew every window."""
    if not sweep.ended:
        return ""
    said = []
    for run, row in zip(sweep.runs, rows):
        if row["complete"]:
            continue
        name, tokens, length = window_label(row["window"]), row["tokens"], run.settings.max_new_tokens
        if sweep.texts > 1:
            name += f" (seed {run.settings.seed})"
        if run.error is not None:
            said.append(f"{name} failed")
        elif run.stats.stop_reason == "memory":
            said.append(f"the memory guard ended {name} after {tokens:,} of {length:,} tokens")
        elif tokens < length:
            said.append(f"stopped during {name}, after {tokens:,} of {length:,} tokens")
        else:
            said.append(f"stopped while {name} was being reread")
    sentences = []
    if said:
        what = "; ".join(said)
        sentences.append(
            f"{what[0].upper()}{what[1:]}: not drawn, since a shorter text has a smaller cache and another "
            "perplexity (it is in History and the CSV)."
        )
    begun = {run.settings.window for run in sweep.runs}
    if len(begun) < len(sweep.windows) and not any(run.error for run in sweep.runs):
        left = ", ".join(window_label(window) for window in sweep.windows if window not in begun)
        sentences.append(f"Not written: {left}.")
    return " ".join(sentences)
