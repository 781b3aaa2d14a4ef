"""A run as plain data: a dict (JSON) that holds everything about it, its memory series as CSV, and the
settings to replay it; a sweep (one phrase and seed, written under several windows) as one row per window.
Knows nothing of Streamlit; the page's History tab and its sweep offer these as downloads.

The same prompt, settings and seed write the same text again, so a record is also a recipe:

    record = run_record("The cat sat", settings, steps, model=engine.name)
    saved = record_json(record)                                  # what the JSON download holds
    again = load_record(saved)
    steps = list(engine.stream(again["prompt"], settings_from_record(again)))
    assert generated_text(steps) == again["text"]
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import datetime, timezone
from typing import Any

from .decoding import Step
from .scoring import Coherence
from .settings import GenerationSettings
from .stats import RunStats, generated_text

RECORD_FORMAT = "gpt2-studio-run/1"  # the "format" field: what reads this file, and which version
STEP_FIELDS = (  # per generated token, in the record's "steps"
    "index",
    "token_id",
    "text",
    "logprob",
    "reset",
    "context_tokens",
    "kv_bytes",
    "rss_bytes",
    "anon_bytes",
    "elapsed_s",
    "nucleus_size",
    "stop_reason",
)
MEMORY_CSV_COLUMNS = ("tokens", "rss_bytes", "anon_bytes", "kv_bytes", "context_tokens", "reset", "elapsed_s")
SETTINGS_FIELDS = tuple(f.name for f in fields(GenerationSettings))
SWEEP_CSV_COLUMNS = (  # one row per run of a sweep (sweep_rows): a window's texts, one per seed
    "window",
    "seed",
    "tokens",
    "peak_kv_bytes",
    "peak_rss_bytes",
    "mean_log_likelihood",
    "perplexity",
    "reading_log_likelihood",
    "reading_perplexity",
    "coherence_kept",
    "seconds",
    "stopped",
)


def run_record(
    prompt: str,
    settings: GenerationSettings,
    steps: Sequence[Step],
    *,
    model: str,
    precision: str = "",
    kind: str = "write",
    label: str = "",
    coherence: Coherence | None = None,
    reading: Coherence | None = None,
    reading_of: str = "",
    stopped: bool = False,
    error: str | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Everything about a run: what was asked (prompt, settings with the seed used), what came out (text,
    every token with its memory readings), and its numbers (RunStats, and coherence when scored)."""
    stats = RunStats.from_steps(steps)
    seed = stats.seed if stats.seed is not None else settings.seed
    return {
        "format": RECORD_FORMAT,
        "kind": kind,  # "write", "compare" or "sweep"
        "label": label,
        "model": model,
        "precision": precision,  # as the model was loaded: fp32, bf16, fp16, int8 or q8
        "started_at": _iso(started_at) if started_at is not None else None,
        "prompt": prompt,
        "settings": {**settings.as_dict(), "seed": seed},
        "seed": seed,
        "text": generated_text(steps),
        "stopped": stopped,
        "error": error,
        "stats": {**asdict(stats), "resets": list(stats.resets)},
        "coherence": _finite(asdict(coherence)) if coherence is not None else None,  # its text reread
        "reading": _finite(asdict(reading)) if reading is not None else None,  # a passage read with its window
        "reading_of": reading_of,  # which passage (gpt2_engine.passages)
        "steps": [{name: getattr(step, name) for name in STEP_FIELDS} for step in steps],
    }


def record_json(record: dict[str, Any]) -> str:
    """The record as JSON text (strict: no NaN or Infinity, which other readers refuse)."""
    return json.dumps(_finite(record), indent=1, ensure_ascii=False, allow_nan=False)


def load_record(text: str | bytes) -> dict[str, Any]:
    """A record read back from `record_json`'s text; raises ValueError when it is not one."""
    record = json.loads(text)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"not a GPT-2 Studio run record (format {found!r}, expected {RECORD_FORMAT!r})")
    return record


