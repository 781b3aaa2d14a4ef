"""The memory charts, x = tokens generated: the KV cache a run holds, and (tutorial mode) what it added to the process.

The KV cache is the memory the window controls, and the one figure that compares two windows: it is the headline
of every chart here, on an axis of its own (kB on the shipped model, MB on gpt2-xl). The rest of the process's
memory moves with the heap (a first run grows it, a freed block comes back late), by more than a small model's
whole cache, so it is said beside the chart, never drawn against the cache. Where a model's cache is small (the
shipped model's 1 kB a token against gpt2-xl's 614 kB), a second axis says what the same tokens would hold on
gpt2-xl, computed from its shape. Tutorial mode draws the process's memory above what it held before the run, as
the tutorial's climb is the autograd graph, not the cache.

Each chart is a Vega-Lite spec (a dict) with named datasets: `memory` (one row per generated token) and
`resets` (one row per window reset), which tests read back from the page. Plain specs, not Altair objects:
Altair validates every spec against its JSON schema, about 30 ms per chart, and the page redraws while the
model writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from gpt2_engine import GB, KNOWN_MODELS, MB, RunStats, Step, format_bytes, memory_rows, reset_points

ADDED_LABEL, KV_LABEL, AHEAD_LABEL = "added by this run", "KV cache", "next window, read ahead"
ADDED_COLOR, KV_COLOR, AHEAD_COLOR, RESET_COLOR = "#1f6feb", "#e8590c", "#f4b183", "#d97706"
XL_KV_PER_TOKEN = KNOWN_MODELS["gpt2-xl"].shape.kv_bytes_per_token("fp32")  # 614,400 bytes: its keys and values
XL_SCALE_FROM = 4.0  # a model whose token holds at most 1/4 of gpt2-xl's gets the second axis
HEIGHT_PX = 230  # of the chart element, title and legend included (a spec's own height is not kept)
AXIS_STEPS = (1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10)  # axis_top: each step at most 1.25x the last
MACHINE_GB = (8, 16, 24)  # common laptops' memory: "would this fit on mine?", said in words under the charts
TITLE = {"anchor": "start", "subtitleColor": "#6b7080", "subtitleFontSize": 12}
COMPACT = {  # less room around the plot than Streamlit's theme leaves, so a short chart still has a tall plot
    "title": {"offset": 6},
    "legend": {"offset": 4, "padding": 0},
    "axisX": {"titlePadding": 4},
}


def plus_bytes(n: float) -> str:
    """+41 MB / -3 MB / +0 B: a change in memory, as format_bytes writes sizes."""
    return ("+" if n >= 0 else "-") + format_bytes(abs(n))


def machine_words(total_bytes: float) -> str:
    """A total said against common computers: "85% of an 8 GB computer's memory"."""
    for gb in MACHINE_GB:
        if total_bytes <= gb * GB:
            article = "an" if gb == 8 else "a"
            return f"{100 * total_bytes / (gb * GB):.0f}% of {article} {gb} GB computer's memory"
    return f"more than a {MACHINE_GB[-1]} GB computer has"


def kv_unit(peak_bytes: float) -> tuple[str, float]:
    """The unit a chart counts the cache in: MB, or kB for a small model's few hundred thousand bytes."""
    return ("MB", MB) if peak_bytes >= MB else ("kB", 1e3)


def xl_scale(kv_per_token: int) -> float | None:
    """gpt2-xl's bytes per token over this model's, where the second axis is worth drawing (else None)."""
    if kv_per_token <= 0 or XL_KV_PER_TOKEN / kv_per_token < XL_SCALE_FROM:
        return None
    return XL_KV_PER_TOKEN / kv_per_token


