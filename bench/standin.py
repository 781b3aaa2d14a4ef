"""Builds a stand-in: random weights with the exact shape of a known GPT-2, saved as a normal model folder.

Decoding speed depends on the shape (bytes of weights read per token), not on the values, so a
stand-in of gpt2-xl's shape runs at the real gpt2-xl's speed: it is what the benchmarks load here,
where no weights can be downloaded. Its text is noise; real weights come from the Hugging Face hub
(`gpt2_engine.load("gpt2-xl")` downloads them once on a machine with a network).

    python -m bench.standin gpt2-xl bench/models/gpt2-xl --tokenizer ../shared/gpt2-tokenizer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gpt2_engine.shapes import KNOWN_MODELS, ModelShape

SHAPES = {name: known.shape for name, known in KNOWN_MODELS.items()}
SHAPES["tiny"] = ModelShape(
    n_layer=2, n_embd=64, n_head=4, vocab_size=257, n_positions=256
)  # smoke tests: 256 bytes + eos


def write_byte_tokenizer(folder: Path) -> None:
    """A GPT-2-style byte-level tokenizer with no merges (256 bytes + <|endoftext|>): used when no real
    tokenizer is given, so a stand-in is a complete model folder on any machine."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = "<|endoftext|>"
    GPT2TokenizerFast(
        tokenizer_object=tokenizer, bos_token=special, eos_token=special, unk_token=special
    ).save_pretrained(folder)


def build_standin(size: str, out: Path, tokenizer: Path | None = None, seed: int = 0) -> Path:
    """Writes config, random safetensors weights (fp32) and a tokenizer to `out`; returns `out`."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    if size not in SHAPES:
        raise SystemExit(f"size = {size!r}: use one of {', '.join(SHAPES)}")
    shape = SHAPES[size]
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    else:
        write_byte_tokenizer(out)
    config = GPT2Config(
        vocab_size=shape.vocab_size,
        n_positions=shape.n_positions,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        bos_token_id=shape.vocab_size - 1,  # <|endoftext|> is the last id, in GPT-2 and in the byte tokenizer
        eos_token_id=shape.vocab_size - 1,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)  # GPT-2's own init: normal(0, 0.02) weights, the real scale
    model.save_pretrained(out)
    (out / "STANDIN.json").write_text(json.dumps({"standin_of": size, "seed": seed, "weights": "random"}, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", choices=list(SHAPES), help="which GPT-2's shape to copy (tiny: for smoke tests)")
    parser.add_argument("out", type=Path, help="folder to write (config.json, model.safetensors, tokenizer)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a tokenizer folder to copy (e.g. ../shared/gpt2-tokenizer); default: a byte-level one",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    start = time.perf_counter()
    build_standin(args.size, args.out, args.tokenizer, args.seed)
    print(f"wrote a random-weights {args.size} stand-in to {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
