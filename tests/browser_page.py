"""The browser tests' shared pieces: a real `streamlit run app.py` on the tiny model (a module's fixture), a headless
Chromium (Playwright, Debian's /usr/bin/chromium), and what a visitor does and reads on the page. The tests are in
test_browser*.py; they import the fixtures from here by name."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from studio.controls import MAX_LENGTH

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_RUNS = 2  # the batch's bound on this server: two visitors write at once, a third waits
START_TIMEOUT_S = 90  # the server imports torch and transformers before it answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `streamlit run app.py` on a free port, killed at the end whatever happens."""
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "streamlit.log").open("w")
    # fp32, as the tests' own `engine`: a seed then writes the same tokens on the server as in `full_length_seed`
    # (auto would be int8 on a CPU with native bf16, which samples other tokens)
    env = {
        **{name: value for name, value in os.environ.items() if name != "GPT2_STUDIO_THREADS"},  # the real policy
        "GPT2_STUDIO_MODEL": str(tiny_model_dir),
        "GPT2_STUDIO_PRECISION": "fp32",
        "GPT2_STUDIO_MAX_RUNS": str(MAX_RUNS),
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the server exited early; see {log.name}"
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer within {START_TIMEOUT_S} s; see {log.name}"
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("GPT2_STUDIO_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str):
    """A new tab on the page: a visitor of its own (its own Streamlit session)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(60_000)  # generous: the machine may be busy
    page.goto(url)
    page.get_by_text("Type a phrase, then press").wait_for()  # the model is loaded and the form is drawn
    return page


@pytest.fixture
def page(browser, server: str):
    return open_page(browser, server)


def full_length_seed(engine, prompt: str, length: int = MAX_LENGTH, first: int = 0) -> int:
    """A seed from `first` on with which the tiny random model writes all `length` tokens at the page's default
    settings (it often writes <|endoftext|> and stops early); the server runs the same model at the same precision.
    Its threads are the real policy's, though, and a BLAS may sum in another order at another thread count: a
    last-bit change moves a draw on this near-uniform model, and the text parts. That is rare within 100 tokens,
    but over 1,000 a parted text nearly always meets <|endoftext|> (CI twice): a test that needs a long run
    still going tries the next seed (`stop_a_long_run`)."""
    for seed in range(first, first + 100):
        for step in engine.stream(prompt, max_new_tokens=length, seed=seed, top_p=0.7, window=50):
            if step.stop_reason == "eos":
                break
        else:
            return seed
    raise AssertionError(f"no seed in {first}..{first + 99} runs to the full length")


def stop_a_long_run(page, engine, tries: int = 4) -> tuple[int, str]:
    """Starts a run of the slider's full length and presses Stop while it writes: returns the seed and the status.

    Stop is drawn anew at each token, and a real click waits for it to hold still, which on a quiet machine can be
    after the tiny model has written all its tokens: so a click event, at once. A run that ended by itself before
    Stop could be pressed (its text parted from `full_length_seed`'s, see there) is tried again with the next
    full-length seed, as is one that ended by itself as Stop was pressed; the failure lists how each try ended."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    set_length_to_max(page)
    prompt = page.get_by_role("textbox", name="Your phrase").input_value()
    ended, seed = [], -1
    for _ in range(tries):
        seed = full_length_seed(engine, prompt, first=seed + 1)
        unfold_settings(page)
        type_seed(page, seed)
        page.get_by_role("button", name="Generate").click()
        with contextlib.suppress(PlaywrightTimeout):  # no Stop: the run has ended
            writing_for_a_while(page, 3)
            page.get_by_role("button", name="Stop").dispatch_event("click", timeout=10_000)
        page.get_by_text("Stopped after").or_(page.get_by_text("Done:")).first.wait_for()
        wait_until_idle(page)
        if "Stopped after" in status_text(page):
            return seed, status_text(page)
        ended.append(f"seed {seed}: {status_text(page)} ({settings_line(page)})")
    raise AssertionError("every run ended before Stop could be pressed: " + "; ".join(ended))


def unfold_settings(page) -> None:
    """Presenter mode folds the Write tab's settings as a run starts: unfold them, if folded, and wait until the
    fold has finished opening (Streamlit animates its height, 0.5 s, longer on a busy machine). A press of Generate
    while it still opened was lost, now and then, beside busy processes: no script run started. A fold still
    closing is waited for first: its button is visible until the end of the animation, and CI once found it so,
    went on, and then waited 60 s for a button the fold had hidden."""
    settled = (
        "[...document.querySelectorAll('[data-testid=stExpander] details')]"
        ".every(fold => fold.getAnimations({subtree: true}).length === 0)"
    )
    page.wait_for_function(settled)
    if page.get_by_role("button", name="Generate").is_visible():
        return
    page.get_by_text("Your phrase and the settings").click()
    page.get_by_role("button", name="Generate").wait_for()
    page.wait_for_function(settled)


def writing_for_a_while(page, tokens: int = 10) -> None:
    """Until the status says a run has written `tokens` tokens: a new run's, where the last run's text is still
    on screen (the same seed writes the same text) until the new one's first token."""
    page.wait_for_function(
        f"+(document.querySelector('[data-testid=stAlert]')?.innerText.match(/Writing… ([0-9,]+)/)?.[1] ?? '0')"
        f".replaceAll(',', '') >= {tokens}"
    )


def type_seed(page, seed: int) -> None:
    """Types the seed and applies it with Enter, as a person would: the page then sends it with every later press.
    (Applied only by the fold's click, a run beside a busy process once wrote <|endoftext|> at 74 tokens where
    this seed writes all 1,000: another seed, or another cause; the Stop test now prints the seed the run used.)"""
    from playwright.sync_api import expect

    page.get_by_text("Advanced").click()
    box = page.get_by_role("textbox", name="Seed")
    box.fill(str(seed))
    box.press("Enter")
    expect(page.locator('.st-key-seed [data-testid="InputInstructions"]')).to_have_text("")  # not "Press Enter"
    expect(box).to_have_value(str(seed))
    page.get_by_text("Advanced").click()  # folded again: it keeps the seed


def screenshot(page, path: Path) -> None:
    page.locator('[data-testid="stAlert"]').first.scroll_into_view_if_needed()  # the status, text and charts
    page.screenshot(path=path)


def status_text(page) -> str:
    return page.locator('[data-testid="stAlert"]').first.inner_text()


def settings_line(page) -> str:
    """The line under a run's text that says what made it, seed included."""
    line = write_tab(page).get_by_text("Written with")
    return line.first.inner_text() if line.count() else "no settings line"


def wait_until_idle(page, timeout_ms: int = 120_000) -> None:
    """Until the server's script run for this page has ended: Streamlit's running indicator (its status widget)
    is gone. A run writes only inside a script run, so after this nothing on the page changes without a new
    event: what a test then reads is final, without waiting a fixed time."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def write_tab(page):
    """The Write tab: other tabs (History) show texts and charts of their own."""
    return page.get_by_role("tabpanel", name="Write")


def generated_text(page) -> str:
    """The text written, its white space as one space: the text drawn while a run writes and the one drawn once
    it has ended (each token its own element) lay out the same text with other white space."""
    return " ".join(write_tab(page).locator(".studio-text .generated").inner_text().split())


def set_length_to_max(page) -> None:
    """Length to its end with the keyboard, and waits until the slider shows it (a key pressed while the page
    is still redrawing can be lost; press again then)."""
    from playwright.sync_api import expect

    slider = write_tab(page).get_by_role("slider", name="Length (tokens)")
    for attempt in range(3):
        slider.press("End")
        try:
            expect(slider).to_have_attribute("aria-valuetext", str(MAX_LENGTH), timeout=5_000)
            return
        except AssertionError:
            if attempt == 2:
                raise


def text_length(page) -> int:
    return page.evaluate("document.querySelector('.studio-text .generated')?.innerText.length ?? 0")


def colour_by_probability(page) -> None:
    """Turns the toggle on and waits for the legend; a click that lands while the page redraws (a busy machine)
    is lost: click again then, only while the toggle still reads off."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    toggle = write_tab(page).get_by_role("switch", name="Colour by probability", exact=True)
    for attempt in range(3):
        if not toggle.is_checked():
            write_tab(page).get_by_text("Colour by probability").click()
        try:
            page.get_by_text("How sure GPT-2 was").wait_for(timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def history_titles(page) -> list[str]:
    page.get_by_role("tab", name="History").click()
    panel = page.get_by_role("tabpanel", name="History")
    panel.get_by_text("Run 1").first.wait_for()
    titles = panel.locator("strong", has_text="Run ").all_inner_texts()
    page.get_by_role("tab", name="Write").click()
    return titles
