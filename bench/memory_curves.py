"""Memory per token for each window, in inference mode and in tutorial mode (autograd on, as the tutorial ran).

Each (mode, window) runs in a fresh process, so that one run's peak cannot hide in another's. For each it
prints the process memory (RSS) at every 100 tokens, the peak RSS and KV cache, and the slope of RSS per
token over the first and the last 100 tokens: flat in inference mode once the window has cycled, climbing
faster and faster in tutorial mode, where every token's activations stay alive for a backward pass that
never comes. A run the memory guard stops says so. The series go to a JSON file.

    python -m bench.memory_curves --model bench/models/gpt2-xl --tokens 500 --windows 20,50,200,off
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import bench
from bench.peaks import fresh_python

ONE_RUN = """
import json, sys, torch, gpt2_engine
model, dtype, window, tokens, autograd = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
engine = gpt2_engine.load(model, dtype=dtype, device="cpu")
rss, kv, stop, resets = [], [], None, 0
for step in engine.stream(
    "In a shocking finding, scientists discovered a herd of unicorns living in a remote valley.",
    max_new_tokens=tokens, window=None if window == "off" else int(window), seed=1, stop_at_eos=False,
    autograd=autograd,
):
    rss.append(step.rss_bytes)
    kv.append(step.kv_bytes)
    resets += step.reset
    stop = step.stop_reason
print(json.dumps({"rss": rss, "kv": kv, "stop": stop, "resets": resets, "limit": step.memory_limit_bytes}))
"""


def slope(values: list[int]) -> float:
    """Least-squares bytes per token."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return num / sum((x - mean_x) ** 2 for x in range(n))


def run_one(model: str, dtype: str, window: str, tokens: int, autograd: bool) -> dict:
    args = ["-c", ONE_RUN, model, dtype, window, str(tokens), "1" if autograd else "0"]
    return fresh_python(args, f"the run (window {window}, autograd {autograd})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Process memory per token for each window, inference vs tutorial mode."
    )
    parser.add_argument(
        "--model", default="bench/models/gpt2-xl", help="a model folder (default: the gpt2-xl stand-in)"
    )
    parser.add_argument("--dtype", default="fp32", help="weights (default fp32: tutorial mode needs it)")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per run (default 500)")
    parser.add_argument("--windows", default="20,50,200,off", help="comma-separated windows (default 20,50,200,off)")
    parser.add_argument("--modes", default="inference,tutorial", help="inference, tutorial or both")
    parser.add_argument("--out", default="bench/out/memory_curves.json", help="where the series go")
    args = parser.parse_args()

    marks = list(range(0, args.tokens + 1, 100))[1:] or [args.tokens]
    print(
        f"{args.model}, {args.dtype}, {args.tokens} tokens, each run in a fresh process; RSS in GB, slopes in kB/token"
    )
    print(
        "| mode | window | "
        + " | ".join(f"RSS @{m}" for m in marks)
        + " | peak RSS | peak KV MB | slope first 100 | slope last 100 | resets | stop |"
    )
    print("|---" * (len(marks) + 8) + "|")
    results = []
    for mode in args.modes.split(","):
        for window in args.windows.split(","):
            r = run_one(args.model, args.dtype, window, args.tokens, mode == "tutorial")
            rss = r["rss"]
            at = [f"{rss[m - 1] / 1e9:.2f}" if m <= len(rss) else "-" for m in marks]
            row = {
                "mode": mode,
                "window": window,
                "tokens": len(rss),
                "peak_rss_bytes": max(rss),
                "peak_kv_bytes": max(r["kv"]),
                "slope_first_100_bytes": slope(rss[:100]),
                "slope_last_100_bytes": slope(rss[-100:]),
                **r,
            }
            results.append(row)
            print(
                f"| {mode} | {window} | "
                + " | ".join(at)
                + f" | {max(rss) / 1e9:.2f} | {max(r['kv']) / 1e6:.0f} | {row['slope_first_100_bytes'] / 1e3:.0f}"
                f" | {row['slope_last_100_bytes'] / 1e3:.0f} | {r['resets']} | {r['stop']} after {len(rss)} |",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "dtype": args.dtype, "runs": results}))
    print(f"series written to {args.out}")


if __name__ == "__main__":
    bench.run(main)
