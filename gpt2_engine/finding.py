"""Finding a model by the name a user knows it by: a known name (`gpt2-xl`), any hub id, or a local folder, to
what `from_pretrained` is given; what this machine can load without a network, in a sentence; and the model's
config alone (a few kB), read and checked to be a GPT-2 before any weights are."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import hub
from .errors import ModelLoadError
from .load_failures import damaged, damaged_files, first_line
from .memory import format_bytes
from .shapes import KNOWN_MODELS, ModelShape

if TYPE_CHECKING:
    from transformers import PreTrainedConfig  # imported where it is used: offline, its import only delays an answer


def resolve_name(name_or_path: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder). A known name or hub id that the
    Hugging Face cache holds whole is its snapshot folder there: it loads with no network call at all."""
    name = str(name_or_path).strip()
    if not name:
        raise ModelLoadError(
            f"model = {name_or_path!r} is empty: give one of {', '.join(KNOWN_MODELS)}, a hub id or a folder."
        )
    if name not in KNOWN_MODELS:
        path = Path(name).expanduser()
        if path.exists() or name.startswith((".", "/", "~")):  # a hub id is never absolute or relative
            if not path.is_dir():
                raise ModelLoadError(f"model folder {str(path)!r} does not exist or is not a folder.")
            if not (path / "config.json").is_file():
                raise ModelLoadError(
                    f"{str(path)!r} is not a model folder: it has no config.json. A model folder is what "
                    "`save_pretrained()` writes (config.json, model.safetensors and the tokenizer files)."
                )
            return str(path.resolve()), True
    folder = KNOWN_MODELS[name].folder if name in KNOWN_MODELS else None
    if folder is not None:  # ships with the app
        return str(folder), True
    snapshot = hub.cached_snapshot(name)
    if snapshot is not None:
        return str(snapshot), True
    return (KNOWN_MODELS[name].hub_id if name in KNOWN_MODELS else name), False


def on_this_machine() -> str:
    """A sentence naming the GPT-2 models this machine can load without a network (and the folder option)."""
    have, smallest = hub.cached_models(), KNOWN_MODELS[hub.SMALLEST].shape
    shipped = [f"{name} (ships with the app)" for name in hub.shipped_models()]
    cached = [name for name in have if name not in hub.shipped_models()]
    if cached:
        return (
            f"On this machine already: {', '.join(shipped + cached)} (in the Hugging Face cache, {hub.cache_dir()}), "
            "or any folder written by `save_pretrained()`."
        )
    if shipped:
        return (
            f"On this machine already: {', '.join(shipped)}, or any folder written by `save_pretrained()`. No other "
            f"GPT-2 is in the Hugging Face cache ({hub.cache_dir()}) yet: download one while connected "
            f"({hub.SMALLEST} is the smallest, {format_bytes(smallest.weight_bytes('fp32'))})."
        )
    return (
        f"No GPT-2 is in this machine's Hugging Face cache ({hub.cache_dir()}) yet: give a folder written by "
        f"`save_pretrained()`, or download one while connected ({hub.SMALLEST} is the smallest, "
        f"{format_bytes(smallest.weight_bytes('fp32'))})."
    )


def require_hub(source: str, name: str | None = None) -> None:
    """For a model the cache does not hold: raises ModelLoadError at once when it cannot be downloaded
    (HF_HUB_OFFLINE is set, or the hub does not answer within hub.PROBE_TIMEOUT_S), saying what this
    machine has; transformers' own client would otherwise retry for half a minute before failing."""
    shown = repr(name or source)
    if hub.offline_mode():
        raise ModelLoadError(
            f"Could not find a model {shown} in this machine's Hugging Face cache, and HF_HUB_OFFLINE is set, so "
            f"nothing is downloaded. {on_this_machine()} Unset HF_HUB_OFFLINE to download a known name "
            f"({', '.join(KNOWN_MODELS)}) or a GPT-2 hub id."
        )
    why = hub.unreachable(source)
    if why is not None:
        raise ModelLoadError(
            f"{shown} is not on this machine yet, and the Hugging Face hub could not be reached ({why.rstrip('.')}): "
            f"a model's first download needs a network connection. {on_this_machine()}"
        )


def _what_to_do(source: str) -> str:
    offline = hub.offline_mode()
    net = "HF_HUB_OFFLINE is set, so nothing is downloaded" if offline else "It may be a typo, or the network is down"
    return f"{net}. Known names: {', '.join(KNOWN_MODELS)}, or any GPT-2 hub id. {on_this_machine()}" + (
        "" if offline else " A model's first download needs a network connection."
    )


def read_shape(source: str, is_local: bool, name: str | None = None) -> tuple[PreTrainedConfig, ModelShape]:
    """Reads only the model's config (a few kB) and checks it is a GPT-2. A hub model (not in the cache)
    is looked for only when the hub answers at once (require_hub)."""
    from transformers import AutoConfig

    if not is_local:
        require_hub(source, name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - every failure here means "cannot find this model"
        if damaged(error):  # found, but its config.json does not parse
            raise damaged_files(source, error) from None
        where = f"the folder {source!r}" if is_local else f"the hub id {source!r}"
        reason = first_line(error).rstrip(".")
        raise ModelLoadError(
            f"Could not find a model at {where} ({reason}). " + ("" if is_local else _what_to_do(source))
        ) from None
    if getattr(config, "model_type", None) != "gpt2":
        raise ModelLoadError(
            f"{source!r} is a {getattr(config, 'model_type', 'unknown')!r} model; GPT-2 Studio runs GPT-2 models only "
            f"({', '.join(KNOWN_MODELS)}, or a GPT-2 folder)."
        )
    return config, ModelShape.from_config(config)
