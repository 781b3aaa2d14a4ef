"""What a window costs in coherence, on a model that has learned from its context (the shipped gpt2-shakespeare).

For each window (8, 16, 32, 64, 128, 256 and off) it prints:
- held-out perplexity, teacher-forced: the held-out plays (never trained on) read token by token as a run with
  that window would read them, with its resets (`scoring.read_with_window`); off reads with the whole context,
  as the page's coherence score does;
- generated text reread: runs written with that window from phrases of the held-out plays (one seed each), each
  reread with the whole context as the page scores it (`scoring.coherence`), the mean perplexity over the runs;
- peak KV: the most KV cache those runs held (Step.kv_bytes), the memory the window controls.

    python -m bench.window_coherence                       # the shipped model, all held-out text
    python -m bench.window_coherence --tokens 20000 --runs 4
    python -m bench.window_coherence --card                # and rewrite the model card's tables from this run
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

import bench
import gpt2_engine
from gpt2_engine.finding import resolve_name
from gpt2_engine.scoring import coherence, read_with_window

WINDOWS: tuple[int | None, ...] = (8, 16, 32, 64, 128, 256, None)
CARD_START, CARD_END = "<!-- window table: bench.window_coherence --card -->", "<!-- end of window table -->"


def held_out_ids(engine: gpt2_engine.Engine, folder: Path, tokens: int | None) -> list[int]:
    """The held-out plays' ids, each followed by <|endoftext|>, cut to `tokens` if given."""
    ids: list[int] = []
    for play in sorted((folder / "held_out").glob("*.txt")):
        ids += engine.tokenizer(play.read_text())["input_ids"] + [engine.eos_token_id]
    return ids[:tokens] if tokens else ids


def phrases(ids: list[int], count: int, length: int, seed: int = 0) -> list[list[int]]:
    """`count` phrases of `length` tokens from the held-out text, at places fixed by `seed`."""
    places = random.Random(seed).sample(range(0, len(ids) - length), count)
    return [ids[p : p + length] for p in sorted(places)]


def measure(engine, ids, windows, runs: int, length: int, log) -> list[dict]:
    rows = []
    prompts = phrases(ids, runs, 24)
    for window in windows:
        started = time.perf_counter()
        held = read_with_window(engine, ids, window)
        rereads, peak_kv = [], 0
        for seed, prompt in enumerate(prompts):
            text = engine.tokenizer.decode(prompt)
            steps = list(engine.stream(text, max_new_tokens=length, seed=seed, window=window, stop_at_eos=False))
            prompt_ids = engine.tokenizer(text)["input_ids"]
            rereads.append(coherence(engine, prompt_ids, [s.token_id for s in steps]).perplexity)
            peak_kv = max(peak_kv, max(s.kv_bytes for s in steps))
        rows.append(
            {
                "window": window,
                "held_out_perplexity": held.perplexity,
                "held_out_tokens": held.tokens,
                "generated_perplexity": statistics.mean(rereads),
                "generated_runs": len(rereads),
                "peak_kv_bytes": peak_kv,
            }
        )
        log(f"window {'off' if window is None else window}: {time.perf_counter() - started:.0f} s")
    return rows


def table(rows: list[dict], length: int) -> str:
    off = next(row for row in rows if row["window"] is None)
    lines = [
        "| window | held-out perplexity | vs off | generated text, reread (mean of runs) | peak KV |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        name = "off" if row["window"] is None else str(row["window"])
        ratio = row["held_out_perplexity"] / off["held_out_perplexity"]
        lines.append(
            f"| {name} | {row['held_out_perplexity']:.2f} | {ratio - 1:+.1%} | "
            f"{row['generated_perplexity']:.2f} | {row['peak_kv_bytes'] / 1e3:,.0f} kB |"
        )
    tokens, runs = off["held_out_tokens"], off["generated_runs"]
    lines.append("")
    lines.append(
        f"Held-out: {tokens:,} tokens of plays never trained on. Generated: {runs} runs of {length} tokens, "
        "each from a 24-token phrase of those plays, seeds 0 to "
        f"{runs - 1}, top-p 0.7; peak KV is the most any of them held."
    )
    return "\n".join(lines)


def write_card(folder: Path, text: str) -> None:
    """Replaces the table between the card's markers."""
    card = (folder / "README.md").read_text()
    head, rest = card.split(CARD_START)
    _, tail = rest.split(CARD_END)
    (folder / "README.md").write_text(f"{head}{CARD_START}\n{text}\n{CARD_END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gpt2_engine.SHIPPED_MODEL, help="a model with a held_out/ folder")
    parser.add_argument("--tokens", type=int, help="held-out tokens to read (default: all)")
    parser.add_argument("--runs", type=int, default=8, help="generated runs per window (default 8)")
    parser.add_argument("--length", type=int, default=300, help="tokens per generated run (default 300)")
    parser.add_argument("--card", action="store_true", help="write the table into the model card")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    engine = gpt2_engine.load(args.model, dtype="fp32")
    folder = Path(resolve_name(args.model)[0])  # the shipped model's folder, or the one given
    ids = held_out_ids(engine, folder, args.tokens)
    print(f"{engine.name}: {len(ids):,} held-out tokens, {torch.get_num_threads()} threads", flush=True)
    rows = measure(engine, ids, WINDOWS, args.runs, args.length, lambda line: print(line, flush=True))
    text = table(rows, args.length)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.card:
        write_card(folder, text)


if __name__ == "__main__":
    bench.run(main)
