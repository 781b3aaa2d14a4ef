"""Keeps working under bad input, long runs, stops and several visitors at once (engine side)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpt2_engine
from gpt2_engine.memory import read_process_memory
from gpt2_engine.serving import TurnQueue

ROOT = Path(__file__).resolve().parents[1]

NASTY_PROMPTS = [
    "",
    "   \n\t ",
    "\x00\x01\x02 NUL and control \x1b[31m",
    "lone surrogate \ud800 here \udfff",
    "مرحبا بالعالم שלום עולם",  # right-to-left
    "emoji 🙂🚀👋🏾 ❤️‍🔥 and 日本語 mixed Ünïcödé",
    "<script>alert(1)</script> ![x](http://example.invalid/x.png)",
    "a" * 20_000,  # longer than the model's positions
]


@pytest.mark.parametrize("prompt", NASTY_PROMPTS)
def test_any_prompt_streams_and_joins_to_decode(engine, prompt) -> None:
    steps = list(engine.stream(prompt, max_new_tokens=8, seed=0, stop_at_eos=False))
    assert len(steps) == 8
    text = "".join(s.text for s in steps)
    assert text == engine.tokenizer.decode([s.token_id for s in steps], skip_special_tokens=True)
    if len(prompt) > 10_000:
        assert steps[0].prompt_tokens_dropped > 0 and steps[0].prompt_tokens == engine.n_positions - 50


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.text(max_size=200),
    length=st.integers(min_value=-5, max_value=12),
    top_p=st.floats(allow_nan=True, allow_infinity=True),
    window=st.one_of(st.none(), st.integers(min_value=-3, max_value=100)),
    temperature=st.one_of(st.floats(min_value=-1, max_value=5), st.just(float("nan"))),
)
def test_any_settings_and_prompt_either_run_or_say_which_field(
    engine, prompt, length, top_p, window, temperature
) -> None:
    try:
        steps = list(
            engine.stream(prompt, max_new_tokens=length, top_p=top_p, window=window, temperature=temperature, seed=1)
        )
    except gpt2_engine.SettingsError as error:
        assert error.field in {"max_new_tokens", "top_p", "window", "temperature"}
        assert str(error).startswith(f"{error.field} = ")
        return
    assert 1 <= len(steps) <= length
    assert "".join(s.text for s in steps) == engine.tokenizer.decode(
        [s.token_id for s in steps], skip_special_tokens=True
    )


FLAT_MEMORY_RUN = """
import sys, torch, gpt2_engine
torch.set_num_threads(1)
engine = gpt2_engine.load(sys.argv[1], dtype="fp32", device="cpu")
window = None if sys.argv[2] == "off" else int(sys.argv[2])
rss = torch.zeros(5000, dtype=torch.int64)  # made beforehand: keeping 5000 Steps would itself grow memory
count, held = 0, 0
for step in engine.stream("The cat", max_new_tokens=5000, window=window, seed=3, stop_at_eos=False):
    rss[step.index] = step.rss_bytes
    count, held = count + 1, max(held, step.context_tokens)
xs = torch.arange(4000, dtype=torch.float64)
ys = rss[1000:].double()
xs, ys = xs - xs.mean(), ys - ys.mean()
print(count, held, float((xs * ys).sum() / (xs * xs).sum()))
"""


def run_script(code: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c code args` in a fresh process, offline; fails the test with its stderr if it fails."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("window", ["32", "off"])
def test_a_5000_token_run_completes_with_flat_memory(tiny_model_dir, window) -> None:
    """In a fresh process, so that what other tests left behind cannot move the process's memory."""
    out = run_script(FLAT_MEMORY_RUN, str(tiny_model_dir), window)
    count, held, slope = out.stdout.split()
    assert int(count) == 5000 and int(held) <= 128
    # The run keeps its own token ids (the text stream's and the window's lists: measured 10-75 B a token);
    # a KV cache that was never freed would add 512 B a token on this model (2 layers x K and V x 32 x 4 B).
    assert abs(float(slope)) < 150, f"RSS grows {float(slope):.0f} bytes per token over the last 4000 tokens"


def test_a_hundred_runs_in_a_row_do_not_grow_memory(engine) -> None:
    def run() -> None:
        list(engine.stream("The cat", max_new_tokens=30, window=8, seed=0, stop_at_eos=False))

    for _ in range(20):  # warm up the allocator and caches
        run()
    gc.collect()
    before = read_process_memory().anon_bytes
    for _ in range(100):
        run()
    gc.collect()
    grown = read_process_memory().anon_bytes - before
    assert grown < 8e6, f"anonymous memory grew {grown / 1e6:.1f} MB over 100 runs"


