"""A failed load says what failed: memory that ran out (and what would fit), files that are really damaged (download
again), or anything else by its type and message, with the traceback in the log. Real files cut short in a temporary
folder for the damage; the other failures raised where transformers would raise them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import transformers

import gpt2_engine
from gpt2_engine import load_failures, loading

GB = 1024**3


@pytest.fixture
def copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def failing_weights(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Reading the weights raises `error`, as from_pretrained would."""

    def from_pretrained(cls, *args, **kwargs):
        raise error

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", classmethod(from_pretrained))


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_safetensors_file_is_damaged(copy: Path) -> None:
    cut_in_half(copy / "model.safetensors")  # a download cut off half-way
    with pytest.raises(gpt2_engine.ModelLoadError) as caught:
        gpt2_engine.load(str(copy), dtype="fp32")
    message = str(caught.value)
    assert "SafetensorError" in message and "missing or damaged" in message and "Download the model again" in message


def test_a_truncated_tokenizer_file_is_damaged(copy: Path) -> None:
    cut_in_half(copy / "tokenizer.json")
    with pytest.raises(gpt2_engine.ModelLoadError, match="JSONDecodeError.*missing or damaged"):
        gpt2_engine.load(str(copy), dtype="fp32")


def test_a_download_of_the_wrong_size_is_damaged(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_weights(  # the hub client's check of a file's size (its hash check raises the same)
        monkeypatch, OSError("Consistency check failed: file should be of size 86036 but has size 43018 (model.safe…)")
    )
    with pytest.raises(gpt2_engine.ModelLoadError, match="Consistency check failed.*Download the model again"):
        gpt2_engine.load(str(copy), dtype="fp32")


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 6400000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
        RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory: you tried"),
    ],
    ids=["MemoryError", "linux", "windows"],
)
def test_memory_that_runs_out_at_load_says_so_and_what_fits(
    copy: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    failing_weights(monkeypatch, error)
    monkeypatch.setattr(loading, "available_bytes", lambda: 2 * GB)  # what the load checks first
    monkeypatch.setattr(load_failures, "available_bytes", lambda: 2 * GB)  # ... and what the failure says
    with pytest.raises(gpt2_engine.NotEnoughMemoryError) as caught:
        gpt2_engine.load(str(copy), dtype="fp32")
    message = str(caught.value)
    assert "ran out of memory while loading" in message and type(error).__name__ in message
    assert f"{gpt2_engine.format_bytes(2 * GB)} available now" in message
    assert load_failures.what_fits(2 * GB) in message and "gpt2" in load_failures.what_fits(2 * GB)
    assert "damaged" not in message and "again" not in message


def test_anything_else_names_its_type_and_message_and_logs_the_traceback(
    copy: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failing_weights(monkeypatch, TypeError("GPT2LMHeadModel.__init__() got an unexpected keyword argument 'dtype'"))
    with caplog.at_level(logging.ERROR, logger="gpt2_studio"), pytest.raises(gpt2_engine.ModelLoadError) as caught:
        gpt2_engine.load(str(copy), dtype="fp32")
    message = str(caught.value)
    assert "TypeError: GPT2LMHeadModel.__init__() got an unexpected keyword argument 'dtype'" in message
    assert "damaged" not in message and "download" not in message.lower()
    assert f"transformers {transformers.__version__}" in message  # a version mismatch is the likely cause
    logged = [r for r in caplog.records if r.name == "gpt2_studio" and r.exc_info]
    assert logged and logged[0].exc_info[0] is TypeError  # the traceback, in the log
    assert "from_pretrained" in caplog.text  # the frame that raised


def test_the_failure_is_said_by_what_failed() -> None:
    from safetensors import SafetensorError

    assert load_failures.damaged(SafetensorError("Error while deserializing header: incomplete metadata"))
    assert load_failures.damaged(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central"))
    assert load_failures.damaged(
        OSError("Error no file named model.safetensors, or pytorch_model.bin, found in directory")
    )
    assert not load_failures.damaged(OSError("[Errno 13] Permission denied: 'model.safetensors'"))
    assert not load_failures.damaged(RuntimeError("expected scalar type Float but found BFloat16"))
    assert load_failures.out_of_memory(MemoryError()) and not load_failures.out_of_memory(RuntimeError("size mismatch"))


def test_a_file_the_hub_repo_lacks_or_a_web_page_from_the_hub_is_not_said_as_damaged_files() -> None:
    """Issue 30: both said "download the model again", which fetches the same repo, or the same page."""
    import httpx2
    from huggingface_hub.errors import RemoteEntryNotFoundError

    response = httpx2.Response(
        404, request=httpx2.Request("GET", "https://huggingface.co/someone/model/tokenizer.json")
    )
    missing = RemoteEntryNotFoundError(
        "404 Client Error. Entry Not Found for url: .../tokenizer.json", response=response
    )
    said = str(load_failures.load_failure("someone/model", missing))
    assert "has no file it needs" in said and "not a whole GPT-2" in said and "again" not in said
    page = json.JSONDecodeError("Expecting value", "<!DOCTYPE html><html>Sign in to the network</html>", 0)
    said = str(load_failures.load_failure("someone/model", page))
    assert "a web page came back" in said and "HF_HUB_OFFLINE=1" in said and "damaged" not in said
    cut = json.JSONDecodeError("Unterminated string", '{"model_type": "gp', 17)  # a file on disk cut short
    assert "missing or damaged" in str(load_failures.load_failure("someone/model", cut))
