"""Coherence on the page: how likely the model finds a run's text when it rereads all of it.

Scored on request under a Write run (the `score` button), by itself after a comparison and after each window
of a sweep, in the model's turn, with a progress bar: on gpt2-xl on a CPU the reread takes seconds. The number
is gpt2_engine's `coherence()`; this part only asks for it, shows progress and says what it means. Comparisons
and sweeps also measure each window on a real passage (`read_passage`, gpt2_engine.passages): one sampled text
is one draw, the passage reads the same at every press.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

import gpt2_engine
from gpt2_engine import passages

from . import runner
from .run import Run

EXPLANATION = (
    "**Coherence** is how likely the model finds the text when it rereads all of it, your phrase included: "
    "the average log-likelihood per written token (closer to 0 is more coherent), or as **perplexity**, "
    "the model is as unsure as if it were choosing among this many words each time (lower is more coherent)."
)
TUTORIAL_MODE_NOTE = (
    ":orange-badge[:material/school: Tutorial mode] Autograd was on, as in the tutorial: every token kept the "
    "chain of sums that made it, so memory climbed faster and faster until a window reset let it go."
)


def _prompt_ids(engine: gpt2_engine.Engine, run: Run) -> list[int]:
    """The phrase as the model reads it with its whole context (no window): the same for both runs of a pair."""
    return engine.prepare_prompt(run.prompt, None).ids


def score_runs(engine: gpt2_engine.Engine, runs: Sequence[Run], progress_area, read: bool = False) -> None:
    """Scores each run that has text and no score yet, in the model's turn, drawing progress in `progress_area`
    (an st.empty()), which is emptied at the end. The score is kept on the run (`run.coherence`); with `read`,
    the passage read with the run's window too (`read_passage`)."""
    todo = [run for run in runs if run.steps and (run.coherence is None or (read and run.reading is None))]
    if not todo:
        return
    bar = progress_area.progress(0.0, text="Waiting for the model to reread the text…")

    def waiting(ahead: int) -> None:
        bar.progress(0.0, text=f"Waiting for the model: {ahead:,} run{'s are' if ahead != 1 else ' is'} ahead.")

    with runner.turn_queue().turn(waiting=waiting):
        for done_runs, run in enumerate(todo):
            name = f" {run.label}" if len(todo) > 1 and run.label else ""

            def report(done: int, total: int, done_runs: int = done_runs, name: str = name) -> None:
                share = (done_runs + (done / total if total else 1.0)) / len(todo)
                bar.progress(min(1.0, share), text=f"Rereading{name}: {done:,} of {total:,} tokens scored")

            if run.coherence is None:
                score_run(engine, run, report)
            if read and run.reading is None:

                def reading(done: int, total: int, done_runs: int = done_runs, name: str = name) -> None:
                    share = (done_runs + (done / total if total else 1.0)) / len(todo)
                    bar.progress(min(1.0, share), text=f"Reading the passage{name}: {done:,} of {total:,} pieces")

                read_passage(engine, run, reading)
    progress_area.empty()


def score_run(engine: gpt2_engine.Engine, run: Run, report: Callable[[int, int], None]) -> None:
    """Scores one run and keeps the score on it (`run.coherence`); `report(done, total)` as tokens are scored.
    The caller holds the model's turn (score_runs does; a sweep scores each window in its own turn)."""
    report(0, len(run.steps))
    generated = [step.token_id for step in run.steps]
    run.coherence = gpt2_engine.coherence(engine, _prompt_ids(engine, run), generated, progress=report)


@st.cache_resource(max_entries=4, show_spinner=False)
def _passage(_engine: gpt2_engine.Engine, name: str) -> passages.Passage:
    """The passage a model is measured on, tokenized once per server and model (`name` keys the cache)."""
    return passages.for_model(_engine)


def read_passage(engine: gpt2_engine.Engine, run: Run, report: Callable[[int, int], None]) -> None:
    """Measures how well the model reads a real passage with this run's window and length, and keeps it on the
    run (`run.reading`, `run.reading_of`); `report(done, total)` as its pieces are read. The caller holds the
    model's turn."""
    passage = _passage(engine, engine.name)
    run.reading = passages.reading(engine, passage, run.settings.window, run.settings.max_new_tokens, report)
    run.reading_of = passage.name


GUESSING = 0.25  # a perplexity above this share of the vocabulary: the model has learned nothing (comparison too)


def noise_note(perplexity: float, vocab_size: int) -> str:
    """A sentence where a perplexity is about that of picking tokens at random (random weights: a stand-in)."""
    if not vocab_size or perplexity < GUESSING * vocab_size:
        return ""
    return (
        f"Perplexity {perplexity:,.0f} of {vocab_size:,} tokens is about as unsure as picking at random: this model's "
        "weights have learned nothing (a stand-in with random weights), so its text is noise and no window can cost "
        "it coherence. The shipped gpt2-shakespeare, or the real gpt2-xl, shows what a window costs."
    )


def show_score(score: gpt2_engine.Coherence, vocab_size: int = 0) -> None:
    log_likelihood, perplexity = st.columns(2)
    log_likelihood.metric(
        "Log-likelihood per token",
        f"{score.mean_logprob:.2f}",
        help="The average of log(probability) the model gives each written token when it rereads the whole "
        "text. 0 would be certainty; closer to 0 is more coherent.",
    )
    perplexity.metric(
        "Perplexity",
        f"{score.perplexity:,.1f}",
        help="exp(-log-likelihood): the model is as unsure as if it chose among this many words each time.",
    )
    if note := noise_note(score.perplexity, vocab_size):
        st.info(note, icon=":material/casino:")


def panel(engine: gpt2_engine.TextEngine | None, run: Run | None) -> None:
    """Under a Write run: tutorial mode said plainly, and its coherence (a button until it is scored)."""
    if run is None:
        return
    if run.settings.autograd:
        if run.error is not None:
            st.info(
                "Tutorial mode needs weights autograd can work with: pick **fp32 (full)** under Precision in the "
                "sidebar, then Generate again.",
                icon=":material/school:",
            )
        elif run.steps:
            st.markdown(TUTORIAL_MODE_NOTE)
    if not run.finished or not run.steps or engine is None or not engine.runs_here:
        return  # scoring rereads the text with the model's full context: the model must be on this machine
    assert isinstance(engine, gpt2_engine.Engine)  # runs_here: the local engine, the model in this process
    if run.coherence is None and run.model != engine.name:
        st.caption(f"To score this text, load the model that wrote it ({run.model}) again.")
    elif run.coherence is None:
        button_area = st.empty()
        asked = button_area.button(
            "Score coherence",
            key="score",
            icon=":material/fact_check:",
            help="The model rereads the whole text and says how likely it finds it. A few seconds on a big model.",
        )
        if asked:
            score_runs(engine, [run], button_area)  # the progress bar takes the button's place, then the score
    if run.coherence is not None:
        show_score(run.coherence, run.vocab_size)
    st.caption(EXPLANATION)
