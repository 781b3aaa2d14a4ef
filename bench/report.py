"""The benchmark's output: the machine's facts (CPU, flags, versions) and the Markdown table of its rows."""

from __future__ import annotations

import platform
import time

import torch

from gpt2_engine import capabilities, threads


def _cell(row: dict, key: str, form: str, scale: float = 1.0) -> str:
    return format(row[key] * scale, form) if key in row else "-"


def table(rows: list[dict]) -> str:
    """One line per precision (and per llama.cpp GGUF): ratios are to generate() fp32 and to llama.cpp q8_0."""
    head = (
        "| precision | decode tok/s | vs generate() fp32 | vs llama.cpp q8_0 | generate() same precision | "
        "% of ceiling | prefill tok/s 20/200/1000 | first token s | window 20, gap ms median / longest: "
        "re-prime, shadow | window 50 vs off, time: re-prime / shadow | load s 1st / 2nd | "
        "peak RSS GB (anon) | top-1 / KL vs fp32 | greedy = generate() |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fp32 = next((r["generate_tok_s"] for r in rows if r["precision"] == "fp32"), None)
    q8_0 = next((r["engine_tok_s"] for r in rows if r["precision"] == "llama.cpp q8_0" and "engine_tok_s" in r), None)
    for r in rows:
        if "unavailable" in r or "refused" in r:
            lines.append(f"| {r['precision']} | {r.get('unavailable') or r.get('refused')} |" + " |" * 12)
            continue
        tok_s = r["engine_tok_s"]
        gap = (
            f"{r['gap_20_reprime_median_s'] * 1e3:.0f} / {r['gap_20_reprime_max_s'] * 1e3:.0f} "
            f"({r['gap_20_reprime_max_s'] / r['gap_20_reprime_median_s']:.1f}x), "
            f"{r['gap_20_shadow_median_s'] * 1e3:.0f} / {r['gap_20_shadow_max_s'] * 1e3:.0f} "
            f"({r['gap_20_shadow_max_s'] / r['gap_20_shadow_median_s']:.1f}x)"
            if "gap_20_shadow_max_s" in r
            else "-"
        )
        window = (
            f"{r['window_50_reprime_s'] / r['window_off_s'] - 1:+.1%} / {r['window_50_shadow_s'] / r['window_off_s'] - 1:+.1%}"
            if "window_off_s" in r
            else "-"
        )
        peak = (
            f"{r['peak_rss_bytes'] / 1e9:.2f}"
            + (f" ({r['peak_anon_bytes'] / 1e9:.2f})" if "peak_anon_bytes" in r else "")
            if "peak_rss_bytes" in r
            else "-"
        )
        agree = f"{r['top1_agreement']:.3f} / {r['kl_vs_fp32']:.4f}" if "top1_agreement" in r else "-"
        prefills = "/".join(f"{r[f'prefill_{n}_tok_s']:.0f}" for n in (20, 200, 1000) if f"prefill_{n}_tok_s" in r)
        ratios = [
            f"{tok_s / base:.2f}x" if base else "-"
            for base in (fp32, q8_0, r.get("generate_tok_s"), r.get("ceiling_tok_s"))
        ]
        ratios[3] = f"{tok_s / r['ceiling_tok_s']:.0%}" if "ceiling_tok_s" in r else "-"
        greedy = f"{r['greedy_tokens_equal']}/{r['greedy_tokens_compared']}" if "greedy_tokens_equal" in r else "-"
        lines.append(
            f"| {r['precision']} | {tok_s:.2f} | {' | '.join(ratios)} | {prefills or '-'} | "
            f"{_cell(r, 'time_to_first_token_s', '.2f')} | {gap} | {window} | "
            f"{_cell(r, 'first_load_s', '.1f')} / {_cell(r, 'second_load_s', '.1f')} | {peak} | {agree} | {greedy} |"
        )
    return "\n".join(lines)


def machine_facts() -> dict:
    import transformers

    return {
        "cpu": capabilities.cpu_name(),
        "vector_units": capabilities.vector_units(),
        "cpu_flags": " ".join(sorted(capabilities.cpu_flags())),
        "cores": threads.cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
