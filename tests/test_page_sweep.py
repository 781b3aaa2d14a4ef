"""The sweep, on the real app.py through AppTest with the tiny model: one phrase and seed written under several
windows, one point per window on one chart (memory against coherence), the sentence that reads it, its CSV,
its runs in History, and a sweep stopped midway keeping the points it finished."""

from __future__ import annotations

import csv
import io
import re
import threading
import time

import pytest
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from streamlit.testing.v1 import AppTest
from test_page_compare import chart_data, press, set_widgets

import gpt2_engine
from gpt2_engine import SWEEP_CSV_COLUMNS, TurnQueue, passages, sweep_rows
from studio import runner
from studio.sweep import window_options, writing_order
from studio.sweep_chart import SWEEP_LABEL_PLACES
from studio.sweep_points import place_labels

PROMPT = "The cat sat on the mat."
LENGTH = 30
WINDOWS = [5, 10, 20, "off"]  # the tiny model's largest window is 64: its prompt and length fit under them all


def sweep(at: AppTest, **values) -> AppTest:
    defaults = {"sweep_prompt": PROMPT, "sweep_length": LENGTH, "sweep_seed": "5", "sweep_texts": 1}
    at.multiselect(key="sweep_windows").set_value(values.pop("sweep_windows", WINDOWS))
    return press(set_widgets(at, **{**defaults, **values}), "sweep_run")


def sweep_points(at: AppTest):
    charts = [chart_data(c) for c in at.get("vega_lite_chart")]
    return next(c["points"] for c in charts if "points" in c)


def expected_score(page_engine: gpt2_engine.Engine, run) -> gpt2_engine.Coherence:
    prompt_ids = page_engine.prepare_prompt(PROMPT, None).ids
    return gpt2_engine.coherence(page_engine, prompt_ids, [step.token_id for step in run.steps])


def expected_reading(page_engine: gpt2_engine.Engine, window: int | None) -> gpt2_engine.Coherence:
    """The model's own reading of the English passage (the tiny model has no held-out text) with this window."""
    return passages.reading(page_engine, passages.for_model(page_engine), window, LENGTH)


def test_window_choices_and_the_writing_order() -> None:
    assert window_options(64) == [5, 10, 20, 30, 50, 64, "off"]
    assert window_options(512)[-3:] == [500, 512, "off"]
    assert writing_order([10, "off", 200, 50]) == (None, 200, 50, 10)  # the reference first, then larger first
    assert writing_order([10, 50, 20]) == (50, 20, 10)  # no off: the largest is the reference


def test_the_sweep_draws_one_point_per_window(page: AppTest, page_engine: gpt2_engine.Engine) -> None:
    at = sweep(page, sweep_top_p=0.9)
    swept = at.session_state["sweep"]
    assert swept.windows == (None, 20, 10, 5) and swept.seed == 5 and swept.finished
    runs = {run.settings.window: run for run in swept.runs}
    for window, run in runs.items():  # the engine's own text for that window and the one seed, full length
        assert run.settings.seed == 5 and run.settings.top_p == pytest.approx(0.9)
        again = list(
            page_engine.stream(PROMPT, max_new_tokens=LENGTH, top_p=0.9, window=window, seed=5, stop_at_eos=False)
        )
        assert [s.token_id for s in run.steps] == [s.token_id for s in again] and len(run.steps) == LENGTH
    points = sweep_points(at)
    assert sorted(points["window"]) == sorted(["off", "20", "10", "5"])  # one point per window
    off = expected_reading(page_engine, None)
    for _, point in points.iterrows():
        window = None if point["window"] == "off" else int(point["window"])
        run, reading = runs[window], expected_reading(page_engine, window)  # the passage, read with the window
        score = expected_score(page_engine, run)  # its own text, reread with the whole text in view
        assert point["kv_bytes"] == run.stats.peak_kv_bytes and point["tokens"] == LENGTH
        assert point["perplexity"] == pytest.approx(reading.perplexity, rel=1e-4)
        assert point["text_perplexity"] == pytest.approx(score.perplexity, rel=1e-4)
        assert point["kept"] == pytest.approx(off.perplexity / reading.perplexity, rel=1e-4)
        assert run.reading_of == passages.ENGLISH_NAME
    assert list(points["kv_bytes"]) == sorted(points["kv_bytes"])  # in order of their cache
    assert points.loc[points["window"] == "off", "kept"].item() == pytest.approx(1.0)
    assert set(points["side"]) <= set(SWEEP_LABEL_PLACES)
    reading = " ".join(m.value for m in at.markdown)
    # the chart read aloud: what a window keeps of the reference's coherence, for what share of its cache
    assert re.search(r"keeps .*coherence.* for \d+% of .*cache", reading) or "No smaller window keeps" in reading
    assert any("Swept 4 windows with seed 5" in s.value for s in at.success)


