"""A visit that outlives a reload: its runs and its settings, kept on the server under a key in the URL.

Streamlit's session state lives as long as the browser tab's connection, and presenters reload by reflex
when a projector flickers. So the page puts a random visit key in the URL (`?visit=...`) and keeps each
visit's History, latest runs and widget values in a store on the server, bounded to the most recent
`MAX_VISITS` visits and `STORE_BYTES` (the least recently seen is dropped first); a visit's History is bounded
to `runner.HISTORY_LIMIT` runs and `HISTORY_BYTES` (its oldest runs go first). A reload, or the same URL in a new tab,
finds them again; a run that was writing when the page reloaded was stopped by it, with its text kept.

Why this and not the browser's storage: the runs (every token's numbers) live on the server already, the
URL needs no component or cookie, and the key is 96 random bits, so a visit is found only by its URL. The
same URL shares the visit: whoever has it sees its runs, as anyone at the same screen would.
Step mode's run is not kept: it holds a whole KV cache, and it starts again from the phrase with one click.

Two tabs of one visit run their scripts on two threads at once, over the same Visit: every change to it (a run
added to History, a record or the widgets kept, a new tab's copy of them) holds the visit's lock.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from gpt2_engine import MB

from . import keys

MAX_VISITS = 64  # visits kept on the server ...
STORE_BYTES = int(256 * MB)  # ... and the bytes their runs' steps take, all together: the least recently seen go first
HISTORY_BYTES = int(24 * MB)  # a visit's History: about nine 1,000-token runs with their candidates (2.7 kB a token)
VISIT_PARAM = "visit"  # the URL's query parameter
RECORDS = (keys.RUN, keys.HISTORY, keys.COMPARISON, keys.SWEEP)  # what a reload finds again, besides the widgets
_KEY_SHAPE = re.compile(r"[A-Za-z0-9_-]{8,64}")


@dataclass
class Visit:
    records: dict[str, Any] = field(default_factory=dict)  # RECORDS' values, the very objects the page holds
    widgets: dict[str, Any] = field(default_factory=dict)  # keys.WIDGETS' values, as last drawn
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_run(self, run: Any, limit: int, history: list | None = None) -> list:
        """Appends `run` to the visit's History (or to `history`, a tab's own, where the visit has none yet),
        keeping the latest `limit` runs within HISTORY_BYTES, as they stand when a run starts (the oldest go
        first; the new one always stays); returns that History. Under the lock: two tabs starting runs at once
        lose none."""
        with self.lock:
            kept = self.records.get(keys.HISTORY)
            if kept is None:
                kept = self.records[keys.HISTORY] = history if history is not None else []
            kept.append(run)
            del kept[:-limit]
            while len(kept) > 1 and sum(each.footprint() for each in kept) > HISTORY_BYTES:
                del kept[0]
            return kept

    def footprint(self) -> int:
        """About how many bytes its runs' steps take (Run.footprint): its History holds every run it began."""
        with self.lock:
            return sum(run.footprint() for run in self.records.get(keys.HISTORY, []))

    def number(self, run: Any) -> None:
        """Gives `run` the next number of the visit's History, at its first token: History lists the runs that
        wrote something, 1..n in the order they began writing. Under the lock: no number given twice."""
        with self.lock:
            run.number = 1 + max((other.number for other in self.records.get(keys.HISTORY, [])), default=0)

    def keep(self, name: str, value: Any) -> None:
        with self.lock:
            self.records[name] = value

    def keep_widgets(self, values: dict[str, Any]) -> None:
        with self.lock:
            self.widgets.update(values)

    def copy(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(records, widgets) as they are now, for a new tab to take: never half of another tab's change."""
        with self.lock:
            return dict(self.records), dict(self.widgets)


class VisitStore:
    """The server's visits, most recently seen last; thread-safe (every visitor's script runs on its own thread)."""

    def __init__(self, limit: int = MAX_VISITS, bytes_limit: int = STORE_BYTES):
        self.limit, self.bytes_limit = limit, bytes_limit
        self._visits: OrderedDict[str, Visit] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Visit:
        with self._lock:
            visit = self._visits.pop(key, None) or Visit()
            self._visits[key] = visit
            while len(self._visits) > self.limit:
                self._visits.popitem(last=False)
            while len(self._visits) > 1 and sum(v.footprint() for v in self._visits.values()) > self.bytes_limit:
                self._visits.popitem(last=False)  # never the one just asked for: it is the most recent
            return visit


@st.cache_resource(show_spinner=False)
def store() -> VisitStore:
    """One per server."""
    return VisitStore()


def current() -> Visit:
    """This script run's visit: the URL's, or a new one whose key goes into the URL."""
    key = st.query_params.get(VISIT_PARAM, "")
    if not _KEY_SHAPE.fullmatch(key):
        key = secrets.token_urlsafe(12)
        st.query_params[VISIT_PARAM] = key
    return store().get(key)


def restore() -> None:
    """First thing in every script run: a new session (a reload, a new tab with the URL) takes the visit's runs
    and widget values; later script runs of the session find them in session state already."""
    key_before = st.session_state.get(keys.VISIT)
    visit = current()
    key = st.query_params[VISIT_PARAM]
    if key_before == key:
        return
    st.session_state[keys.VISIT] = key
    records, widgets = visit.copy()
    for name, value in (*records.items(), *widgets.items()):
        st.session_state[name] = value
    _settle(records)


def keep(name: str, value: Any) -> None:
    """Puts a record (one of RECORDS) in session state and in the visit, so that a reload finds it."""
    st.session_state[name] = value
    current().keep(name, value)


def add_run(run: Any, limit: int) -> None:
    """Adds a run to this visit's History (Visit.add_run), which this tab's session state then holds too."""
    st.session_state[keys.HISTORY] = current().add_run(run, limit, st.session_state.get(keys.HISTORY))


def number(run: Any) -> None:
    """Numbers a run of this visit at its first token (Visit.number)."""
    current().number(run)


def keep_widgets() -> None:
    """Remembers the widgets' values as they are now: called once every form is drawn, before a run starts."""
    current().keep_widgets({name: st.session_state[name] for name in keys.WIDGETS if name in st.session_state})


RELOADED = "The page was reloaded while it wrote."
OPENED_ELSEWHERE = "The page was opened in another tab while it wrote: a visit writes in one tab at a time."


def this_tab() -> str:
    """This browser tab's session id ("" outside a Streamlit server): kept on each run it writes (Run.tab)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx(suppress_warning=True)
    return context.session_id if context is not None else ""


def tab_is_open(tab: str) -> bool:
    """Whether the tab with this session id is still connected: a reload closed it, a second tab did not."""
    from streamlit.runtime import Runtime

    return bool(tab) and Runtime.exists() and Runtime.instance().is_active_session(tab)


def _settle(records: dict[str, Any], settle_s: float = 30.0) -> None:
    """A run the reload (or this visit's URL opened in a new tab) interrupted stops at its next token: wait for it
    (on a busy machine the old page's script can take seconds to get there), and say why: a reload, or another
    tab, where the tab that wrote it is still open. The reason is set before the wait, so it holds even if the run
    stops later; a run that wrote its last token first is simply done."""
    deadline = time.monotonic() + settle_s
    for run in list(records.get(keys.HISTORY, [])):
        why = OPENED_ELSEWHERE if tab_is_open(getattr(run, "tab", "")) else RELOADED
        if not run.finished:
            run.stopped_why = why  # shown only if it ends stopped
            run.cancelled = True  # the page that wrote it is gone, or no longer the visit's: it stops at its next token
        while not run.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        if run.interrupted:
            run.interrupted = False
            run.stopped_why = why
