"""Compare's chart: two runs' KV caches, token by token, on one axis (and gpt2-xl's equivalent on the right for
a small model), with each run's resets; and the caption that says how to read it. A Vega-Lite spec like the
Write tab's (`charts`), whose helpers it shares."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from gpt2_engine import MB, RunStats, Step, format_bytes, reset_points

from .charts import COMPACT, TITLE, TOOLTIP, _kv_axes, _x, machine_words, memory_frame

COMPARE_COLORS = ("#0ca678", "#1f6feb")  # window A, window B
COMPARE_DASHES = ([1, 0], [7, 4])  # window A solid, window B dashed: where the two lines meet, both show
COMPARE_WIDTHS = (3.4, 2.2)  # ... and A wider, under B's dashes
COMPARE_HEIGHT_PX = 240  # the chart, title and legend included: texts above it, the table beside it, in 1280x720


def compare_frame(runs: Sequence[tuple[str, Sequence[Step]]], divisor: float = MB) -> pd.DataFrame:
    """One row per run and generated token: run (its label), then memory_frame's columns, and kv_value: its KV
    cache in the chart's unit (`divisor` bytes)."""
    frames = [memory_frame(steps).assign(run=label) for label, steps in runs]
    columns = ["run", "tokens", "kv_bytes", "kv_value", "rss_mb", "kv_mb", "reset", "total", "kv"]
    if not frames:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(kv_value=frame["kv_bytes"] / divisor)[columns]


def compare_chart(runs: Sequence[tuple[str, Sequence[Step]]], x_max: int, kv_per_token: int = 0) -> dict[str, Any]:
    """Two runs (label, steps) on one chart, x = tokens generated, y = each run's KV cache, the memory the window
    controls (the rest of the process is said in the table, not drawn: it moves with the heap by more than a small
    model's cache); resets as rules in each run's colour; for a small model, gpt2-xl's equivalent on the right.
    Run A is a wide solid line, run B a dashed one drawn over it, so that both show where they coincide.
    Datasets: `memory` (compare_frame), `resets` (run, reset_at)."""
    labels = [label for label, _ in runs]
    peak = max((step.kv_bytes for _, steps in runs for step in steps), default=0)
    unit, divisor, scale, xl_layers = _kv_axes(peak, kv_per_token)
    legend = {"orient": "top", "labelFontSize": 13, "symbolStrokeWidth": 3, "symbolSize": 400}
    color = {
        "field": "run",
        "type": "nominal",
        "title": None,
        "scale": {"domain": labels, "range": list(COMPARE_COLORS[: len(labels)])},
        "legend": legend,
    }
    dash = {**color, "scale": {"domain": labels, "range": [list(d) for d in COMPARE_DASHES[: len(labels)]]}}
    resets = pd.DataFrame(
        {
            "run": [label for label, steps in runs for _ in reset_points(steps)],
            "reset_at": [point for _, steps in runs for point in reset_points(steps)],
        }
    ).astype({"reset_at": "int64"})
    tooltip = [{"field": "run", "type": "nominal"}, *TOOLTIP]
    y = {
        "field": "kv_value",
        "type": "quantitative",
        "title": f"KV cache, {unit}",
        "scale": scale,
        "axis": {"orient": "left", "tickCount": 5, "titleFontWeight": 600},
    }
    lines = [  # one layer per run, in order: B's dashes over A's solid line
        {
            "data": {"name": "memory"},
            "transform": [{"filter": f"datum.run === {json.dumps(label)}"}],
            "mark": {"type": "line", "strokeWidth": width, "interpolate": "step-after"},
            "encoding": {"x": _x(x_max), "y": y, "color": color, "strokeDash": dash, "tooltip": tooltip},
        }
        for label, width in zip(labels, COMPARE_WIDTHS)
    ]
    reset_rules = {
        "data": {"name": "resets"},
        "mark": {"type": "rule", "strokeDash": [2, 3], "strokeWidth": 1.5, "opacity": 0.8},
        "encoding": {
            "x": {**_x(x_max), "field": "reset_at"},
            "color": {**color, "legend": None},
            "tooltip": [
                {"field": "run", "type": "nominal"},
                {"field": "reset_at", "type": "quantitative", "title": "window reset after token"},
            ],
        },
    }
    spec: dict[str, Any] = {
        "title": {
            "text": "KV cache, token by token: the memory the window controls",
            "subtitle": "the same phrase and seed, two windows"
            + (" · right: what the same tokens would hold on gpt2-xl" if xl_layers else ""),
            **TITLE,
        },
        "config": COMPACT,
        "datasets": {"memory": compare_frame(runs, divisor), "resets": resets},
        "layer": [{"layer": [*lines, reset_rules]}, *xl_layers],
    }
    if xl_layers:
        spec["resolve"] = {"scale": {"y": "independent"}, "axis": {"y": "independent"}}
    return spec


def compare_caption(runs: Sequence[tuple[str, Sequence[Step]]]) -> str:
    """The comparison chart in words: how to read it, and the whole program beside it."""
    ran = [(label, RunStats.from_steps(steps)) for label, steps in runs if steps]
    dashed = f" ({runs[1][0]} dashed)" if len(runs) > 1 else ""
    said = (
        f"Each line is one run's KV cache{dashed}: the keys and values of every token the model keeps in mind, "
        "the memory the window controls. Dotted coloured lines: a ⟲ window reset of the run of that colour."
    )
    if not ran:
        return said
    peak = max(stats.peak_rss_bytes for _, stats in ran)
    return (
        f"{said} The whole program peaked at {format_bytes(peak)} ({machine_words(peak)}); the rest of it moves "
        "with the heap, by more than a small model's cache, so it is not what compares the windows."
    )
