"""The History tab: every run of this visit (Write runs, replays, both runs of each comparison, each window of
a sweep), newest first, to read again, replay with the same settings and seed, or download.

Widget keys, n being the run's number: history_replay_<n>, history_json_<n> (everything about the run, as
gpt2_engine.records writes it), history_csv_<n> (its memory series). Downloads are made when clicked.
A replay is a Write run: it streams here, becomes the latest run of the Write tab, and joins the list.
"""

from __future__ import annotations

import html
import time
from datetime import datetime

import streamlit as st

import gpt2_engine
from gpt2_engine import format_bytes, memory_csv, record_json, settings_from_record

from . import charts, keys, runner, status, visits
from .run import Run
from .run_view import TEXT_EVERY_S, text_html
from .words import count, tokens

PREVIEW_CHARS = 220  # of the text shown in the list
PROMPT_CHARS = 60  # of the phrase's end before it


def _ask_replay(number: int) -> None:
    st.session_state[keys.REPLAY] = number


def _history() -> list[Run]:
    """The runs that wrote something, by number (1..n: a run that wrote nothing has none, runner.remember)."""
    return sorted((run for run in st.session_state.get(keys.HISTORY, []) if run.steps), key=lambda run: run.number)


def _title(run: Run) -> str:
    if run.kind == "compare":
        what = f"Compare · {run.label.removesuffix(' of a comparison')}"
    elif run.kind == "sweep":
        what = f"Sweep · {run.label.removesuffix(' of a sweep')}"
    else:
        what = f"Write · {run.label}" if run.label else "Write"
    at = datetime.fromtimestamp(run.started_at).strftime("%H:%M:%S")
    return f"**Run {run.number}** · {what} · {at}"


def _ending(run: Run) -> str:
    stats = run.stats
    if run.error is not None:
        return "failed"
    if run.stopped:
        return "stopped"
    if not run.finished:
        return "writing"
    return gpt2_engine.STOP_REASONS.get(stats.stop_reason or "", stats.stop_reason or "")


def _numbers_line(run: Run) -> str:
    stats = run.stats
    parts = [
        f"{tokens(stats.tokens)} ({_ending(run)})",
        f"peak {format_bytes(stats.peak_rss_bytes)}",
        f"KV cache at most {format_bytes(stats.peak_kv_bytes)}",
        count(len(stats.resets), "reset"),
    ]
    if stats.tokens > 1:  # a speed needs two tokens at least
        parts.insert(1, f"{stats.tokens_per_s:.1f} tokens/s")
    if run.coherence is not None:
        parts.append(f"perplexity {run.coherence.perplexity:,.1f}")
    return " · ".join(parts)


def _preview_html(run: Run) -> str:
    """The end of the phrase (grey) and the start of the text, on a line or two."""
    prompt = " ".join(run.prompt.split())
    if len(prompt) > PROMPT_CHARS:
        prompt = "…" + prompt[-PROMPT_CHARS:].split(" ", 1)[-1]
    text = " ".join(run.generated.split())
    if len(text) > PREVIEW_CHARS:
        text = text[:PREVIEW_CHARS].rsplit(" ", 1)[0] + " …"
    return (
        '<div style="font-family: Georgia, serif; font-size: 1.02rem; line-height: 1.5; color: #14213d">'
        f'<span style="color: #7a7f8f">{html.escape(prompt)}</span> {html.escape(text)}</div>'
    )