def memory_csv(record: dict[str, Any]) -> str:
    """The memory series, one row per generated token: tokens generated (x), RSS, its anonymous part,
    the KV cache, the tokens the model held, whether the window reset before it, seconds since the start."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MEMORY_CSV_COLUMNS)
    for step in record["steps"]:
        writer.writerow(
            [
                step["index"] + 1,
                step["rss_bytes"],
                step["anon_bytes"],
                step["kv_bytes"],
                step["context_tokens"],
                int(step["reset"]),
                f"{step['elapsed_s']:.6f}",
            ]
        )
    return out.getvalue()


def sweep_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A sweep's runs (their records, one per window, in the order written) as one row each: the columns of
    SWEEP_CSV_COLUMNS, plus `complete` and `resets` (how often the window reset).

    Two coherences: `perplexity`, the run's own text reread with the whole context (one sampled text: another
    seed reads otherwise), and `reading_perplexity`, a real passage read with the run's window and length
    (gpt2_engine.passages: the same at every press). A run is complete when it wrote every token it was asked
    for and both were measured. Only complete runs are comparable: a run cut short by Stop (or a click, the
    memory guard, an error) holds a shorter text, so a smaller cache and another perplexity; its row says
    `stopped` and has no coherence kept. `coherence_kept` is the reference's reading perplexity divided by this
    run's (1.0: reads the passage as well as the reference; 0.5: twice as unsure per token). The reference is
    the complete run with the largest window, "off" counting as the largest."""
    rows = []
    for record in records:
        stats, score, settings = record["stats"], record.get("coherence"), record["settings"]
        reading = record.get("reading")
        perplexity = score.get("perplexity") if score else None
        complete = (
            not record.get("stopped")
            and record.get("error") is None
            and stats["tokens"] == settings["max_new_tokens"]
            and perplexity is not None
            and reading is not None
        )
        rows.append(
            {
                "window": settings["window"],  # None: off
                "seed": settings.get("seed"),
                "tokens": stats["tokens"],
                "peak_kv_bytes": stats["peak_kv_bytes"],
                "peak_rss_bytes": stats["peak_rss_bytes"],
                "mean_log_likelihood": score.get("mean_logprob") if score else None,
                "perplexity": perplexity,
                "reading_log_likelihood": reading.get("mean_logprob") if reading else None,
                "reading_perplexity": reading.get("perplexity") if reading else None,
                "coherence_kept": None,
                "seconds": stats["elapsed_s"],
                "stopped": not complete,
                "complete": complete,
                "resets": len(stats["resets"]),
            }
        )
    done = [row for row in rows if row["complete"]]
    if done:
        reference = max(done, key=lambda row: math.inf if row["window"] is None else row["window"])
        for row in done:
            row["coherence_kept"] = reference["reading_perplexity"] / row["reading_perplexity"]
    return rows


def sweep_csv(rows: Sequence[dict[str, Any]]) -> str:
    """`sweep_rows` as CSV: window ("off" for none), tokens, the peaks in bytes, the mean log-likelihood per token
    and perplexity of its text reread, and of the passage read with its window (empty when not scored), coherence kept (a fraction, empty unless complete), the seconds the
    run took to write (its prompt's reading included), and stopped (true: not written in full and scored)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SWEEP_CSV_COLUMNS)
    for row in rows:
        values = {**row, "window": "off" if row["window"] is None else row["window"]}
        values["stopped"] = "true" if row["stopped"] else "false"
        values["seconds"] = f"{row['seconds']:.3f}"
        for name in (
            "mean_log_likelihood",
            "perplexity",
            "reading_log_likelihood",
            "reading_perplexity",
            "coherence_kept",
        ):
            values[name] = "" if row[name] is None else f"{row[name]:.6g}"
        writer.writerow([values[name] for name in SWEEP_CSV_COLUMNS])
    return out.getvalue()


def settings_from_record(record: dict[str, Any]) -> GenerationSettings:
    """The settings to replay a record with: its own, with the seed it used. Fields this version does not
    know are left out; a value that is not allowed raises SettingsError, as anywhere else."""
    given = {name: value for name, value in record["settings"].items() if name in SETTINGS_FIELDS}
    if record.get("seed") is not None:
        given["seed"] = record["seed"]
    return GenerationSettings(**given)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def _finite(value: Any) -> Any:
    """NaN and infinities (a perplexity of nothing, say) as None, all the way down."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
