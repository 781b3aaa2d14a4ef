"""Checking a model fits, choosing device and precision, and `load()` (finding it by name: finding.py).

A user names a model the way they know it (`gpt2-xl`), by any hub id, or by a local folder. Before
any weights are read, the model's config says how much memory it needs at the chosen precision,
and a machine that cannot hold it gets a refusal that suggests what would fit. Every failure ends
in one `ModelLoadError` that says what was tried and what to do, by what failed (`load_failure`): memory
that ran out is said with what would fit (NotEnoughMemoryError); "download again" only for files that are
really missing or damaged; anything else by its type and message, its traceback in the log (logger
"gpt2_studio"). Remote code is never trusted.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from . import autotune, capabilities, fast, q8, quantize, weights_cache
from .errors import ModelLoadError, NotEnoughMemoryError, PrecisionUnavailableError
from .finding import read_shape, require_hub, resolve_name
from .generation import Engine
from .load_failures import (
    LoadCancelled,
    explained,
    what_fits,
)
from .memory import available_bytes, format_bytes, map_large_allocations, page_in
from .shapes import DEFAULT_MODEL, DTYPE_CHOICES, DTYPES, ModelShape, is_precision

if TYPE_CHECKING:
    from transformers import PreTrainedConfig  # imported where it is used: offline, its import only delays an answer


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
    """An asked-for precision, checked against what runs on `device` (capabilities.py): one that does not
    run is refused with the reason. `auto` on a GPU is bf16 where it has it, else fp16; on a CPU it stays
    "auto" here, for `load()` to measure (autotune.py), or to read from an earlier measurement."""
    if precision not in DTYPE_CHOICES:
        raise ModelLoadError(f"precision = {precision!r} is not allowed: use one of {', '.join(DTYPE_CHOICES)}.")
    support = capabilities.supported(device)
    if precision == "auto":
        if device.type == "cpu":
            return "auto"
        return "bf16" if support["bf16"].runs else "fp16"
    if not support[precision].runs:
        runs = ", ".join(p for p, s in support.items() if s.runs)
        raise PrecisionUnavailableError(
            f"precision = {precision!r} does not run here: {support[precision].why}. Use auto or one of: {runs}."
        )
    return precision


def check_memory(shape: ModelShape, precision: str, source: str, device: torch.device) -> None:
    """Refuses up front when the machine's available memory cannot hold the model."""
    if device.type != "cpu":
        return  # GPU memory is checked by torch itself with a clear CUDA OOM message
    needed, free = shape.memory_needed(precision), available_bytes()
    if needed <= free:
        return
    raise NotEnoughMemoryError(
        f"{source!r} in {precision} needs about {format_bytes(needed)} of memory, but this machine has "
        f"{format_bytes(free)} available. {what_fits(free)}"
    )


