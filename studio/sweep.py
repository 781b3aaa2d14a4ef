"""The Compare windows tab's sweep: one phrase, one seed and one length, written under several windows one after
the other (a few texts a window on a small model, with the next seeds), each run scored as soon as it is written,
and drawn as one point of a chart: the most its KV cache held (across) against the perplexity of a real passage
read with that window and length (up: gpt2_engine.passages, the same at every press); under it, the windows' own
texts reread, their mean and range. Each window's writing and its scoring take a turn of the model of their own
(runner.turn_queue), so another visitor's step gets in between, not only after the whole sweep.

The reference, written first, is window off (or, without it, the largest window picked); the others follow,
largest first, and each point's "coherence kept" is the reference's passage perplexity over its own. Stop, or any other
click, ends the sweep within a token (see studio/runner.py): the windows written in full and scored stay on the
chart; a window cut short is kept in History and the CSV, not drawn. Every run sets stop_at_eos off, so each
window writes exactly the length asked: the same text length for every point.

Widget keys: sweep_prompt, sweep_windows, sweep_length, sweep_top_p, sweep_seed, sweep_run, sweep_stop,
sweep_csv (the download under the chart). The sweep is kept in st.session_state[keys.SWEEP], so it survives
reruns; each of its runs also goes to the History tab ("window 50 of a sweep").
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

import gpt2_engine
from gpt2_engine import sweep_csv

from . import coherence_view, controls, keys, runner, screen, status, sweep_chart, visits
from .charts import kv_unit
from .controls import MAX_LENGTH, OFF
from .run import Run
from .run_view import TEXT_EVERY_S
from .sweep_points import Sweep, by_window, guesses_at_random, sweep_points, sweep_reading
from .words import ordinal, window_label

WINDOW_CHOICES = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500)  # and the model's largest, and off
DEFAULT_WINDOWS = (10, 20, 50, 100, 200, OFF)
DEFAULT_LENGTH = 200  # a window of 100 resets once; 200 never does: it writes what off writes
WRITE_SHARE = 0.8  # of each run's part of the progress bar: writing; the rest is rereading it and the passage
MOST_TEXTS = 5  # texts a window may write, each with its own seed (the seed asked, then the next ones)


def default_texts(engine: gpt2_engine.Engine | None) -> int:
    """Texts per window by default: 3 where a run takes seconds (a small model), 1 where it takes a minute."""
    return 3 if engine is None or gpt2_engine.passages.is_small(engine) else 1


def window_options(max_window: int) -> list[int | str]:
    """The windows a sweep offers: the usual sizes up to the model's largest, that largest, and off."""
    sizes = [size for size in WINDOW_CHOICES if size <= max_window]
    if max_window not in sizes:
        sizes.append(max_window)
    return [*sizes, OFF]


def writing_order(windows: list[int | str]) -> tuple[int | None, ...]:
    """The windows as GenerationSettings takes them, in the order a sweep writes them: off (or the largest)
    first, the reference every other window is measured against, then from larger to smaller."""
    sizes = sorted({controls.window_value(window) or 0 for window in windows}, reverse=True)
    return tuple(sorted((size or None for size in sizes), key=lambda size: size is not None))


@dataclass(frozen=True)
class SweepRequest:
    """What the sweep's form asks for."""

    prompt: str
    settings: tuple[gpt2_engine.GenerationSettings, ...] | None  # in writing order, each window's texts together
    # (their seeds the one asked and the next ones); None when a value is not allowed
    problem: str | None  # that value, said in words
    go: bool  # Sweep was pressed in this rerun
    texts: int = 1  # texts each window writes


def _form(engine: gpt2_engine.Engine | None) -> SweepRequest:
    max_window = gpt2_engine.max_window(engine.n_positions if engine else 1024)
    options = window_options(max_window)
    with st.form("sweep_form", border=False, enter_to_submit=False):
        prompt = controls.phrase("sweep_prompt", "Every run of the sweep continues this same text.", height=90)
        windows = st.multiselect(
            "Windows (tokens)",
            options,
            default=[window for window in DEFAULT_WINDOWS if window in options],
            key="sweep_windows",
            help="One run per window, each one point on the chart. 'off' keeps the whole text: the reference.",
        )
        length = st.slider(
            "Length (tokens)",
            1,
            MAX_LENGTH,
            DEFAULT_LENGTH,
            key="sweep_length",
            help="How much each run writes: every window writes exactly this many tokens.",
        )
        top_p = controls.top_p_slider("sweep_top_p", "How adventurous each pick is; the same for every run.")
        texts = st.slider(
            "Texts per window",
            1,
            MOST_TEXTS,
            default_texts(engine),
            key="sweep_texts",
            help="Each window writes this many texts, with the seed below and the next ones: one sampled text is "
            "one draw, so the chart under the sweep draws their mean and range. Fewer on a large model (a run "
            "there takes a minute).",
        )
        seed_box, button_box = st.columns(2, vertical_alignment="bottom")
        seed_text = seed_box.text_input(
            "Seed",
            key="sweep_seed",
            placeholder="random",
            help="Every run uses this seed: they part only where a window has forgotten something.",
        )
        go = button_box.form_submit_button(
            "Sweep", key="sweep_run", type="primary", icon=":material/scatter_plot:", disabled=engine is None
        )
    if len(windows) < 2:
        return SweepRequest(prompt, None, "Pick at least two windows to sweep.", go)
    try:
        seed = controls.seed_or_new(seed_text)
        settings = tuple(
            gpt2_engine.GenerationSettings(
                max_new_tokens=int(length), top_p=top_p, window=window, seed=seed + text, stop_at_eos=False
            )
            for window in writing_order(windows)
            for text in range(int(texts))
        )
        if engine is not None:
            for each in settings:
                engine.settings_for(each)  # the window against the model's positions
    except gpt2_engine.SettingsError as error:
        return SweepRequest(prompt, None, str(error), go, int(texts))
    return SweepRequest(prompt, settings, None, go, int(texts))


