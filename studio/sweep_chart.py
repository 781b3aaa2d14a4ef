"""The Sweep's chart: one point per window, x = the most KV cache the run held, y = the perplexity of a real passage
read with that window (gpt2_engine.passages). A plain Vega-Lite spec, as in charts.py (the memory charts)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .charts import TITLE

SWEEP_COLOR, SWEEP_REFERENCE_COLOR = "#1f6feb", "#495057"  # the windows; the reference (off, or the largest)
SWEEP_HEIGHT_PX = 310  # with its line above it and the texts' chart under it, in view at 1280x720
TEXTS_HEIGHT_PX = 150  # the texts each window wrote, reread: their mean and range
# where a point's label can go (sweep_points.place_labels picks one): its anchor, offset in px
SWEEP_LABEL_PLACES: dict[str, dict[str, object]] = {
    "right": {"align": "left", "baseline": "middle", "dx": 11, "dy": 0},
    "left": {"align": "right", "baseline": "middle", "dx": -11, "dy": 0},
    "above": {"align": "center", "baseline": "bottom", "dx": 0, "dy": -10},
    "below": {"align": "center", "baseline": "top", "dx": 0, "dy": 10},
    "above_left": {"align": "right", "baseline": "bottom", "dx": 4, "dy": -8},
    "above_right": {"align": "left", "baseline": "bottom", "dx": -4, "dy": -8},
    "below_left": {"align": "right", "baseline": "top", "dx": 4, "dy": 8},
    "below_right": {"align": "left", "baseline": "top", "dx": -4, "dy": 8},
}
SWEEP_EXPLANATION = (
    "Each point is one run: the same phrase, seed and length, written with one window. **Across**: the most the "
    "KV cache held, the memory the window limits (the weights and everything else the program holds do not change "
    "with it: the CSV has the whole program's peak too). **Up**: perplexity when the model reads a real passage it "
    "did not write, seeing only the window's tokens (in pieces as long as the runs, so a window that never resets "
    "reads as off does); lower is more coherent, and the same at every press. **Coherence kept** = the "
    "reference's perplexity ÷ this window's (100%: as coherent; 50%: twice as unsure per token). Each run's own "
    "text, reread, is one sample: another seed reads otherwise (tooltip, CSV). Best: down and to the left."
)


Y_TITLE = ["perplexity reading", "a real passage", "(lower: more coherent)"]


def perplexity_domain(low: float, high: float) -> list[float]:
    """The sweep's y range: its perplexities with a tenth of their spread either side (labels above and below
    the extremes fit), never below 0."""
    pad = (high - low) * 0.1 or max(abs(high) * 0.05, 0.5)
    return [max(0.0, low - pad), high + pad]


def kv_domain(high: float) -> list[float]:
    """The sweep's x range: from 0 (shares of the cache read true) to a little past its largest cache."""
    return [0.0, (high or 1.0) * 1.06]


