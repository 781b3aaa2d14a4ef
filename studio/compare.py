"""The Compare windows tab's two windows (its sweep of many is `sweep`): one phrase and one seed, written twice
with two window sizes, one run after the other (each in the engine's batch, beside other visitors' runs); the
texts side by side as they stream, then both memory curves on one chart and, beside it, a table of what each
window cost and saved, coherence included (scored by itself once both runs end), and the sentence that reads it.
Coherence is measured two ways: a real passage read with each window (the same at every press), and the windows'
own texts reread; on a small model each window writes more texts with the next seeds (not shown, only scored;
sweep.default_texts), so the table gives their mean and range, not one draw.
At 1280x720 a finished comparison shows its evidence in one window: both texts (each scrolled to where the two
part), the chart, the table and its sentence; what explains them is under it (the chart's caption, the table in
full, what coherence means): compare_view.py draws it.

Widget keys: compare_prompt, compare_window_a, compare_window_b, compare_length, compare_top_p, compare_seed,
compare_tutorial_mode, compare_run, compare_stop (and compare_reuse_seed under a result). The comparison is
kept in st.session_state[keys.COMPARISON], so it survives reruns; its two runs also go to the History tab.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

import streamlit as st

import gpt2_engine

from . import coherence_view, controls, keys, runner, screen, status, visits
from .compare_view import CompareView
from .comparison import Comparison
from .controls import MAX_LENGTH, OFF
from .run import Run
from .sweep import default_texts
from .words import window_label

DEFAULT_WINDOWS = (20, OFF)  # a small window against the whole context
DEFAULT_LENGTH = 100  # five resets of a window of 20: enough to see the cache's saw-tooth


# ---- the form -------------------------------------------------------------------------------------------


def _form(
    engine: gpt2_engine.Engine | None,
) -> tuple[str, tuple[gpt2_engine.GenerationSettings, ...] | None, str | None, bool]:
    """Draws the form; returns the prompt, the two runs' settings (None when a value is not allowed), the
    problem in words, and whether Compare was pressed in this rerun."""
    max_window = gpt2_engine.max_window(engine.n_positions if engine else 1024)
    with st.form("compare", border=False, enter_to_submit=False):
        prompt = controls.phrase("compare_prompt", "Both runs continue this same text.", height=90)
        window_a, window_b, length_box, top_p_box, seed_box = st.columns([1.2, 1.2, 1, 1, 1], gap="medium")
        windows = [
            controls.window_slider(
                max_window,
                key=f"compare_window_{name.lower()}",
                help="How many recent tokens the model keeps in mind; 'off' keeps the whole text.",
                value=default,
                label=f"Window {name}",
                where=column,
            )
            for column, name, default in ((window_a, "A", DEFAULT_WINDOWS[0]), (window_b, "B", DEFAULT_WINDOWS[1]))
        ]
        length = length_box.slider(
            "Length (tokens)", 1, MAX_LENGTH, DEFAULT_LENGTH, key="compare_length", help="How much each run writes."
        )
        top_p = controls.top_p_slider("compare_top_p", "How adventurous each pick is; the same for both.", top_p_box)
        seed_text = seed_box.text_input(
            "Seed",
            key=keys.COMPARE_SEED,
            placeholder="random",
            help="Both runs use this seed. The same seed with the same settings gives the same comparison again.",
        )
        tutorial_mode = controls.tutorial_toggle("compare_tutorial_mode")
        go = st.form_submit_button(
            "Compare", key="compare_run", type="primary", icon=":material/compare_arrows:", disabled=engine is None
        )
    try:
        seed = controls.seed_or_new(seed_text)
        pair = tuple(
            gpt2_engine.GenerationSettings(
                max_new_tokens=int(length),
                top_p=top_p,
                window=controls.window_value(window),
                seed=seed,
                autograd=tutorial_mode,
            )
            for window in windows
        )
        if engine is not None:
            for settings in pair:
                engine.settings_for(settings)  # what depends on the model: the window, tutorial mode's weights
    except gpt2_engine.SettingsError as error:
        problem = status.setting_problem(error)
        return prompt, None, problem, go
    return prompt, pair, None, go


# ---- running it ---------------------------------------------------------------------------------------


def run_comparison(
    engine: gpt2_engine.Engine, prompt: str, pair: tuple[gpt2_engine.GenerationSettings, ...], view: CompareView
) -> Comparison:
    """Writes both runs, one after the other, each in the engine's batch; on a small model, then a few more texts
    a window with the next seeds, not shown, only scored (one sampled text is one draw: the table gives their mean
    and range); then scores them all in the model's turn (see runner's note on how Stop, or any other click, ends
    a run: the text so far is kept)."""
    labels = [window_label(settings.window) for settings in pair]
    seed = pair[0].seed
    assert seed is not None  # the form always sets one (controls.seed_or_new)
    runs = tuple(
        runner.new_run(engine, prompt, settings, "compare", f"{label} of a comparison")
        for settings, label in zip(pair, labels)
    )
    more = tuple(
        [
            runner.new_run(
                engine,
                prompt,
                replace(settings, seed=seed + text),
                "compare",
                f"{label} of a comparison, seed {seed + text}",
            )
            for text in range(1, 1 if settings.autograd else default_texts(engine))  # tutorial mode: its memory
        ]  # is the lesson there, and each further text would take autograd's time and memory again
        for settings, label in zip(pair, labels)
    )
    comparison = Comparison(prompt, seed, (runs[0], runs[1]), (more[0], more[1]))
    visits.keep(keys.COMPARISON, comparison)
    try:
        view.start(comparison)
        for run in runs:
            runner.write(engine, run, lambda _run: view.update(comparison), on_wait=view.show_waiting)
            if run.error is not None:
                break
        further = [*more[0], *more[1]]
        if all(run.error is None for run in runs):
            for done, run in enumerate(further):
                runner.write(engine, run, functools.partial(view.writing_more, done=done, total=len(further)))
            view.show(comparison, scored=False)
            try:
                coherence_view.score_runs(engine, runs, view.progress, read=True)
                for shown, others in zip(runs, more):  # the same window and length read the passage alike
                    for run in others:
                        run.reading, run.reading_of = shown.reading, shown.reading_of
                written = [run for run in further if run.error is None]  # (one that failed is in History, unscored)
                coherence_view.score_runs(engine, written, view.progress)
            except Exception as error:  # noqa: BLE001 - never a traceback on the page; the log has it
                runs[-1].error = status.in_words(error, "Scoring")
    finally:
        for run in comparison.every_run:
            if not run.finished:  # interrupted: Stop, another widget, a closed tab (or never started)
                run.stopped = True  # (the run being written when it stopped says so itself: runner.write)
    view.show(comparison)
    return comparison


def render(engine: gpt2_engine.TextEngine | None, stopped: list[Run]) -> Callable[[], Comparison] | None:
    """Draws the tab. A comparison asked for now is returned, to be started last (after every tab is drawn);
    unless the click stopped runs that were writing (`stopped`): then it is a Stop, and it says so."""
    st.markdown(
        "Write the same phrase twice, with the same seed, changing only the **window**: see what a smaller "
        "window saves in memory, and what it costs in coherence."
    )
    if status.needs_this_machine(engine, "Comparing windows compares memory, and a server's is not visible from here."):
        return None
    assert engine is None or isinstance(engine, gpt2_engine.Engine)  # runs_here: the model is in this process
    prompt, pair, problem, go = _form(engine)
    if problem:
        status.problem(problem)
    view = CompareView()
    if go and stopped:
        runner.explain_stop(stopped, "Compare")
    elif go and pair is not None and engine is not None:
        return lambda: run_comparison(engine, prompt, pair, view)
    view.show(runner.latest(keys.COMPARISON))
    screen.after_stop(view.scroll, screen.COMPARE, "compare_stop")
    return None
