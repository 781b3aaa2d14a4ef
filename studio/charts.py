"""The memory charts, x = tokens generated: what a run added to the process's memory, and its KV cache.

The process holds gigabytes before a run starts (the weights, the libraries), and a run adds megabytes: on
an axis from zero the run's own growth is a flat line under a tall bar. So the charts plot memory above what
the process held just before the run (`Step.start_rss_bytes`, read before the prompt), with the KV cache, the
part the window controls, as an area on the same axis, and say the total in the tooltip and the caption.

Each chart is a Vega-Lite spec (a dict) with named datasets: `memory` (one row per generated token) and
`resets` (one row per window reset), which tests read back from the page. Plain specs, not Altair objects:
Altair validates every spec against its JSON schema, about 30 ms per chart, and the page redraws while the
model writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from gpt2_engine import GB, MB, RunStats, Step, format_bytes, memory_rows, reset_points

ADDED_LABEL, KV_LABEL = "added by this run", "KV cache"
ADDED_COLOR, KV_COLOR, RESET_COLOR = "#1f6feb", "#e8590c", "#d97706"
HEIGHT_PX = 230  # of the chart element, title and legend included (a spec's own height is not kept)
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


COMPARE_COLORS = ("#0ca678", "#1f6feb")  # window A, window B
COMPARE_DASHES = ([1, 0], [7, 4])  # window A solid, window B dashed: where the two lines meet, both show
COMPARE_WIDTHS = (3.4, 2.2)  # ... and A wider, under B's dashes
COMPARE_HEIGHT_PX = 280  # the chart element: title, legend, both panels; with the runs' texts above it in 1280x720
MEMORY_BAND = [{"expr": "height * 0.58"}, 0]  # what each run added: the top 58% of the plot (pixels, down)
KV_BAND = [{"expr": "height"}, {"expr": "height * 0.70"}]  # the KV cache: the bottom 30%
BANDS_GAP = {  # a white strip over the x axis's gridlines between the two bands: two panels, not one
    "data": {"values": [{}]},
    "mark": {"type": "rect", "color": "white", "opacity": 1},
    "encoding": {
        "x": {"value": -1},
        "x2": {"value": {"expr": "width + 1"}},
        "y": {"value": {"expr": "height * 0.58 + 1"}},
        "y2": {"value": {"expr": "height * 0.70 - 1"}},
    },
}


def compare_frame(runs: Sequence[tuple[str, Sequence[Step]]]) -> pd.DataFrame:
    """One row per run and generated token: run (its label), then memory_frame's columns (added_mb is above
    what the process held just before that run)."""
    frames = [memory_frame(steps).assign(run=label) for label, steps in runs]
    columns = ["run", "tokens", "added_mb", "rss_mb", "kv_mb", "reset", "added", "total", "kv"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def compare_chart(runs: Sequence[tuple[str, Sequence[Step]]], x_max: int) -> dict[str, Any]:
    """Two runs (label, steps) on one chart, x = tokens generated: what each added to the memory the process
    held just before it in the upper band, their KV caches in the lower band (one y scale each, one x for both),
    resets as rules in each run's colour. Run A is a wide solid line, run B a dashed one drawn over it, so that
    both show where they coincide. A single layered view, so that it fits its column as the Write tab's chart
    does. Datasets: `memory` (compare_frame), `resets` (run, reset_at)."""
    labels = [label for label, _ in runs]
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

    def lines(field: str, title: str | None, band: list[Any]) -> dict[str, Any]:
        y = {
            "field": field,
            "type": "quantitative",
            "title": title,
            "scale": {"zero": True, "range": band, "nice": True},
            "axis": {"orient": "left", "tickCount": 4, "titleFontWeight": 600},
        }
        interpolate = "step-after" if field == "kv_mb" else "linear"
        return {
            "layer": [  # one layer per run, in order: B's dashes over A's solid line
                {
                    "data": {"name": "memory"},
                    "transform": [{"filter": f"datum.run === {json.dumps(label)}"}],
                    "mark": {"type": "line", "strokeWidth": width, "interpolate": interpolate},
                    "encoding": {"x": _x(x_max), "y": y, "color": color, "strokeDash": dash, "tooltip": tooltip},
                }
                for label, width in zip(labels, COMPARE_WIDTHS)
            ]
        }

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
        "title": {
            "text": "Memory, token by token",
            "subtitle": "the same phrase and seed, two windows · above: MB each run added · below: its KV cache, MB",
            **TITLE,
        },
        "config": COMPACT,
        "datasets": {"memory": compare_frame(runs), "resets": resets},
        "layer": [
            lines("added_mb", None, MEMORY_BAND),  # the bands' names in the subtitle: a short band has no room for
            lines("kv_mb", None, KV_BAND),  # a title on its axis (the two would run into each other)
            BANDS_GAP,  # over the gridlines (drawn under every mark), under the resets, which mark both bands
            reset_rules,
        ],
        "resolve": {"scale": {"y": "independent"}, "axis": {"y": "independent"}},
    }


def compare_caption(runs: Sequence[tuple[str, Sequence[Step]]]) -> str:
    """The comparison chart in words: how to read it, what the program held before the runs, and its peak."""
    ran = [(label, RunStats.from_steps(steps)) for label, steps in runs if steps]
    dashed = f" ({runs[1][0]} dashed)" if len(runs) > 1 else ""
    said = (
        f"Above: what each run added to the memory the program held just before it{dashed}; below: the KV cache, "
        "the keys and values of every token the model keeps in mind. Dotted coloured lines: a ⟲ window reset of "
        "the run of that colour."
    )
    if not ran:
        return said
    starts = [format_bytes(stats.start_rss_bytes) for _, stats in ran]
    if len(set(starts)) == 1:
        before = f"The program held {starts[0]} before {'each run' if len(ran) > 1 else 'the run'}"
    else:
        before = "The program held " + " and ".join(f"{s} before {label}" for s, (label, _) in zip(starts, ran))
    peak = max(stats.peak_rss_bytes for _, stats in ran)
    return f"{said} {before}, and {format_bytes(peak)} at most in all: {machine_words(peak)}."


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
