"""The Step by step tab: GPT-2's ten favourite next tokens as bars, the top-p cut across them, and a button on each.

What it shows: the phrase and the text so far (⟲ at window resets, faded where the model has forgotten),
then the ten most likely next tokens with their probabilities, orange inside the top-p set and grey below
the cut. The audience takes a token (its button), lets the sampler draw one (Sample), steps back (Undo),
or lets it write on to the length (Auto). Top-p and temperature redraw the bars for the same context at
once: the stepper keeps the next-token logits, so there is no forward pass.

Where: the settings on the left; on the right the text so far (a box of fixed height that scrolls, newest line
in view), and right under it the ten bars, with Sample, Undo, Auto and Start over beside them and what the last
step did. At 1280x720, sidebar open or in presenter mode, the text and the bars are in the window together
without scrolling (step_mode.css; tests/test_browser_step.py measures it in Chromium).

How: one `gpt2_engine.StepMode` per visitor in `st.session_state[keys.STEPPING]`, built on the first click
here (a forward pass: none at page load) and again when the phrase, the window or the model changes, or
on Start over. Buttons only record what was asked (their callbacks run before the script); the script
then does it inside the model's turn (`runner.turn_queue()`: one step mode at a time on the server; each
forward pass also holds `engine.lock`, so it goes between two of the batch's, never beside them) and draws
the result. A click anywhere while Auto writes stops it, between two tokens; and, as any click
outside the Write tab's form, a click here while the Write tab is writing stops that run (its text is kept).

Widget keys: step_prompt, step_top_p, step_temperature, step_window, step_length, step_restart,
step_sample, step_undo, step_auto, step_stop (while Auto writes), step_pick_0 .. step_pick_9.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

import gpt2_engine
from gpt2_engine import StepMode

from . import controls, keys, presenter, runner, status
from .run_view import TEXT_EVERY_S
from .step_html import (
    Stepping,
    action_note,
    bar_html,
    cut_beyond_html,
    cut_html,
    text_html,
    token_label,
    window_caption,
)
from .words import ordinal, percent, quoted

CANDIDATES = 10  # bars shown: the view people remember
DEFAULT_PROMPT = "Once upon a time, there was a"
DEFAULT_LENGTH = 30  # Auto writes until the text has this many tokens
MAX_LENGTH = 300  # a minute of gpt2-xl on a laptop CPU
CSS = Path(__file__).with_name("step_mode.css")
VIEW, VIEW_PRESENTER = "step_view", "step_view_presenter"  # the text and the bars' container, by mode: its CSS
NO_MODEL = "Step by step waits for a model: the message above the tabs says why, and what to do."
CANDIDATES_TITLE = "**What comes next?** GPT-2's ten likeliest tokens"
TOP_P_SENTENCE = (
    "**Top-p** keeps GPT-2's most likely next tokens, from the top down, until their chances add up to "
    "**p = {p:.0%}**; the sampler then draws only among those (orange, above the dashed line), never below it."
)


@dataclass(frozen=True)
class Choice:
    """The tab's settings, as the widgets say them."""

    prompt: str
    top_p: float
    temperature: float
    window: int | None
    length: int


# ---- the tab ---------------------------------------------------------------------------------------------


def _ask(*action: object) -> None:
    """A button's callback: remember what it asked for; the script run it starts does it."""
    st.session_state[keys.STEP_ACTION] = action


@contextmanager
def _model_turn(area) -> Iterator[None]:
    """The model's turn on this server: a run in another tab or by another visitor goes first."""

    with runner.turn_queue().turn(waiting=lambda ahead: status.waiting(area, ahead, then="It goes on by itself.")):
        yield
    area.empty()


def _settings(max_window: int) -> Choice:
    prompt = controls.phrase(
        "step_prompt",
        "GPT-2 looks at this text and ranks every token it could write next. A short, open phrase shows "
        "the most interesting choices.",
        value=DEFAULT_PROMPT,
        height=68,
    )
    top_p = controls.top_p_slider(
        "step_top_p",
        "The share of probability the sampler keeps, from the most likely token down. Move it and watch the "
        "dashed line move: the bars above it are the only tokens the sampler can draw.",
    )
    temperature = controls.temperature_slider(
        "step_temperature",
        "Below 1 the likely tokens get likelier (surer, duller); above 1 the chances even out (bolder, odder). "
        "The bars change at once: the model does not need to read the text again.",
    )
    window = controls.window_slider(
        max_window,
        key="step_window",
        help="How many recent tokens GPT-2 keeps in mind. Every N tokens it forgets all but the last N (⟲ in "
        "the text; the forgotten part fades). Try 4 to see it lose the thread. Changing it starts over.",
    )
    length = st.slider(
        "Auto writes up to (tokens)",
        1,
        MAX_LENGTH,
        DEFAULT_LENGTH,
        key="step_length",
        help="Auto lets the sampler go on by itself until this many tokens are written.",
    )
    return Choice(prompt, top_p, temperature, controls.window_value(window), int(length))


