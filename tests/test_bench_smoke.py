"""The benchmark's smoke mode: a tiny stand-in, a few tokens, every precision; it runs and writes its report.
No speed is asserted here: the benchmark reports speed, tests do not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gpt2_engine import capabilities

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m <args>` from the project's root, offline; fails the test with its stderr if it fails."""
    out = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_benchmark_smoke_mode_writes_its_table_and_report(tmp_path) -> None:
    report = tmp_path / "report.json"
    out = run_module("bench.benchmark", "--smoke", "--out", str(report))
    data = json.loads(report.read_text())
    measured = [row for row in data["rows"] if "engine_tok_s" in row]
    assert [row["precision"] for row in measured] == capabilities.runnable("cpu")  # every precision that runs here
    for row in measured:
        assert row["engine_tok_s"] > 0 and row["generate_tok_s"] > 0 and row["ceiling_tok_s"] > 0
        assert row["greedy_tokens_compared"] > 0 and row["peak_kv_bytes"] > 0
        assert 0 < row["peak_anon_bytes"] <= row["peak_rss_bytes"]
        if row["precision"] in ("bf16", "int8", "q8"):  # the window runs: cost at window 50, gaps at window 20
            assert "window_50_shadow_s" in row and 0 < row["gap_20_shadow_median_s"] <= row["gap_20_shadow_max_s"]
    assert data["auto"]["precision"] in capabilities.runnable("cpu") and "why" in data["auto"]
    assert any(row["precision"].startswith("llama.cpp") for row in data["rows"])  # measured, or why not
    assert {"cpu", "cores", "torch", "transformers", "cpu_flags"} <= set(data["machine"])
    assert "| precision | decode tok/s |" in out.stdout and out.stdout.count("\n| ") >= 4
    assert "auto picked" in out.stdout and "flags:" in out.stdout


def test_memory_curves_show_tutorial_mode_holding_more_per_token(tiny_model_dir, tmp_path) -> None:
    out_file = tmp_path / "curves.json"
    out = run_module(
        "bench.memory_curves",
        "--model",
        str(tiny_model_dir),
        "--tokens",
        "40",
        "--windows",
        "8,off",
        "--out",
        str(out_file),
    )
    runs = {(r["mode"], r["window"]): r for r in json.loads(out_file.read_text())["runs"]}
    assert set(runs) == {("inference", "8"), ("inference", "off"), ("tutorial", "8"), ("tutorial", "off")}
    assert all(r["tokens"] == 40 and r["stop"] == "length" for r in runs.values())
    assert runs["inference", "8"]["resets"] == 4 and runs["inference", "off"]["resets"] == 0
    assert runs["inference", "8"]["peak_kv_bytes"] < runs["inference", "off"]["peak_kv_bytes"]
    assert out.stdout.count("\n| inference |") == 2 and out.stdout.count("\n| tutorial |") == 2


def test_the_decode_profile_lists_where_a_tokens_time_goes(tiny_model_dir) -> None:
    out = run_module("bench.profile_step", str(tiny_model_dir), "int8", "--tokens", "3", "--rows", "40", timeout=300)
    assert "int8" in out.stdout and "ms a token" in out.stdout
    operators = [line for line in out.stdout.splitlines() if line.startswith("| aten::")]
    # on a tiny model the int8 matmul costs about what a layer norm does: listed, not always in the top few
    assert 10 <= len(operators) <= 40 and any("_weight_int8pack_mm" in line for line in operators)


def test_load_figures_run_k_visitors_at_once_on_the_tiny_model(tmp_path, tiny_model_dir) -> None:
    report = tmp_path / "load.json"
    out = run_module(
        "bench.load",
        "--model",
        str(tiny_model_dir),
        "--precision",
        "fp32",
        "--tokens",
        "12",
        "--visitors",
        "1",
        "3",
        "--out",
        str(report),
    )
    rounds = json.loads(report.read_text())["rounds"]
    assert [r["visitors"] for r in rounds] == [1, 3] and "| 3 |" in out.stdout
    for r in rounds:
        assert r["aggregate_tok_s"] > 0 and r["per_visitor_tok_s_slowest"] > 0 and r["peak_rss_bytes"] > 0
        assert 0 < r["ttft_median_s"] <= r["ttft_worst_s"] and r["joiner_ttft_s"] > 0
    assert rounds[1]["largest_batch"] >= 2  # the three visitors (and the joiner) were decoded together