def memory_frame(steps: Sequence[Step]) -> pd.DataFrame:
    """One row per generated token: tokens (x), added_mb (memory above what the process held just before the
    run), rss_mb (all of it), anon_mb, kv_mb, reset; and the tooltip's words for them: added, total, kv."""
    rows = memory_rows(steps)
    return pd.DataFrame(
        {
            "tokens": [row["tokens"] for row in rows],
            "added_mb": [row["added_bytes"] / MB for row in rows],
            "rss_mb": [row["rss_bytes"] / MB for row in rows],
            "anon_mb": [row["anon_bytes"] / MB for row in rows],
            "kv_mb": [row["kv_bytes"] / MB for row in rows],
            "held_bytes": [step.kv_bytes - step.read_ahead_bytes for step in steps],  # the window's own context
            "kv_bytes": [step.kv_bytes for step in steps],  # ... and the next window read ahead, on top
            "reset": [row["reset"] for row in rows],
            "added": [plus_bytes(row["added_bytes"]) for row in rows],
            "total": [format_bytes(row["rss_bytes"]) for row in rows],
            "kv": [format_bytes(row["kv_bytes"]) for row in rows],
        }
    )


def _resets_frame(steps: Sequence[Step]) -> pd.DataFrame:
    return pd.DataFrame({"reset_at": list(reset_points(steps))}, dtype="int64")


def _x(x_max: int) -> dict[str, Any]:
    scale = {"domain": [0, max(1, x_max)], "nice": False}
    return {"field": "tokens", "type": "quantitative", "title": "tokens generated", "scale": scale}


TOOLTIP = [
    {"field": "tokens", "type": "quantitative", "title": "tokens generated"},
    {"field": "added", "type": "nominal", "title": ADDED_LABEL},
    {"field": "total", "type": "nominal", "title": "the whole program"},
    {"field": "kv", "type": "nominal", "title": KV_LABEL},
]


def _reset_rules(x_max: int) -> dict[str, Any]:
    return {
        "data": {"name": "resets"},
        "mark": {"type": "rule", "color": RESET_COLOR, "strokeDash": [2, 3], "strokeWidth": 1.5},
        "encoding": {
            "x": {**_x(x_max), "field": "reset_at"},
            "tooltip": [{"field": "reset_at", "type": "quantitative", "title": "window reset after token"}],
        },
    }


def process_memory_chart(steps: Sequence[Step], x_max: int) -> dict[str, Any]:
    """What the run added to the process's memory (a line) and its KV cache (an area beneath), on one axis in
    MB above what the process held just before the run; the window's resets as dotted rules."""
    series = {"type": "nominal", "scale": {"domain": [ADDED_LABEL, KV_LABEL], "range": [ADDED_COLOR, KV_COLOR]}}
    legend = {
        "orient": "top",
        "title": None,
        "labelFontSize": 12,
        "symbolType": "stroke",
        "symbolStrokeWidth": 3,
        "symbolOpacity": 1,
    }
    start = RunStats.from_steps(steps).start_rss_bytes
    return {
        "title": {"text": "Memory this run added", **TITLE},
        "config": COMPACT,
        "padding": {"top": 0, "bottom": 0, "left": 0, "right": 4},
        "datasets": {"memory": memory_frame(steps), "resets": _resets_frame(steps)},
        "layer": [
            {
                "data": {"name": "memory"},
                "mark": {"type": "area", "opacity": 0.28, "interpolate": "step-after", "line": {"strokeWidth": 1.5}},
                "encoding": {
                    "x": _x(x_max),
                    "y": {"field": "kv_mb", "type": "quantitative"},
                    "color": {"datum": KV_LABEL, **series, "legend": legend},
                    "tooltip": TOOLTIP,
                },
            },
            {
                "data": {"name": "memory"},
                "mark": {"type": "line", "strokeWidth": 2.6},
                "encoding": {
                    "x": _x(x_max),
                    "y": {
                        "field": "added_mb",
                        "type": "quantitative",
                        "title": f"MB above {format_bytes(start)}",  # what the process held before the run
                        "scale": {"zero": True},
                        "axis": {"tickCount": 5},
                    },
                    "color": {"datum": ADDED_LABEL, **series, "legend": legend},
                    "tooltip": TOOLTIP,
                },
            },
            _reset_rules(x_max),
        ],
    }


def axis_top(value: float) -> float:
    """The next step of AXIS_STEPS (x 10^k) at or above `value`: where a growing chart's axis ends. While a run
    writes, its chart's spec then stays the same from one redraw to the next, bar a few steps, so the browser swaps
    the chart's data in place instead of building the whole chart again (Streamlit does that when only the datasets
    change), and the axis the room reads does not move at every token."""
    scale = 10.0 ** math.floor(math.log10(value))
    return next(step * scale for step in AXIS_STEPS if step * scale >= value * (1 - 1e-9))