def _build(engine: gpt2_engine.Engine, choice: Choice, status_area) -> Stepping:
    settings = gpt2_engine.GenerationSettings(top_p=choice.top_p, temperature=choice.temperature, window=choice.window)
    with _model_turn(status_area):
        stepper = StepMode(engine, choice.prompt, settings)
    stepping = Stepping(stepper, (id(engine), choice.prompt, choice.window))
    st.session_state[keys.STEPPING] = stepping
    return stepping


def _do(action: tuple, stepping: Stepping, choice: Choice, status_area, text_box, buttons) -> None:
    """Does what a button asked for, inside the model's turn."""
    stepper = stepping.stepper
    with _model_turn(status_area):
        if action[0] == "pick":
            stepper.step(choice=int(action[1]))
            stepping.how.append("picked")
        elif action[0] == "sample":
            stepper.step()
            stepping.how.append("sampled")
        elif action[0] == "undo" and stepper.undo():
            stepping.how.pop()
        elif action[0] == "auto":
            _auto(stepping, choice.length, status_area, text_box, buttons)
            return
    stepping.note = action_note(stepping) if action[0] != "undo" else "Stepped back one token."


def _auto(stepping: Stepping, length: int, status_area, text_box, buttons) -> None:
    """Samples on to `length` tokens, redrawing the text as it goes. Every Streamlit call here is a point
    where a click stops it; the stepper is whole at each one (a step and its record are never split)."""
    stepper, start = stepping.stepper, len(stepping.stepper.steps)
    buttons.button(
        "Stop", key="step_stop", icon=":material/stop:", width="stretch", help="Stop Auto; the tokens so far are kept."
    )
    drawn_at = float("-inf")
    while len(stepper.steps) < length:
        step = stepper.step()
        stepping.how.append("auto")
        stepping.note = f"Auto wrote {len(stepper.steps) - start} tokens, drawn by the sampler."
        if step.token_id == stepper.engine.eos_token_id:
            stepping.note += " It stopped where GPT-2 wrote ⟨end of text⟩."
            return
        if time.monotonic() - drawn_at >= TEXT_EVERY_S:
            drawn_at = time.monotonic()
            text_box.html(text_html(stepper))
            status_area.info(f"Auto: {len(stepper.steps):,} of {length:,} tokens…", icon=":material/fast_forward:")


def _draw_controls(stepping: Stepping, choice: Choice) -> None:
    """Sample, Undo, Auto and Start over, one above the other beside the bars."""
    steps = len(stepping.stepper.steps)
    st.button(
        "Sample",
        key="step_sample",
        type="primary",
        icon=":material/casino:",
        on_click=_ask,
        args=("sample",),
        width="stretch",
        help="Let the sampler draw the next token, as it does when GPT-2 writes by itself: an orange one, "
        "likelier ones more often.",
    )
    st.button(
        "Undo",
        key="step_undo",
        icon=":material/undo:",
        on_click=_ask,
        args=("undo",),
        width="stretch",
        disabled=steps == 0,
        help="Take the last token back.",
    )
    st.button(
        f"Auto to {choice.length}",
        key="step_auto",
        icon=":material/fast_forward:",
        on_click=_ask,
        args=("auto",),
        width="stretch",
        disabled=steps >= choice.length,
        help=f"Let the sampler write on by itself until {choice.length} tokens are written "
        "(set under 'Auto writes up to'). Click Stop, or anything else, to stop it.",
    )
    st.button(
        "Start over",
        key="step_restart",
        icon=":material/restart_alt:",
        on_click=_ask,
        args=("restart",),
        width="stretch",
        help="Back to your phrase alone (also happens when you change the phrase, the window or the model).",
    )


