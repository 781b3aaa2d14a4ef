"""One visitor's run: stream into session state, end cleanly however it ends.

Several visitors write at the same moment: the engine decodes every stream asked for at once in one batch
(gpt2_engine.batching), so a Write, Compare or replay run starts at once beside the others, unless the batch is
full (its bound on runs: GPT2_STUDIO_MAX_RUNS, and the memory its caches may take); then it waits, and the page
says how many runs are ahead. Step mode and coherence scoring still take turns (`turn_queue()`), one forward
pass at a time between the batch's.

How Stop works. Clicking Stop (or any widget outside the form) makes Streamlit rerun the script. The
running script is interrupted at its next Streamlit call with an exception Streamlit raises itself
(a BaseException, not caught here). Each token is appended to the run kept in `st.session_state`,
and reading session state is one of those interrupt points, so the run ends within one token.
On the way out, `finally` closes the engine's generator (the run leaves the batch, its cache is freed), and
marks the run stopped; the new script run then shows the text kept so far. A closed tab ends a run the same way.
.streamlit/config.toml turns runner.fastReruns off, so the new script run starts only after that;
with it on, Streamlit starts the new run at once, beside the old, and `latest_run` waits for the old.

A pace a room can watch (presenter mode's Write tab, `generate(pace=...)`): the steps are taken from the engine as
fast as it makes them and only their showing waits (`paced`), so the run leaves the batch as soon as the model is
done, and each Step's `elapsed_s`, stamped as the model made it, still tells the machine's own speed. A run
stopped while paced keeps the text shown so far: what the room saw.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from contextlib import closing

import streamlit as st

import gpt2_engine
from gpt2_engine import TurnQueue

from . import keys, visits
from .run import Run
from .status import in_words

HISTORY_LIMIT = 40  # runs kept per visit, within visits.HISTORY_BYTES
SETTLE_S = 10.0  # longest wait for a stopped run to notice: one token, or a long prompt's first read
PACE_CHECK_S = 0.05  # while a paced run waits to show its next token, it looks this often for Stop


def remember(run: Run) -> Run:
    """Adds a run to this visitor's history as it starts; the entry is the run itself, so it shows how the
    run ended (finished, stopped, failed) and its score once it has one. Its number comes with its first token
    (`write`): History lists the runs that wrote something, numbered 1..n in the order they began writing. Under
    the visit's lock: another tab of this visit may add one at the same moment (visits.add_run)."""
    run.tab = visits.this_tab()
    visits.add_run(run, HISTORY_LIMIT)
    return run


def new_run(
    engine: gpt2_engine.Engine, prompt: str, settings: gpt2_engine.GenerationSettings, kind: str, label: str
) -> Run:
    """A run of the model in this process (a Compare or sweep run), remembered in History as it starts."""
    return remember(
        Run(
            prompt,
            settings,
            engine.name,
            engine.weight_bytes,
            kind=kind,
            label=label,
            precision=engine.precision,
            kv_per_token=engine.kv_bytes_per_token,
            vocab_size=engine.shape.vocab_size,
        )
    )


@st.cache_resource(show_spinner=False)
def turn_queue() -> TurnQueue:
    """One per server: step mode's steps and coherence scoring take turns, whoever asks (streams batch instead)."""
    return TurnQueue()


def latest(key: str, settle_s: float = SETTLE_S):
    """This visitor's latest record under `key` (a Run, a Comparison, a Sweep: anything with `finished`). One still
    writing when a new script run starts is being stopped (with runner.fastReruns, Streamlit starts the new run
    before the old one reaches its next interrupt point): wait, a token's time, for it to say so, rather than
    show it as still writing."""
    record = st.session_state.get(key)
    deadline = time.monotonic() + settle_s
    while record is not None and not record.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    return record


def latest_run(settle_s: float = SETTLE_S) -> Run | None:
    """This visitor's latest Write run (see `latest`)."""
    return latest(keys.RUN, settle_s)


def _interrupt_point() -> None:
    st.session_state.get(keys.RUN)  # reading session state is where Streamlit stops a script run


