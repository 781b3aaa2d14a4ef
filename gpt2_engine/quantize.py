"""Weights in the layout of the kernel that reads them fastest: int8 per channel, or bf16 prepacked.

Each GPT-2 matrix (the Conv1D layers and the LM head) is swapped, one at a time, for a module that
holds its weight in the new form, so the old copy is freed before the next is made and loading
never holds two full copies. Every path (the fast forward, the reference forward, scoring) runs
through the swapped modules. Kernels are torch's own: `_weight_int8pack_mm` (int8, bf16 activations),
fbgemm's dynamic linear (q8, with oneDNN's int8 kernel for prompts: q8.py), oneDNN's `_linear_pointwise`
(bf16); which of them runs
on a CPU is probed by capabilities.py, which is fastest there is measured by autotune.py, and
`python -m bench.kernels` times them all over one model's matrices.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .memory import drop_file_pages, release_freed_memory
from .threads import cores

# `_weight_int8pack_mm` reads the weights again for every few rows: over gpt2-xl's 1600x6400 matrices here
# it took 9 ms for 1-2 rows, 20 for 8, 52 for 20 and 109 for 50, while dequantizing to bf16 and one matmul
# took ~23 ms at any of those (12 matrices, 2 threads; `python -m bench.kernels --rows 20 --only int8`).
DEQUANTIZE_FROM_ROWS = 8


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8, one scale per output channel (symmetric, absmax / 127)."""

    weight: Tensor  # buffers: typed here, as torch types a module's attributes Tensor | Module
    scales: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, scales: Tensor, bias: Tensor | None):
        """weight: int8 (out, in); scales and bias: in the activations' dtype (see `quantize_rows`)."""
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] >= DEQUANTIZE_FROM_ROWS:  # a prompt: one bf16 matmul beats the int8 kernel's row blocks
            y = F.linear(rows, self.weight.to(rows.dtype)) * self.scales  # int8 values are exact in bf16
        else:  # a decode step (one row, or two with the shadow context)
            y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        if self.bias is not None:
            y.add_(self.bias)  # y is this call's own output: no second tensor
        return y.view(*x.shape[:-1], -1)


def quantize_rows(weight: Tensor, block: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(int8 weight, fp32 scale per row) of a (out, in) matrix of any float dtype. `block`: an fp32
    (rows, in) work buffer, reused across matrices by `to_int8` so that no temporary of a matrix's size is
    ever made (they would pile up in the C heap between the int8 copies)."""
    weight = weight.detach()
    out_features, in_features = weight.shape
    if block is None or block.shape[1] != in_features:
        block = torch.empty(min(1024, out_features), in_features)
    quantized = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(out_features)
    for start in range(0, out_features, block.shape[0]):  # a block of rows at a time, in fp32
        rows = slice(start, start + block.shape[0])
        part = block[: weight[rows].shape[0]]
        part.copy_(weight[rows])
        scales[rows] = torch.maximum(part.amax(dim=1), -part.amin(dim=1)).clamp(min=1e-12) / 127.0
        quantized[rows] = part.div_(scales[rows, None]).round_()  # copied into int8: exact, |q| <= 127
    return quantized, scales


class PackedLinear(nn.Module):
    """y = x W^T + b with W reordered once into oneDNN's blocked layout (bf16 on CPUs with AVX-512 BF16/AMX)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features = weight.shape[0]
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1))
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, x.shape[-1]).contiguous(), self.weight, self.bias, "none", [], ""
        )
        return y.view(*x.shape[:-1], self.out_features)


_LAYER_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the order `matrices` gives them in


def _matrix_names(model: Any) -> list[str]:
    """The names the weights cache keeps `matrices` under, in the same order."""
    return [f"{i}.{name}" for i in range(len(model.transformer.h)) for name in _LAYER_MATRICES] + ["lm_head"]


def matrices(model: Any):
    """(parent module, attribute name, weight as (out, in), bias) for every matrix a token reads."""
    for block in model.transformer.h:
        for parent, name in (
            (block.attn, "c_attn"),
            (block.attn, "c_proj"),
            (block.mlp, "c_fc"),
            (block.mlp, "c_proj"),
        ):
            conv = getattr(parent, name)  # transformers' Conv1D stores (in, out)
            yield parent, name, conv.weight.T, conv.bias
    yield model, "lm_head", model.lm_head.weight, model.lm_head.bias  # tied to wte: the embedding keeps its copy


Converted = Callable[[int, int], None]  # (matrices converted so far, of how many): a load's progress