def test_the_reading_is_computed_from_the_points(page: AppTest) -> None:
    at = sweep(page)
    rows = {row["window"]: row for row in at.session_state["sweep"].rows()}
    reading = next(m.value for m in at.markdown if "coherence" in m.value and "cache" in m.value).replace("**", "")
    said = re.findall(r"indow (\d+),? keeps (all of|[\d.]+% of) [^,]*?coherence for ([\d.]+)% of", reading)
    assert said, reading  # at least one window says what it keeps, for what share of the cache
    for window, kept, cache in said:  # each share is the measured one, as rounded on the page
        row = rows[int(window)]
        if kept == "all of":  # only where the two read within 2%: no "keeps 105%" from noise
            assert row["coherence_kept"] >= 0.98
        else:
            assert float(kept.removesuffix("% of")) == pytest.approx(100 * row["coherence_kept"], abs=0.5)
        assert float(cache) == pytest.approx(100 * row["peak_kv_bytes"] / rows[None]["peak_kv_bytes"], abs=0.5)


def test_the_sweep_csv_has_a_row_per_window(page: AppTest, downloads: dict[str, object]) -> None:
    at = sweep(page)
    swept = at.session_state["sweep"]
    saved = downloads[at.download_button(key="sweep_csv").id]()
    rows = list(csv.DictReader(io.StringIO(saved)))
    assert tuple(rows[0]) == SWEEP_CSV_COLUMNS
    assert [row["window"] for row in rows] == ["off", "20", "10", "5"]  # in the order written
    off_reading = swept.runs[0].reading.perplexity
    for row, run in zip(rows, swept.runs):
        stats = run.stats
        assert int(row["tokens"]) == LENGTH and row["stopped"] == "false"
        assert int(row["peak_kv_bytes"]) == stats.peak_kv_bytes and int(row["peak_rss_bytes"]) == stats.peak_rss_bytes
        assert float(row["mean_log_likelihood"]) == pytest.approx(run.coherence.mean_logprob, rel=1e-5)
        assert float(row["perplexity"]) == pytest.approx(run.coherence.perplexity, rel=1e-5)
        assert float(row["reading_perplexity"]) == pytest.approx(run.reading.perplexity, rel=1e-5)
        assert float(row["coherence_kept"]) == pytest.approx(off_reading / run.reading.perplexity, rel=1e-5)
        assert float(row["seconds"]) == pytest.approx(stats.elapsed_s, abs=1e-3)


def test_the_sweeps_runs_are_in_history(page: AppTest) -> None:
    at = sweep(page)
    history = at.session_state["history"]
    assert [run.label for run in history] == [
        "window off of a sweep",
        "window 20 of a sweep",
        "window 10 of a sweep",
        "window 5 of a sweep",
    ]
    assert all(run.kind == "sweep" and run.coherence is not None for run in history)
    titles = [m.value for m in at.markdown if m.value.startswith("**Run ")]
    assert [t.split(" · ")[1] for t in titles] == ["Sweep", "Sweep", "Sweep", "Sweep"]
    assert "window 5" in titles[0] and "window off" in titles[-1]  # newest first


def test_a_sweep_survives_reruns(page: AppTest) -> None:
    at = sweep(page)
    points = sweep_points(at)
    at.run()  # any rerun: a click elsewhere
    assert sweep_points(at).equals(points)