def _draw_candidates(stepping: Stepping, choice: Choice) -> None:
    stepper = stepping.stepper
    dist = stepper.distribution()
    candidates = stepper.engine.candidates(dist, CANDIDATES)
    st.markdown(CANDIDATES_TITLE, help=TOP_P_SENTENCE.format(p=choice.top_p))
    with st.container(key="step_candidates", gap="xxsmall"):
        for rank, candidate in enumerate(candidates):
            button, bar = st.columns([2, 5], gap="small", vertical_alignment="center")
            button.button(
                token_label(candidate.text),
                key=f"step_pick_{rank}",
                on_click=_ask,
                args=("pick", candidate.token_id),
                width="stretch",
                type="secondary",
                help=f"Take {token_label(quoted(candidate.text))} as the next token "
                f"({percent(candidate.probability)}, GPT-2's {ordinal(rank + 1)} choice).",
            )
            bar.html(bar_html(rank, candidate))
            if rank == dist.nucleus_size - 1 and rank < len(candidates) - 1:
                st.html(cut_html(choice.top_p, dist.nucleus_size, dist.nucleus_mass))
        if dist.nucleus_size > len(candidates):
            st.html(cut_beyond_html(choice.top_p, dist.nucleus_size, dist.nucleus_mass, len(candidates)))
    shown = sum(c.probability for c in candidates)
    st.caption(f"All the other {dist.size - len(candidates):,} tokens together: {percent(max(0.0, 1 - shown))}.")


def render(engine: gpt2_engine.TextEngine | None) -> None:
    """The Step by step tab, for this visitor: the settings on the left; on the right the text so far, and under
    it the ten bars beside the step buttons and what the last step did, all in view at 1280x720."""
    if engine is None:
        st.info(NO_MODEL, icon=":material/hourglass_top:")
        return
    if status.needs_this_machine(engine, "Step by step needs the model on this machine: a server streams whole runs."):
        return
    assert isinstance(engine, gpt2_engine.Engine)  # runs_here: the model is in this process
    st.html(CSS)
    stepping: Stepping | None = st.session_state.get(keys.STEPPING)
    settings_column, main_column = st.columns([1, 2.2], gap="medium")
    with settings_column:
        choice = _settings(gpt2_engine.max_window(engine.n_positions))
    with main_column, st.container(key=VIEW_PRESENTER if presenter.on() else VIEW, gap="xsmall"):
        status_area = st.empty()
        text_box = st.empty()
        intro = st.empty()
        bars_column, side_column = st.columns([2.2, 1], gap="small")
        with side_column:
            buttons = st.empty()
            notes = st.container(gap="xsmall")
        try:
            stepping = _advance(engine, stepping, choice, status_area, text_box, buttons)
        except Exception as error:  # noqa: BLE001 - never a traceback on the page; the log has it
            status_area.error(status.in_words(error, "Step mode"), icon=status.ERROR_ICON)
            return
        if stepping is None:
            _draw_intro(choice, text_box, intro)
            return
        stepper = stepping.stepper
        text_box.html(text_html(stepper))
        with buttons.container(gap="xsmall"):
            _draw_controls(stepping, choice)
        with notes:
            if stepping.note:
                st.caption(stepping.note)
            st.caption(window_caption(stepper))
            if stepper.prompt.dropped:
                st.warning(
                    f"Your phrase was longer than the model can read at once: its first {stepper.prompt.dropped} "
                    "tokens were left out.",
                    icon=":material/content_cut:",
                )
        with bars_column, st.container(gap="xsmall"):
            _draw_candidates(stepping, choice)


def _advance(
    engine: gpt2_engine.Engine, stepping: Stepping | None, choice: Choice, status_area, text_box, buttons
) -> Stepping | None:
    """Builds, rebuilds, retunes and steps as asked; returns the visitor's Stepping (None until started)."""
    action: tuple | None = st.session_state.pop(keys.STEP_ACTION, None)
    built_for = (id(engine), choice.prompt, choice.window)
    if action == ("restart",) or (stepping is not None and stepping.built_for != built_for):
        stepping = _build(engine, choice, status_area)
        action = None
    if stepping is None:
        return None
    stepping.stepper.retune(top_p=choice.top_p, temperature=choice.temperature)  # no forward pass
    if action is not None:
        _do(action, stepping, choice, status_area, text_box, buttons)
    return stepping


def _draw_intro(choice: Choice, text_box, intro) -> None:
    prompt = html.escape(choice.prompt) or '<span class="empty">(no phrase: GPT-2 starts a fresh text)</span>'
    text_box.html(f'<div class="step-text"><div><span class="prompt">{prompt}</span></div></div>')
    with intro.container():
        st.markdown(
            "Here GPT-2 writes **one token at a time, and you choose**. For each next token you see the ten it "
            "finds likeliest, with their chances, and which of them the sampler may draw (top-p). "
            "Take one, let the sampler draw, step back, change top-p and temperature and watch the chances move."
        )
        st.caption(
            "Step by step runs alone: other visitors' texts are written together in one batch, and each of "
            "your steps takes its turn between two of the batch's."
        )
        st.button(
            "Show what GPT-2 would write next",
            key="step_restart",
            type="primary",
            icon=":material/play_arrow:",
            on_click=_ask,
            args=("restart",),
        )
