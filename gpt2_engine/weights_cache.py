"""Converted weights kept on disk: a model is converted to int8 once, not at every load.

Converting gpt2-xl's fp32 weights to int8 reads all 6.2 GB of them and takes seconds, at every load. The result is
saved once (`torch.save`) in the cache folder, and later loads map that file (`torch.load(mmap=True)`): its
pages are read as the first token needs them, and they belong to the file, not to the process's own memory.
A file's name holds a hash of the model's weight files (path, size, modification time), the precision and
the torch version, so a changed model or a new torch gets a fresh conversion, and the older file of the
same model and precision is removed. GPT2_STUDIO_CACHE sets the folder (default ~/.cache/gpt2-studio);
"off" turns the cache off. A cache that cannot be read or written is skipped: the load converts as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import torch

ENV_CACHE = "GPT2_STUDIO_CACHE"
FORMAT = 2  # bump when what is saved changes (2: fp32 scales, shared by int8 and q8)
LOG = logging.getLogger("gpt2_studio")


def cache_folder() -> Path | None:
    """Where converted weights go, or None when GPT2_STUDIO_CACHE is "off"."""
    asked = os.environ.get(ENV_CACHE, "").strip()
    if asked.lower() == "off":
        return None
    if asked:
        return Path(asked).expanduser()
    return user_cache()


def user_cache() -> Path:
    """The user's cache folder for this project (~/.cache/gpt2-studio, or under XDG_CACHE_HOME)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2-studio"


def weights_folder(source: str, is_local: bool) -> Path | None:
    """The folder that holds the model's weight files (a hub model's snapshot in the Hugging Face cache)."""
    if is_local:
        return Path(source)
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(source, "config.json")  # looks in the local cache only: no network call
    return Path(config).parent if isinstance(config, str) else None


def weights_stamp(source: str, is_local: bool) -> tuple[str, list] | None:
    """(the weights' folder, name, size and modification time of each weight file): what says that a model's
    weights are the same as at an earlier load. None when no weight files are found."""
    weights = weights_folder(source, is_local)
    if weights is None:
        return None
    files = sorted(p for p in weights.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        return None
    return str(weights.resolve()), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_file(source: str, is_local: bool, precision: str) -> Path | None:
    """The file for this model's weights at this precision, or None (cache off, or no weight files found)."""
    folder, stamp = cache_folder(), weights_stamp(source, is_local)
    if folder is None or stamp is None:
        return None
    weights, files = stamp
    model = hashlib.sha256(weights.encode()).hexdigest()[:8]
    version = hashlib.sha256(repr((files, precision, torch.__version__, FORMAT)).encode()).hexdigest()[:12]
    return folder / f"{Path(weights).name}-{model}-{precision}-{version}.pt"


def load(path: Path | None) -> dict[str, torch.Tensor] | None:
    """The saved tensors, mapped from the file; None when there is no usable file. The folder's abandoned
    temporary files go first (`remove_abandoned`)."""
    if path is not None and path.parent.is_dir():
        remove_abandoned(path.parent)
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - a damaged cache file is converted again, not an error
        LOG.warning("ignoring the damaged weights cache %s (%s)", path, error)
        path.unlink(missing_ok=True)
        return None


def save(path: Path | None, tensors: dict[str, torch.Tensor]) -> None:
    """Writes the tensors (whole, or not at all: a temporary file renamed into place) and removes the older
    files of the same model and precision."""
    if path is None:
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, temporary)
        os.replace(temporary, path)
    except OSError as error:  # a full or read-only disk: this load still works, the next converts again
        LOG.warning("could not save the weights cache %s (%s)", path, error)
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        return
    same_model = path.name.rsplit("-", 1)[0]
    for older in path.parent.glob(f"{same_model}-*.pt"):
        if older != path:
            older.unlink(missing_ok=True)
    remove_abandoned(path.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_abandoned(folder: Path) -> list[Path]:
    """Removes the temporary files (`.NAME.PID.tmp`) of saves whose process is gone: one killed mid-way (a closed
    server, a lost laptop lid) leaves gpt2-xl's whole multi-GB conversion behind, which no later save would replace.
    A live process's file is its save in progress, and is left. Returns what was removed."""
    removed = []
    for temporary in folder.glob(".*.tmp"):
        pid = temporary.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                temporary.unlink()
                removed.append(temporary)
    return removed