def test_a_sweep_stopped_midway_keeps_its_finished_points(
    page: AppTest, monkeypatch: pytest.MonkeyPatch, downloads: dict[str, object]
) -> None:
    stream = gpt2_engine.Engine.stream

    def stopped_in_window_10(self, prompt, settings=None, *args, **kwargs):
        for step in stream(self, prompt, settings, *args, **kwargs):
            if settings.window == 10 and step.index == 12:
                raise StopException()  # what Streamlit raises in a script run when Stop (or any click) ends it
            yield step

    monkeypatch.setattr(gpt2_engine.Engine, "stream", stopped_in_window_10)
    at = sweep(page)
    monkeypatch.setattr(gpt2_engine.Engine, "stream", stream)
    at.run()  # the script run the click starts
    assert not at.exception
    swept = at.session_state["sweep"]
    assert swept.finished and [run.settings.window for run in swept.runs] == [None, 20, 10]
    cut = swept.runs[-1]
    assert cut.stopped and len(cut.steps) == 12 and cut.coherence is None
    points = sweep_points(at)
    assert sorted(points["window"]) == ["20", "off"]  # the finished windows stay; the part-run is not drawn
    assert any("2 of 4 windows drawn" in w.value for w in at.warning)
    reading = next(m.value for m in at.markdown if "Stopped during" in m.value)
    assert "Stopped during window 10, after 12 of 30 tokens: not drawn" in reading
    assert "Not written: window 5." in reading
    rows = list(csv.DictReader(io.StringIO(downloads[at.download_button(key="sweep_csv").id]())))
    assert [(r["window"], r["tokens"], r["stopped"]) for r in rows] == [
        ("off", "30", "false"),
        ("20", "30", "false"),
        ("10", "12", "true"),
    ]
    assert rows[-1]["perplexity"] == rows[-1]["coherence_kept"] == ""
    assert "window 10 of a sweep" in [run.label for run in at.session_state["history"]]  # kept in History


def test_too_few_windows_is_a_message(page: AppTest) -> None:
    at = sweep(page, sweep_windows=["off"])
    assert any("at least two windows" in e.value for e in at.error)
    assert "sweep" not in at.session_state


def test_sweep_rows_reference_the_largest_complete_window() -> None:
    def record(window, tokens, perplexity, stopped=False):
        return {
            "settings": {"window": window, "max_new_tokens": 10},
            "stats": {
                "tokens": tokens,
                "peak_kv_bytes": tokens * (window or 99),
                "peak_rss_bytes": 1,
                "elapsed_s": 1.0,
                "resets": [],
            },
            "coherence": {"mean_logprob": -1.0, "perplexity": 3 * perplexity} if perplexity else None,
            "reading": {"mean_logprob": -1.0, "perplexity": perplexity} if perplexity else None,  # kept is from this
            "stopped": stopped,
            "error": None,
        }

    rows = sweep_rows([record(50, 10, 20.0), record(20, 10, 40.0), record(None, 4, None, stopped=True)])
    assert [row["coherence_kept"] for row in rows] == [1.0, 0.5, None]  # off was stopped: window 50 is the reference
    assert [row["stopped"] for row in rows] == [False, False, True]


def test_labels_take_the_free_side() -> None:
    # two points close together: the second label does not sit on the first
    sides = place_labels([(10.0, 50.0, "window 10"), (11.0, 50.0, "window 20")], (0.0, 100.0), (0.0, 100.0))
    assert sides[0] != sides[1]
    # a point at the right edge: its label stays inside the plot, clear of its neighbour's
    right = place_labels([(80.0, 50.0, "window 100"), (100.0, 50.0, "window 200 = off")], (0.0, 100.0), (0.0, 100.0))
    assert right[0] == "right" and right[1] not in ("right", "left", "above", "below")


