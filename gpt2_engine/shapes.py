"""The numbers that fix a GPT-2's size, the models people know by name, and the precisions: nothing else.

As nanoGPT's `GPTConfig`: plain data every other module may import, importing none of them, so that
`loading` can build an `Engine` and `generation` can describe one without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args

import torch

Precision = Literal["fp32", "bf16", "fp16", "int8", "q8"]


def is_precision(name: str) -> TypeGuard[Precision]:
    """A precision a model is held in (not "auto", which is measured into one)."""
    return name in get_args(Precision)


DEFAULT_MODEL = "gpt2-xl"
DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.bfloat16,
    "q8": torch.float32,
}  # int8: weights; activations in bf16. q8: int8 weights, activations fp32, made 8-bit inside each matmul
DTYPE_CHOICES = ("auto", *DTYPES)
RUNTIME_OVERHEAD_BYTES = int(0.6e9)  # Python, torch, the tokenizer and activations, with room to spare


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
        if precision not in ("int8", "q8"):
            return self.parameters * DTYPES[precision].itemsize
        e, v = self.n_embd, self.vocab_size
        matrices = self.n_layer * 12 * e * e + v * e  # int8: the layers' matrices and the LM head's own copy
        scales = self.n_layer * 9 * e + v  # one scale per output channel
        rest = DTYPES[precision].itemsize * (self.parameters - self.n_layer * 12 * e * e + scales)
        return matrices + rest  # the rest in the activations' dtype

    def kv_bytes_per_token(self, precision: str) -> int:
        return 2 * self.n_layer * self.n_embd * DTYPES[precision].itemsize  # a key and a value per layer

    def memory_needed(self, precision: str) -> int:
        """Weights + a full KV cache + the runtime: what loading and generating will hold."""
        full_cache = self.kv_bytes_per_token(precision) * self.n_positions
        return self.weight_bytes(precision) + full_cache + RUNTIME_OVERHEAD_BYTES

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From a transformers GPT2Config (or anything with its five fields)."""
        return cls(config.n_layer, config.n_embd, config.n_head, config.vocab_size, config.n_positions)


@dataclass(frozen=True)
class KnownModel:
    hub_id: str  # "" for a model that ships with the app
    shape: ModelShape
    folder: Path | None = None  # where a model that ships with the app lies: loads with no download

    @property
    def ships(self) -> bool:
        return self.folder is not None


SHIPPED_MODEL = "gpt2-shakespeare"  # trained by bench/train_shakespeare.py; its model card is in its folder
KNOWN_MODELS = {  # smallest first; the names people know, mapped to their current hub ids
    SHIPPED_MODEL: KnownModel(
        "", ModelShape(4, 128, 4, vocab_size=512, n_positions=512), Path(__file__).parent / "shipped" / SHIPPED_MODEL
    ),
    "distilgpt2": KnownModel("distilbert/distilgpt2", ModelShape(6, 768, 12)),
    "gpt2": KnownModel("openai-community/gpt2", ModelShape(12, 768, 12)),
    "gpt2-medium": KnownModel("openai-community/gpt2-medium", ModelShape(24, 1024, 16)),
    "gpt2-large": KnownModel("openai-community/gpt2-large", ModelShape(36, 1280, 20)),
    "gpt2-xl": KnownModel("openai-community/gpt2-xl", ModelShape(48, 1600, 25)),
}
