"""The KV cache each window holds, and how well it reads a real passage: the table behind the lesson.

For each window (16, 64, 200, 256 and off by default), one run of the same phrase, seed and length (200 tokens),
in this process: the peak KV cache (Step.kv_bytes), of which the window's own context and the next window read
ahead (Step.read_ahead_bytes, near a reset only), the resets, and the perplexity of the model's passage read with
that window and length (gpt2_engine.passages: the shipped model's held-out plays, else the Declaration of
Independence). A window at least as long as the run holds, and reads, exactly what off does.

    python -m bench.window_kv                                   # the shipped model
    python -m bench.window_kv --model bench/models/gpt2-large   # a stand-in (random weights: its reading is noise)
"""

from __future__ import annotations

import argparse
import time

import bench
import gpt2_engine
from gpt2_engine import format_bytes, passages

PHRASE = "ROMEO.\nBut soft, what light through yonder window breaks?"


def measure(engine: gpt2_engine.Engine, windows: list[int | None], tokens: int, seed: int) -> list[dict]:
    passage = passages.for_model(engine)
    rows = []
    for window in windows:
        started = time.perf_counter()
        steps = list(engine.stream(PHRASE, max_new_tokens=tokens, seed=seed, window=window, stop_at_eos=False))
        written_s = time.perf_counter() - started
        reading = passages.reading(engine, passage, window, tokens)
        rows.append(
            {
                "window": "off" if window is None else str(window),
                "peak_kv": max(s.kv_bytes for s in steps),
                "peak_held": max(s.kv_bytes - s.read_ahead_bytes for s in steps),
                "peak_ahead": max(s.read_ahead_bytes for s in steps),
                "resets": sum(s.reset for s in steps),
                "reading": reading.perplexity,
                "passage": passage.name,
                "tokens_per_s": len(steps) / written_s,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=gpt2_engine.SHIPPED_MODEL)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--windows", default="16,64,200,256,off")
    args = parser.parse_args()
    engine = gpt2_engine.load(args.model, dtype=args.precision)
    windows = [None if w == "off" else int(w) for w in args.windows.split(",")]
    rows = measure(engine, windows, args.tokens, args.seed)
    print(
        f"{engine.name} ({engine.precision}), {args.tokens} tokens, seed {args.seed}; coherence: {rows[0]['passage']}"
    )
    print("| window | peak KV | the window's own | read ahead | resets | reading perplexity | tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['window']} | {format_bytes(row['peak_kv'])} | {format_bytes(row['peak_held'])} | "
            f"{format_bytes(row['peak_ahead'])} | {row['resets']} | {row['reading']:.2f} | {row['tokens_per_s']:.1f} |"
        )


if __name__ == "__main__":
    bench.run(main)