def test_stopping_mid_run_fifty_times_leaves_the_engine_ready(engine) -> None:
    engine.batcher.join(timeout_s=10)  # an earlier test's batch, if its thread is still ending
    threads_before = threading.active_count()
    expected = [s.token_id for s in engine.stream("The cat", max_new_tokens=20, seed=9, stop_at_eos=False)]
    for k in range(50):
        steps = engine.stream("The cat", max_new_tokens=500, seed=k, stop_at_eos=False, window=None if k % 2 else 16)
        for step in steps:
            if step.index == k % 7:
                break
        steps.close()
    assert engine.batcher.join(timeout_s=10)  # the batch's thread ends with its last run
    assert threading.active_count() == threads_before
    assert [s.token_id for s in engine.stream("The cat", max_new_tokens=20, seed=9, stop_at_eos=False)] == expected


def test_several_visitors_take_turns_and_each_gets_their_own_run(engine) -> None:
    queue, results, errors, running, overlaps = TurnQueue(), {}, [], [], []

    def visitor(n: int) -> None:
        try:
            with queue.turn():
                running.append(n)
                overlaps.append(len(running))
                if n == 3:
                    raise RuntimeError("a visitor's run fails")
                steps = list(engine.stream(f"Visitor {n} says", max_new_tokens=15, seed=100 + n, stop_at_eos=False))
                results[n] = ("".join(s.text for s in steps), steps[0].seed)
        except RuntimeError as error:
            errors.append(str(error))
        finally:
            if n in running:
                running.remove(n)

    threads = [threading.Thread(target=visitor, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a visitor never got a turn"
    assert max(overlaps) == 1  # one generation at a time
    assert errors == ["a visitor's run fails"] and sorted(results) == [0, 1, 2, 4, 5]
    for n, (text, seed) in results.items():
        assert seed == 100 + n
        assert (
            text
            == engine.speak(f"Visitor {n} says", max_new_tokens=15, seed=100 + n, stop_at_eos=False)[
                len(f"Visitor {n} says") :
            ]
        )


def test_remote_code_is_never_trusted(tiny_model_dir, tmp_path) -> None:
    """A folder that asks for its own Python code (auto_map) still loads as a plain GPT-2, running none of it."""
    folder = tmp_path / "with-code"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import GPT2LMHeadModel as EvilModel\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        engine = gpt2_engine.load(str(folder))
        assert engine.speak("Hi", max_new_tokens=2, seed=0).startswith("Hi")
    except gpt2_engine.ModelLoadError:
        pass  # refusing is fine too
    assert not marker.exists()


FILES_OPENED = """
import json, sys
import gpt2_engine, transformers
from transformers import AutoTokenizer, GPT2LMHeadModel  # imported before watching: imports open files of their own
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and args and isinstance(args[0], str) else None)
engine = gpt2_engine.load(sys.argv[1], dtype="fp32", device="cpu")
engine.speak("Hi", max_new_tokens=3, seed=0)
print(json.dumps({"opened": opened, "vocab": len(engine.tokenizer)}))
"""


def test_a_model_folder_cannot_point_the_loader_at_files_outside_it(tiny_model_dir, tmp_path) -> None:
    """Its configs name files elsewhere (another tokenizer, another model): only the folder's own are read."""
    from conftest import write_tokenizer

    elsewhere = tmp_path / "elsewhere"
    write_tokenizer(elsewhere, vocab_size=300)  # a different vocabulary: reading it would show
    folder = tmp_path / "pointing-out"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    for name in ("tokenizer_file", "vocab_file", "merges_file"):
        tokenizer_config[name] = str(elsewhere / ("tokenizer.json" if name == "tokenizer_file" else name))
    tokenizer_config["name_or_path"] = str(elsewhere)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((folder / "config.json").read_text())
    config["_name_or_path"] = str(elsewhere)
    (folder / "config.json").write_text(json.dumps(config))
    out = run_script(FILES_OPENED, str(folder))
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(path.startswith(str(folder)) for path in seen["opened"])  # the watch saw the folder's own reads
    assert not [path for path in seen["opened"] if str(elsewhere) in path], seen["opened"]
    assert seen["vocab"] == len(gpt2_engine.load(str(tiny_model_dir), dtype="fp32", device="cpu").tokenizer)