class SweepView:
    """The placeholders a sweep is drawn in: its progress (or status) line beside Stop, the chart, the sentence
    that reads it, and the download with what the chart means."""

    def __init__(self) -> None:
        with st.container(key=screen.SWEEP):
            line, stop = st.columns([4, 1], vertical_alignment="center")
            self.line, self.stop = line.empty(), stop.empty()
            self.chart = st.empty()
            self.reading = st.empty()
            self.below = st.empty()
            self.scroll = st.empty()
        self._drawn_at = float("-inf")

    def start(self) -> None:
        """A sweep begins: Stop beside its progress line, and the page scrolled to show the line and the chart."""
        # Clicking Stop reruns the page, which interrupts the sweep within one token (see studio/runner.py).
        self.stop.button(
            "Stop", key="sweep_stop", icon=":material/stop:", help="Stop the sweep; the windows done so far stay."
        )
        screen.keep_in_view(self.scroll, screen.SWEEP)

    def show_waiting(self, ahead: int) -> None:
        status.waiting(self.line, ahead)

    def _progress(self, sweep: Sweep, run: Run, share: float, what: str) -> None:
        place, total = len(sweep.runs), len(sweep.windows) * sweep.texts
        overall = (place - 1 + share) / total
        window = (place - 1) // sweep.texts + 1  # this window's place among the windows
        text = f" · text {(place - 1) % sweep.texts + 1} of {sweep.texts}" if sweep.texts > 1 else ""
        self.line.progress(
            min(1.0, overall),
            text=f"{window_label(run.settings.window)}: {what}, {ordinal(window)} of {len(sweep.windows)}{text}",
        )

    def writing(self, sweep: Sweep, run: Run) -> None:
        now = time.monotonic()
        if now - self._drawn_at >= TEXT_EVERY_S or run.finished:
            self._drawn_at = now
            length = run.settings.max_new_tokens
            share = WRITE_SHARE * len(run.steps) / length
            self._progress(sweep, run, share, f"{len(run.steps):,} of {length:,} tokens")

    def rereading(self, sweep: Sweep, run: Run, done: int, total: int) -> None:
        share = WRITE_SHARE + (1 - WRITE_SHARE) / 2 * (done / total if total else 1.0)
        self._progress(sweep, run, share, f"rereading to score it, {done:,} of {total:,} tokens")

    def reading_passage(self, sweep: Sweep, run: Run, done: int, total: int) -> None:
        share = WRITE_SHARE + (1 - WRITE_SHARE) / 2 * (1 + (done / total if total else 1.0))
        self._progress(sweep, run, share, f"reading the passage with this window, {done:,} of {total:,} pieces")

    def show(self, sweep: Sweep | None, final: bool = True) -> None:
        """The chart and its sentence as they stand. With `final`, also the status line and the download: once
        per script run, when the sweep is over."""
        if sweep is None:
            self.line.info(
                "Pick the windows and press **Sweep**: the same phrase and seed are written once per window, "
                "and each run becomes one point, its memory against its coherence.",
                icon=":material/scatter_plot:",
            )
            return
        rows = sweep.rows()
        points = sweep_points(sweep, rows)
        if points.empty:
            self.chart.empty()
        else:
            unit, _ = kv_unit(float(points["kv_bytes"].max()))
            reference = "off" if sweep.reference is None else str(sweep.reference)
            guessing = guesses_at_random(sweep)
            spec = sweep_chart.sweep_chart(points, unit, reference, guessing)
            with self.chart.container():
                st.vega_lite_chart(spec=spec, width="stretch", height=sweep_chart.SWEEP_HEIGHT_PX)
                texts = sweep_chart.texts_chart(points, unit, sweep.texts, guessing)
                st.vega_lite_chart(spec=texts, width="stretch", height=sweep_chart.TEXTS_HEIGHT_PX)
        reading = sweep_reading(sweep, rows)
        if reading:
            self.reading.markdown(reading)
        else:
            self.reading.empty()
        if final:
            self.stop.empty()  # the sweep is over (or another tab's is still going: its own Stop stops it)
            self._status(sweep, rows)
            with self.below.container():
                if rows:
                    st.download_button(
                        "Download the sweep (CSV)",
                        data=lambda: sweep_csv(rows),
                        file_name=f"gpt2-studio-sweep-seed-{sweep.seed}.csv",
                        mime="text/csv",
                        key="sweep_csv",
                        on_click="ignore",
                        icon=":material/download:",
                        help="One row per window: tokens, peak KV cache and program memory (bytes), log-likelihood, "
                        "perplexity, coherence kept, seconds, and whether it was stopped.",
                    )
                st.caption(sweep_chart.SWEEP_EXPLANATION)

    def _status(self, sweep: Sweep, rows: list[dict]) -> None:
        failed = next((run for run in sweep.runs if run.error is not None), None)
        drawn = len(by_window(rows))  # windows with a text written in full and scored: points on the chart
        if failed is not None:
            self.line.error(failed.error, icon=status.ERROR_ICON)
        elif not sweep.finished:
            self.line.info("Stopping the sweep…", icon=":material/stop_circle:")
        elif drawn == len(sweep.windows):
            self.line.success(
                f"Swept {drawn} windows with seed {sweep.seed}, {sweep.length:,} tokens each"
                + (
                    f", {sweep.texts} texts a window (seeds {sweep.seed}-{sweep.seed + sweep.texts - 1})."
                    if sweep.texts > 1
                    else "."
                ),
                icon=":material/check_circle:",
            )
        else:
            planned = len(sweep.windows) * sweep.texts
            ended = "stopped" if any(run.stopped for run in sweep.runs) or len(rows) < planned else "done"
            self.line.warning(
                f"Sweep {ended}: {drawn} of {len(sweep.windows)} windows drawn (seed {sweep.seed}).",
                icon=":material/stop_circle:",
            )


