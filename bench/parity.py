"""Checks the fast path against transformers on any device (the tests do it on the CPU).

Greedy tokens of the engine (fast, with the window by shadow row and by re-prime) against
`model.generate()`, and the fast forward's logits against a full forward, on a stand-in model.

    python -m bench.parity --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import bench
import gpt2_engine
from bench.standin import build_standin
from gpt2_engine.fast import FastContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder (default: a small gpt2-shaped stand-in)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or int8")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens compared")
    args = parser.parse_args()
    model = args.model or str(build_standin("distilgpt2", Path(tempfile.mkdtemp()) / "distilgpt2"))
    engine = gpt2_engine.load(model, dtype=args.precision, device=args.device)
    prompt = "The quick brown fox jumps over the lazy dog."
    ids = engine.tokenizer.encode(prompt)
    with torch.inference_mode():
        full = engine.model(input_ids=torch.tensor([ids], device=engine.device)).logits[0, -1].float()
        fast = FastContext(engine.model).prime(ids).float()
    print(
        f"{engine.name} {engine.precision} on {engine.device}: max |fast - full| logit = {float((fast - full).abs().max()):.2e}"
    )
    settings = gpt2_engine.GenerationSettings(
        max_new_tokens=args.tokens, sampler="greedy", stop_at_eos=False, window=16
    )
    runs = {}
    for backend, mode in (("fast", "shadow"), ("fast", "reprime"), ("reference", "reprime")):
        runs[f"{backend}/{mode}"] = [
            s.token_id for s in engine.stream(prompt, settings, backend=backend, window_mode=mode)
        ]
    same = len({tuple(r) for r in runs.values()}) == 1
    print(f"window 16, {args.tokens} greedy tokens: fast/shadow, fast/reprime and reference agree: {same}")
    ours = [s.token_id for s in engine.stream(prompt, settings.with_(window=None))]
    input_ids = torch.tensor([ids], device=engine.device)
    theirs = engine.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        pad_token_id=0,
    )[0, len(ids) :].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
    print(f"window off: the engine's greedy tokens equal generate()'s for the first {agree} of {len(ours)}")
    raise SystemExit(0 if same and agree == len(ours) else 1)


if __name__ == "__main__":
    bench.run(main)