def load(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> Engine:
    """Loads a GPT-2 and its tokenizer into an `Engine`.

    name_or_path: a known name (distilgpt2, gpt2, gpt2-medium, gpt2-large, gpt2-xl), a hub id, or a
    folder written by `save_pretrained()`. dtype: auto, fp32, bf16, fp16, int8 or q8 (int8 and q8: CPU only);
    one that does not run on this machine is refused with the reason (PrecisionUnavailableError).
    `auto` on a CPU is measured at the model's first load here and remembered (autotune.py).
    device: auto, cpu or cuda.
    progress: called with a short sentence at each phase (the page shows it), in the caller's thread.

    The work is done in a thread of its own that ends with it, so the caller's thread keeps no pool of OpenMP
    workers: with one left beside the batch's (batching.py) on a machine whose every core torch uses, decoding
    was a fifth slower (docs/engine.md, Several visitors at once: libgomp, counting more threads than cores, likely
    spins only briefly between operators).
    """
    return _in_own_thread(_load, progress, name_or_path, dtype, device)


def _in_own_thread(work: Callable[..., Engine], progress: Callable[[str], None] | None, *args: object) -> Engine:
    """`work(*args, say)` in a new thread; `say(message)` reaches `progress` here, in this thread. If `progress`
    raises (the page's script is stopped), the work stops at its next message and is waited for, so that
    two loads never hold their weights at once."""
    messages: queue.Queue[tuple[str, object]] = queue.Queue()
    cancelled = threading.Event()

    def say(message: str) -> None:
        if cancelled.is_set():
            raise LoadCancelled
        messages.put(("say", message))

    def run() -> None:
        try:
            messages.put(("engine", work(*args, say)))
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            messages.put(("error", error))

    thread = threading.Thread(target=run, name="loading", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = messages.get()
            if kind == "say":
                if progress is not None:
                    progress(value)  # type: ignore[arg-type]
                continue
            thread.join()  # its OpenMP workers go with it
            if kind == "error":
                raise value  # type: ignore[misc]
            return value  # type: ignore[return-value]
    except BaseException:
        cancelled.set()
        thread.join()
        raise


def _load(name_or_path: str, dtype: str, device: str, say: Callable[[str], None]) -> Engine:
    with explained(str(name_or_path)):
        return _load_explained(name_or_path, dtype, device, say)


def _load_explained(name_or_path: str, dtype: str, device: str, say: Callable[[str], None]) -> Engine:
    map_large_allocations()  # once per process, before any weights or caches are allocated
    source, is_local = resolve_name(name_or_path)
    torch_device = resolve_device(device)
    precision = resolve_precision(dtype, torch_device)
    if not is_local:
        say(f"{name_or_path} is not downloaded here yet: asking the Hugging Face hub")
        require_hub(source, str(name_or_path).strip())  # at once when it cannot answer (read_shape asks again)
    say(f"Reading the configuration of {name_or_path}")
    config, shape = read_shape(source, is_local, str(name_or_path).strip())
    from transformers import AutoTokenizer  # after the hub check: offline, its import would only delay the answer

    with explained(source):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)

    def load_at(precision: str):
        return _load_model(source, is_local, config, shape, precision, torch_device, say)

    def load_probe(precision: str):
        return _probe_model(source, config, precision, torch_device)

    choice, choice_key = None, None
    if precision == "auto":
        choice_key = autotune.key(source, is_local)
        choice = autotune.remembered(choice_key)
        if choice is None:
            candidates = _fitting(shape, capabilities.runnable(torch_device), str(name_or_path), torch_device)
            if "fp32" in candidates:  # the reference fits: measure what fits against it
                ids = autotune.check_ids(tokenizer, shape.vocab_size)
                layers = f"{min(autotune.PROBE_LAYERS, shape.n_layer)} of its {shape.n_layer} layers"
                choice = autotune.choose(candidates, load_probe, ids, say, layers)
            else:  # nothing to check it against: the smallest, unmeasured, and not remembered (memory frees up)
                choice, choice_key = autotune.Choice(candidates[0], (), True), None
        precision = choice.precision
        say(f"auto is {choice.why}")
    check_memory(shape, precision, str(name_or_path), torch_device)
    model = load_at(precision)
    if choice is not None and choice.measured_now and choice_key is not None:
        autotune.remember(choice_key, choice)  # only a choice that loaded: one that failed is measured again
    say("Ready")
    assert is_precision(precision), precision  # auto was measured into one above
    return Engine(model, tokenizer, name=str(name_or_path), shape=shape, precision=precision, choice=choice)


def _fitting(shape: ModelShape, runnable: list[str], name: str, device: torch.device) -> list[str]:
    """The precisions `auto` measures: those that run here and fit in memory (fp32 first: the reference)."""
    fits = [p for p in runnable if device.type != "cpu" or shape.memory_needed(p) <= available_bytes()]
    if "fp32" not in fits:  # no reference to check against: take the smallest that runs, unmeasured
        smallest = min(runnable, key=shape.memory_needed)
        check_memory(shape, smallest, name, device)
        return [smallest]
    return fits


def _probe_model(source: str, config: PreTrainedConfig, precision: str, device: torch.device) -> Any:
    """The model's first autotune.PROBE_LAYERS layers (with its embeddings and head) at `precision`, converted as
    a whole load converts them, but never into the weights cache: what `auto` times each candidate on."""
    import copy

    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    probe_config: Any = copy.deepcopy(config)
    probe_config.n_layer = min(autotune.PROBE_LAYERS, probe_config.n_layer)
    converts_itself = device.type == "cpu" and precision in ("int8", "q8", "bf16")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the layers left out are "unused weights" to transformers: on purpose here
    hf_logging.disable_progress_bar()  # and one bar per candidate is noise
    try:
        with explained(source, precision):
            model: Any = GPT2LMHeadModel.from_pretrained(
                source, config=probe_config, dtype=torch.float32 if converts_itself else DTYPES[precision]
            )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.to(device).eval()
    if precision == "q8":
        q8.to_q8(model)
    elif precision == "int8":
        quantize.to_int8(model)
    elif converts_itself:
        quantize.to_packed(model)
    return model


def _load_model(
    source: str,
    is_local: bool,
    config: PreTrainedConfig,
    shape: ModelShape,
    precision: str,
    device: torch.device,
    say: Callable[[str], None],
):
    """The model's weights at one precision, on `device`, in the layout its kernels read fastest."""
    say(f"Loading {format_bytes(shape.weight_bytes(precision))} of weights ({precision})")
    with explained(source, precision, shape):  # the weights read and converted: where memory runs out
        return _weights(source, is_local, config, precision, device, say)


def _weights(
    source: str,
    is_local: bool,
    config: PreTrainedConfig,
    precision: str,
    device: torch.device,
    say: Callable[[str], None],
):
    from transformers import GPT2LMHeadModel

    # int8 and packed bf16 on a CPU convert from the file's own (mapped) fp32, a matrix at a time
    converts_itself = device.type == "cpu" and precision in ("int8", "q8", "bf16")
    model: Any = GPT2LMHeadModel.from_pretrained(  # Any: its Linear modules are swapped below (quantize)
        source,
        config=config,
        dtype=torch.float32 if converts_itself else DTYPES[precision],
        trust_remote_code=False,
    )
    if not fast.supports(model.config):
        raise ModelLoadError(
            f"{source!r} is a GPT-2 with an attention variant GPT-2 Studio does not run "
            f"({fast.unsupported_reason(model.config)}): use a standard GPT-2 model."
        )
    model.to(device).eval()
    if precision in ("int8", "q8"):
        cache = weights_cache.cache_file(source, is_local, "int8")  # one file for both: the same int8 matrices
        saved = weights_cache.load(cache)
        if saved is not None and not quantize.int8_fits(model, saved):
            saved = None  # another model's matrices under this name: convert (and save over them)
        doing = "Mapping the int8 weights converted earlier" if saved else "Converting the weights to int8, once"
        say(doing)
        told = _every_few_seconds(say, doing)
        if precision == "q8":
            converted = q8.to_q8(model, saved, progress=told)
        else:
            converted = quantize.to_int8(model, saved=saved, progress=told)
        if saved is None:
            say("Saving the int8 weights for the next load")
            weights_cache.save(cache, converted)
        del saved, converted
    elif converts_itself:
        say("Converting the weights to bf16")
        quantize.to_packed(model, progress=_every_few_seconds(say, "Converting the weights to bf16"))
    for embedding in (model.transformer.wte.weight, model.transformer.wpe.weight):
        page_in(embedding)  # read a row a token otherwise: resident from the start, not paged in run by run
    return model


def _every_few_seconds(say: Callable[[str], None], doing: str, every_s: float = 2.0) -> quantize.Converted:
    """A conversion's progress for `say`, at most every `every_s`: "...: 96 of 193 matrices, about 12 s left"."""
    started = last = time.perf_counter()

    def told(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= every_s and done < total:
            last = now
            left = (now - started) / done * (total - done)
            say(f"{doing}: {done} of {total} matrices, about {left:.0f} s left")

    return told
