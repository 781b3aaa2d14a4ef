"""The real app.py, driven by Streamlit's AppTest with the tiny model folder: widgets by key, the streamed
text against the engine's own output, the chart's data, the seed, messages instead of tracebacks."""

from __future__ import annotations

import html
import json
import re
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_tiny_model
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

import gpt2_engine
from gpt2_engine import MB, format_bytes
from studio import charts, model_picker, runner
from studio.run_view import RESET_MARK, RunView

APP = Path(__file__).resolve().parent.parent / "app.py"


def generate(at: AppTest, **values) -> AppTest:
    """Sets widgets by key (prompt, length, top_p, window, seed, ...) and presses Generate."""
    for key, value in values.items():
        widget = next(
            w
            for kind in ("text_area", "slider", "select_slider", "text_input", "radio", "checkbox")
            for w in getattr(at, kind)
            if w.key == key
        )
        widget.set_value(value)
    at.button(key="generate").click()
    at.run()
    assert not at.exception, at.exception
    return at


def full_length_seed(page_engine: gpt2_engine.Engine, prompt: str, length: int, **settings) -> int:
    """A seed with which the tiny random model writes all `length` tokens (it often writes <|endoftext|>)."""
    for seed in range(100):
        steps = list(page_engine.stream(prompt, max_new_tokens=length, seed=seed, **settings))
        if steps[-1].stop_reason == "length":
            return seed
    raise AssertionError("no seed in 0..99 runs to the full length")


def shown_text(at: AppTest) -> str:
    """The streamed text's HTML, without the reset marks."""
    box = next(h.value for h in at.html if 'class="studio-text"' in h.value)
    return box.replace(RESET_MARK, "")


def generated_shown(at: AppTest) -> str:
    """The continuation as the page shows it: its text, without the markup of the tokens' tooltips and colours."""
    inner = shown_text(at).split('<span class="generated">', 1)[1].rsplit("</span></div></div>", 1)[0]
    return html.unescape(re.sub(r"<[^>]*>", "", inner))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def chart_datasets(at: AppTest) -> list[pd.DataFrame]:
    return [
        dataframe_util.convert_arrow_bytes_to_pandas_df(dataset.data.data)
        for chart in at.get("vega_lite_chart")
        for dataset in chart.proto.datasets
    ]


def test_the_page_starts_with_the_model_and_explains_itself(page: AppTest) -> None:
    assert page.title[0].value == "GPT-2 Studio"
    assert not page.error
    assert page.text_area(key="prompt").value  # pre-filled with an example phrase
    assert page.slider(key="top_p").value == pytest.approx(0.70)
    assert page.select_slider(key="window").value == 50
    assert "Generate" in page.info[0].value
    for key in ("prompt", "length", "top_p", "window", "temperature", "seed", "sentence_end", "sampler"):
        widget = next(
            w
            for kind in ("text_area", "slider", "select_slider", "text_input", "checkbox", "radio")
            for w in getattr(page, kind)
            if w.key == key
        )
        assert widget.help, f"{key} has no help text"


def test_streamed_text_is_the_engines_own_for_the_seed_shown(page: AppTest, page_engine: gpt2_engine.Engine) -> None:
    prompt = "The cat sat on the mat."
    at = generate(page, prompt=prompt, length=30, top_p=0.9, window=8)
    seed = int(metric(at, "Seed"))  # a seed the page drew: the field was empty
    run = at.session_state["run"]
    expected = page_engine.speak(prompt, max_new_tokens=30, top_p=0.9, window=8, seed=seed)
    assert prompt + run.generated == expected
    assert generated_shown(at) == expected[len(prompt) :]
    assert any(f"seed {seed}" in c.value for c in at.tabs[0].caption)  # the run's caption, in the Write tab
    assert metric(at, "Tokens") == str(len(run.steps))  # 30, or fewer when the model wrote <|endoftext|>
    assert "Done" in at.success[0].value


def test_a_typed_seed_repeats_the_run_exactly(page: AppTest) -> None:
    first = generate(page, seed="4242", length=20).session_state["run"].generated
    again = generate(page, length=20).session_state["run"].generated
    assert metric(page, "Seed") == "4242" and again == first


@pytest.mark.parametrize("window", [8, 5])
def test_chart_has_a_point_per_token_and_resets_where_the_window_says(
    page: AppTest, page_engine: gpt2_engine.Engine, window: int
) -> None:
    seed = full_length_seed(page_engine, page.text_area(key="prompt").value, 40, top_p=0.7, window=window)
    at = generate(page, length=40, window=window, seed=str(seed))
    datasets = chart_datasets(at)
    memory = next(d for d in datasets if "tokens" in d.columns)
    resets = next(d for d in datasets if "reset_at" in d.columns)
    assert list(memory["tokens"]) == list(range(1, 41))
    assert {"added_mb", "rss_mb", "kv_mb"} <= set(memory.columns) and (memory["rss_mb"] > 0).all()
    run = at.session_state["run"]
    assert list(memory["kv_mb"]) == pytest.approx([s.kv_bytes / MB for s in run.steps])
    multiples = [n for n in range(1, 40) if n % window == 0]  # 8, 16, 24, 32 for a window of 8
    assert list(resets["reset_at"]) == multiples
    assert list(memory.loc[memory["reset"], "tokens"] - 1) == multiples  # the token right after each reset