def test_a_ci_sized_soak_ends_every_run_well_and_reports_its_memory(tiny_model_dir) -> None:
    """bench.soak for half a minute on the tiny model: visitors with phrases of every length, windows, Stops, and
    lulls where every visitor waits for the others between runs (the RSS read with no run live)."""
    out = run_module(
        "bench.soak",
        "--model",
        str(tiny_model_dir),
        "--precision",
        "fp32",
        "--visitors",
        "3",
        "--minutes",
        "0.5",
        "--last-minutes",
        "0.3",
        "--lull-every",
        "0.1",
    )
    summary = next(line for line in out.stdout.splitlines() if line.startswith("3 visitors"))
    runs, failed = (int(word) for word in summary.split(": ")[1].replace(",", "").split()[0:3:2])
    assert runs >= 3 and failed == 0, out.stdout
    assert "MB/min" in summary and "±" in summary and out.stdout.count("\n| ") >= 3  # the slope, and a row per visitor
    lulls = next(line for line in out.stdout.splitlines() if line.startswith("RSS at each lull"))
    readings = lulls.split(": ")[1].split(" GB")[0].split(", ")
    assert len(readings) == 5 and all(float(gb) > 0 for gb in readings), lulls  # 4 lulls, and the end


def test_the_soaks_slope_says_its_error_and_the_error_counts_alike_neighbours_as_fewer() -> None:
    """A clean climb of 5 MB/min is read as such, with a small error; a slow random walk with no trend (as the live
    runs' KV caches swing RSS) gets an error wide enough to cover the zero it truly has, wider than the one that
    counts every second's sample as new would give."""
    import random

    from bench.soak import slope_and_error

    chance = random.Random(7)
    climb = [(t, int(4e9 + 5e6 * t / 60 + chance.gauss(0, 1e6))) for t in range(1200)]
    slope, error = slope_and_error(climb)
    assert abs(slope - 5) < 0.05 and error < 0.05
    swing, walk = 0.0, []
    for t in range(1200):
        swing = 0.995 * swing + chance.gauss(0, 30e6)
        walk.append((t, int(4e9 + swing)))
    slope, error = slope_and_error(walk)
    assert abs(slope) < 3 * error
    shuffled = sorted(walk, key=lambda _: chance.random())  # the same samples out of order: no neighbours alike
    assert error > 3 * slope_and_error(shuffled)[1]
    assert slope_and_error(climb[:2]) == (0.0, float("inf"))


def test_the_pile_up_check_and_the_gaps_and_the_busy_phases_run(tiny_model_dir) -> None:
    model = ("--model", str(tiny_model_dir), "--precision", "fp32")
    pileup = run_module("bench.soak", *model, "--runs", "12", "--words", "2,30")
    assert "run 12 - run 10" in pileup.stdout and "0 failed" in pileup.stdout
    gaps = run_module("bench.gaps", *model, "--window", "8", "--tokens", "40")
    assert "| shadow |" in gaps.stdout and "| reprime |" in gaps.stdout
    busy = run_module("bench.busy", *model, "--tokens", "12", "--policies", "adaptive,one thread")
    rows = [line for line in busy.stdout.splitlines() if line.startswith("| adaptive") or line.startswith("| one")]
    assert len(rows) == 8  # four phases under each policy


def test_the_default_sweep_bench_presses_the_real_page_and_ranks_its_windows(tiny_model_dir) -> None:
    out = run_module("bench.sweep_default", "--model", str(tiny_model_dir), "--seeds", "1", "2", "--prompt", "Hi")
    assert "| seed | seconds | ranked by the passage read (worst first) |" in out.stdout
    assert out.stdout.count("\n| 1 | ") == 1 + 4 and out.stdout.count("\n| 2 | ") == 1 + 4  # a press, 4 windows
