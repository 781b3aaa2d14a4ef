"""End to end: the real Streamlit server with the tiny model, driven by headless Chromium (Playwright).

Type a phrase, Generate, see the text and the charts; start a long run and Stop it; a bad model path; two
visitors writing at once, and a third beyond the batch's bound (GPT2_STUDIO_MAX_ROWS=2 here) told its place.
Screenshots go to $GPT2_STUDIO_SCREENSHOTS (default: a temporary folder), to look at.
"""

from __future__ import annotations

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
MAX_ROWS = 4  # the batch's bound on this server: two visitors write at once (a windowed run takes two rows: its
# shadow row reads the next window on the way), a third waits
START_TIMEOUT_S = 90  # the server imports torch and transformers before it answers

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]


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
        "GPT2_STUDIO_MAX_ROWS": str(MAX_ROWS),
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


def full_length_seed(engine, prompt: str, length: int = MAX_LENGTH) -> int:
    """A seed with which the tiny random model writes all `length` tokens at the page's default settings
    (it often writes <|endoftext|> and stops early); the server runs the same model at the same precision."""
    for seed in range(100):
        for step in engine.stream(prompt, max_new_tokens=length, seed=seed, top_p=0.7, window=50):
            if step.stop_reason == "eos":
                break
        else:
            return seed
    raise AssertionError("no seed in 0..99 runs to the full length")


def type_seed(page, seed: int) -> None:
    page.get_by_text("Advanced").click()
    page.get_by_role("textbox", name="Seed").fill(str(seed))
    page.get_by_text("Advanced").click()  # folded again: it keeps the seed


def screenshot(page, path: Path) -> None:
    page.locator('[data-testid="stAlert"]').first.scroll_into_view_if_needed()  # the status, text and charts
    page.screenshot(path=path)


def status_text(page) -> str:
    return page.locator('[data-testid="stAlert"]').first.inner_text()


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


def test_type_generate_and_watch_it_stream(page, engine, shots: Path) -> None:
    assert "precision fp32" in page.locator('[data-testid="stSidebar"]').inner_text()  # GPT2_STUDIO_PRECISION
    screenshot(page, shots / "1-idle.png")
    page.get_by_role("textbox", name="Your phrase").fill("The cat sat on the mat.")
    type_seed(page, full_length_seed(engine, "The cat sat on the mat.", 100))
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Done:").wait_for()
    assert write_tab(page).locator(".studio-text .prompt").inner_text() == "The cat sat on the mat."
    assert generated_text(page).strip()
    write_tab(page).locator('[data-testid="stVegaLiteChart"]').first.wait_for()  # its code loads on first use
    assert write_tab(page).locator('[data-testid="stVegaLiteChart"]').count() == 1  # what the run added, KV cache in it
    write_tab(page).locator(
        '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
    ).first.wait_for()
    assert write_tab(page).locator('[data-testid="stMetricValue"]').last.inner_text().isdigit()  # the seed
    assert (
        "⟲" in write_tab(page).locator(".studio-text").inner_text()
    )  # 100 tokens with a window of 50: a reset, marked
    screenshot(page, shots / "3-after-a-run.png")


def test_stop_ends_a_long_run_and_keeps_its_text(page, engine, shots: Path) -> None:
    set_length_to_max(page)
    # a seed that writes all the slider's tokens: Stop, not <|endoftext|>, must end this run
    type_seed(page, full_length_seed(engine, page.get_by_role("textbox", name="Your phrase").input_value()))
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Writing…").wait_for()
    page.wait_for_function("document.querySelector('.studio-text .generated')?.innerText.length > 20")
    page.get_by_role("button", name="Stop").click()  # at once: Stop shows only while the run writes
    page.get_by_text("Stopped after").or_(page.get_by_text("Done:")).first.wait_for()
    stopped = status_text(page)
    assert "Stopped after" in stopped, stopped
    tokens = int(stopped.split("Stopped after ")[1].split(" ")[0])
    assert 0 < tokens < 1000
    text = generated_text(page)
    assert text
    time.sleep(1.0)  # a run that had not stopped would write hundreds of tokens in this time
    assert generated_text(page) == text and status_text(page) == stopped
    screenshot(page, shots / "4-stopped.png")


