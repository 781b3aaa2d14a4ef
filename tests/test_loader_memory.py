"""The loaders' memory on a gpt2-shaped stand-in (124M parameters), measured in a fresh process:
16-bit and int8 loads never hold a full fp32 copy, map no more of the fp32 file than they need, and keep
nothing beyond their own weights; an int8 load from the weights cache maps its matrices from that file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import runs_here

from bench.standin import build_standin

ROOT = Path(__file__).resolve().parents[1]


def measure_load(folder: Path, precision: str, cache: str = "off") -> dict:
    """Bytes above the baseline (torch and transformers imported) while loading, in a fresh process.
    cache: GPT2_STUDIO_CACHE for that process (off: the load converts)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.peaks", str(folder), precision, "cpu", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "GPT2_STUDIO_CACHE": cache},
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "peak": report["peak_anon"] - report["base_anon"],
        "after": report["after_anon"] - report["base_anon"],
        "peak_rss": report["peak_rss"] - report["base_rss"],
        "weights": report["weights"],
    }


@pytest.fixture(scope="module")
def gpt2_standin(tmp_path_factory) -> Path:
    return build_standin("gpt2", tmp_path_factory.mktemp("gpt2-standin") / "gpt2")


@pytest.mark.parametrize("precision", runs_here("bf16", "int8"))
def test_low_precision_loads_hold_no_fp32_copy_and_keep_only_their_weights(gpt2_standin, precision) -> None:
    measured = measure_load(gpt2_standin, precision)
    fp32_bytes = 124_439_808 * 4
    assert measured["peak"] < 0.85 * fp32_bytes, measured  # a full fp32 copy never existed
    assert measured["peak"] < 1.15 * measured["weights"] + 16e6, measured  # nor piled-up temporaries (was 1.4-1.9x)
    # the fp32 file's pages leave the process as each matrix is converted (all of them stayed: +0.5 GB here)
    assert measured["peak_rss"] < measured["weights"] + 0.5 * fp32_bytes, measured
    assert measured["after"] < 1.05 * measured["weights"] + 8e6, measured  # nothing kept but the weights


def test_fp32_weights_stay_mapped_from_the_file(gpt2_standin) -> None:
    measured = measure_load(gpt2_standin, "fp32")
    assert measured["after"] < 0.1 * measured["weights"], measured  # safetensors pages, not a copy


def test_an_int8_load_from_the_cache_maps_its_matrices_from_the_file(gpt2_standin, tmp_path) -> None:
    converting = measure_load(gpt2_standin, "int8", cache=str(tmp_path))  # converts, and saves the cache
    assert len(list(tmp_path.glob("gpt2-*-int8-*.pt"))) == 1
    cached = measure_load(gpt2_standin, "int8", cache=str(tmp_path))
    assert cached["weights"] == converting["weights"]
    # anonymous: only what is not a cached matrix (the bf16 embeddings and layer norms, ~80 MB of ~200 MB)
    assert cached["after"] < 0.5 * converting["after"], (cached, converting)
    assert cached["peak"] < 0.5 * converting["peak"], (cached, converting)
