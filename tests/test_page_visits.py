"""Nothing lost to a click or a reload (studio/visits.py, runner.stopped_by_this_click), and every run says
what made it, whatever the widgets show now. The real app.py through AppTest with the tiny model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest
from test_page import generate, generated_shown

from gpt2_engine import MB
from studio import keys, runner, visits
from studio.run import Run

APP = Path(__file__).resolve().parent.parent / "app.py"


def reload(at: AppTest) -> AppTest:
    """A new browser session on the same URL: what a reload is to Streamlit (session state starts empty)."""
    again = AppTest.from_file(str(APP), default_timeout=60)
    again.query_params[visits.VISIT_PARAM] = at.query_params[visits.VISIT_PARAM]
    again.run()
    assert not again.exception, again.exception
    return again


def history(at: AppTest) -> list:
    return at.session_state[keys.HISTORY]


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_the_page_puts_a_visit_key_in_the_url(page) -> None:
    key = page.query_params[visits.VISIT_PARAM]
    assert isinstance(key, str) and len(key) >= 16


def test_a_reload_after_a_run_keeps_history_the_text_and_the_widgets(page) -> None:
    at = generate(page, prompt="The cat sat", length=12, top_p=0.85, window=4, seed="7")
    text = generated_shown(at)
    assert text and len(history(at)) == 1
    again = reload(at)
    assert len(history(again)) == 1 and history(again)[0] is history(at)[0]  # the same run, kept on the server
    assert generated_shown(again) == text  # the Write tab shows it as before
    values = {
        w.key: w.value for kind in ("text_area", "slider", "select_slider", "text_input") for w in getattr(again, kind)
    }
    assert (values["prompt"], values["length"], values["top_p"], values["window"], values["seed"]) == (
        "The cat sat",
        12,
        0.85,
        4,
        "7",
    )
    assert not again.warning  # no "set via the Session State API" warning


def test_another_visit_starts_empty(page, tiny_model_dir) -> None:
    generate(page, prompt="The cat sat", length=5, seed="1")
    other = AppTest.from_file(str(APP), default_timeout=60).run()
    assert other.query_params[visits.VISIT_PARAM] != page.query_params[visits.VISIT_PARAM]
    assert not other.session_state[keys.HISTORY] if keys.HISTORY in other.session_state else True


def test_the_store_keeps_the_most_recent_visits_only() -> None:
    store = visits.VisitStore(limit=3)
    first = store.get("a" * 16)
    first.widgets["prompt"] = "kept"
    for name in ("b", "c"):
        store.get(name * 16)
    assert store.get("a" * 16) is first  # seen again: now the most recent
    store.get("d" * 16)
    store.get("e" * 16)
    assert store.get("b" * 16).widgets == {}  # the least recently seen was dropped (a fresh visit comes back)


class Sized:
    """A run as History sees it: how many bytes its steps take."""

    def __init__(self, megabytes: float):
        self.bytes = int(megabytes * MB)

    def footprint(self) -> int:
        return self.bytes


def test_a_visits_history_keeps_its_newest_runs_within_its_byte_budget() -> None:
    """Issue 30: History was bounded by count only (40 runs of up to 1,000 steps: about 100 MB a visit)."""
    visit = visits.Visit()
    runs = [Sized(visits.HISTORY_BYTES / MB / 4) for _ in range(6)]  # four fit
    for run in runs:
        kept = visit.add_run(run, limit=40)
    assert kept == runs[2:] and visit.footprint() <= visits.HISTORY_BYTES
    huge = Sized(2 * visits.HISTORY_BYTES / MB)
    assert visit.add_run(huge, limit=40) == [huge]  # the newest always stays, alone if need be
    assert visit.add_run(Sized(1), limit=2)[-1].bytes == MB  # and the count bound still holds


def test_the_store_drops_the_least_recently_seen_visits_beyond_its_bytes() -> None:
    store = visits.VisitStore(limit=64, bytes_limit=10 * MB)
    for name in "abcde":
        store.get(name * 16).add_run(Sized(3), limit=40)  # 3 MB each: three fit in 10 MB
    store.get("f" * 16)  # a visit seen now: the oldest go until the rest fit
    assert store.get("a" * 16).footprint() == 0 and store.get("b" * 16).footprint() == 0  # dropped: fresh again
    assert store.get("e" * 16).footprint() == 3 * MB


def test_generate_pressed_while_a_run_writes_stops_it_and_starts_nothing(page) -> None:
    at = generate(page, prompt="The cat sat", length=30, seed="3")
    run = history(at)[-1]
    text = generated_shown(at)
    # What a click on Generate while this run wrote leaves behind: the run interrupted by Streamlit (runner.write)
    run.stopped = run.interrupted = True
    at.button(key="generate").click()
    at.run()
    assert len(history(at)) == 1 and at.session_state[keys.RUN] is run  # no second run
    assert generated_shown(at) == text
    said = " ".join(w.value for w in at.warning)
    assert "Stopped after" in said and "Generate was pressed while it wrote" in said
    at.button(key="generate").click()  # pressed again, with nothing writing: a new run
    at.run()
    assert len(history(at)) == 2


def test_a_run_says_its_own_settings_after_the_sliders_moved(page) -> None:
    at = generate(page, prompt="The cat sat", length=10, top_p=0.9, window=6, seed="42")
    for key, value in (("top_p", 0.5), ("window", 3)):
        next(w for w in [*at.slider, *at.select_slider] if w.key == key).set_value(value)
    at.run()  # the sliders moved, Generate not pressed: the text shown is still the run at 0.90
    shown = "\n".join(c.value for c in at.tabs[0].caption)  # under the Write tab's text
    assert "top-p 0.90" in shown and "window 6" in shown and "seed 42" in shown and "temperature 1" in shown
    history_tab = next(tab for tab in at.tabs if tab.label == "History")
    assert "top-p 0.50" not in shown and "top-p 0.90" in captions(history_tab)  # and in History
    record = history(at)[-1].record()
    assert record["precision"] and record["settings"]["top_p"] == 0.9


class Numbered:
    """A run as History numbers it. Setting its number hands the interpreter to another thread (sleep(0) is a
    yield, not a wait), so that an add that is not under one lock, from several threads, interleaves here."""

    def __init__(self, who: int) -> None:
        self.who, self._number = who, 0

    @property
    def number(self) -> int:
        return self._number

    @number.setter
    def number(self, value: int) -> None:
        time.sleep(0)
        self._number = value

    def footprint(self) -> int:
        return 0  # no steps: History's byte bound never drops one


def test_runs_added_from_several_tabs_at_once_are_all_kept_once() -> None:
    visit = visits.Visit()
    threads, per_tab = 8, 50
    start = threading.Barrier(threads, timeout=60)

    def tab(who: int) -> None:
        start.wait()
        for _ in range(per_tab):
            run = Numbered(who)
            visit.add_run(run, limit=threads * per_tab)
            visit.number(run)

    workers = [threading.Thread(target=tab, args=(who,)) for who in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    kept = visit.records[keys.HISTORY]
    assert len(kept) == threads * per_tab and len({id(run) for run in kept}) == threads * per_tab  # none lost
    assert sorted(run.number for run in kept) == list(range(1, threads * per_tab + 1))  # none numbered twice
    assert all(sum(run.who == who for run in kept) == per_tab for who in range(threads))


def test_history_keeps_the_latest_runs_and_a_new_tab_takes_a_whole_copy() -> None:
    visit = visits.Visit()
    for who in range(5):
        run = Numbered(who)
        visit.add_run(run, limit=3)
        visit.number(run)
    assert [run.number for run in visit.records[keys.HISTORY]] == [3, 4, 5]
    visit.keep_widgets({"prompt": "kept"})
    records, widgets = visit.copy()
    assert records[keys.HISTORY] is visit.records[keys.HISTORY] and widgets == {"prompt": "kept"}
    widgets["prompt"] = "changed in one tab's copy"
    assert visit.widgets == {"prompt": "kept"}


def old_page_writing(engine, slow_s: float = 0.0) -> tuple[Run, threading.Thread]:
    """A run its old page writes through the real runner.write, in a thread of its own (a page's script thread); its
    page draws each token until the reload cancels the run, then takes `slow_s` more (a busy machine) before the
    next token, where runner.write sees `cancelled`."""
    run = Run("The cat", engine.settings_for(max_new_tokens=50, seed=1, stop_at_eos=False), "tiny", 0)
    first = threading.Event()

    def on_step(run: Run) -> None:
        first.set()
        while not run.cancelled:  # the old page keeps its token on screen until the reload comes
            time.sleep(0.01)
        time.sleep(slow_s)

    thread = threading.Thread(target=runner.write, args=(engine, run, on_step))
    thread.start()
    assert first.wait(60)  # mid-run: a token written, the rest to come
    return run, thread


def test_a_run_a_reload_cancels_says_so_however_late_its_old_page_stops(engine) -> None:
    """The old page's script stops the run at its next token (runner.write); on a busy machine that can take
    seconds, and the new page waits for it rather than show it still writing."""
    run, old_page = old_page_writing(engine, slow_s=0.5)
    visits._settle({keys.HISTORY: [run]})
    old_page.join(60)
    assert run.finished and run.stopped and run.stopped_why == visits.RELOADED and not run.interrupted
    assert 1 <= len(run.steps) < run.settings.max_new_tokens  # stopped part-way, its text kept


def test_a_run_stopped_by_the_visit_opened_in_another_tab_says_so(engine, monkeypatch) -> None:
    """Issue 30: the same URL in a second tab stopped the first tab's run "reloaded". Where the tab that wrote it
    is still open, it was another tab; where it is gone, a reload."""
    open_tabs = {"first-tab"}
    monkeypatch.setattr(visits, "tab_is_open", lambda tab: tab in open_tabs)
    for tab, said in (("first-tab", visits.OPENED_ELSEWHERE), ("closed-tab", visits.RELOADED)):
        run, old_page = old_page_writing(engine)
        run.tab = tab
        visits._settle({keys.HISTORY: [run]})
        old_page.join(60)
        assert run.stopped and run.stopped_why == said
    assert not visits.tab_is_open("") and not visits.tab_is_open("no-server-here")  # AppTest: no runtime


def unfinished_run(engine) -> Run:
    run = Run("The cat", engine.settings_for(max_new_tokens=50), "tiny", 0)
    run.steps = list(engine.stream("The cat", max_new_tokens=3, seed=1, stop_at_eos=False))[:2]  # mid-run
    return run


def test_a_run_that_wrote_its_last_token_before_the_reload_reached_it_is_done(engine) -> None:
    run = unfinished_run(engine)
    last = list(engine.stream("The cat", max_new_tokens=3, seed=1, stop_at_eos=False))[2]

    def old_page() -> None:
        run.steps.append(last)  # its last token, before it saw `cancelled`

    timer = threading.Timer(0.2, old_page)
    timer.start()
    visits._settle({keys.HISTORY: [run]})
    assert run.finished and not run.stopped  # "Done", with nothing to explain
