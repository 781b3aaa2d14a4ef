"""Run records (gpt2_engine.records): a run as JSON that replays to the same text, its memory series as CSV;
the memory given back between runs and at a tutorial-mode reset; the compare chart's machine lines."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

import gpt2_engine
from gpt2_engine.records import (
    MEMORY_CSV_COLUMNS,
    RECORD_FORMAT,
    load_record,
    memory_csv,
    record_json,
    run_record,
    settings_from_record,
)
from gpt2_engine.scoring import Coherence
from gpt2_engine.stats import RunStats, generated_text
from studio import charts

PROMPT = "The cat sat on the mat."


def a_run(engine, **changes):
    settings = gpt2_engine.GenerationSettings(
        **{"max_new_tokens": 30, "window": 8, "top_p": 0.9, "seed": 7, "stop_at_eos": False, **changes}
    )
    return settings, list(engine.stream(PROMPT, settings))


def test_a_record_holds_the_settings_the_seed_the_text_and_every_tokens_memory(engine) -> None:
    settings, steps = a_run(engine)
    record = run_record(PROMPT, settings, steps, model=engine.name, kind="compare", label="window 8")
    stats = RunStats.from_steps(steps)
    assert record["format"] == RECORD_FORMAT and record["kind"] == "compare" and record["label"] == "window 8"
    assert record["prompt"] == PROMPT and record["text"] == generated_text(steps)
    assert record["seed"] == 7 and record["settings"]["seed"] == 7 and record["settings"]["window"] == 8
    assert record["stats"]["tokens"] == stats.tokens == 30
    assert record["stats"]["peak_rss_bytes"] == stats.peak_rss_bytes
    assert record["stats"]["resets"] == list(stats.resets) == [8, 16, 24]
    assert [s["rss_bytes"] for s in record["steps"]] == [s.rss_bytes for s in steps]
    assert [s["kv_bytes"] for s in record["steps"]] == [s.kv_bytes for s in steps]
    assert record["coherence"] is None


def test_the_json_replays_to_the_same_text_with_the_same_seed(engine) -> None:
    settings, steps = a_run(engine, seed=None)  # a seed drawn by the engine: the record keeps the one used
    saved = record_json(run_record(PROMPT, settings, steps, model=engine.name))
    again = load_record(saved)
    replay_settings = settings_from_record(again)
    assert replay_settings.seed == steps[0].seed
    assert replay_settings == settings.with_(seed=steps[0].seed)
    replay = list(engine.stream(again["prompt"], replay_settings))
    assert generated_text(replay) == again["text"] == generated_text(steps)


def test_tutorial_mode_and_the_memory_guard_travel_with_the_record(engine) -> None:
    settings, steps = a_run(engine, autograd=True, memory_share=0.5, max_new_tokens=5)
    again = settings_from_record(load_record(record_json(run_record(PROMPT, settings, steps, model=engine.name))))
    assert again.autograd is True and again.memory_share == 0.5


def test_the_memory_csv_has_a_row_per_token(engine) -> None:
    settings, steps = a_run(engine)
    rows = list(csv.DictReader(io.StringIO(memory_csv(run_record(PROMPT, settings, steps, model=engine.name)))))
    assert tuple(rows[0]) == MEMORY_CSV_COLUMNS
    assert [int(r["tokens"]) for r in rows] == list(range(1, 31))
    assert [int(r["rss_bytes"]) for r in rows] == [s.rss_bytes for s in steps]
    assert [int(r["kv_bytes"]) for r in rows] == [s.kv_bytes for s in steps]
    assert [int(r["tokens"]) - 1 for r in rows if r["reset"] == "1"] == [8, 16, 24]


def test_json_is_strict_and_unknown_fields_do_not_stop_a_replay(engine) -> None:
    settings, steps = a_run(engine, max_new_tokens=3)
    nothing_scored = Coherence(tokens=0, mean_logprob=0.0, perplexity=math.nan)
    saved = record_json(run_record(PROMPT, settings, steps, model=engine.name, coherence=nothing_scored))
    assert "NaN" not in saved and json.loads(saved)["coherence"]["perplexity"] is None
    record = json.loads(saved)
    record["settings"]["a_setting_from_a_later_version"] = 1
    assert settings_from_record(record).seed == 7
    with pytest.raises(ValueError, match="not a GPT-2 Studio run record"):
        load_record('{"format": "something else"}')
    record["settings"]["top_p"] = 3.0
    with pytest.raises(gpt2_engine.SettingsError, match="top_p"):
        settings_from_record(record)


def test_a_tutorial_mode_reset_gives_the_freed_memory_back(engine, monkeypatch) -> None:
    released: list[int] = []
    monkeypatch.setattr("gpt2_engine.decoding.release_freed_memory", lambda: released.append(1))
    list(engine.stream(PROMPT, max_new_tokens=20, window=5, seed=0, stop_at_eos=False, autograd=True))
    assert len(released) == 1 + 3  # at the start of the run, and after each of its resets (5, 10, 15)
    released.clear()
    list(engine.stream(PROMPT, max_new_tokens=20, window=5, seed=0, stop_at_eos=False))
    assert not released  # inference mode frees nothing, at a reset or at the start: the small heap is kept for
    # the next run, and large blocks are handed back when freed (memory.MMAP_FROM_BYTES)


@pytest.mark.parametrize(
    ("total_gb", "words"),
    [
        (0.5, "6% of an 8 GB computer's memory"),
        (6.8, "85% of an 8 GB computer's memory"),
        (8.0, "100% of an 8 GB computer's memory"),
        (12.0, "75% of a 16 GB computer's memory"),
        (30.0, "more than a 24 GB computer has"),
    ],
)
def test_the_whole_programs_memory_is_said_against_common_computers(total_gb: float, words: str) -> None:
    assert charts.machine_words(total_gb * 1e9) == words


def test_a_change_in_memory_is_written_as_sizes_are() -> None:
    assert [charts.plus_bytes(n) for n in (41e6, 2.5e9, -3e6, 0)] == ["+41 MB", "+2.50 GB", "-3 MB", "+0 B"]
