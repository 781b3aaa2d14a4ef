"""The live memory charts, x = tokens generated: the process's memory, and the KV cache beside it.

Two charts, not one, because their scales differ a thousandfold (gigabytes of weights, megabytes of
cache): on one axis the cache, the part the window controls, would be a flat line at zero.

Each chart is a Vega-Lite spec (a dict) with named datasets: `memory` (one row per generated
token), `weights` (one row) and `resets` (one row per window reset), which tests read back from
the page. Plain specs, not Altair objects: Altair validates every spec against its JSON schema,
about 30 ms per chart, and the page redraws while the model writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from gpt2_engine import Step
from gpt2_engine.memory import MB
from gpt2_engine.stats import memory_rows, reset_points

TOTAL_LABEL, ALLOCATED_LABEL = "total (RSS)", "allocated"
TOTAL_COLOR, ALLOCATED_COLOR, KV_COLOR, WEIGHTS_COLOR, RESET_COLOR = (
    "#1f6feb",
    "#8cb4f5",
    "#e8590c",
    "#495057",
    "#d97706",
)
HEIGHT_PX = 270  # of each chart element, title and legend included (a spec's own height is not kept)
TITLE = {"anchor": "start", "subtitleColor": "#6b7080", "subtitleFontSize": 12}
EXPLANATION = (
    "**Total** is all the memory the program holds, the weights read from disk included; **allocated** is what it "
    "made while running. The dashed line is the weights. The cache grows by one token's keys and values per "
    "token and drops at each ⟲ window reset (dotted lines)."
)


def memory_frame(steps: Sequence[Step]) -> pd.DataFrame:
    """One row per generated token: tokens (x), rss_mb, anon_mb, kv_mb, reset."""
    rows = memory_rows(steps)
    return pd.DataFrame(
        {
            "tokens": [row["tokens"] for row in rows],
            "rss_mb": [row["rss_bytes"] / MB for row in rows],
            "anon_mb": [row["anon_bytes"] / MB for row in rows],
            "kv_mb": [row["kv_bytes"] / MB for row in rows],
            "reset": [row["reset"] for row in rows],
        }
    )


def _resets_frame(steps: Sequence[Step]) -> pd.DataFrame:
    return pd.DataFrame({"reset_at": list(reset_points(steps))}, dtype="int64")


def _x(x_max: int) -> dict[str, Any]:
    scale = {"domain": [0, max(1, x_max)], "nice": False}
    return {"field": "tokens", "type": "quantitative", "title": "tokens generated", "scale": scale}


def _reset_rules(x_max: int) -> dict[str, Any]:
    return {
        "data": {"name": "resets"},
        "mark": {"type": "rule", "color": RESET_COLOR, "strokeDash": [2, 3], "strokeWidth": 1.5},
        "encoding": {
            "x": {**_x(x_max), "field": "reset_at"},
            "tooltip": [{"field": "reset_at", "type": "quantitative", "title": "window reset after token"}],
        },
    }


def process_memory_chart(steps: Sequence[Step], weight_bytes: int, x_max: int) -> dict[str, Any]:
    """Total memory (RSS) and its allocated (anonymous) part, with the weights as a dashed line."""
    weights_y = {"field": "weights_mb", "type": "quantitative"}
    return {
        "title": {"text": "Memory of the program", "subtitle": "the weights, the cache and everything else", **TITLE},
        "datasets": {
            "memory": memory_frame(steps),
            "weights": pd.DataFrame({"weights_mb": [weight_bytes / MB]}),
            "resets": _resets_frame(steps),
        },
        "layer": [
            {
                "data": {"name": "memory"},
                "transform": [
                    {"fold": ["rss_mb", "anon_mb"], "as": ["key", "MB"]},
                    {"calculate": f"datum.key == 'rss_mb' ? '{TOTAL_LABEL}' : '{ALLOCATED_LABEL}'", "as": "memory"},
                ],
                "mark": {"type": "line", "strokeWidth": 2.2},
                "encoding": {
                    "x": _x(x_max),
                    "y": {"field": "MB", "type": "quantitative", "title": "MB", "scale": {"zero": True}},
                    "color": {
                        "field": "memory",
                        "type": "nominal",
                        "scale": {"domain": [TOTAL_LABEL, ALLOCATED_LABEL], "range": [TOTAL_COLOR, ALLOCATED_COLOR]},
                        "legend": {"orient": "top", "title": None},
                    },
                    "tooltip": [
                        {"field": "tokens", "type": "quantitative"},
                        {"field": "memory", "type": "nominal"},
                        {"field": "MB", "type": "quantitative", "format": ",.0f"},
                    ],
                },
            },
            {
                "data": {"name": "weights"},
                "mark": {"type": "rule", "color": WEIGHTS_COLOR, "strokeDash": [6, 4]},
                "encoding": {"y": weights_y},
            },
            {
                "data": {"name": "weights"},
                "mark": {"type": "text", "align": "left", "dx": 4, "dy": -7, "color": WEIGHTS_COLOR, "fontSize": 11},
                "encoding": {"y": weights_y, "x": {"value": 0}, "text": {"value": "weights"}},
            },
            _reset_rules(x_max),
        ],
    }


def kv_cache_chart(steps: Sequence[Step], x_max: int) -> dict[str, Any]:
    """The KV cache: grows by one token's keys and values per token, drops at each window reset."""
    return {
        "title": {"text": "KV cache", "subtitle": "what the model keeps in mind", **TITLE},
        "datasets": {"memory": memory_frame(steps), "resets": _resets_frame(steps)},
        "layer": [
            {
                "data": {"name": "memory"},
                "mark": {
                    "type": "area",
                    "color": KV_COLOR,
                    "opacity": 0.3,
                    "line": {"color": KV_COLOR, "strokeWidth": 2},
                    "interpolate": "step-after",
                },
                "encoding": {
                    "x": _x(x_max),
                    "y": {"field": "kv_mb", "type": "quantitative", "title": "MB", "scale": {"zero": True}},
                    "tooltip": [
                        {"field": "tokens", "type": "quantitative"},
                        {"field": "kv_mb", "type": "quantitative", "title": "KV cache MB", "format": ",.3f"},
                    ],
                },
            },
            _reset_rules(x_max),
        ],
    }
