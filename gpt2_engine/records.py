"""A run as plain data: a dict (JSON) that holds everything about it, its memory series as CSV, and the
settings to replay it. Knows nothing of Streamlit; the page's History tab offers these as downloads.

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
        "kind": kind,  # "write" or "compare"
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
        "coherence": _finite(asdict(coherence)) if coherence is not None else None,
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