def run_sweep(engine: gpt2_engine.Engine, request: SweepRequest, view: SweepView) -> Sweep:
    """Writes and scores each window in turn, drawing each point as it is scored: the writing and the scoring
    each in a turn of the model of its own, so that others waiting for one get in between."""
    settings = request.settings or ()
    assert settings[0].seed is not None  # the form always sets one (controls.seed_or_new)
    windows = tuple(dict.fromkeys(s.window for s in settings))  # in writing order, once each
    sweep = Sweep(request.prompt, settings[0].seed, settings[0].max_new_tokens, windows, texts=request.texts)
    readings: dict[int | None, Run] = {}  # the first run of each window read the passage: the others take its figure
    visits.keep(keys.SWEEP, sweep)
    turns = runner.turn_queue()
    view.start()
    try:
        for each in settings:
            seed = f", seed {each.seed}" if sweep.texts > 1 else ""
            label = f"{window_label(each.window)} of a sweep{seed}"
            run = runner.new_run(engine, request.prompt, each, "sweep", label)
            sweep.runs.append(run)
            with turns.turn(waiting=view.show_waiting):
                runner.write(engine, run, lambda run: view.writing(sweep, run))
            if run.error is not None:
                break
            try:
                with turns.turn(waiting=view.show_waiting):
                    coherence_view.score_run(engine, run, functools.partial(view.rereading, sweep, run))
                    if each.window in readings:  # the same window and length read the same passage alike
                        run.reading, run.reading_of = readings[each.window].reading, readings[each.window].reading_of
                    else:
                        coherence_view.read_passage(engine, run, functools.partial(view.reading_passage, sweep, run))
                        readings[each.window] = run
            except Exception as error:  # noqa: BLE001 - never a traceback on the page; the log has it
                run.error = status.in_words(error, "Scoring")
                break
            view.show(sweep, final=False)  # the new point
    finally:
        for run in sweep.runs:
            if not run.finished:  # interrupted: Stop, another widget, a closed tab
                run.stopped = True  # (the run being written when it stopped says so itself: runner.write)
        sweep.ended = True
    view.show(sweep)
    return sweep


def render(engine: gpt2_engine.TextEngine | None, stopped: list[Run]) -> Callable[[], Sweep] | None:
    """Draws the sweep. A sweep asked for now is returned, to be started last (after every tab is drawn);
    unless the click stopped runs that were writing (`stopped`): then it is a Stop, and it says so."""
    st.markdown(
        "Write the same phrase with the same seed under **several windows**, one after the other: each run becomes "
        "one point, what it kept in memory against how coherent it reads. The trade-off, in one picture."
    )
    why = "A sweep measures memory and rereads each text with the model to score it: both need the model here."
    if status.needs_this_machine(engine, why):
        return None
    assert engine is None or isinstance(engine, gpt2_engine.Engine)  # runs_here: the model is in this process
    settings_column, result_column = st.columns([1, 2.2], gap="large")  # the chart in view beside the form
    with settings_column:
        request = _form(engine)
        if request.problem:
            status.problem(request.problem)
    with result_column:
        view = SweepView()
    if request.go and stopped:
        runner.explain_stop(stopped, "Sweep")
    elif request.go and request.settings is not None and engine is not None:
        return lambda: run_sweep(engine, request, view)
    view.show(runner.latest(keys.SWEEP))
    screen.after_stop(view.scroll, screen.SWEEP, "sweep_stop")
    return None
