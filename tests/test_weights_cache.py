"""int8 weights converted once and mapped from the cache afterwards: the same model, whatever happened to
the cache file (damaged, stale, unwritable, turned off)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_model

import gpt2_engine
from gpt2_engine import weights_cache

MAPPED = "Mapping the int8 weights converted earlier"
CONVERTED = "Converting the weights to int8, once"


def load_int8(folder: Path) -> tuple[gpt2_engine.Engine, list[str]]:
    said: list[str] = []
    return gpt2_engine.load(str(folder), dtype="int8", device="cpu", progress=said.append), said


def greedy(engine: gpt2_engine.Engine) -> list[int]:
    return [s.token_id for s in engine.stream("The cat sat", max_new_tokens=24, sampler="greedy", stop_at_eos=False)]


def logits(engine: gpt2_engine.Engine) -> torch.Tensor:
    with torch.inference_mode():
        return engine.model(torch.tensor([[5, 17, 42, 99, 7]])).logits.float()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GPT2_STUDIO_CACHE", str(folder))
    return folder


@pytest.fixture
def model(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny"))


def test_the_second_load_maps_the_first_ones_conversion(cache: Path, model: Path) -> None:
    first, said_first = load_int8(model)
    files = list(cache.glob("tiny-*-int8-*.pt"))
    assert CONVERTED in said_first and len(files) == 1
    second, said_second = load_int8(model)
    assert MAPPED in said_second and CONVERTED not in said_second
    assert torch.equal(logits(first), logits(second))
    assert greedy(first) == greedy(second)
    assert list(cache.glob("*.pt")) == files  # read, not written again


def test_a_save_killed_mid_way_leaves_nothing_behind_once_its_process_is_gone(cache: Path, model: Path) -> None:
    """Issue 30: a save killed mid-way left its multi-GB temporary file for good (the cleanup removed only older
    `*.pt`). The next load removes one whose process is gone, and leaves a live process's save in progress."""
    load_int8(model)
    (saved,) = cache.glob("*.pt")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = cache / f".{saved.name}.{int(gone.stdout)}.tmp"  # a pid that has exited
    in_progress = cache / f".{saved.name}.{os.getpid()}.tmp"  # this process: alive
    for temporary in (abandoned, in_progress):
        temporary.write_bytes(b"half a conversion")
    assert MAPPED in load_int8(model)[1]
    assert not abandoned.exists() and in_progress.exists()
    in_progress.unlink()


def test_a_damaged_cache_file_is_converted_again(cache: Path, model: Path) -> None:
    reference, _ = load_int8(model)
    (saved,) = cache.glob("*.pt")
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])  # a write cut off
    engine, said = load_int8(model)
    assert CONVERTED in said
    assert torch.equal(logits(engine), logits(reference))
    assert MAPPED in load_int8(model)[1]  # and saved whole this time


def test_a_changed_model_gets_a_fresh_conversion_and_the_stale_one_goes(
    cache: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_int8(model)
    (stale,) = cache.glob("*.pt")
    write_tiny_model(model, seed=1)  # other weights in the same folder
    engine, said = load_int8(model)
    assert CONVERTED in said
    (fresh,) = cache.glob("*.pt")
    assert fresh != stale
    monkeypatch.setenv("GPT2_STUDIO_CACHE", "off")
    assert torch.equal(logits(engine), logits(load_int8(model)[0]))  # the new weights, not the stale ones


def test_a_cache_file_of_another_shape_is_not_used(cache: Path, model: Path, tmp_path: Path) -> None:
    load_int8(write_tiny_model(tmp_path / "other", n_embd=64))
    (other,) = cache.glob("other-*.pt")
    path = weights_cache.cache_file(str(model), True, "int8")
    shutil.copy(other, path)  # as if the name matched by accident
    engine, said = load_int8(model)
    assert CONVERTED in said and greedy(engine)


def test_off_writes_nothing_and_an_unwritable_folder_is_no_error(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2_STUDIO_CACHE", "off")
    assert weights_cache.cache_file(str(model), True, "int8") is None
    engine, said = load_int8(model)
    assert CONVERTED in said and greedy(engine)
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("GPT2_STUDIO_CACHE", str(not_a_folder))
    engine, said = load_int8(model)
    assert CONVERTED in said and greedy(engine)
