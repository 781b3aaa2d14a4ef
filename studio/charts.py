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

from gpt2_engine import GB, MB, Step, memory_rows, reset_points

TOTAL_LABEL, ALLOCATED_LABEL = "total (RSS)", "allocated"
TOTAL_COLOR, ALLOCATED_COLOR, KV_COLOR, WEIGHTS_COLOR, RESET_COLOR = (
    "#1f6feb",
    "#8cb4f5",
    "#e8590c",
    "#495057",
    "#d97706",
)
HEIGHT_PX = 270  # of each chart element, title and legend included (a spec's own height is not kept)
MACHINE_GB = (8, 16, 24)  # common laptops' memory: "would this fit on mine?"
MACHINE_LINES_WITHIN = 2.0  # draw a machine's line only below this many times the plotted peak (no squashed curves)
MACHINE_COLOR = "#9aa0ad"
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


def machine_lines(peak_bytes: float) -> pd.DataFrame:
    """The 8 / 16 / 24 GB lines worth drawing over a peak: those within MACHINE_LINES_WITHIN times it, so a
    tiny model's chart (hundreds of MB) gets none and is not squashed flat under a line at 8 GB."""
    sizes = [gb for gb in MACHINE_GB if gb * GB <= MACHINE_LINES_WITHIN * peak_bytes]
    return pd.DataFrame({"machine_mb": [gb * GB / MB for gb in sizes], "machine": [f"{gb} GB" for gb in sizes]})


def _machine_layers() -> list[dict[str, Any]]:
    """Dotted lines at common machines' memory (dataset `machines`), labelled at their right end."""
    y = {"field": "machine_mb", "type": "quantitative"}
    return [
        {
            "data": {"name": "machines"},
            "mark": {"type": "rule", "color": MACHINE_COLOR, "strokeDash": [1, 3], "strokeWidth": 1.5},
            "encoding": {"y": y, "tooltip": [{"field": "machine", "title": "a computer with"}]},
        },
        {
            "data": {"name": "machines"},
            "mark": {"type": "text", "align": "right", "dy": -7, "color": MACHINE_COLOR, "fontSize": 11},
            "encoding": {"y": y, "x": {"value": "width"}, "text": {"field": "machine"}},
        },
    ]


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
    peak_bytes = max([weight_bytes, *(step.rss_bytes for step in steps)])
    return {
        "title": {"text": "Memory of the program", "subtitle": "the weights, the cache and everything else", **TITLE},
        "datasets": {
            "memory": memory_frame(steps),
            "weights": pd.DataFrame({"weights_mb": [weight_bytes / MB]}),
            "resets": _resets_frame(steps),
            "machines": machine_lines(peak_bytes),
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
            *_machine_layers(),
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


COMPARE_COLORS = ("#0ca678", "#1f6feb")  # window A, window B
COMPARE_HEIGHT_PX = 440  # the chart element: title, legend, the program's memory above and the KV cache below
MEMORY_BAND = [{"expr": "height * 0.58"}, 0]  # the program's memory: the top 58% of the plot (pixels, down)
KV_BAND = [{"expr": "height"}, {"expr": "height * 0.70"}]  # the KV cache: the bottom 30%
COMPARE_EXPLANATION = (
    "Above: all the memory the program holds (RSS), the weights (dashed) included; dotted grey lines, where they "
    "fit, are the memory of common computers. Below: the KV cache, the keys and values of every token the model "
    "keeps in mind. Dotted coloured lines: a ⟲ window reset of the run of that colour."
)


def compare_frame(runs: Sequence[tuple[str, Sequence[Step]]]) -> pd.DataFrame:
    """One row per run and generated token: run (its label), tokens (x), rss_mb, kv_mb, reset."""
    frames = [memory_frame(steps).assign(run=label) for label, steps in runs]
    columns = ["run", "tokens", "rss_mb", "kv_mb", "reset"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def compare_chart(runs: Sequence[tuple[str, Sequence[Step]]], weight_bytes: int, x_max: int) -> dict[str, Any]:
    """Two runs (label, steps) on one chart, x = tokens generated: their process memory in the upper band, their
    KV caches in the lower band (scales a thousandfold apart: one y scale each, one x for both), resets as
    rules in each run's colour. A single layered view, so that it fits its column as the Write tab's charts do.
    Datasets: `memory` (compare_frame), `resets` (run, reset_at), `weights`, `machines`."""
    labels = [label for label, _ in runs]
    color = {
        "field": "run",
        "type": "nominal",
        "title": None,
        "scale": {"domain": labels, "range": list(COMPARE_COLORS[: len(labels)])},
        "legend": {"orient": "top", "labelFontSize": 13, "symbolStrokeWidth": 3},
    }
    resets = pd.DataFrame(
        {
            "run": [label for label, steps in runs for _ in reset_points(steps)],
            "reset_at": [point for _, steps in runs for point in reset_points(steps)],
        }
    ).astype({"reset_at": "int64"})
    peak_bytes = max([weight_bytes, *(step.rss_bytes for _, steps in runs for step in steps)])

    def lines(field: str, title: str, band: list[Any], number_format: str) -> dict[str, Any]:
        y_scale = {"zero": True, "range": band, "nice": True}
        return {
            "data": {"name": "memory"},
            "mark": {"type": "line", "strokeWidth": 2.4, "interpolate": "step-after" if field == "kv_mb" else "linear"},
            "encoding": {
                "x": _x(x_max),
                "y": {
                    "field": field,
                    "type": "quantitative",
                    "title": title,
                    "scale": y_scale,
                    "axis": {"orient": "left", "tickCount": 4, "titleFontWeight": 600},
                },
                "color": color,
                "tooltip": [
                    {"field": "run", "type": "nominal"},
                    {"field": "tokens", "type": "quantitative"},
                    {"field": field, "type": "quantitative", "title": title, "format": number_format},
                ],
            },
        }

    weights_y = {"field": "weights_mb", "type": "quantitative"}
    program = {
        "layer": [
            lines("rss_mb", "program memory, MB", MEMORY_BAND, ",.0f"),
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
            *_machine_layers(),
        ]
    }
    kv_cache = {"layer": [lines("kv_mb", "KV cache, MB", KV_BAND, ",.3f")]}
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
    return {
        "title": {"text": "Memory, token by token", "subtitle": "the same phrase and seed, two windows", **TITLE},
        "datasets": {
            "memory": compare_frame(runs),
            "resets": resets,
            "weights": pd.DataFrame({"weights_mb": [weight_bytes / MB]}),
            "machines": machine_lines(peak_bytes),
        },
        "layer": [program, kv_cache, reset_rules],
        "resolve": {"scale": {"y": "independent"}, "axis": {"y": "independent"}},
    }


def server_kv_chart(steps: Sequence[Step], x_max: int) -> dict[str, Any]:
    """A remote backend's KV cache in use (a share of all of it, every run on the server together), as its
    /metrics reported it while this run wrote; resets as dotted lines."""
    rows = [(step.index + 1, 100 * step.server_kv_usage) for step in steps if step.server_kv_usage is not None]
    return {
        "title": {"text": "The server's KV cache in use", "subtitle": "as its /metrics says, all its runs", **TITLE},
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
                    "y": {"field": "percent", "type": "quantitative", "title": "%", "scale": {"domain": [0, 100]}},
                },
            },
            _reset_rules(x_max),
        ],
    }
