"""A run in view while it writes, on a projector's 1280x720 as on a large screen.

Each view (Write, Compare, the Sweep) draws its run inside a container with a key (`WRITE`, `COMPARE`, `SWEEP`):
its top is the status line with Stop beside it, its chart below. When a run starts, `keep_in_view` sends a small
script that scrolls the page the least it can so that the run's top is under Streamlit's header and the bottom of
its chart and its text boxes above the window's edge; where both cannot be, the top wins. Pressing Generate with
the settings unfolded, or Compare under its long form, then shows the run, not the form. It keeps doing so while
the page settles (on a busy machine what is above the run can be drawn after its chart) until the visitor scrolls,
touches or presses a key, so a presenter who scrolls away is not pulled back, or WATCH_S has passed. Compare's
table and the sentence beside its chart (`COMPARE_EVIDENCE`) count as its chart: once the comparison ends they are
brought into view too. Pressing Stop ends that watch (a press), and the script run it starts redraws the stopped
run, during which a browser may lose the scroll (the page under it shrinks for a moment): `after_stop` sends the
script again on that run.

`show_parting` sends another script, once a comparison has ended: it scrolls each of its two text boxes (which
keep their newest line in view while they write) to where the two texts part, so that both show it.
"""

from __future__ import annotations

import itertools
import json

import streamlit as st

WRITE, COMPARE, SWEEP = "write_area", "compare_area", "sweep_area"  # the runs' containers: CSS classes st-key-<key>
COMPARE_EVIDENCE = "compare_evidence"  # beside Compare's chart: its table and the sentence reading it, kept in view
COMPARE_SUMMARY = "compare_summary"  # that sentence
WATCH_S = 120  # how long the script waits for the chart: a long phrase, or a wait for a place in the batch
LOWS = f'[data-testid="stVegaLiteChart"], .studio-text, .st-key-{COMPARE_EVIDENCE}'  # what must be above the edge
_sends = itertools.count()  # a different script each time: Streamlit redraws an unchanged element without running it

SCRIPT = """
(() => {
  const area = document.querySelector(%(area)s);
  if (!area) return;
  const scroller = (el) => {
    for (let node = el.parentElement; node; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (/(auto|scroll)/.test(style.overflowY) && node.scrollHeight > node.clientHeight) return node;
    }
    return document.scrollingElement;
  };
  const header = document.querySelector('[data-testid="stHeader"]');
  const fit = () => {
    const chart = area.querySelector('[data-testid="stVegaLiteChart"]');
    const headerBottom = header ? Math.max(0, header.getBoundingClientRect().bottom) : 0;
    const top = area.getBoundingClientRect().top - headerBottom - 8;
    const lows = [...area.querySelectorAll(%(lows)s)];  // the chart, the texts, what is beside the chart
    const bottom = Math.max(...lows.map((el) => el.getBoundingClientRect().bottom));
    const over = chart ? bottom - window.innerHeight + 12 : 0;
    const by = over > 0 ? Math.min(over, top) : Math.min(0, top);
    if (Math.abs(by) >= 1) scroller(area).scrollBy({top: by, behavior: "instant"});
    return chart !== null;
  };
  // Until the visitor scrolls (or presses a key), the run is kept in view as the page around it settles: on a busy
  // machine the parts above it can still be drawn after its chart, and push it down.
  let touched = false;
  const stop = () => { touched = true; };
  for (const kind of ["wheel", "touchstart", "keydown", "mousedown"]) window.addEventListener(kind, stop, {once: true, passive: true});
  const until = Date.now() + %(watch_ms)d;
  fit();
  const timer = setInterval(() => {
    if (touched || Date.now() > until || !area.isConnected) { clearInterval(timer); return; }
    fit();
  }, 100);
})();
"""


def keep_in_view(where, area: str) -> None:
    """Sends the script that brings the run in container `area` into view (see the module's note). `where`: an
    `st.empty()` placeholder inside that container (style.css hides the element, so it takes no room)."""
    script = SCRIPT % {"area": json.dumps(f".st-key-{area}"), "lows": json.dumps(LOWS), "watch_ms": WATCH_S * 1000}
    where.html(
        f'<script class="studio-scroll" data-send="{next(_sends)}">{script}</script>', unsafe_allow_javascript=True
    )


def after_stop(where, area: str, stop_key: str) -> None:
    """On the script run that the Stop button `stop_key` started: the stopped run in `area`, with what it ended with
    (Compare's table, the Sweep's sentence), is brought back into view (see the module's note)."""
    if st.session_state.get(stop_key):
        keep_in_view(where, area)


# Each text box of a finished comparison scrolled so that where the two texts part (the `.parted` span compare_view.py
# tints) shows, two lines of what they share above it; while it writes, a box keeps its newest line in view.
PARTING_SCRIPT = """
(() => {
  const until = Date.now() + %(watch_ms)d;
  const done = new Set();
  const timer = setInterval(() => {
    const boxes = [...document.querySelectorAll(%(boxes)s)];
    for (const box of boxes) {
      const parted = box.querySelector('.parted');
      if (done.has(box) || !parted || box.querySelector('.cursor')) continue;
      const line = parseFloat(getComputedStyle(box.firstElementChild).lineHeight) || 24;
      const top = box.getBoundingClientRect().top + parseFloat(getComputedStyle(box).paddingTop);
      box.scrollTop += parted.getBoundingClientRect().top - top - 2 * line;
      done.add(box);
    }
    if ((boxes.length && done.size === boxes.length) || Date.now() > until) clearInterval(timer);
  }, 100);
})();
"""
PARTING_WATCH_S = 10  # how long the script waits for the finished texts to be drawn


def show_parting(where, area: str) -> None:
    """Sends the script that scrolls each text box in container `area` to where the texts part (the note above).
    `where`: an `st.empty()` placeholder inside that container (hidden, as keep_in_view's)."""
    script = PARTING_SCRIPT % {"boxes": json.dumps(f".st-key-{area} .compare-text"), "watch_ms": PARTING_WATCH_S * 1000}
    where.html(
        f'<script class="studio-scroll" data-send="{next(_sends)}">{script}</script>', unsafe_allow_javascript=True
    )