def swap_matrices(model: Any, make: Any, progress: Converted | None = None, workers: int | None = None) -> None:
    """Replaces each matrix with `make(name, weight, bias)`; tells `progress(done, total)` after each. `workers`
    matrices are made at once (default: two, on a machine of two cores or more), each on a thread of its own
    with its share of the cores: reading a matrix from its file, scaling it and fbgemm's packing (one thread) of
    one overlap the next one's, where one after the other left a core idle. At most `workers` old matrices are
    held at a time: each is freed once its new module is in place."""
    model.config.tie_word_embeddings = False  # the LM head gets its own copy; wte stays for lookups
    total = len(model.transformer.h) * len(_LAYER_MATRICES) + 1
    workers = max(1, workers or min(2, cores()))
    share = max(1, cores() // workers)

    def made(name: str, weight: Tensor, bias: Tensor | None) -> nn.Module:
        if workers > 1:
            torch.set_num_threads(share)  # this worker's own OpenMP count
        with torch.no_grad():
            return make(name, weight, bias)

    def place(item: tuple, module: nn.Module, done: int) -> None:
        parent, attribute, weight, _ = item
        setattr(parent, attribute, module)
        if progress is not None:
            progress(done, total)
        if parent is not model:  # the LM head's weight is the embedding's, still in use
            drop_file_pages(weight)

    items = zip(_matrix_names(model), matrices(model))  # lazily: the old matrices are read as they are made
    if workers == 1:
        for done, (name, item) in enumerate(items, 1):
            place(item, made(name, item[2], item[3]), done)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="convert") as pool:
            pending: deque = deque()
            done = 0
            for name, item in items:
                pending.append((item, pool.submit(made, name, item[2], item[3])))
                if len(pending) >= workers:
                    first, future = pending.popleft()
                    done += 1
                    place(first, future.result(), done)
            while pending:
                first, future = pending.popleft()
                done += 1
                place(first, future.result(), done)
    model.requires_grad_(False)
    release_freed_memory()  # the old matrices' pages: glibc would keep them for reuse that never comes


def to_int8(
    model: Any,
    dtype: torch.dtype = torch.bfloat16,
    saved: dict[str, Tensor] | None = None,
    linear: Any = None,
    progress: Converted | None = None,
) -> dict:
    """int8 weights, activations in `dtype` (bf16 for Int8Linear, fp32 for Q8Linear): a quarter of fp32's
    bytes per token. The model may come in fp32 straight from its memory-mapped file: each matrix is read
    once, block by block. `saved`: the int8 matrices of an earlier conversion of this model (weights_cache;
    see `int8_fits`), used as they are, so the fp32 matrices are never read. Returns the int8 matrices and
    their fp32 scales by name, for the cache (Int8Linear and Q8Linear share one file)."""
    linear = linear or Int8Linear
    work = threading.local()  # each converting thread's fp32 work buffers, one per input width, reused
    converted: dict[str, Tensor] = {}

    def make(name: str, weight: Tensor, bias: Tensor | None) -> nn.Module:
        if saved is not None:
            quantized, scales = saved[f"{name}.weight"], saved[f"{name}.scales"]
        else:
            blocks = work.__dict__.setdefault("blocks", {})
            width = weight.shape[1]
            if width not in blocks:
                blocks[width] = torch.empty(1024, width)
            quantized, scales = quantize_rows(weight, blocks[width])
        converted[f"{name}.weight"], converted[f"{name}.scales"] = quantized, scales
        return linear(quantized, scales.to(dtype), None if bias is None else bias.detach().to(dtype))

    swap_matrices(model, make, progress)
    model.to(dtype)  # the rest (embeddings, layer norms): the int8 buffers are not floating point
    release_freed_memory()
    return converted


def int8_fits(model: Any, saved: dict[str, Tensor]) -> bool:
    """Whether saved int8 matrices have exactly this model's names, shapes and dtypes (reads no weights)."""
    expected = {}
    for name, (_, _, weight, _) in zip(_matrix_names(model), matrices(model)):
        expected[f"{name}.weight"] = (tuple(weight.shape), torch.int8)
        expected[f"{name}.scales"] = ((weight.shape[0],), torch.float32)
    return {key: (tuple(t.shape), t.dtype) for key, t in saved.items()} == expected


def to_packed(model: Any, dtype: torch.dtype = torch.bfloat16, progress: Converted | None = None) -> None:
    """bf16 weights prepacked for oneDNN: same bytes, read faster than plain bf16 matmuls on this CPU.
    From fp32, each matrix is converted on its own, so no full second copy is ever made, and it is faster
    than transformers' own fp32 -> bf16 load."""
    work = threading.local()  # each converting thread's bf16 buffers, one per shape, reused: a fresh temporary
    # per matrix would pile up in the C heap between the packed copies and raise the load's peak memory

    def make(name: str, weight: Tensor, bias: Tensor | None) -> PackedLinear:
        scratch = work.__dict__.setdefault("scratch", {})
        buffer = scratch.get(weight.shape)
        if buffer is None:
            buffer = scratch[weight.shape] = torch.empty(weight.shape, dtype=dtype)
        buffer.copy_(weight)  # the reorder copies it into oneDNN's layout, so the buffer is free again
        return PackedLinear(buffer, None if bias is None else bias.to(dtype))

    swap_matrices(model, make, progress)
    model.to(dtype)  # the rest; the packed matrices are bf16 already
    release_freed_memory()
