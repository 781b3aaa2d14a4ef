"""A sweep of many windows as numbers and words: the runs it wrote (`Sweep`), its chart's points (one per window
written in full and scored: `sweep_points`), where each point's label goes (`place_labels`), and the sentence that
reads the chart aloud (`sweep_reading`). No Streamlit drawing here: the sweep's tab (`sweep`) and its chart
(`sweep_chart`) lay these out; two windows side by side are `comparison`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from gpt2_engine import format_bytes, sweep_rows

from .charts import kv_unit
from .comparison import SAME_PERPLEXITY, guessing_note
from .run import Run
from .sweep_chart import SWEEP_LABEL_PLACES, kv_domain, perplexity_domain
from .words import window_label

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


def guesses_at_random(sweep: Sweep) -> bool:
    """The model reads the passage about as well as picking tokens at random (random weights): the chart then draws
    perplexity from 0, so that its windows' noise is not zoomed into a ranking."""
    return any(guessing_note(run) for run in sweep.runs)


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
    if guesses_at_random(sweep):  # the chart draws y from 0 then (sweep_chart): the labels are placed on that
        y_range = [0.0, float(frame["perplexity"].max()) * 1.2]
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
