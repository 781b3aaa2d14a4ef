"""What the page says about a run in one line (writing, waiting, done, stopped, failed), and a failure in words.

Every tab draws its runs' status with `run_status` and its waits with `waiting`, and turns an exception into
a message with `in_words`: a StudioError as it is (it already names the field and what is allowed), anything
else with its type, and the traceback to the log, never to the page.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

import gpt2_engine
from gpt2_engine import STOP_REASONS

from .run import Run
from .words import count, tokens, window_label

LOG = logging.getLogger("gpt2_studio")
ERROR_ICON = ":material/error:"


def waiting(area, ahead: int, then: str = "It starts by itself.") -> None:
    """The model is busy with other runs (this visitor's other tab, or other visitors)."""
    others = count(ahead, "run is", "runs are")
    area.info(f"Waiting for the model: {others} ahead. {then}", icon=":material/hourglass_top:")


def run_status(area, run: Run, after_other: bool = False) -> None:
    """A run's status line. `after_other`: it waits for the other run of its comparison to end."""
    stats, length = run.stats, run.settings.max_new_tokens
    if run.error is not None:
        area.error(run.error, icon=ERROR_ICON)
    elif after_other and not run.finished:
        area.info("Waits for the other run to finish.", icon=":material/hourglass_top:")
    elif not run.finished:
        area.info(f"Writing… {stats.tokens:,} of {tokens(length)}", icon=":material/edit:")
    elif run.stopped:
        when = (
            f"after {stats.tokens:,} of {tokens(length)}: the text so far is kept" if run.steps else "before it started"
        )
        area.warning(f"Stopped {when}. {run.stopped_why}".strip(), icon=":material/stop_circle:")
    elif stats.stop_reason == "memory":
        area.warning(f"Stopped after {tokens(stats.tokens)}: {STOP_REASONS['memory']}.", icon=":material/memory:")
    else:
        ending = STOP_REASONS.get(stats.stop_reason or "", stats.stop_reason)
        area.success(f"Done: {tokens(stats.tokens)}, {ending}.", icon=":material/check_circle:")


def model_name(run: Run) -> str:
    """The model as a person calls it: its name, or a folder's last part."""
    return Path(run.model).name if run.model.startswith(("/", ".", "~")) else run.model


def settings_line(run: Run) -> str:
    """What made a run, whatever the widgets show now: model, precision, top-p, temperature, window, seed."""
    settings = run.settings
    parts = [
        model_name(run) + (f" ({run.precision})" if run.precision else ""),
        f"top-p {settings.top_p:.2f}",
        f"temperature {settings.temperature:g}",
        window_label(settings.window),
        f"seed {run.stats.seed if run.steps else settings.seed}",
        f"{tokens(settings.max_new_tokens)} asked",
    ]
    if settings.sampler != "nucleus":
        parts.append(f"{settings.sampler} sampler")
    if settings.top_k:
        parts.append(f"top-k {settings.top_k}")
    if settings.autograd:
        parts.append("tutorial mode")
    threads = run.steps[-1].threads if run.steps else 0
    if threads:  # what the engine measured fastest on this machine now (gpt2_engine.threads)
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return " · ".join(parts)


def problem(text: str) -> None:
    """A value a form cannot take, said where the form is (the settings stay as they were typed)."""
    st.error(text, icon="⚠️")


FIELD_LABELS = {  # a setting's name in the engine -> its widget's label on the page
    "max_new_tokens": "Length",
    "top_p": "Top-p",
    "window": "Window",
    "sampler": "Sampler",
    "temperature": "Temperature",
    "top_k": "Top-k",
    "seed": "Seed",
    "memory_share": "Memory guard",
    "choice": "The token picked",
}


def setting_problem(error: gpt2_engine.SettingsError) -> str:
    """A value a setting cannot take, in the page's words: the widget's label and what it allows."""
    if error.field == "autograd":
        return (
            f"**Tutorial mode** {error.allowed.removeprefix('tutorial mode ')}: pick **fp32** under Precision in "
            "the sidebar, or turn tutorial mode off."
        )
    label = FIELD_LABELS.get(error.field, error.field)
    return f"**{label}** cannot be {error.value!r}: use {error.allowed}."


def in_words(error: Exception, what: str) -> str:
    """An exception as the page says it. `what` names the work that failed ("Generation", "Step mode")."""
    if isinstance(error, gpt2_engine.SettingsError):
        return setting_problem(error)
    if isinstance(error, gpt2_engine.StudioError):
        return str(error)
    LOG.error("%s failed", what, exc_info=error)
    return f"{what} failed: {type(error).__name__}: {error}"


def needs_this_machine(engine: gpt2_engine.TextEngine | None, why: str) -> bool:
    """True, with a note saying `why` and how to run the model here, when `engine` is served elsewhere (the
    Backend field): the tab's work needs the model on this machine."""
    if engine is None or engine.runs_here:
        return False
    st.info(
        f"{why} Empty the **Backend** field in the sidebar to load a GPT-2 on this machine.", icon=":material/cloud:"
    )
    return True
