"""The Step by step tab's pieces: a visitor's stepping state, and the HTML and words drawn from a
`StepMode`'s state. Pure functions, each with tests of its own; `step_mode` lays them out on the page."""

from __future__ import annotations

import html
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import gpt2_engine
from gpt2_engine import StepMode, TextStream

from .run_view import RESET_MARK
from .words import count, ordinal, percent, quoted, visible

IN_SET_COLOR, OUT_OF_SET_COLOR = "#e8590c", "#c3c7d1"  # the page's orange; a grey that still reads as a bar


@dataclass
class Stepping:
    """A visitor's step-mode run, and what it was built for."""

    stepper: StepMode
    built_for: tuple[int, str, int | None]  # (id of the engine, phrase, window): another one means rebuild
    how: list[str] = field(default_factory=list)  # per generated token: "picked", "sampled" or "auto"
    note: str = ""  # what the last action did, in words


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds, in order, UTF-8-safe: a character split over tokens goes with its last token."""
    stream = TextStream(tokenizer)
    pieces = [stream.push(token) for token in ids]
    if pieces:
        pieces[-1] += stream.flush()  # bytes that never became a whole character
    return pieces


def token_label(text: str) -> str:
    """A token as its button shows it: a new word without its leading space, line breaks and lone spaces
    made visible, Markdown characters escaped (a button label is Markdown)."""
    shown = visible(text)
    if not shown.strip():
        shown = "␣" * len(shown) or "∅"  # a space (or nothing) is a token too
    elif shown.startswith(" "):
        shown = shown[1:]
    return "".join("\\" + ch if ch in string.punctuation else ch for ch in shown)


def text_html(stepper: StepMode) -> str:
    """The phrase and the tokens so far, escaped: grey phrase, dark continuation, the newest token marked,
    ⟲ before a token the window re-primed for, and faded what the model no longer holds."""
    engine, ids, steps = stepper.engine, stepper.ids, stepper.steps
    n_prompt = len(stepper.prompt.ids)
    parts = []
    for i, piece in enumerate(token_pieces(engine.tokenizer, ids)):
        index = i - n_prompt  # the step that wrote this token; < 0 in the phrase
        classes = ["prompt" if index < 0 else "generated"]
        if i < stepper.held_from:
            classes.append("forgotten")
        if index >= 0 and index == len(steps) - 1:
            classes.append("latest")
        if index >= 0 and ids[i] == engine.eos_token_id:
            classes.append("eos")
            piece = "⟨end of text⟩"
        mark = RESET_MARK if index >= 0 and steps[index].reset else ""
        parts.append(f'{mark}<span class="{" ".join(classes)}">{html.escape(piece)}</span>')
    next_mark = '<span class="next" title="the next token goes here">▁</span>'
    return f'<div class="step-text"><div>{"".join(parts)}{next_mark}</div></div>'


def window_caption(stepper: StepMode) -> str:
    """How many tokens the model holds now, and when the window resets next."""
    window, written = stepper.settings.window, len(stepper.steps)
    held = len(stepper.ids) - stepper.held_from
    words = f"{count(written, 'token')} written · GPT-2 reads the last **{held:,}**"
    if stepper.held_from:
        words += " (the faded text is forgotten)"
    if window is None:
        return words + f" · window off: it keeps everything, up to {stepper.engine.n_positions} tokens"
    next_reset = (written // window + 1) * window
    return words + f" · window {window}: after token {next_reset} it forgets all but the last {window} ⟲"


def bar_html(rank: int, candidate: gpt2_engine.Candidate) -> str:
    """One candidate's bar: its probability to scale (0 to 100%), orange in the top-p set, grey outside.
    The data-* attributes are the chart's data, as the tests read them back."""
    side = "in" if candidate.in_top_p else "out"
    color = IN_SET_COLOR if candidate.in_top_p else OUT_OF_SET_COLOR
    width = max(0.4, 100 * candidate.probability)  # a sliver, not nothing, for a token that has a chance
    return (
        f'<div class="cand {side}" data-rank="{rank + 1}" data-token-id="{candidate.token_id}" '
        f'data-probability="{candidate.probability!r}" data-in-top-p="{str(candidate.in_top_p).lower()}">'
        f'<div class="track"><div class="bar" style="width:{width:.2f}%;background:{color}"></div></div>'
        f'<span class="pct">{percent(candidate.probability)}</span></div>'
    )


def cut_html(top_p: float, size: int, mass: float) -> str:
    """The top-p cut under the last bar in the set: a dashed line, and in a few words what it means."""
    tokens = f"1 token, {percent(mass)}" if size == 1 else f"{size:,} tokens, {percent(mass)}"
    return (
        f'<div class="cut" data-nucleus-size="{size}" title="top-p: the sampler draws only among the tokens above '
        f'this line"><span>p = {top_p:.0%} · the sampler draws only above: {tokens}</span></div>'
    )


def cut_beyond_html(top_p: float, size: int, mass: float, shown: int) -> str:
    """Where the top-p set is larger than the bars shown: the cut is further down."""
    return (
        f'<div class="cut beyond" data-nucleus-size="{size}" title="the sampler may draw any of {size:,} tokens, '
        f'{percent(mass)} together: the {shown} above and {size - shown:,} more">'
        f"<span>▼ p = {top_p:.0%} · the cut is further down: any of {size:,} tokens</span></div>"
    )


def action_note(stepping: Stepping) -> str:
    """What the last button did, in words: which token, its rank and its chance."""
    stepper = stepping.stepper
    if not stepper.steps:
        return ""
    step, how = stepper.steps[-1], stepping.how[-1]
    rank = next((r for r, c in enumerate(step.candidates) if c.token_id == step.token_id), None)
    token = quoted(stepper.engine.token_text(step.token_id))
    if rank is None:
        place = f"outside the top {len(step.candidates)}"
    else:
        place = f"GPT-2's {ordinal(rank + 1)} choice, {percent(step.candidates[rank].probability)}"
    if how == "picked":
        return f"You picked {token}: {place}."
    set_size = count(step.nucleus_size, "token")
    return f"The sampler drew {token} ({place}) from the {set_size} in the top-p set."