def sweep_chart(points: pd.DataFrame, unit: str, reference: str, guessing: bool = False) -> dict[str, Any]:
    """A sweep, one point per window (sweep_points.sweep_points: dataset `points`), x = peak KV cache in `unit`,
    y = perplexity, each point labelled by its window on the side its `side` column says. The reference window
    (its label, e.g. "off") is drawn in grey; every other point in blue. `guessing`: the model reads like random
    guessing (random weights): y from 0, so that its windows' noise of a few percent is drawn as the flat line it
    is, not zoomed into a ranking."""
    x = {
        "field": "kv",
        "type": "quantitative",
        "title": f"peak KV cache, {unit} (the memory the window limits)",
        "scale": {"domain": kv_domain(float(points["kv"].max())) if not points.empty else [0, 1], "nice": False},
        "axis": {"titleFontSize": 14, "labelFontSize": 12, "titleFontWeight": 600, "tickCount": 6},
    }
    y_scale: dict[str, Any] = {"zero": False}
    if not points.empty and guessing:  # from 0, with room above the points for their labels
        y_scale = {"zero": True, "domain": [0.0, float(points["perplexity"].max()) * 1.2], "nice": False}
    elif not points.empty:
        domain = perplexity_domain(float(points["perplexity"].min()), float(points["perplexity"].max()))
        y_scale = {"zero": False, "domain": domain, "nice": False}
    y = {
        "field": "perplexity",
        "type": "quantitative",
        # in short lines: a rotated title as long as the plot is tall squeezes the plot to nothing (Vega fits the
        # title's length into the chart's height)
        "title": Y_TITLE,
        "scale": y_scale,
        "axis": {"titleFontSize": 14, "labelFontSize": 12, "titleFontWeight": 600, "tickCount": 5},
    }
    is_reference = f"datum.window == '{reference}'"
    tooltip = [
        {"field": "window", "type": "nominal", "title": "window"},
        {"field": "kv", "type": "quantitative", "title": f"peak KV cache, {unit}", "format": ",.3~f"},
        {"field": "perplexity", "type": "quantitative", "title": "perplexity, reading the passage", "format": ",.2f"},
        {"field": "text_perplexity", "type": "quantitative", "title": "its own text, reread", "format": ",.2f"},
        {"field": "kept", "type": "quantitative", "title": "coherence kept", "format": ".0%"},
        {"field": "tokens", "type": "quantitative", "title": "tokens written"},
    ]
    labels = [
        {
            "data": {"name": "points"},
            "name": f"sweep_labels_{side}",
            "transform": [{"filter": f"datum.side == '{side}' && datum.label != ''"}],
            "mark": {"type": "text", "fontSize": 14, "fontWeight": 600, "color": "#1f2330"} | offsets,
            "encoding": {"x": x, "y": y, "text": {"field": "label"}},
        }
        for side, offsets in SWEEP_LABEL_PLACES.items()
    ]
    return {
        "title": {
            "text": "Memory against coherence, one point per window",
            "subtitle": (
                "this model guesses at random (random weights): every window reads alike, from 0 up"
                if guessing
                else f"one point per window · grey: window {reference}, the reference · better: down and left"
            ),
            **TITLE,
            "fontSize": 16,
            "subtitleFontSize": 13,
        },
        "datasets": {"points": points},
        "layer": [
            {
                "data": {"name": "points"},
                "name": "sweep_points",
                "mark": {"type": "point", "filled": True, "size": 170, "opacity": 1, "strokeWidth": 0},
                "encoding": {
                    "x": x,
                    "y": y,
                    "color": {
                        "condition": {"test": is_reference, "value": SWEEP_REFERENCE_COLOR},
                        "value": SWEEP_COLOR,
                    },
                    "tooltip": tooltip,
                },
            },
            *labels,
        ],
    }


def texts_chart(points: pd.DataFrame, unit: str, texts: int, guessing: bool = False) -> dict[str, Any]:
    """Under the sweep: each window's own texts, reread with the whole context, at the same x as its point: their
    mean (a ring) and range (a bar). Sampled texts are draws: the range says how far one press can land. `guessing`
    (random weights): from 0, as the sweep's chart."""
    x = {
        "field": "kv",
        "type": "quantitative",
        "title": None,
        "scale": {"domain": kv_domain(float(points["kv"].max())) if not points.empty else [0, 1], "nice": False},
        "axis": {"labelFontSize": 11, "tickCount": 6},
    }
    tooltip = [
        {"field": "window", "type": "nominal", "title": "window"},
        {"field": "text_perplexity", "type": "quantitative", "title": "mean perplexity, reread", "format": ",.2f"},
        {"field": "text_low", "type": "quantitative", "title": "lowest", "format": ",.2f"},
        {"field": "text_high", "type": "quantitative", "title": "highest", "format": ",.2f"},
        {"field": "texts", "type": "quantitative", "title": "texts"},
    ]
    said = f"mean and range of {texts} texts (seeds)" if texts > 1 else "one text each: one draw, not a measure"
    return {
        "title": {"text": "The texts each window wrote, reread with the whole text", "subtitle": said, **TITLE},
        "datasets": {"points": points},
        "layer": [
            {
                "data": {"name": "points"},
                "name": "sweep_text_ranges",
                "mark": {"type": "rule", "strokeWidth": 2.5, "color": "#868e96"},
                "encoding": {
                    "x": x,
                    "y": {
                        "field": "text_low",
                        "type": "quantitative",
                        "title": "perplexity",
                        "scale": {"zero": guessing},
                        "axis": {"tickCount": 3, "labelFontSize": 11},
                    },
                    "y2": {"field": "text_high"},
                    "tooltip": tooltip,
                },
            },
            {
                "data": {"name": "points"},
                "name": "sweep_text_means",
                "mark": {"type": "point", "size": 70, "strokeWidth": 2, "color": "#495057", "filled": False},
                "encoding": {"x": x, "y": {"field": "text_perplexity", "type": "quantitative"}, "tooltip": tooltip},
            },
        ],
    }
