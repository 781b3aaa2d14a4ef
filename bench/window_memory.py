"""What a window saves, as the page's chart shows it: the memory a run adds, window N against window off.

Each (precision, window) runs in a fresh process: load, one warm-up run (another phrase, at the page's default
window of 50, through one reset: the first run of a process grows its small heap for each kind of pass it meets),
then the measured run: a 30-word phrase and 100 tokens, one seed. "Added" is what the Write chart draws, the run's peak RSS above what the
process held just before it (Step.rss_bytes - Step.start_rss_bytes); "peak KV" is the cache the window controls.
The window's saving should show in "added" too: at least half the KV cache it saves.

    python -m bench.window_memory --model bench/models/gpt2-large --precisions q8,int8 --window 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

PHRASE = (
    "The old lighthouse keeper climbed the stairs every evening, lit the lamp, and watched the ships pass by "
    "while the gulls cried over the harbour and the town below settled into the night"
)  # 30 words
WARM_UP = "Once upon a time, in a quiet village by the sea, there lived a baker who rose before the sun"


def one(model: str, precision: str, window: int | None, tokens: int) -> dict:
    """In this process: load, warm up, then the measured run."""
    import gpt2_engine

    engine = gpt2_engine.load(model, dtype=precision)
    list(engine.stream(WARM_UP, max_new_tokens=60, seed=2, window=50, stop_at_eos=False))
    steps = list(engine.stream(PHRASE, max_new_tokens=tokens, seed=7, window=window, stop_at_eos=False))
    return {
        "precision": engine.precision,
        "window": window,
        "added_bytes": max(s.rss_bytes for s in steps) - steps[0].start_rss_bytes,
        "added_at_end_bytes": steps[-1].rss_bytes - steps[0].start_rss_bytes,
        "peak_kv_bytes": max(s.kv_bytes for s in steps),
        "resets": sum(s.reset for s in steps),
        "start_rss_bytes": steps[0].start_rss_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-large", help="a known name, hub id or folder (a stand-in works)")
    parser.add_argument("--precisions", default="q8,int8")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--one", nargs=2, metavar=("PRECISION", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        window = None if args.one[1] == "off" else int(args.one[1])
        print(json.dumps(one(args.model, args.one[0], window, args.tokens)))
        return
    print("| precision | window | added by the run (MB): peak / at the end | peak KV (MB) | resets | holds? |")
    print("|---|---|---:|---:|---:|---|")
    for precision in args.precisions.split(","):
        rows = {}
        for window in (str(args.window), "off"):
            command = [sys.executable, "-m", "bench.window_memory", "--model", args.model, "--tokens", str(args.tokens)]
            out = subprocess.run([*command, "--one", precision, window], capture_output=True, text=True, check=True)
            rows[window] = json.loads(out.stdout.strip().splitlines()[-1])
        small, off = rows[str(args.window)], rows["off"]
        saved_kv = off["peak_kv_bytes"] - small["peak_kv_bytes"]
        saved = off["added_bytes"] - small["added_bytes"]
        holds = saved > 0 and saved >= saved_kv / 2
        for name, row in ((str(args.window), small), ("off", off)):
            print(
                f"| {row['precision']} | {name} | {row['added_bytes'] / 1e6:.1f} / {row['added_at_end_bytes'] / 1e6:.1f} "
                f"| {row['peak_kv_bytes'] / 1e6:.1f} | {row['resets']} | "
                + (
                    f"saves {saved / 1e6:.1f} MB of {saved_kv / 1e6:.1f} MB KV: {'yes' if holds else 'NO'} |"
                    if name == "off"
                    else "|"
                )
            )


if __name__ == "__main__":
    main()