def _entry(run: Run) -> None:
    n = run.number
    with st.container(border=True):
        head, buttons = st.columns([3, 2], vertical_alignment="center")
        head.markdown(_title(run))
        # the buttons as wide as their words, wrapping rather than cut short where the column is narrow
        buttons = buttons.container(horizontal=True, horizontal_alignment="right", gap="small")
        buttons.button(
            "Replay",
            key=f"history_replay_{n}",
            icon=":material/replay:",
            on_click=_ask_replay,
            args=(n,),
            help="Write it again with the same phrase, settings and seed: the same text comes out.",
        )
        buttons.download_button(
            "JSON",
            data=lambda: record_json(run.record()),
            file_name=f"gpt2-studio-run-{n}.json",
            mime="application/json",
            key=f"history_json_{n}",
            on_click="ignore",
            icon=":material/download:",
            help="Everything about this run: phrase, settings, seed, text, numbers, and every token's memory.",
        )
        buttons.download_button(
            "CSV",
            data=lambda: memory_csv(run.record()),
            file_name=f"gpt2-studio-run-{n}-memory.csv",
            mime="text/csv",
            key=f"history_csv_{n}",
            on_click="ignore",
            icon=":material/download:",
            help="The memory series, one row per token: program memory, its allocated part, the KV cache.",
        )
        st.caption(status.settings_line(run))
        st.html(_preview_html(run))
        st.caption(_numbers_line(run))
        with st.expander("Whole text and memory"):
            st.html(text_html(run))
            charts.draw_memory(run.steps, len(run.steps), run.weight_bytes, run.kv_per_token, run.settings.autograd)


class ReplayView:
    """Where a replay streams, at the top of the tab: a status line and the text (runner.generate's view)."""

    def __init__(self) -> None:
        self.status, self.text = st.empty(), st.empty()
        self._drawn_at = float("-inf")

    def show_waiting(self, ahead: int) -> None:
        status.waiting(self.status, ahead)

    def update(self, run: Run) -> None:
        if time.monotonic() - self._drawn_at >= TEXT_EVERY_S:  # as often as the Write tab redraws its text
            self.show(run)

    def start(self, run: Run) -> None:
        self.show(run)  # at the top of the History tab

    def show(self, run: Run) -> None:
        self._drawn_at = time.monotonic()
        if run.finished:
            self.status.empty()  # the note under it says how the replay went
        else:
            status.run_status(self.status, run)
        self.text.html(text_html(run, writing=not run.finished))


def _replay(engine: gpt2_engine.TextEngine, number: int) -> None:
    original = next((run for run in _history() if run.number == number), None)
    if original is None:
        return
    settings = settings_from_record(original.record())  # the same path as a downloaded JSON's
    st.markdown(f"#### Replay of run {number}")
    view = ReplayView()
    replay = runner.generate(engine, original.prompt, settings, view, label=f"replay of run {number}")
    _replay_note(replay, original)


def _replay_note(replay: Run, original: Run) -> None:
    if replay.error is None and not replay.steps:  # stopped before its first token: no run to compare
        return
    if replay.error is not None:
        st.error(replay.error, icon=status.ERROR_ICON)
    elif replay.generated == original.generated:
        st.success(
            f"Run {replay.number} replayed run {original.number}: the same text, token for token. Same phrase, "
            "same settings, same seed: the same draws.",
            icon=":material/check_circle:",
        )
    else:
        why = (
            "one of them was stopped"
            if replay.stopped or original.stopped
            else "the memory guard ended one of them"
            if "memory" in (replay.stats.stop_reason, original.stats.stop_reason)
            else "the model or its precision changed in between"
        )
        st.warning(
            f"Run {replay.number} replayed run {original.number}, and the texts differ: {why}.", icon=":material/info:"
        )


def render(engine: gpt2_engine.TextEngine | None) -> None:
    """Draws the tab; a replay asked for (by its button's callback) runs first, at the top."""
    number = st.session_state.pop(keys.REPLAY, None)
    if number is not None and engine is not None:
        _replay(engine, number)
    runs = _history()
    if not runs:
        st.info(
            "Every run of this visit appears here, newest first: its settings, seed, text and memory. "
            "Replay one, or download it as JSON (everything) or CSV (the memory series).",
            icon=":material/history:",
        )
        return
    st.caption(
        f"{count(len(runs), 'run')} this visit, newest first (the last {runner.HISTORY_LIMIT} are kept, within "
        f"{format_bytes(visits.HISTORY_BYTES)}). Downloads are made when you click them."
    )
    for run in reversed(runs):
        _entry(run)
