"""Model names, sizes and memory needs, device and precision choice, and `load()`.

A user names a model the way they know it (`gpt2-xl`), by any hub id, or by a local folder. Before
any weights are read, the model's config says how much memory it needs at the chosen precision,
and a machine that cannot hold it gets a refusal that suggests what would fit. Every failure ends
in one `ModelLoadError` that says what was tried and what to do. Remote code is never trusted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import quantize, weights_cache
from .errors import ModelLoadError, NotEnoughMemoryError
from .memory import GB, available_bytes, format_bytes

DEFAULT_MODEL = "gpt2-xl"
DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.bfloat16,
}  # int8: weights; activations in bf16
DTYPE_CHOICES = ("auto", *DTYPES)
RUNTIME_OVERHEAD_BYTES = int(0.6 * GB)  # Python, torch, tokenizer and activations, measured ~0.4-0.5 GB


@dataclass(frozen=True)
class ModelShape:
    """The numbers that fix a GPT-2's size; enough to know its memory before downloading it."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int = 50257
    n_positions: int = 1024

    @property
    def parameters(self) -> int:
        """Parameter count with the tied input/output embedding counted once."""
        e = self.n_embd
        per_layer = 12 * e * e + 13 * e  # qkv + proj + 4x MLP weights, their biases, two layer norms
        return self.vocab_size * e + self.n_positions * e + self.n_layer * per_layer + 2 * e

    def weight_bytes(self, precision: str) -> int:
        """Bytes of weights in memory at a precision (see DTYPES)."""
        if precision != "int8":
            return self.parameters * DTYPES[precision].itemsize
        e, v = self.n_embd, self.vocab_size
        matrices = self.n_layer * 12 * e * e + v * e  # int8: the layers' matrices and the LM head's own copy
        scales = self.n_layer * 9 * e + v  # one bf16 scale per output channel
        return matrices + 2 * (self.parameters - self.n_layer * 12 * e * e + scales)  # the rest in bf16

    def kv_bytes_per_token(self, precision: str) -> int:
        return 2 * self.n_layer * self.n_embd * DTYPES[precision].itemsize  # a key and a value per layer

    def memory_needed(self, precision: str) -> int:
        """Weights + a full KV cache + the runtime: what loading and generating will hold."""
        full_cache = self.kv_bytes_per_token(precision) * self.n_positions
        return self.weight_bytes(precision) + full_cache + RUNTIME_OVERHEAD_BYTES

    @classmethod
    def from_config(cls, config: object) -> ModelShape:
        return cls(
            config.n_layer,
            config.n_embd,
            config.n_head,
            config.vocab_size,
            config.n_positions,  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class KnownModel:
    hub_id: str
    shape: ModelShape


KNOWN_MODELS = {  # smallest first; the names people know, mapped to their current hub ids
    "distilgpt2": KnownModel("distilbert/distilgpt2", ModelShape(6, 768, 12)),
    "gpt2": KnownModel("openai-community/gpt2", ModelShape(12, 768, 12)),
    "gpt2-medium": KnownModel("openai-community/gpt2-medium", ModelShape(24, 1024, 16)),
    "gpt2-large": KnownModel("openai-community/gpt2-large", ModelShape(36, 1280, 20)),
    "gpt2-xl": KnownModel("openai-community/gpt2-xl", ModelShape(48, 1600, 25)),
}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` takes the GPU when torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"device = {device!r} is not a device torch knows: use auto, cpu or cuda.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device = 'cuda' was asked for, but torch sees no GPU here: use auto or cpu.")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: on a CPU with native bf16 (AVX-512 BF16 / AMX), int8 weights with bf16 activations: the
    fastest here (2.0x fp32's decode speed, bf16 1.5x; README, Performance), a quarter of the memory, and,
    once converted, the quickest to load (weights_cache). It changes the numbers a little more than bf16
    (top-1 agreement with fp32 0.953 against 0.961 on the gpt2-xl stand-in); fp32 is the reference.
    Elsewhere fp32. On a GPU, bf16 where it has it, else fp16. int8 kernels are CPU-only."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "int8" if quantize.can_int8() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    if precision not in DTYPES:
        raise ModelLoadError(f"precision = {precision!r} is not allowed: use one of {', '.join(DTYPE_CHOICES)}.")
    if precision == "int8" and device.type != "cpu":
        raise ModelLoadError("precision = 'int8' runs on the CPU only: use bf16 or fp16 on a GPU.")
    return precision


def resolve_name(name_or_path: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder)."""
    name = str(name_or_path).strip()
    if not name:
        raise ModelLoadError(
            f"model = {name_or_path!r} is empty: give one of {', '.join(KNOWN_MODELS)}, a hub id or a folder."
        )
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name].hub_id, False
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
    return name, False


def _what_to_do(source: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    net = "HF_HUB_OFFLINE is set, so nothing is downloaded" if offline else "It may be a typo, or the network is down"
    return (
        f"{net}. Try a known name ({', '.join(KNOWN_MODELS)}) that is already downloaded, a local folder "
        "written by `save_pretrained()`, or run once with a network connection to fill the Hugging Face cache."
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def read_shape(source: str, is_local: bool) -> tuple[object, ModelShape]:
    """Reads only the model's config (a few kB) and checks it is a GPT-2."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - every failure here means "cannot find this model"
        where = f"the folder {source!r}" if is_local else f"the hub id {source!r}"
        reason = _first_line(error).rstrip(".")
        raise ModelLoadError(
            f"Could not find a model at {where} ({reason}). " + ("" if is_local else _what_to_do(source))
        ) from None
    if getattr(config, "model_type", None) != "gpt2":
        raise ModelLoadError(
            f"{source!r} is a {getattr(config, 'model_type', 'unknown')!r} model; GPT-2 Studio runs GPT-2 models only "
            f"({', '.join(KNOWN_MODELS)}, or a GPT-2 folder)."
        )
    return config, ModelShape.from_config(config)


def check_memory(shape: ModelShape, precision: str, source: str, device: torch.device) -> None:
    """Refuses up front when the machine's available memory cannot hold the model."""
    if device.type != "cpu":
        return  # GPU memory is checked by torch itself with a clear CUDA OOM message
    needed, free = shape.memory_needed(precision), available_bytes()
    if needed <= free:
        return
    fits = [
        f"{name} in {p} ({format_bytes(k.shape.memory_needed(p))})"
        for name, k in KNOWN_MODELS.items()
        for p in ("fp32", "bf16", "int8")
        if k.shape.memory_needed(p) <= free
    ]
    suggestion = f"What fits now: {', '.join(fits[-3:])}." if fits else "No GPT-2 fits: close other programs."
    raise NotEnoughMemoryError(
        f"{source!r} in {precision} needs about {format_bytes(needed)} of memory, but this machine has "
        f"{format_bytes(free)} available. {suggestion}"
    )


def load(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
):
    """Loads a GPT-2 and its tokenizer into an `Engine`.

    name_or_path: a known name (distilgpt2, gpt2, gpt2-medium, gpt2-large, gpt2-xl), a hub id, or a
    folder written by `save_pretrained()`. dtype: auto, fp32, bf16, fp16 or int8 (weights; CPU only).
    device: auto, cpu or cuda.
    progress: called with a short sentence at each phase (the page shows it).
    """
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from .generation import Engine

    say = progress or (lambda message: None)
    source, is_local = resolve_name(name_or_path)
    torch_device = resolve_device(device)
    precision = resolve_precision(dtype, torch_device)
    say(f"Reading the configuration of {name_or_path}")
    config, shape = read_shape(source, is_local)
    check_memory(shape, precision, str(name_or_path), torch_device)
    say(f"Loading {format_bytes(shape.weight_bytes(precision))} of weights ({precision})")
    # int8 and packed bf16 on a CPU convert from the file's own (mapped) fp32, a matrix at a time
    converts_itself = torch_device.type == "cpu" and (
        precision == "int8" or (precision == "bf16" and quantize.can_pack())
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = GPT2LMHeadModel.from_pretrained(
            source,
            config=config,
            dtype=torch.float32 if converts_itself else DTYPES[precision],
            trust_remote_code=False,
        )
    except Exception as error:  # noqa: BLE001 - a damaged or partial download, in whatever form it fails
        raise ModelLoadError(
            f"Found {source!r} but could not load it ({_first_line(error)}). The weights or tokenizer files may be "
            "missing or damaged: download the model again, or save it again with `save_pretrained()`."
        ) from None
    model.to(torch_device).eval()
    if precision == "int8":
        cache = weights_cache.cache_file(source, is_local, precision)
        saved = weights_cache.load(cache)
        if saved is not None and not quantize.int8_fits(model, saved):
            saved = None  # another model's matrices under this name: convert (and save over them)
        say("Mapping the int8 weights converted earlier" if saved else "Converting the weights to int8, once")
        converted = quantize.to_int8(model, saved=saved)
        if saved is None:
            say("Saving the int8 weights for the next load")
            weights_cache.save(cache, converted)
        del saved, converted
    elif converts_itself:
        say("Converting the weights to bf16")
        quantize.to_packed(model)
    say("Ready")
    return Engine(model, tokenizer, name=str(name_or_path), shape=shape, precision=precision)