def test_the_memory_chart_draws_the_kv_cache_and_says_the_whole_program_beside_it(
    page: AppTest, page_engine: gpt2_engine.Engine
) -> None:
    """The headline is the cache the window controls, on an axis of its own; the process's other memory (heap
    noise by more than a small model's cache) is said in words; gpt2-xl's equivalent is the right axis."""
    at = generate(page, length=30, seed="3", window=8)
    run = at.session_state["run"]
    chart = next(c for c in at.get("vega_lite_chart") if any(d.name == "memory" for d in c.proto.datasets))
    memory = next(
        dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets if d.name == "memory"
    )
    spec = json.loads(chart.proto.spec)
    ahead, held = spec["layer"][0]["layer"][:2]
    unit = held["encoding"]["y"]["title"].removeprefix("KV cache, ")
    divisor = {"kB": 1e3, "MB": MB}[unit]
    assert held["encoding"]["y"]["field"] == "held_kv" and ahead["encoding"]["y"]["field"] == "all_kv"
    assert list(memory["all_kv"]) == pytest.approx([s.kv_bytes / divisor for s in run.steps])
    assert list(memory["held_kv"]) == pytest.approx([(s.kv_bytes - s.read_ahead_bytes) / divisor for s in run.steps])
    assert "added_mb" not in json.dumps(spec)  # the process's growth is not drawn against the cache
    xl = spec["layer"][1]["encoding"]["y"]  # the tiny model's token holds far less than gpt2-xl's: the right axis
    ratio = charts.XL_KV_PER_TOKEN / page_engine.kv_bytes_per_token
    assert xl["axis"]["orient"] == "right" and "gpt2-xl" in xl["title"]
    assert xl["scale"]["domain"][1] == pytest.approx(held["encoding"]["y"]["scale"]["domain"][1] * divisor * ratio / MB)
    said = next(c.value for c in at.tabs[0].caption if "The KV cache keeps" in c.value)
    assert format_bytes(run.stats.peak_kv_bytes) in said and format_bytes(run.stats.peak_kv_bytes * ratio) in said
    assert format_bytes(run.steps[-1].rss_bytes) in said and "computer's memory" in said  # the whole program


def test_a_growing_chart_keeps_its_spec_between_most_redraws(page_engine: gpt2_engine.Engine) -> None:
    """While a run writes, its chart is redrawn with one more token each time. Streamlit's browser side rebuilds a
    chart whose spec changed and only swaps the data of one whose spec is the same: the cache's axis ends on a step
    of a ladder (a little past the peak), so the spec changes a few times a run, not at every redraw."""
    steps = list(page_engine.stream("Hello world!", max_new_tokens=60, window=None, seed=3))
    specs = []
    for k in range(1, len(steps) + 1):
        spec = charts.kv_chart(steps[:k], 60, page_engine.kv_bytes_per_token)
        y = spec["layer"][0]["layer"][0]["encoding"]["y"]
        divisor = {"kB": 1e3, "MB": MB}[y["title"].removeprefix("KV cache, ")]
        peak = max(step.kv_bytes for step in steps[:k]) / divisor
        assert 1.08 * peak <= y["scale"]["domain"][1] <= 1.08 * peak * 1.25 + 1e-9  # room above, at most a quarter
        specs.append(json.dumps({key: value for key, value in spec.items() if key != "datasets"}, sort_keys=True))
    assert steps[-1].kv_bytes > 10 * steps[0].kv_bytes  # a cache that grew tenfold (a short phrase, no window)...
    assert len(set(specs)) <= len(specs) // 3  # ... in a third as many specs as redraws (16 of 60)
    assert [charts.axis_top(v) for v in (0.5, 1, 1.05, 7.9, 8.1, 101)] == pytest.approx([0.5, 1, 1.25, 8, 10, 125])


