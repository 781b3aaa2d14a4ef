"""A decode step's layers in one call: every layer of a q8 model for a pass of a few tokens (each run's newest, a
shadow row's), in C++ (step_kernel.cpp's `decode_layers`), where fast.py's loop makes about 100 ATen calls a layer
from Python (views and slices included: 4,900 a step on gpt2-xl's shape).

On gpt2-xl's shape a step spent 17-24 ms of its ~105 outside the step kernel: Python, module calls, and the
launches of the small operators around each matrix (layer norms, the cache's writes, attention, GELU). The C++
makes the same ATen calls with the same arguments in the same order as `fast._forward_reads`, so a token's logits
are the same bits either way (tests/test_fused_step.py compares them); only the Python between them is gone.

It reads a pass where the step kernel reads every matrix (a q8 model that kept it), the activation is GPT-2's
tanh GELU, and the pass has at most step_kernel.MOST tokens, the most the step kernel reads in a call: one run's
step, a window's step with its shadow row's few tokens beside it, a batch's steps. Anything else (a prompt's
piece, a model without the kernel) goes through fast.py's loop as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import step_kernel
from .q8 import Q8Linear

GELU = ("gelu_new", "gelu_pytorch_tanh")  # fast.activation's tanh GELU, which the C++ applies
ENABLED = True  # tests turn it off, to compare with fast.py's loop


def linears(block: Any) -> tuple[Any, ...]:
    """A layer's four matrices, in `decode_layers`' order."""
    return block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj


class FusedStep:
    """A model's layers' tensors in the order `decode_layers` takes them: 20 a layer."""

    def __init__(self, model: Any) -> None:
        config = model.config
        self.n_head, self.eps = config.n_head, model.transformer.h[0].ln_1.eps
        self.params: list[Tensor] = []
        for block in model.transformer.h:
            attention, projection, up, down = linears(block)
            for part in (block.ln_1, attention, projection, block.ln_2, up, down):
                if isinstance(part, Q8Linear):
                    step = part.step
                    assert step is not None  # made only where `fits`
                    self.params += [step.weight.view(step.scales.shape[0], -1), step.scales, step.offsets, part.bias]
                else:  # a layer norm
                    self.params += [part.weight, part.bias]

    def __call__(
        self, x: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], starts: Sequence[int], sizes: Sequence[int]
    ) -> Tensor:
        """x (N, E): the embeddings of each read's `sizes[r]` tokens in turn, to be written from `starts[r]` on in
        its cache (keys[r], values[r]); returns x after the last layer, changed in place."""
        return torch.ops.gpt2_studio.decode_layers(
            x, self.params, list(keys), list(values), list(starts), list(sizes), self.n_head, self.eps,
            step_kernel.X_INVERSE, step_kernel.X_ZERO,
        )  # fmt: skip


_MODELS: weakref.WeakKeyDictionary[Any, FusedStep | None] = weakref.WeakKeyDictionary()


def for_pass(model: Any, sizes: Sequence[int]) -> FusedStep | None:
    """The model's FusedStep where it reads a pass of reads of these sizes (see the module's docstring), else None."""
    if not ENABLED or sum(sizes) > step_kernel.MOST:
        return None
    if model not in _MODELS:
        _MODELS[model] = FusedStep(model) if fits(model) else None
    return _MODELS[model]


def fits(model: Any) -> bool:
    """Whether every matrix of every layer is read by the step kernel, with GPT-2's tanh GELU between."""
    if model.config.activation_function not in GELU:
        return False
    return all(
        isinstance(linear, Q8Linear) and linear.step is not None
        for block in model.transformer.h
        for linear in linears(block)
    )