def paced(
    steps: Iterable[gpt2_engine.Step], per_s: float, check: Callable[[], object] = _interrupt_point
) -> Generator[gpt2_engine.Step, None, None]:
    """`steps`, handed on no faster than `per_s` a second (presenter mode's pace), but taken from the engine as fast
    as it makes them: those made and not yet due wait here. So the pace holds back neither the model nor the batch
    it shares with other visitors (gpt2_engine.batching decodes only a couple of steps ahead of a run's reader),
    and each Step's `elapsed_s` is the model's own time, not the showing's. `check()` is called after each step
    taken and at least every PACE_CHECK_S while waiting: Streamlit stops the script there, so Stop ends a paced
    run at once. A model slower than the pace is shown as it writes; one that fails is shown up to where it failed,
    then its error raised, as at full speed."""
    made = iter(steps)
    waiting: deque[gpt2_engine.Step] = deque()
    more, due, failed = True, time.monotonic(), None  # `due`: when the next step may be shown
    while more or waiting:
        if waiting and time.monotonic() >= due:
            shown = time.monotonic()
            yield waiting.popleft()
            due = shown + 1.0 / per_s
        elif more:  # the next step, while the one before waits for its time: one token's work at most
            try:
                waiting.append(next(made))
            except StopIteration:
                more = False
            except Exception as error:  # noqa: BLE001 - raised once the steps made before it are shown
                more, failed = False, error
        else:
            time.sleep(max(0.0, min(PACE_CHECK_S, due - time.monotonic())))
        check()
    if failed is not None:
        raise failed


def write(
    engine: gpt2_engine.TextEngine,
    run: Run,
    on_step: Callable[[Run], None],
    on_prompt=None,
    on_wait=None,
    pace: float | None = None,
) -> None:
    """Streams `run` (its prompt and settings) into `run.steps`, calling `on_step(run)` after each token, in the
    engine's batch beside other visitors' runs (`on_wait(runs ahead)` while the batch is full). However it ends,
    the run says so: finished; failed (`run.error`, in words); or interrupted by Streamlit (`run.stopped`, the
    text so far kept: see the module's note). With `pace`, a step joins `run.steps` no faster than `pace` a
    second, though the model writes at full speed (`paced`). Every Write, Compare, sweep and replay run
    goes through here."""
    try:
        with closing(engine.stream(run.prompt, run.settings, on_prompt=on_prompt, on_wait=on_wait)) as made:
            steps = paced(made, pace) if pace else made
            for step in steps:
                _interrupt_point()
                if run.cancelled:  # the visit was reloaded: its old page's run ends here, not when Streamlit
                    run.stopped = True  # gets round to stopping the old page's script (on a busy machine, seconds
                    break  # later or never); the new page says why (visits.RELOADED), not as a click of its own
                if not run.steps:
                    visits.number(run)
                run.steps.append(step)
                on_step(run)
    except Exception as error:  # noqa: BLE001 - never a traceback on the page (Streamlit's stop is no Exception)
        run.error = in_words(error, "Generation")
    finally:
        if not run.finished:  # interrupted by Streamlit: Stop, another widget, a closed tab, a reload
            run.stopped = run.interrupted = True


def stopped_by_this_click() -> list[Run]:
    """This visitor's runs that the click starting this script run stopped (each is told once). A start
    button pressed while a run writes stops it, as Stop would, rather than throw it away for a new run."""
    stopped = [run for run in st.session_state.get(keys.HISTORY, []) if run.interrupted]
    for run in stopped:
        run.interrupted = False
    return stopped


def explain_stop(runs: list[Run], button: str) -> None:
    """Says on each run that `button`, pressed while it wrote, stopped it (and started nothing)."""
    for run in runs:
        run.stopped_why = f"{button} was pressed while it wrote: press {button} again to start a new run."


def generate(
    engine: gpt2_engine.TextEngine,
    prompt: str,
    settings: gpt2_engine.GenerationSettings,
    view,
    label: str = "",
    pace: float | None = None,
) -> Run:
    """Runs one generation for this visitor, drawing it on `view` as it streams; with `pace`, shown no faster than
    `pace` tokens a second (presenter mode's Write tab: see `paced`), which the view is told, to say so."""
    run = remember(Run(prompt, settings, engine.name, engine.weight_bytes, label=label, precision=engine.precision))
    run.kv_per_token = getattr(engine, "kv_bytes_per_token", 0)  # a model served elsewhere: its memory is not here
    run.vocab_size = getattr(getattr(engine, "shape", None), "vocab_size", 0)
    run.memory_note = engine.memory_note  # "" when the chart is this process's memory (engine.runs_here)
    visits.keep(keys.RUN, run)
    if pace:
        view.pace = pace
    try:
        view.start(run)
        write(
            engine,
            run,
            view.update,
            on_prompt=getattr(view, "show_reading", None),
            on_wait=view.show_waiting,
            pace=pace,
        )
    finally:
        if not run.finished:  # stopped while it waited for a place in the batch
            run.stopped = run.interrupted = True
    view.show(run)
    return run