def test_the_lines_under_the_text_are_drawn_again_only_when_they_change(
    page: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every redraw costs the browser a pass over the page, beside the model: the settings line under the text
    is drawn as the run starts and when its seed is known, not at each of its 30 tokens."""
    import streamlit

    from studio import run_view

    lines: list[str] = []
    caption = streamlit.caption
    monkeypatch.setattr(run_view, "TEXT_EVERY_S", 0.0)  # the text redrawn at every token
    monkeypatch.setattr(
        streamlit, "caption", lambda body, *args, **kwargs: (lines.append(body), caption(body, *args, **kwargs))[1]
    )
    at = generate(page, length=30, seed="5", window=8)
    assert len(at.session_state["run"].steps) >= 10
    assert 1 <= sum(line.startswith("Written with") for line in lines) <= 2
    assert any(c.value.startswith("Written with") and "seed 5" in c.value for c in at.tabs[0].caption)


def test_window_off_has_no_resets(page: AppTest) -> None:
    at = generate(page, prompt="Hello world!", length=20, window="off", seed="3")
    resets = next(d for d in chart_datasets(at) if "reset_at" in d.columns)
    assert resets.empty
    assert at.session_state["run"].settings.window is None


def test_model_markup_is_shown_as_text(page: AppTest) -> None:
    prompt = "<script>alert(1)</script> ![x](http://example.com/x.png) **bold** $x$"
    at = generate(page, prompt=prompt, length=5)
    text = shown_text(at)
    assert html.escape(prompt) in text and "<script>" not in text


def test_text_survives_a_rerun_and_stop_goes_once_it_is_done(page: AppTest) -> None:
    at = generate(page, length=25, seed="11")
    text = shown_text(at)
    assert "stop" not in [button.key for button in at.button]  # Stop is drawn only while a run writes
    at.run()  # any rerun: a sidebar change, a click elsewhere
    assert shown_text(at) == text and not at.exception


def test_a_bad_seed_is_a_message_not_a_traceback(page: AppTest) -> None:
    at = generate(page, seed="abc")
    assert not at.exception
    assert any("seed" in e.value.lower() and "abc" in e.value for e in at.error)
    assert "run" not in at.session_state


def test_a_long_prompt_says_it_was_cut(page: AppTest) -> None:
    at = generate(page, prompt="Once upon a time, there was a cat. " * 40, length=5, window=8)
    assert at.session_state["run"].stats.prompt_tokens_dropped > 0
    assert any("left out" in w.value for w in at.warning)


def test_a_bad_model_path_is_a_message_and_the_page_stays_usable(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GPT2_STUDIO_MODEL", str(tmp_path / "no-such-model"))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert any("Could not load this model" in e.value and "no-such-model" in e.value for e in at.error)
    assert at.button(key="generate").disabled
    at.text_input(key="model_folder").set_value(str(tiny_model_dir)).run()  # pick another: it loads
    assert not at.exception and not at.error
    assert not at.button(key="generate").disabled


@pytest.mark.parametrize(("asked", "shown"), [("int8", "int8"), (" FP32 ", "fp32"), ("fast", "auto")])
def test_the_start_up_precision_comes_from_the_environment(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, asked: str, shown: str
) -> None:
    monkeypatch.setenv("GPT2_STUDIO_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("GPT2_STUDIO_PRECISION", asked)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="precision").value == shown
    warnings = [w.value for w in at.sidebar.warning]
    if shown == "auto":
        assert any("GPT2_STUDIO_PRECISION='fast' is not a precision" in w and "fp32, bf16" in w for w in warnings)
    else:
        assert not warnings
        assert f"precision** {shown}" in " ".join(m.value for m in at.sidebar.markdown)


def test_a_load_that_fails_half_way_is_a_message_and_a_good_model_loads_after(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "half-written"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a download cut off half-way
    monkeypatch.setenv("GPT2_STUDIO_MODEL", str(broken))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert any("Could not load this model" in e.value and "damaged" in e.value for e in at.error)
    at.text_input(key="model_folder").set_value(str(tiny_model_dir)).run()
    assert not at.exception and not at.error
    at.button(key="generate").click().run()
    assert not at.exception and "Done:" in " ".join(s.value for s in at.success)


def test_a_failing_run_shows_a_message_and_gives_the_turn_back(page: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_stream(self, prompt, settings=None, **changes):
        yield from ()
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(gpt2_engine.Engine, "stream", broken_stream)
    at = generate(page, length=5)
    assert any("the model fell over" in e.value for e in at.error)
    assert len(runner.turn_queue()) == 0


def test_a_visitor_beyond_the_batchs_bound_waits_then_gets_the_run(
    page: AppTest, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[int] = []
    show_waiting = RunView.show_waiting

    def record(view: RunView, ahead: int) -> None:
        heard.append(ahead)
        show_waiting(view, ahead)

    monkeypatch.setattr(RunView, "show_waiting", record)
    engine = model_picker.shared_model(str(tiny_model_dir), "auto").get()  # the page's engine (one per server)
    monkeypatch.setattr(engine.batcher.scheduler, "max_runs", 1)
    other_visitor = engine.stream("Another visitor", max_new_tokens=500, seed=1, stop_at_eos=False)
    next(other_visitor)  # another visitor's run fills the batch
    threading.Timer(0.6, other_visitor.close).start()
    at = generate(page, length=5)
    assert heard and set(heard) == {1}  # told one run is ahead, while it was
    assert at.session_state["run"].steps and not at.session_state["run"].stopped
    assert engine.batcher.join(timeout_s=10)


def test_a_window_too_big_for_the_next_model_is_not_an_error(
    page: AppTest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    longer = write_tiny_model(tmp_path_factory.mktemp("tiny-256"), n_positions=256)  # windows up to 128
    page.text_input(key="model_folder").set_value(str(longer)).run()
    at = generate(page, window=100, length=5, seed="1")
    assert at.session_state["run"].settings.window == 100
    at.text_input(key="model_folder").set_value(str(tiny_model_dir)).run()  # windows up to 64
    assert not at.exception
    assert at.select_slider(key="window").value in (*range(1, 65), "off")