def _kv_axes(peak_bytes: float, kv_per_token: int) -> tuple[str, float, dict[str, Any], list[dict[str, Any]]]:
    """The cache's y axis (its unit, the divisor, the encoding's scale) and, for a small model, the layers that
    draw gpt2-xl's axis on the right: the same line, scaled by gpt2-xl's bytes per token (drawn invisible: only
    its axis shows). Both scales are fixed, from 0 to a little past the peak, so the two axes read one line."""
    unit, divisor = kv_unit(peak_bytes)
    top = axis_top(max(peak_bytes, 1.0) * 1.08 / divisor) * divisor
    scale = {"domain": [0, top / divisor], "nice": False, "zero": True}
    ratio = xl_scale(kv_per_token)
    if ratio is None:
        return unit, divisor, scale, []
    xl = {
        "data": {"name": "memory"},
        "transform": [{"calculate": f"datum.kv_bytes * {ratio} / {MB}", "as": "xl_mb"}],
        "mark": {"type": "line", "opacity": 0},
        "encoding": {
            "x": {"field": "tokens", "type": "quantitative"},
            "y": {
                "field": "xl_mb",
                "type": "quantitative",
                "title": "the same tokens on gpt2-xl, MB",
                "scale": {"domain": [0, top * ratio / MB], "nice": False, "zero": True},
                "axis": {"orient": "right", "tickCount": 5, "titleColor": "#6b7080"},
            },
        },
    }
    return unit, divisor, scale, [xl]


def kv_chart(steps: Sequence[Step], x_max: int, kv_per_token: int = 0) -> dict[str, Any]:
    """The run's KV cache, token by token: the window's context (an orange area) and, near a reset, the next window
    read ahead (a light band on top); resets as dotted rules; for a small model, gpt2-xl's equivalent on the right."""
    peak = max((step.kv_bytes for step in steps), default=0)
    unit, divisor, scale, xl_layers = _kv_axes(peak, kv_per_token)
    frame = memory_frame(steps).assign(  # in the axis's unit: the window's context, and with the read-ahead
        held_kv=lambda f: f["held_bytes"] / divisor, all_kv=lambda f: f["kv_bytes"] / divisor
    )
    series = {
        "type": "nominal",
        "scale": {"domain": [KV_LABEL, AHEAD_LABEL], "range": [KV_COLOR, AHEAD_COLOR]},
        "legend": {"orient": "top", "title": None, "labelFontSize": 12, "symbolType": "square"},
    }
    tooltip = [
        {"field": "tokens", "type": "quantitative", "title": "tokens generated"},
        {"field": "kv", "type": "nominal", "title": KV_LABEL},
        {"field": "total", "type": "nominal", "title": "the whole program"},
    ]
    y = {"type": "quantitative", "title": f"KV cache, {unit}", "scale": scale, "axis": {"tickCount": 5}}
    area = {"type": "area", "interpolate": "step-after", "line": {"strokeWidth": 1.5}}
    layers: list[dict[str, Any]] = [  # the whole cache (top band: the read-ahead), then the window's own over it
        {
            "data": {"name": "memory"},
            "mark": {**area, "opacity": opacity},
            "encoding": {
                "x": _x(x_max),
                "y": {**y, "field": field},
                "color": {"datum": label, **series},
                "tooltip": tooltip,
            },
        }
        for field, label, opacity in (("all_kv", AHEAD_LABEL, 0.55), ("held_kv", KV_LABEL, 0.45))
    ]
    layers.append(_reset_rules(x_max))
    spec: dict[str, Any] = {
        "title": {"text": "The KV cache: the memory the window controls", **TITLE},
        "config": COMPACT,
        "padding": {"top": 0, "bottom": 0, "left": 0, "right": 4},
        "datasets": {"memory": frame, "resets": _resets_frame(steps)},
        "layer": [{"layer": layers}, *xl_layers],
    }
    if xl_layers:
        spec["resolve"] = {"scale": {"y": "independent"}, "axis": {"y": "independent"}}
    return spec


