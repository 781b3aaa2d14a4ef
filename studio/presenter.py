"""Presenter mode, for a projector: larger text, the sidebar folded, the phrase's settings folded away, and the
text beside its charts, so that a room sees the words and the memory together at 1280x720.

On with the toggle at the top of the page, or with `?presenter=1` in the URL (a bookmark for the room); the
toggle keeps the URL in step, so a reload stays in the mode it was in.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

KEY = "presenter"  # the toggle's key (a reload restores it, studio/visits.py) and the URL's parameter
CSS = Path(__file__).with_name("presenter.css")


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
