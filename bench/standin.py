"""Builds a stand-in: random weights with the exact shape of a known GPT-2, saved as a normal model folder.

Decoding speed depends on the shape (bytes of weights read per token), not on the values, so a
stand-in of gpt2-xl's shape runs at the real gpt2-xl's speed: it is what the benchmarks load here,
where no weights can be downloaded. Its text is noise; real weights come from the Hugging Face hub
(`gpt2_engine.load("gpt2-xl")` downloads them once on a machine with a network).

    python -m bench.standin gpt2-xl bench/models/gpt2-xl                    # GPT-2's tokenizer, found or fetched
    python -m bench.standin gpt2-xl bench/models/gpt2-xl --tokenizer FOLDER # or this one

A known GPT-2's stand-in takes GPT-2's tokenizer (every GPT-2 has the same one) from, in turn: --tokenizer
FOLDER, the Hugging Face cache (any GPT-2 there, or a tokenizer alone), or the hub (2 MB, once, when it answers
at once). Without any, it says so in one line and exits with 2. The folder appears whole or not at all: it is
written beside `out` under a temporary name and renamed into place, and removed if anything fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

import bench
from gpt2_engine import hub
from gpt2_engine.shapes import KNOWN_MODELS, ModelShape

SHAPES = {name: known.shape for name, known in KNOWN_MODELS.items() if not known.ships}  # shipped: real weights
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


class StandinError(Exception):
    """What the stand-in needs and did not get: one line, for the command line to print."""


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]


def gpt2_tokenizer(asked: Path | None = None) -> Path:
    """A folder with GPT-2's tokenizer: `asked`, else one in the Hugging Face cache, else fetched from the hub
    (into that cache) when it answers at once. Raises StandinError saying what is needed when there is none."""
    if asked is not None:
        if not asked.is_dir():
            raise StandinError(f"--tokenizer {asked}: no such folder. Leave it out to use the Hugging Face cache's.")
        if not hub.has_tokenizer(asked):
            raise StandinError(
                f"--tokenizer {asked}: not a tokenizer folder (it needs tokenizer.json, or vocab.json and merges.txt)."
            )
        return asked
    cached = hub.cached_tokenizer()
    if cached is not None:
        return cached
    source = KNOWN_MODELS["gpt2"].hub_id
    why = "HF_HUB_OFFLINE is set" if hub.offline_mode() else hub.unreachable(source)
    if why is None:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source, allow_patterns=TOKENIZER_FILES))
        except Exception as error:  # noqa: BLE001 - any failure: say what is needed, as offline
            why = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    raise StandinError(
        f"a stand-in of a known GPT-2 needs GPT-2's tokenizer: none is in the Hugging Face cache ({hub.cache_dir()}), "
        f"and it could not be fetched ({why.rstrip('.')}). Connect once (it fetches 2 MB), or pass "
        "--tokenizer FOLDER (a folder with GPT-2's tokenizer.json, or vocab.json and merges.txt)."
    )


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        layers, width, heads = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape = {text!r}: use N_LAYER,N_EMBD,N_HEAD, e.g. 2,64,4") from None
    if min(layers, width, heads) < 1 or width % heads:
        raise argparse.ArgumentTypeError(f"shape = {text!r}: positive numbers, N_EMBD a multiple of N_HEAD")
    return layers, width, heads


def _replaceable(out: Path) -> bool:
    """`out` may be written: it does not exist, is empty, or holds an earlier stand-in."""
    return not out.exists() or (out.is_dir() and (not any(out.iterdir()) or (out / "STANDIN.json").is_file()))


def build_standin(
    size: str,
    out: Path,
    tokenizer: Path | None = None,
    seed: int = 0,
    layers: tuple[int, int, int] | None = None,
) -> Path:
    """Writes config, random safetensors weights (fp32) and a tokenizer to `out`; returns `out`.
    tokenizer: a folder to copy; None: a byte-level one (256 bytes + <|endoftext|>). layers: (n_layer, n_embd,
    n_head) in place of the size's own, for tests (a small model with the size's vocabulary and context).
    `out` appears whole or not at all; an earlier stand-in there is replaced."""
    if size not in SHAPES:
        raise StandinError(f"size = {size!r}: use one of {', '.join(SHAPES)}")
    out = Path(out)
    if not _replaceable(out):
        raise StandinError(f"{out} is not empty and holds no stand-in: give a new folder (nothing was written).")
    shape = SHAPES[size]
    if layers is not None:
        shape = ModelShape(*layers, vocab_size=shape.vocab_size, n_positions=shape.n_positions)
    created = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)  # the first we make
    building = out.parent / f".{out.name}.building-{os.getpid()}"
    try:
        building.mkdir(parents=True)
        _write(building, size, shape, tokenizer, seed)
        if out.exists():
            shutil.rmtree(out)
        os.replace(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        if created is not None and created != out:  # the parents this build made, when they are empty again
            for folder in [out.parent, *out.parent.parents]:
                if folder == created.parent:
                    break
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    return out


def _write(out: Path, size: str, shape: ModelShape, tokenizer: Path | None, seed: int) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    if tokenizer is not None:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    else:
        write_byte_tokenizer(out)
    vocab_size = max(shape.vocab_size, len(AutoTokenizer.from_pretrained(out)))  # tiny with GPT-2's: 50257
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=shape.n_positions,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        bos_token_id=vocab_size - 1,  # <|endoftext|> is the last id, in GPT-2 and in the byte tokenizer
        eos_token_id=vocab_size - 1,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)  # GPT-2's own init: normal(0, 0.02) weights, the real scale
    model.save_pretrained(out)
    shown = {"n_layer": shape.n_layer, "n_embd": shape.n_embd, "n_head": shape.n_head}
    record = {"standin_of": size, "seed": seed, "weights": "random", "shape": shown}
    (out / "STANDIN.json").write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", choices=list(SHAPES), help="which GPT-2's shape to copy (tiny: for smoke tests)")
    parser.add_argument("out", type=Path, help="folder to write (config.json, model.safetensors, tokenizer)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a folder with GPT-2's tokenizer to copy; default: the Hugging Face cache's, else fetched from the hub "
        "(tiny: a byte-level one)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--layers",
        type=parse_shape,
        default=None,
        metavar="N_LAYER,N_EMBD,N_HEAD",
        help="for tests: these in place of the size's own (its vocabulary, context and tokenizer stay)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        tokenizer = None if args.size == "tiny" and args.tokenizer is None else gpt2_tokenizer(args.tokenizer)
        build_standin(args.size, args.out, tokenizer, args.seed, args.layers)
    except StandinError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stopped: nothing was left in {args.out}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line, not a traceback; the half-written folder is gone
        first = str(error).strip().splitlines()
        print(
            f"error: could not write the stand-in ({type(error).__name__}: {first[0] if first else ''})",
            file=sys.stderr,
        )
        return 1
    print(f"wrote a random-weights {args.size} stand-in to {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    bench.run(main)
