"""A run in view while it writes, on a projector's 1280x720 as on a large screen.

Each view (Write, Compare, the Sweep) draws its run inside a container with a key (`WRITE`, `COMPARE`, `SWEEP`):
its top is the status line with Stop beside it, its chart below. When a run starts, `keep_in_view` sends a small
script that scrolls the page the least it can so that the run's top is under Streamlit's header and the bottom of
its chart and its text boxes above the window's edge; where both cannot be, the top wins. Pressing Generate with the settings unfolded,
or Compare under its long form, then shows the run, not the form. It keeps doing so while the page settles (on a
busy machine what is above the run can be drawn after its chart) until the visitor scrolls, touches or presses a
key, so a presenter who scrolls away is not pulled back, or WATCH_S has passed.
"""

from __future__ import annotations

import itertools
import json

WRITE, COMPARE, SWEEP = "write_area", "compare_area", "sweep_area"  # the runs' containers: CSS classes st-key-<key>
WATCH_S = 120  # how long the script waits for the chart: a long phrase, or a wait for a place in the batch
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
    const lows = [...area.querySelectorAll('[data-testid="stVegaLiteChart"], .studio-text')];  // chart and texts
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
    script = SCRIPT % {"area": json.dumps(f".st-key-{area}"), "watch_ms": WATCH_S * 1000}
    where.html(
        f'<script class="studio-scroll" data-send="{next(_sends)}">{script}</script>', unsafe_allow_javascript=True
    )
