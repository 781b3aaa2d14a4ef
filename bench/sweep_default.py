"""The Sweep as a room presses it: the real app.py (through Streamlit's AppTest), the Sweep's own defaults
(windows 10, 20, 50, 100, 200 and off; 200 tokens; its default texts per window), one press per seed. For each
press: its time, from the click to the last point, and the windows ranked by the passage each read (the chart's
y), with their texts' mean perplexity and their peak KV cache (the chart's x). The ranking is the lesson: the
smaller the window, the worse it reads, at every seed.

    python -m bench.sweep_default --seeds 1 2 3 4 5                        # the shipped model
    python -m bench.sweep_default --model bench/models/gpt2-xl --seeds 1   # gpt2-xl's shape (minutes a press)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import bench
from gpt2_engine import SHIPPED_MODEL, format_bytes

APP = Path(__file__).resolve().parent.parent / "app.py"
PHRASE = "ROMEO.\nBut soft, what light through yonder window breaks?"


def press(at, seed: int, prompt: str):
    """One press of Sweep with the form's defaults, but the phrase and the seed; returns (seconds, its points)."""
    from studio.sweep_points import sweep_points

    at.text_area(key="sweep_prompt").set_value(prompt)
    at.text_input(key="sweep_seed").set_value(str(seed))
    started = time.perf_counter()
    at.button(key="sweep_run").click()
    at.run()
    seconds = time.perf_counter() - started
    if at.exception:
        raise SystemExit(f"the page failed: {at.exception}")
    return seconds, sweep_points(at.session_state["sweep"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=SHIPPED_MODEL, help="a model name or folder (default: the shipped one)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--prompt", default=PHRASE)
    args = parser.parse_args()
    os.environ.update(GPT2_STUDIO_MODEL=args.model, GPT2_STUDIO_PRECISION=args.precision, HF_HUB_OFFLINE="1")
    from streamlit.testing.v1 import AppTest

    from studio.sweep import DEFAULT_LENGTH, DEFAULT_WINDOWS

    started = time.perf_counter()
    at = AppTest.from_file(str(APP), default_timeout=3600).run()
    texts, length = at.slider(key="sweep_texts").value, at.slider(key="sweep_length").value
    print(
        f"{args.model}, {args.precision}: page loaded in {time.perf_counter() - started:.1f} s; the Sweep's defaults: "
        f"windows {', '.join(map(str, at.multiselect(key='sweep_windows').value))}, {length} tokens, {texts} text{'s' if texts != 1 else ''} a "
        f"window (the Sweep's own: {', '.join(map(str, DEFAULT_WINDOWS))} and {DEFAULT_LENGTH} tokens, the model's "
        "largest window allowing)"
    )
    print("\n| seed | seconds | ranked by the passage read (worst first) | as the window shrinks, reads worse |")
    print("|---:|---:|---|---|")
    details = []
    for seed in args.seeds:
        seconds, points = press(at, seed, args.prompt)
        ranked = points.sort_values("perplexity", ascending=False, kind="stable")
        by_size = points.assign(size=[float("inf") if w == "off" else int(w) for w in points["window"]])
        by_size = by_size.sort_values("size").set_index("window")
        reading, sizes = list(by_size["perplexity"]), list(by_size["size"])
        ordered = all(  # each smaller window reads worse; one as long as the run never resets: as off reads
            (small > large) if size < length else (small == large)
            for small, large, size in zip(reading, reading[1:], sizes)
        )
        print(
            f"| {seed} | {seconds:.1f} | {' > '.join(ranked['window'])} | {'yes' if ordered else '**no**'} |",
            flush=True,
        )
        details.append((seed, by_size))
    print("\n| seed | window | peak KV | passage perplexity | its texts reread: mean (range) |")
    print("|---:|---|---:|---:|---|")
    for seed, by_size in details:
        for window, row in by_size.iterrows():
            spread = f" ({row['text_low']:.1f} to {row['text_high']:.1f})" if row["texts"] > 1 else ""
            print(
                f"| {seed} | {window} | {format_bytes(row['kv_bytes'])} | {row['perplexity']:.2f} | "
                f"{row['text_perplexity']:.1f}{spread} |"
            )


if __name__ == "__main__":
    bench.run(main)
