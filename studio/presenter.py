"""Presenter mode, for a projector: larger text, the sidebar folded, the phrase's settings folded away, and the
text beside its charts, so that a room sees the words and the memory together at 1280x720.

On with the toggle at the top of the page, or with `?presenter=1` in the URL (a bookmark for the room); the
toggle keeps the URL in step, so a reload stays in the mode it was in.

A pace a room can watch: a small model writes hundreds of tokens a second, faster than anyone reads, so in
presenter mode the Write tab shows its text at a reading pace (`pace_select`, beside Generate: 8 tokens/s, about
six words a second, unless the presenter picks another, or full speed). The model still writes at full speed
(studio/runner.py `paced`): only the showing waits, and the page's tokens/s is still the model's own speed.
Compare, Sweep and History's replays are not paced; outside presenter mode nothing is.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

KEY = "presenter"  # the toggle's key (a reload restores it, studio/visits.py) and the URL's parameter
CSS = Path(__file__).with_name("presenter.css")
PACE_KEY = "pace"  # the pace select's key (kept by studio/visits.py)
FULL_SPEED = 0  # the pace select's value for "as fast as the model writes"
READING_PACE = 8  # tokens/s: about six words a second, the default
PACES = {
    4: "Pace: 4 tokens/s, slow",
    READING_PACE: "Pace: 8 tokens/s, reading",
    16: "Pace: 16 tokens/s",
    32: "Pace: 32 tokens/s",
    FULL_SPEED: "Pace: full speed",
}


def on() -> bool:
    """Whether presenter mode is on: the toggle, or the URL's ?presenter=1 when the toggle is not drawn yet."""
    if KEY not in st.session_state:
        st.session_state[KEY] = st.query_params.get(KEY, "") in ("1", "true", "on", "yes")
    return bool(st.session_state[KEY])


def _keep_in_url() -> None:
    if st.session_state.get(KEY):
        st.query_params[KEY] = "1"
    else:
        st.query_params.pop(KEY, None)


def toggle(where) -> None:
    where.toggle(
        "Presenter mode",
        key=KEY,
        on_change=_keep_in_url,
        help="For a projector: larger text, the sidebar folded, the text beside its charts. "
        "Add ?presenter=1 to the page's address to start in it.",
    )


def style() -> None:
    """The larger type and the tighter page, when on."""
    if on():
        st.html(CSS)


def pace_select(where=st) -> float | None:
    """The Pace select (presenter mode's, in the generation form): tokens a second the Write tab shows, or None
    for full speed."""
    chosen = where.selectbox(
        "Pace",
        list(PACES),
        index=list(PACES).index(READING_PACE),
        format_func=PACES.__getitem__,
        key=PACE_KEY,
        label_visibility="collapsed",
        help="How fast the text appears, so that a room can read it as it comes: 8 tokens a second is about six "
        "words. The model still writes at full speed, and Tokens/s under the text still says how fast it did; "
        "only the showing waits. Full speed: as soon as the model writes each token.",
    )
    return float(chosen) if chosen else None
