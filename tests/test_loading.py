"""Loading from a folder and from a Hugging Face cache, offline; sizes; the clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import runs_here

import gpt2_engine
from gpt2_engine.loading import check_memory, resolve_precision
from gpt2_engine.shapes import KNOWN_MODELS, ModelShape

ROOT = Path(__file__).resolve().parents[1]


def test_known_sizes_match_the_published_parameter_counts() -> None:
    published = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    for name, count in published.items():
        assert KNOWN_MODELS[name].shape.parameters == count
    xl = KNOWN_MODELS["gpt2-xl"].shape
    assert 6.2e9 < xl.weight_bytes("fp32") < 6.3e9 and 3.1e9 < xl.weight_bytes("bf16") < 3.2e9
    assert 1.6e9 < xl.weight_bytes("int8") < 1.9e9  # int8 matrices + bf16 embeddings
    assert xl.kv_bytes_per_token("fp32") == 2 * 48 * 1600 * 4  # 0.61 MB a token


def test_shape_from_a_real_model_counts_its_parameters(engine) -> None:
    assert engine.shape.parameters == sum(p.numel() for p in engine.model.parameters())


def test_loads_from_a_folder(tiny_model_dir) -> None:
    engine = gpt2_engine.load(str(tiny_model_dir), dtype="fp32", device="auto")
    assert engine.precision == "fp32" and engine.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert engine.speak("Hi", max_new_tokens=3, seed=0).startswith("Hi")


def test_the_load_works_in_a_thread_of_its_own_and_tells_its_progress_in_the_callers(tiny_model_dir) -> None:
    import threading

    heard: list[tuple[str, int | None]] = []
    engine = gpt2_engine.load(
        str(tiny_model_dir), dtype="fp32", progress=lambda m: heard.append((m, threading.get_ident()))
    )
    assert engine.precision == "fp32" and heard[-1][0] == "Ready"
    assert {ident for _, ident in heard} == {threading.get_ident()}  # every message in the caller's thread
    assert not any(thread.name == "loading" for thread in threading.enumerate())  # the loading thread has ended
    with pytest.raises(gpt2_engine.ModelLoadError, match="does not exist"):  # its error raised here
        gpt2_engine.load(str(tiny_model_dir / "no-such-folder"), dtype="fp32")

    class Stop(Exception):
        pass

    def stop_at_the_second(message: str) -> None:
        heard.append((message, None))
        if len(heard) > 1:
            raise Stop  # the page's script stopped mid-load: the load stops too, and is waited for

    heard.clear()
    with pytest.raises(Stop):
        gpt2_engine.load(str(tiny_model_dir), dtype="fp32", progress=stop_at_the_second)
    assert len(heard) == 2 and not any(t.name == "loading" for t in threading.enumerate())


@pytest.mark.parametrize("precision", runs_here("bf16"))
def test_loads_in_bf16(tiny_model_dir, precision) -> None:
    engine = gpt2_engine.load(str(tiny_model_dir), dtype=precision, device="cpu")
    assert next(engine.model.parameters()).dtype == torch.bfloat16 and engine.precision == "bf16"
    assert len(list(engine.stream("Hi", max_new_tokens=5, seed=0, stop_at_eos=False))) == 5


def test_loads_a_hub_id_from_the_local_cache_offline(tiny_model_dir, tmp_path) -> None:
    """A Hugging Face cache laid out as the hub client writes it; loaded by id with HF_HUB_OFFLINE=1."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--studio-tests--tiny-gpt2"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    code = "import gpt2_engine; e = gpt2_engine.load('studio-tests/tiny-gpt2'); print(e.shape.n_layer, e.speak('Hi', max_new_tokens=2, seed=0)[:2])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "Hi"]


def test_a_missing_hub_model_says_what_was_tried_and_what_to_do() -> None:
    with pytest.raises(gpt2_engine.ModelLoadError) as caught:
        gpt2_engine.load("no-such-org/no-such-gpt2-model")
    message = str(caught.value)
    assert "no-such-org/no-such-gpt2-model" in message and "HF_HUB_OFFLINE" in message and "gpt2-xl" in message
    assert "Traceback" not in message


def test_a_missing_folder_and_a_folder_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(gpt2_engine.ModelLoadError, match="does not exist"):
        gpt2_engine.load(str(tmp_path / "nowhere"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(gpt2_engine.ModelLoadError, match="no config.json"):
        gpt2_engine.load(str(tmp_path))


def test_a_truncated_weights_file_is_a_clear_error(tiny_model_dir, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(gpt2_engine.ModelLoadError, match="damaged"):
        gpt2_engine.load(str(broken))


def test_a_model_that_is_not_gpt2_is_refused(tiny_model_dir, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "bert"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(gpt2_engine.ModelLoadError, match="GPT-2 models only"):
        gpt2_engine.load(str(other))


def test_memory_check_refuses_and_suggests_what_fits(monkeypatch) -> None:
    monkeypatch.setattr("gpt2_engine.loading.available_bytes", lambda: int(2e9))
    with pytest.raises(gpt2_engine.NotEnoughMemoryError) as caught:
        check_memory(KNOWN_MODELS["gpt2-xl"].shape, "fp32", "gpt2-xl", torch.device("cpu"))
    message = str(caught.value)
    assert "needs about 7" in message and "2.00 GB available" in message and "gpt2-medium" in message


def test_auto_precision_and_bad_names() -> None:
    assert resolve_precision("auto", torch.device("cpu")) == "auto"  # measured by load(): test_auto_precision.py
    with pytest.raises(gpt2_engine.ModelLoadError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(gpt2_engine.ModelLoadError, match="empty"):
        gpt2_engine.load("  ")


def test_memory_needed_grows_with_precision() -> None:
    shape = ModelShape(48, 1600, 25)
    assert shape.memory_needed("fp32") > shape.memory_needed("bf16") > shape.memory_needed("int8")
