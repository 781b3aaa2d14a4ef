"""What a failed load says, by what failed: out of memory (with what would fit), a hub repo without a file it needs,
a web page where the hub's data should be, files missing or damaged (download again), or anything else by its type
and message, with its traceback in the log. `explained` wraps each phase of a
load (loading.py) so that no failure reaches the page or the command line as a traceback."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import ModelLoadError, NotEnoughMemoryError, StudioError
from .memory import available_bytes, format_bytes
from .shapes import KNOWN_MODELS, ModelShape

LOG = logging.getLogger("gpt2_studio")


class LoadCancelled(Exception):
    """The caller stopped waiting for a load."""


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def what_fits(free: int) -> str:
    """The largest GPT-2s (and precisions) that `free` bytes hold, as a sentence."""
    fits = [
        f"{name} in {p} ({format_bytes(k.shape.memory_needed(p))})"
        for name, k in KNOWN_MODELS.items()
        for p in ("fp32", "bf16", "q8", "int8")
        if k.shape.memory_needed(p) <= free
    ]
    return f"What fits now: {', '.join(fits[-3:])}." if fits else "No GPT-2 fits: close other programs."


# torch's words for an allocation that failed (CPU: c10's DefaultCPUAllocator, on Linux and on Windows)
OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")
# what the libraries say of a file that is missing, cut short or corrupt (OSError and RuntimeError say much else)
DAMAGED = (
    "no file named",  # transformers: a weights file missing from the folder
    "does not appear to have a file named",  # ... its older words
    "Consistency check failed",  # the hub client: a download whose size is not the file's
    "PytorchStreamReader failed",  # torch: a .bin (a zip) cut short
    "is not a valid JSON file",  # transformers: a config or tokenizer file that does not parse
)


def out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in OUT_OF_MEMORY)


def not_in_the_repo(error: BaseException) -> bool:
    """The hub answered that the repo has no such file: it is not a whole GPT-2 in transformers' format. Downloading
    again fetches the same repo, so that is not what to do."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    return isinstance(error, RemoteEntryNotFoundError)


def hub_page_not_data(error: BaseException) -> bool:
    """A JSON error whose text is a web page: the hub, or a proxy or captive portal on the way, answered with HTML
    (an error page, a login), not with the model's data. The files on disk are not at fault."""
    return isinstance(error, json.JSONDecodeError) and error.doc.lstrip()[:1] == "<"


def damaged(error: BaseException) -> bool:
    """The files are missing, cut short or corrupt: safetensors' and JSON's parse errors, a truncated pickle or
    zip, a download of the wrong size (a hash mismatch)."""
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError

    if isinstance(error, (SafetensorError, json.JSONDecodeError, pickle.UnpicklingError, EntryNotFoundError)):
        return True
    return isinstance(error, (OSError, RuntimeError)) and any(words in str(error) for words in DAMAGED)


def load_failure(
    source: str, error: Exception, precision: str | None = None, shape: ModelShape | None = None
) -> ModelLoadError:
    """What a failed load says, by what failed: out of memory (with what fits), damaged files (download again),
    or anything else by its type and message, with its traceback in the log."""
    if out_of_memory(error):
        free, at = available_bytes(), f" in {precision}" if precision else ""
        needed = f"it needs about {format_bytes(shape.memory_needed(precision))}, and " if shape and precision else ""
        return NotEnoughMemoryError(
            f"{source!r}{at} ran out of memory while loading ({first_line(error)}): {needed}this machine has "
            f"{format_bytes(free)} available now. {what_fits(free)}"
        )
    if not_in_the_repo(error):
        return ModelLoadError(
            f"{source!r} on the Hugging Face hub has no file it needs ({first_line(error)}): it is not a whole GPT-2 "
            "in transformers' format (config.json, the tokenizer's files and the weights). Pick another model."
        )
    if hub_page_not_data(error):
        return ModelLoadError(
            f"Asking the Hugging Face hub for {source!r}, a web page came back instead of the model's data (the hub "
            "is down, or a proxy or a network login is in the way). Try again later, or work offline with what is "
            "downloaded (HF_HUB_OFFLINE=1)."
        )
    if damaged(error):
        return damaged_files(source, error)
    LOG.error("loading %r failed", source, exc_info=error)
    return ModelLoadError(
        f"Loading {source!r} failed: {first_line(error)}. The log has its traceback (torch {torch.__version__}, "
        f"transformers {transformers_version()})."
    )


def transformers_version() -> str:
    import transformers

    return transformers.__version__


@contextmanager
def explained(source: str, precision: str | None = None, shape: ModelShape | None = None) -> Iterator[None]:
    """Turns a failure of the `with` block into a ModelLoadError that says what failed (load_failure)."""
    try:
        yield
    except (StudioError, LoadCancelled):
        raise  # already a sentence; or the caller stopped waiting
    except Exception as error:  # noqa: BLE001 - every failure is said, none as a traceback
        raise load_failure(source, error, precision, shape) from None


def damaged_files(source: str, error: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"Found {source!r} but could not load it ({first_line(error)}): its weights or tokenizer files are "
        "missing or damaged. Download the model again, or save it again with `save_pretrained()`."
    )