def test_a_sweep_takes_a_turn_per_run_and_per_scoring_so_others_get_in_between(
    page: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another visitor (step mode) who asks for a turn while the sweep writes its first window gets it as that
    window's turn ends, not after the whole sweep."""
    events: list[str] = []  # the sweep's "join" and "leave", and the other visitor's "step", in order
    others: list[threading.Thread] = []

    class Recorded(TurnQueue):
        def join(self) -> object:
            ticket = super().join()
            if threading.current_thread() in others:
                return ticket
            events.append("join")
            if not others:  # the sweep's first turn: another visitor asks now, and is in line before it ends
                other = threading.Thread(target=step_mode_visitor, daemon=True)
                others.append(other)
                other.start()
                deadline = time.monotonic() + 60
                while len(self) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert len(self) == 2, "the other visitor never got in line"
            return ticket

        def leave(self, ticket: object) -> None:
            if threading.current_thread() not in others and ticket in self._line:
                events.append("leave")
            super().leave(ticket)

    turns = Recorded()

    def step_mode_visitor() -> None:
        with turns.turn():
            events.append("step")

    monkeypatch.setattr(runner, "turn_queue", lambda: turns)
    at = sweep(page, sweep_windows=[5, 10, "off"])
    assert not at.exception and at.session_state["sweep"].finished
    others[0].join(60)
    assert [e for e in events if e != "step"] == ["join", "leave"] * 6  # 3 windows, each written and scored
    second_turn_ends = [i for i, e in enumerate(events) if e == "leave"][1]
    assert events.index("leave") < events.index("step") < second_turn_ends  # between the sweep's first two turns


def test_each_window_writes_several_texts_and_the_chart_draws_their_mean_and_range(
    page: AppTest, page_engine: gpt2_engine.Engine
) -> None:
    """Three texts a window (seeds 5, 6, 7): the point's reading is the window's, once; the texts' chart draws the
    mean and range of their rereads; the CSV and History have a row per text."""
    at = sweep(page, sweep_texts=3, sweep_windows=[10, "off"])
    swept = at.session_state["sweep"]
    assert [(r.settings.window, r.settings.seed) for r in swept.runs] == [(None, 5), (None, 6), (None, 7)] + [
        (10, 5),
        (10, 6),
        (10, 7),
    ]
    points = sweep_points(at).set_index("window")
    charts = [chart_data(c) for c in at.get("vega_lite_chart")]
    assert sum("points" in c for c in charts) == 2  # the sweep's chart and, under it, its texts' chart
    for window, name in ((None, "off"), (10, "10")):
        runs = [run for run in swept.runs if run.settings.window == window]
        rereads = [expected_score(page_engine, run).perplexity for run in runs]
        assert points.loc[name, "texts"] == 3
        assert points.loc[name, "text_perplexity"] == pytest.approx(sum(rereads) / 3, rel=1e-4)
        assert points.loc[name, "text_low"] == pytest.approx(min(rereads), rel=1e-4)
        assert points.loc[name, "text_high"] == pytest.approx(max(rereads), rel=1e-4)
        assert points.loc[name, "perplexity"] == pytest.approx(expected_reading(page_engine, window).perplexity)
        assert len({run.generated for run in runs}) == 3  # three seeds, three texts
    assert "window 10 of a sweep, seed 6" in [run.label for run in at.session_state["history"]]


def test_a_model_that_guesses_at_random_gets_its_perplexity_drawn_from_zero(page: AppTest) -> None:
    """The tiny model's random weights read the passage like random guessing: a zoomed y axis would rank its
    windows by noise (on the gpt2-xl stand-in, window 50 looked the most coherent). From 0, they are one flat row."""
    import json

    at = sweep(page)
    chart = next(c for c in at.get("vega_lite_chart") if "points" in chart_data(c))
    spec = json.loads(chart.proto.spec)
    y = spec["layer"][0]["encoding"]["y"]
    assert y["scale"]["zero"] and y["scale"]["domain"][0] == 0 and "guesses at random" in spec["title"]["subtitle"]
    from studio.sweep_chart import sweep_chart

    points = sweep_points(at)
    learned = sweep_chart(points, "kB", "off", guessing=False)["layer"][0]["encoding"]["y"]["scale"]
    assert learned["zero"] is False and learned["domain"][0] > 0  # a model that has learned: zoomed on its spread
