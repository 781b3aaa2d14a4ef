"""GPT-2 Studio: type a phrase, watch GPT-2 continue it token by token while its memory is charted.

    streamlit run app.py
    GPT2_STUDIO_MODEL=gpt2 streamlit run app.py          # start with another model (a name or a folder)
    GPT2_STUDIO_PRECISION=fp32 streamlit run app.py      # ... or at another precision (auto, fp32, bf16, fp16, int8, q8)

Layout and wiring only, top to bottom: the parts live in studio/, the work in gpt2_engine/.
"""

import os
from pathlib import Path

import streamlit as st

import gpt2_engine
from studio import (
    coherence_view,
    compare,
    controls,
    history,
    model_picker,
    presenter,
    runner,
    status,
    step_mode,
    sweep,
    visits,
)
from studio.run_view import RunView

visits.restore()  # first: a reload (or the visit's URL in a new tab) finds this visit's runs and settings
presenting = presenter.on()
st.set_page_config(
    page_title="GPT-2 Studio",
    page_icon="✍️",
    layout="wide",
    initial_sidebar_state="collapsed" if presenting else "auto",
)
st.html(Path(__file__).parent / "studio" / "style.css")
presenter.style()

title, mode = st.columns([4, 1.4], vertical_alignment="bottom")
title.title("GPT-2 Studio")
presenter.toggle(mode)
if not presenting:
    st.caption(
        "Type a phrase and watch GPT-2 continue it, one word piece at a time, "
        "while the charts show how much memory it takes and what a smaller context window saves."
    )

with st.sidebar:  # the model first, then what it needs and how auto chose; a server elsewhere folded under them,
    st.header("Model")  # so that all of it is in view at 1280x720
    model_area = st.container()
    with st.expander("A model served elsewhere", expanded=bool(os.environ.get(model_picker.ENV_BACKEND, "").strip())):
        backend = model_picker.pick_backend()
    with model_area:
        choice = None if backend else model_picker.pick_model()
loading_box = st.empty()
body = st.container()  # the tabs' place
# While a model loads, an empty placeholder takes the old tabs' place (its progress shows alone, not over a faded
# copy of the page), and the new tabs then take the placeholder's: the same place either way, so no stale copy.
cover = []
if choice is None:  # a model served elsewhere (vLLM, llama.cpp's server): see gpt2_engine/remote/
    engine = model_picker.load_remote(backend, model_area)
else:
    engine = model_picker.load_model(choice, model_area, loading_box, on_wait=lambda: cover.append(body.empty()))
# A start button pressed while a run writes stops that run (as Stop does) and starts nothing: no run is lost.
stopped = runner.stopped_by_this_click()

tabs_area = cover[0].container() if cover else body.container()
write_tab, step_tab, compare_tab, history_tab = tabs_area.tabs(["Write", "Step by step", "Compare windows", "History"])
with write_tab:
    if presenting:  # the settings folded away, the whole width for the text and its charts side by side
        # open until the first run, folded as it starts (not after it: the run would jump up, out of view); once
        # unfolded by hand it stays open, and studio/screen.py scrolls each run into view instead
        folded = runner.latest_run(settle_s=0) is not None or bool(st.session_state.get("generate"))
        settings_column = st.expander("Your phrase and the settings", expanded=not folded)
        run_column = st.container()
    else:
        settings_column, run_column = st.columns([1, 2], gap="large")
    with settings_column:
        request = controls.generation_form(
            max_window=gpt2_engine.max_window(engine.n_positions if engine else 1024),
            enabled=engine is not None,
        )
        if request.problem:
            status.problem(request.problem)
    with run_column:
        view = RunView(ready=engine is not None, side_by_side=presenting)
with step_tab:
    step_mode.render(engine)
with compare_tab:
    pair_tab, sweep_tab = st.tabs(["Two windows", "Sweep: many windows"])
    with pair_tab:
        start_comparison = compare.render(engine, stopped)  # a comparison asked for starts last, as a Write run does
    with sweep_tab:
        start_sweep = sweep.render(engine, stopped)  # ... and so does a sweep
with history_tab:
    history_box = st.empty()  # drawn last, so that it lists every run, this script run's included
    history_box.caption("The list of this visit's runs appears here when the model is done writing.")

visits.keep_widgets()  # before a run starts: a reload while it writes finds the settings that made it

# Last, so that every tab is drawn before a run starts streaming into its tab.
if request.generate and stopped:
    runner.explain_stop(stopped, "Generate")
if request.generate and not stopped and engine is not None and request.settings is not None:
    latest = runner.generate(engine, request.prompt, request.settings, view, pace=request.pace)
else:
    latest = runner.latest_run()
    view.show(latest)
with run_column:
    coherence_view.panel(engine, latest)  # under the run: tutorial mode, and its coherence on request
if start_comparison is not None:
    start_comparison()
if start_sweep is not None:
    start_sweep()
with history_box.container():
    history.render(engine)