def kv_caption(steps: Sequence[Step], weight_bytes: int, kv_per_token: int = 0) -> str:
    """The KV chart in words: the cache at most (and on gpt2-xl), then the whole program as context."""
    stats = RunStats.from_steps(steps)
    peak, total = stats.peak_kv_bytes, steps[-1].rss_bytes
    ratio = xl_scale(kv_per_token)
    on_xl = f" (the same tokens would hold {format_bytes(peak * ratio)} on gpt2-xl)" if ratio else ""
    ahead = max(step.read_ahead_bytes for step in steps)
    read_ahead = (
        f" The light band is the next window, read a few tokens a step just before a reset so that it does not "
        f"pause ({format_bytes(ahead)} at most)."
        if ahead
        else ""
    )
    return (
        f"The KV cache keeps the keys and values of every token the model has in mind: **{format_bytes(peak)}** at "
        f"most{on_xl}. It grows by one token a step and drops at each ⟲ window reset (dotted lines).{read_ahead} "
        f"The whole program holds {format_bytes(total)}, the weights' {format_bytes(weight_bytes)} included "
        f"({machine_words(total)}); the rest of it moves with the heap, not with the window."
    )


def draw_memory(steps: Sequence[Step], x_max: int, weight_bytes: int, kv_per_token: int, autograd: bool) -> None:
    """A run's memory chart and its words: the KV cache, or in tutorial mode what the run added to the process
    (there the climb is autograd's graph, not the cache)."""
    if not steps:
        return
    if autograd:
        spec, words = process_memory_chart(steps, x_max), memory_caption(steps, weight_bytes)
    else:
        spec, words = kv_chart(steps, x_max, kv_per_token), kv_caption(steps, weight_bytes, kv_per_token)
    st.vega_lite_chart(spec=spec, width="stretch", height=HEIGHT_PX)
    st.caption(words)


def memory_caption(steps: Sequence[Step], weight_bytes: int) -> str:
    """The chart in words: the run's growth, and the whole program's memory it sits on (with the weights, and
    against common computers), then how to read the area and the dotted lines."""
    stats = RunStats.from_steps(steps)
    total = steps[-1].rss_bytes
    added, most = plus_bytes(total - stats.start_rss_bytes), plus_bytes(stats.peak_added_bytes)
    return (
        f"**{added}** added by this run{f' (at most {most})' if most != added else ''}, on top of the {format_bytes(stats.start_rss_bytes)} the program "
        f"held before it; **{format_bytes(total)}** in all, the weights' {format_bytes(weight_bytes)} included: "
        f"{machine_words(total)}. The orange area is the KV cache: it grows by one token's keys and values per "
        "token and drops at each ⟲ window reset (dotted lines)."
    )


def server_kv_chart(steps: Sequence[Step], x_max: int) -> dict[str, Any]:
    """A remote backend's KV cache in use (a share of all of it, every run on the server together), as the server
    said it while this run wrote; resets as dotted lines. The axis fits the readings (one run on a server sized for
    many holds a small share: on 0-100% its growth would be a flat line), from 0."""
    rows = [(step.index + 1, 100 * step.server_kv_usage) for step in steps if step.server_kv_usage is not None]
    return {
        "title": {
            "text": "The server's KV cache in use",
            "subtitle": "% of all of it, every run on the server together, as the server says",
            **TITLE,
        },
        "datasets": {
            "server": pd.DataFrame({"tokens": [r[0] for r in rows], "percent": [r[1] for r in rows]}),
            "resets": _resets_frame(steps),
        },
        "layer": [
            {
                "data": {"name": "server"},
                "mark": {"type": "line", "strokeWidth": 2.2, "color": KV_COLOR, "point": True},
                "encoding": {
                    "x": _x(x_max),
                    "y": {
                        "field": "percent",
                        "type": "quantitative",
                        "title": "% in use",
                        "scale": {"domainMin": 0, "domainMax": max([1.0] + [r[1] for r in rows]) * 1.1},
                    },
                    "tooltip": [
                        {"field": "tokens", "type": "quantitative", "title": "tokens written"},
                        {"field": "percent", "type": "quantitative", "title": "% in use", "format": ".2f"},
                    ],
                },
            },
            _reset_rules(x_max),
        ],
    }
