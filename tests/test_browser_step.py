"""The Step by step tab at 1280x720, end to end: once a step is taken, the text so far, the step buttons and the ten
candidate bars (each with its token's button) lie inside the window with nothing scrolled, with the sidebar open (the
default) and in presenter mode; and they still do with the top-p cut among the bars, and once Auto has grown the text.

One server (the tiny model) for the module; each case is one visit, one page, and waits only for what the page draws
(a selector, or the measure polled until it holds or a deadline passes). Screenshots go to $GPT2_STUDIO_SCREENSHOTS
(default: a temporary folder); screen-step-1280x720.png there is docs/screen-step-1280x720.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from browser_page import CHROMIUM, browser, server, shots  # noqa: F401 - fixtures used by name
from playwright.sync_api import expect

from studio import step_mode

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

WIDTH, HEIGHT = 1280, 720
SETTLE_S = 15.0  # how long a redraw may take to settle in view before the test says it is not
# What must be in view, measured in one go, drawn by this script run (not a stale copy of the last one): the boxes,
# the header's bottom (what is under it is hidden), and how far any box round the bars is scrolled.
EVIDENCE = """() => {
  const fresh = (el) => el.getClientRects().length > 0 && !el.closest('[data-stale="true"]');
  const box = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
  const all = (css) => [...document.querySelectorAll(css)].filter(fresh).map(box);
  const candidates = document.querySelector('.st-key-step_candidates');
  let scrolled = document.scrollingElement.scrollTop;
  for (let node = candidates; node; node = node.parentElement) scrolled = Math.max(scrolled, node.scrollTop);
  return {
    header: document.querySelector('[data-testid="stHeader"]').getBoundingClientRect().bottom,
    width: window.innerWidth, height: window.innerHeight, scrolled,
    bars: all('.cand'), tokens: all('.st-key-step_candidates button'), cuts: all('.cut'),
    text: all('.step-text'), sample: all('.st-key-step_sample button'),
  };
}"""
MUST_SHOW = {"bars": 10, "tokens": 10, "text": 1, "sample": 1}  # and every top-p cut drawn


def outside(seen: dict) -> list[tuple[str, dict]]:
    """The boxes that are not wholly inside the window, under the header."""
    return [
        (what, box)
        for what in (*MUST_SHOW, "cuts")
        for box in seen[what]
        if box["top"] < seen["header"] - 1
        or box["bottom"] > seen["height"] + 1
        or box["left"] < -1
        or box["right"] > seen["width"] + 1
    ]


def assert_evidence_in_view(page, when: str) -> None:
    """The ten bars, their tokens' buttons, every top-p cut, the text and Sample lie in the window, nothing scrolled."""
    deadline = time.monotonic() + SETTLE_S
    while True:  # a busy machine draws the tab in pieces: poll until it has settled in view, or the deadline
        seen = page.evaluate(EVIDENCE)
        drawn = all(len(seen[what]) == n for what, n in MUST_SHOW.items())
        if (drawn and not outside(seen) and seen["scrolled"] == 0) or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    assert drawn, (when, {what: len(seen[what]) for what in MUST_SHOW})
    assert seen["scrolled"] == 0, (when, "the page was scrolled", seen["scrolled"])
    assert not outside(seen), (when, outside(seen), seen)


def open_step_tab(browser, url: str, presenting: bool):  # noqa: F811
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    page.set_default_timeout(60_000)  # the machine may be busy
    page.goto(url + ("/?presenter=1" if presenting else ""))
    page.get_by_text("Type a phrase, then press").wait_for()
    page.get_by_role("tab", name="Step by step").click()
    return page, page.get_by_role("tabpanel", name="Step by step")


@pytest.mark.parametrize("presenting", [False, True], ids=["sidebar", "presenter"])
def test_the_bars_are_in_view_at_1280x720_after_a_step(
    browser,  # noqa: F811
    server: str,  # noqa: F811
    shots: Path,  # noqa: F811
    presenting: bool,
) -> None:
    page, panel = open_step_tab(browser, server, presenting)
    expect(page.locator('[data-testid="stSidebar"]')).to_have_attribute("data-collapsed", str(presenting).lower())
    panel.get_by_role("button", name="Show what GPT-2 would write next").click()
    panel.locator(".cand").nth(9).wait_for()
    # a top-p of 0.15: orange bars above the dashed cut, grey ones under it (the tiny model's chances are flat)
    top_p = panel.get_by_role("slider", name="Top-p")
    top_p.press("Home")
    for _ in range(2):
        top_p.press("ArrowRight")
    expect(top_p).to_have_attribute("aria-valuetext", "0.15")
    panel.get_by_text("p = 15% · ").first.wait_for()  # the cut says so, among the bars or under them

    panel.get_by_role("button", name="Sample").click()
    panel.get_by_text("1 token written").wait_for()
    panel.locator(".step-text .latest").wait_for()
    assert_evidence_in_view(page, "after a step")
    page.mouse.move(WIDTH // 2, 5)  # Sample's tooltip goes: the picture shows the page
    expect(page.locator('[data-testid="stTooltipContent"]')).to_have_count(0)
    page.screenshot(path=shots / f"screen-{'presenter-' if presenting else ''}step-1280x720.png")

    top_p.press("Home")  # the cut among the bars: the rows under it move down by its height
    expect(top_p).to_have_attribute("aria-valuetext", "0.05")
    panel.get_by_text("p = 5% · the sampler draws only above").wait_for()
    assert_evidence_in_view(page, "with the cut among the bars")

    panel.get_by_role("button", name=f"Auto to {step_mode.DEFAULT_LENGTH}").click()
    panel.get_by_text("Auto wrote").wait_for()  # the text has grown (to the length, or to an end of text)
    assert_evidence_in_view(page, "after Auto")
    page.screenshot(path=shots / f"screen-{'presenter-' if presenting else ''}step-auto-1280x720.png")
    page.close()