def test_a_bad_model_path_shows_what_to_do(page, shots: Path, tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    option = page.get_by_role("option", name="other: a folder or hub id")
    for _ in range(5):  # a click that lands while the page redraws (a busy machine) opens nothing: click again
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        try:
            option.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            continue
    option.click()
    folder = page.get_by_role("textbox", name="Folder or hub id")
    folder.fill(str(tmp_path / "no-such-model"))
    folder.press("Enter")
    page.get_by_text("Could not load this model").wait_for()
    assert page.get_by_text("Pick another model").count() == 1
    assert page.locator('[data-testid="stException"]').count() == 0
    screenshot(page, shots / "5-bad-model.png")


def text_length(page) -> int:
    return page.evaluate("document.querySelector('.studio-text .generated')?.innerText.length ?? 0")


def test_two_visitors_write_at_once_and_a_third_beyond_the_bound_waits(browser, server, engine, shots: Path) -> None:
    """The tiny model writes its 1,000 tokens in seconds, so each step checks at once what it needs while the runs
    ahead still write; when one of them ended first (a slow click on a busy machine), it starts again in new tabs."""
    seed = None
    for attempt in range(3):
        first, second, third = (open_page(browser, server) for _ in range(3))
        if seed is None:
            seed = full_length_seed(engine, first.get_by_role("textbox", name="Your phrase").input_value())
        for visitor in (first, second, third):
            set_length_to_max(visitor)
            type_seed(visitor, seed)
        if two_write_and_a_third_waits(first, second, third, shots):
            break
        for visitor in (first, second, third):
            visitor.close()
        assert attempt < 2, "three times, a run ahead ended before the third visitor's turn came"
    for visitor in (second, third):  # Stop is drawn anew at each token: a click event, not a wait for it to hold still
        visitor.get_by_role("button", name="Stop").dispatch_event("click")
        stopped = visitor.get_by_text("Stopped after").or_(visitor.get_by_text("Stopped before it started"))
        stopped.or_(visitor.get_by_text("Done:")).first.wait_for()


def two_write_and_a_third_waits(first, second, third, shots: Path) -> bool:
    """Runs the scenario; False when a run ahead ended on its own before its check (nothing was shown then)."""
    first.get_by_role("button", name="Generate").click()
    first.get_by_text("Writing…").wait_for()
    second.get_by_role("button", name="Generate").click()
    second.get_by_text("Writing…").wait_for()  # at once: not "Waiting for the model"
    second.wait_for_function("document.querySelector('.studio-text .generated')?.innerText.length > 20")
    grown = text_length(first)
    first.wait_for_function(f"document.querySelector('.studio-text .generated')?.innerText.length > {grown}")
    if not ("Writing…" in status_text(first) and "Writing…" in status_text(second)):  # both stream, side by side
        return False

    third.get_by_role("button", name="Generate").click()  # the batch holds MAX_ROWS rows: this one waits
    third.get_by_text("Waiting for the model").or_(third.get_by_text("Writing…")).first.wait_for()
    waiting = status_text(third)
    if "Waiting for the model" not in waiting:
        return False
    assert "2 runs are ahead" in waiting, waiting
    if "Writing…" not in status_text(first):
        return False
    first.close()  # the first run still held its row: when its tab closes, the row must come free
    third.get_by_text("Writing…").wait_for()
    screenshot(third, shots / "6-a-third-visitor-writes-once-a-tab-closed.png")
    return True


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


def test_step_mode_take_a_candidate_then_look_inside_a_written_text(page, engine, shots: Path) -> None:
    page.get_by_role("tab", name="Step by step").click()
    page.get_by_role("button", name="Show what GPT-2 would write next").click()
    page.locator(".st-key-step_pick_9 button").first.wait_for()  # Streamlit draws a hidden twin of each button
    assert page.locator(".step-text .generated").count() == 0  # the phrase alone
    shown = page.locator(".step-text").inner_text()
    ids = [int(page.locator(".cand").nth(rank).get_attribute("data-token-id")) for rank in range(10)]

    def whole(token_id: int) -> bool:  # a whole, printable token (the tiny model also offers pieces of characters)
        text = engine.tokenizer.decode([token_id])
        return bool(text.strip()) and text.isprintable() and "\ufffd" not in text

    rank = next((r for r in range(1, 10) if whole(ids[r])), 0)
    piece = engine.tokenizer.decode([ids[rank]])
    page.locator(f".st-key-step_pick_{rank} button").first.click()
    page.locator(".step-text .generated.latest").wait_for()
    assert page.locator(".step-text .generated").inner_text() == piece
    assert page.locator(".step-text").inner_text() == shown.removesuffix("▁") + piece + "▁"  # grew by that token
    assert "You picked" in page.locator('[data-testid="stCaptionContainer"]', has_text="You picked").inner_text()
    page.locator(".st-key-step_sample button").first.click()
    page.get_by_text("The sampler drew").wait_for()
    for name, presses in (("Temperature", 8), ("Top-p", 9)):  # 1.0 -> 0.6, 0.7 -> 0.25: a sharper model, a cut
        slider = page.get_by_role("slider", name=name)
        slider.focus()
        for _ in range(presses):
            slider.press("ArrowLeft")
    page.locator(".cut").first.wait_for()  # the dashed line is drawn across the bars (the old one may linger a moment)
    page.get_by_text("p = 25%").wait_for()
    page.set_viewport_size({"width": 1440, "height": 1300})
    page.locator(".step-text").scroll_into_view_if_needed()
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no button's help over the bars
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    page.screenshot(path=shots / "7-step-mode.png")
    page.set_viewport_size({"width": 1440, "height": 1000})

    page.get_by_role("tab", name="Write").click()
    page.get_by_role("textbox", name="Your phrase").fill("The cat sat on the mat.")
    type_seed(page, full_length_seed(engine, "The cat sat on the mat.", 40))
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Done:").wait_for()
    colour_by_probability(page)
    tokens = page.get_by_role("tabpanel", name="Write").locator(".studio-text .inspectable .tok")
    texts = tokens.evaluate_all("spans => spans.map(span => span.innerText)")
    token = tokens.nth(next((i for i, t in enumerate(texts) if len(t.strip()) > 1 and t.strip().isalpha()), 0))
    assert "GPT-2 gave it" in token.get_attribute("data-tip") and "The candidates" in token.get_attribute("data-tip")
    assert token.get_attribute("class").split()[1].startswith("p-")  # coloured by its probability
    token.hover()
    screenshot(page, shots / "8-inspector.png")


def history_titles(page) -> list[str]:
    page.get_by_role("tab", name="History").click()
    panel = page.get_by_role("tabpanel", name="History")
    panel.get_by_text("Run 1").first.wait_for()
    titles = panel.locator("strong", has_text="Run ").all_inner_texts()
    page.get_by_role("tab", name="Write").click()
    return titles


def test_generate_while_writing_stops_and_a_reload_keeps_the_visit(page, engine, shots: Path) -> None:
    set_length_to_max(page)
    type_seed(page, full_length_seed(engine, page.get_by_role("textbox", name="Your phrase").input_value()))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.querySelector('.studio-text .generated')?.innerText.length > 20")
    page.get_by_role("button", name="Generate").click()  # again, while it writes: a Stop, not a new run
    page.get_by_text("Generate was pressed while it wrote").wait_for()
    assert "Stopped after" in status_text(page)
    text = generated_text(page)
    time.sleep(1.0)
    assert text and generated_text(page) == text and history_titles(page) == ["Run 1"]

    page.reload()  # after the run: the same visit, its text, its History and its widgets
    page.get_by_text("Generate was pressed while it wrote").wait_for()
    assert generated_text(page) == text and history_titles(page) == ["Run 1"]
    slider = write_tab(page).get_by_role("slider", name="Length (tokens)")
    assert slider.get_attribute("aria-valuetext") == str(MAX_LENGTH)

    runs = 1
    while runs < 4:  # mid-run: the run stops, its text so far is kept
        runs += 1
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("document.querySelector('.studio-text .generated')?.innerText.length > 20")
        page.reload()
        said = page.get_by_text("The page was reloaded while it wrote").or_(page.get_by_text("Done:"))
        said.first.wait_for()
        if "reloaded" in status_text(page):
            break
        # on a loaded machine the new page can come after the tiny model wrote all its tokens: nothing to stop
    assert "The page was reloaded while it wrote" in status_text(page)
    # the status line comes before the text in the page's order: under load the text's delta can come a moment later
    page.wait_for_function("document.querySelector('.studio-text .generated')?.innerText.trim().length > 0")
    assert history_titles(page) == [f"Run {n}" for n in range(runs, 0, -1)]
    screenshot(page, shots / "8-after-a-reload.png")
