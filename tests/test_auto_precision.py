"""What runs here and what `auto` picks: the probe's refusal (both branches), the page's and the command
line's words for it, and the measured choice (fastest faithful, remembered, measured again on a new key)."""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

import gpt2_engine
from gpt2_engine import __main__ as cli
from gpt2_engine import autotune, capabilities
from gpt2_engine.autotune import Trial

APP = str(Path(__file__).resolve().parent.parent / "app.py")
REFUSAL = (
    "mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"
)


@pytest.fixture
def no_bf16(monkeypatch):
    """This machine as an AVX2-only CPU sees it: oneDNN refuses to pack bf16 weights."""

    def refuse() -> None:
        raise RuntimeError(REFUSAL)

    monkeypatch.setitem(capabilities.CPU_PROBES, "bf16", refuse)
    monkeypatch.setattr(capabilities, "cpu_flags", lambda: frozenset({"sse4_2", "avx", "avx2", "fma"}))
    capabilities.forget()
    yield
    capabilities.forget()


def test_every_precision_is_probed_and_fp32_always_runs() -> None:
    support = capabilities.supported("cpu")
    assert set(support) == {"fp32", "bf16", "fp16", "int8", "q8"}
    assert support["fp32"].runs
    for s in support.values():
        assert s.runs == (s.why == "")


def test_a_refused_probe_is_a_reason_in_words(no_bf16) -> None:
    bf16 = capabilities.supported("cpu")["bf16"]
    assert not bf16.runs
    assert bf16.why.startswith("bf16 needs a CPU with AVX-512") and "this one has AVX2" in bf16.why
    assert "bf16" not in capabilities.runnable("cpu") and "fp32" in capabilities.runnable("cpu")


def test_loading_a_refused_precision_says_why_before_reading_weights(no_bf16, tiny_model_dir) -> None:
    with pytest.raises(gpt2_engine.PrecisionUnavailableError, match="does not run here: bf16 needs") as caught:
        gpt2_engine.load(str(tiny_model_dir), dtype="bf16", device="cpu")
    assert "Use auto or one of: fp32" in str(caught.value)


def test_the_command_line_refuses_with_the_reason_and_exit_2(no_bf16, tiny_model_dir, capsys) -> None:
    code = cli.main(["--model", str(tiny_model_dir), "--precision", "bf16", "--length", "3", "Hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bf16 needs a CPU with AVX-512" in err and "this one has AVX2" in err and "Traceback" not in err


@pytest.fixture
def own_server_cache():
    """The page's models are cached per server (st.cache_resource, one per process here): one loaded while the
    CPU is faked must not serve the other page tests."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def test_the_page_offers_only_what_runs_and_names_the_rest(
    no_bf16, own_server_cache, tiny_model_dir, monkeypatch
) -> None:
    monkeypatch.setenv("GPT2_STUDIO_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("GPT2_STUDIO_PRECISION", "bf16")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert "bf16" not in at.selectbox(key="precision").options
    assert at.selectbox(key="precision").value == "auto"
    assert any("does not run here" in w.value and "AVX2" in w.value for w in at.warning)
    assert any("Not on this machine" in c.value and "bf16 needs" in c.value for c in at.sidebar.caption)
    assert not at.exception


def test_the_real_probes_pass_where_the_kernels_run() -> None:
    """The other branch, unfaked: a probe that runs says so, and the engine loads that precision."""
    for precision, probe in capabilities.CPU_PROBES.items():
        try:
            probe()
        except Exception:  # noqa: BLE001
            assert not capabilities.supported("cpu")[precision].runs
        else:
            assert capabilities.supported("cpu")[precision].runs


# auto: the choice, from a fake timing table


def fake_steps(table: dict[str, tuple[float, float]], calls: list[str]):
    """decode_steps as if each precision took `table[p][0]` s a step, its logits off fp32's by `table[p][1]`."""
    base = torch.randn(autotune.CHECK_STEPS + 1, 50, generator=torch.Generator().manual_seed(0))

    def steps(model, ids, stop_after_s=math.inf, rows=1, shadow_chunk=4):
        precision = model
        if rows == 1:
            calls.append(precision)
        seconds, noise = table[precision]
        logits = base + noise * torch.randn(base.shape, generator=torch.Generator().manual_seed(1))
        return [seconds] * autotune.CHECK_STEPS, list(logits.log_softmax(-1))

    return steps


def test_pick_takes_the_fastest_faithful_precision() -> None:
    trials = [
        Trial("fp32", 0.40),
        Trial("bf16", 0.20, top1=1.0, kl=0.001),
        Trial("int8", 0.10, top1=0.5, kl=0.9),  # fastest, but it does not write what fp32 would
        Trial("fp16", 0.30, top1=1.0, kl=0.0),
    ]
    assert autotune.pick(trials) == "bf16"
    assert autotune.pick([Trial("fp32", 0.4), Trial("int8", 0.5, note="slower")]) == "fp32"


def test_measure_rejects_an_unfaithful_precision_and_holds_one_candidate_at_a_time(monkeypatch) -> None:
    calls: list[str] = []
    table = {"fp32": (0.4, 0.0), "bf16": (0.2, 0.01), "int8": (0.1, 5.0), "fp16": (3.0, 0.0), "q8": (0.3, 0.0)}
    monkeypatch.setattr(autotune, "decode_steps", fake_steps(table, calls))
    alive: weakref.WeakSet = weakref.WeakSet()

    class Candidate:  # a probe model that knows how many others are alive beside it
        def __init__(self, precision: str):
            assert not alive, "two candidates held at once"
            self.precision = precision
            alive.add(self)

    def fake_steps_by_name(model, *args, **kwargs):
        return fake_steps(table, calls)(model.precision, *args, **kwargs)

    monkeypatch.setattr(autotune, "decode_steps", fake_steps_by_name)
    trials = autotune.measure(["fp32", "bf16", "fp16", "int8"], Candidate, list(range(30)))
    by = {t.precision: t for t in trials}
    assert calls == ["fp32", "bf16", "fp16", "int8"]
    assert by["bf16"].faithful and not by["int8"].faithful and by["int8"].kl > autotune.MAX_KL
    assert not by["fp16"].faithful and "slower" in by["fp16"].note
    assert autotune.pick(trials) == "bf16" and not alive


def test_the_shadow_rows_chunk_is_the_cheapest_measured(monkeypatch) -> None:
    """Steps with the shadow row cost what the table says for each chunk: the cheapest on average is kept."""
    cost = {1: 0.13, 2: 0.11, 4: 0.12, 15: 0.115}

    def steps(model, ids, stop_after_s=math.inf, rows=1, shadow_chunk=4):
        seconds = 0.1 if rows == 1 else cost[shadow_chunk]
        return [seconds] * autotune.CHECK_STEPS, [torch.zeros(5).log_softmax(-1)] * (autotune.CHECK_STEPS + 1)

    monkeypatch.setattr(autotune, "decode_steps", steps)
    choice = autotune.choose(["fp32"], lambda p: p, list(range(30)), layers="4 of its 48 layers")
    assert choice.shadow_chunk == 2
    assert "on 4 of its 48 layers" in choice.why


def test_auto_is_measured_once_then_remembered_and_measured_again_on_a_new_cpu(
    tiny_model_dir, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("GPT2_STUDIO_CACHE", str(tmp_path))
    calls: list[str] = []
    table = {"fp32": (0.4, 0.0), "bf16": (0.3, 0.001), "fp16": (0.9, 0.0), "int8": (0.1, 0.001), "q8": (0.2, 0.001)}
    real_load = gpt2_engine.loading._load_model

    def load_model(source, is_local, config, shape, precision, device, say):
        return real_load(source, is_local, config, shape, precision, device, say)

    models: dict[int, str] = {}

    timed: list[str] = []
    probed: list[str] = []
    real_probe = gpt2_engine.loading._probe_model

    def steps(model, ids, stop_after_s=math.inf, rows=1, shadow_chunk=4):
        return fake_steps(table, timed)(models[id(model)], ids, stop_after_s, rows, shadow_chunk)

    def tracked(*args):  # every whole load: the chosen precision only
        model = load_model(*args)
        calls.append(args[4])
        return model

    def probe(source, config, precision, device):  # the candidates: a few layers each
        model = real_probe(source, config, precision, device)
        assert model.config.n_layer == min(autotune.PROBE_LAYERS, config.n_layer)
        models[id(model)] = precision
        probed.append(precision)
        return model

    monkeypatch.setattr(gpt2_engine.loading, "_load_model", tracked)
    monkeypatch.setattr(gpt2_engine.loading, "_probe_model", probe)
    monkeypatch.setattr(autotune, "decode_steps", steps)
    runnable = capabilities.runnable("cpu")

    first = gpt2_engine.load(str(tiny_model_dir), dtype="auto", device="cpu")
    expected = "int8" if "int8" in runnable else min(runnable, key=lambda p: table[p][0])
    assert first.precision == expected and first.choice.measured_now
    assert sorted(set(probed)) == sorted(runnable) and calls == [expected]  # measured on probes, one whole load
    assert f"{expected}: " in first.choice.why and "fp32's speed here" in first.choice.why

    calls.clear()
    timed.clear()
    probed.clear()
    again = gpt2_engine.load(str(tiny_model_dir), dtype="auto", device="cpu")
    assert again.precision == expected and not again.choice.measured_now
    assert calls == [expected] and timed == [] and probed == []  # the remembered precision; nothing timed
    assert again.shadow_chunk == first.shadow_chunk
    assert gpt2_engine.serving.plan_load(str(tiny_model_dir)).precision == expected  # the sidebar knows it too

    monkeypatch.setattr(capabilities, "cpu_flags", lambda: frozenset({"avx2"}))  # another CPU: another key
    probed.clear()
    gpt2_engine.load(str(tiny_model_dir), dtype="auto", device="cpu")
    assert sorted(set(probed)) == sorted(runnable)


def test_a_new_torch_or_changed_weights_is_a_new_key(tiny_model_dir, monkeypatch) -> None:
    key = autotune.key(str(tiny_model_dir), True)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert autotune.key(str(tiny_model_dir), True) != key


def test_where_fp32_does_not_fit_auto_takes_the_smallest_unmeasured_and_remembers_nothing(
    tiny_model_dir, monkeypatch, tmp_path
) -> None:
    """Issue 30: with fp32 too big for the free memory, `measure` still added fp32, could pick it, remembered it
    before the memory check, and so every later auto load failed. Now: the smallest that runs, unmeasured, not
    remembered; once memory frees up, auto measures as usual."""
    monkeypatch.setenv("GPT2_STUDIO_CACHE", str(tmp_path))
    monkeypatch.setattr(autotune, "decode_steps", lambda *args, **kwargs: pytest.fail("nothing is timed"))
    shape = gpt2_engine.loading.read_shape(str(tiny_model_dir), True, str(tiny_model_dir))[1]
    runnable = capabilities.runnable("cpu")
    smallest = min(runnable, key=shape.memory_needed)
    assert shape.memory_needed(smallest) < shape.memory_needed("fp32")
    monkeypatch.setattr(gpt2_engine.loading, "available_bytes", lambda: shape.memory_needed("fp32") - 1)
    engine = gpt2_engine.load(str(tiny_model_dir), dtype="auto", device="cpu")
    assert engine.precision == smallest and "fp32 does not fit" in engine.choice.why
    key = autotune.key(str(tiny_model_dir), True)
    assert autotune.remembered(key) is None


def test_a_measured_choice_that_fails_to_load_is_not_remembered(tiny_model_dir, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GPT2_STUDIO_CACHE", str(tmp_path))
    table = {"fp32": (0.4, 0.0), "bf16": (0.3, 0.001), "fp16": (0.9, 0.0), "int8": (0.1, 0.001), "q8": (0.2, 0.001)}
    models: dict[int, str] = {}
    real_probe = gpt2_engine.loading._probe_model

    def probe(source, config, precision, device):
        model = real_probe(source, config, precision, device)
        models[id(model)] = precision
        return model

    def steps(model, ids, stop_after_s=math.inf, rows=1, shadow_chunk=4):
        return fake_steps(table, [])(models[id(model)], ids, stop_after_s, rows, shadow_chunk)

    def refuse(*args) -> None:
        raise MemoryError("the whole model did not fit after all")

    monkeypatch.setattr(gpt2_engine.loading, "_probe_model", probe)
    monkeypatch.setattr(autotune, "decode_steps", steps)
    monkeypatch.setattr(gpt2_engine.loading, "_load_model", refuse)
    with pytest.raises(Exception):  # noqa: B017 - however the failure is said, it is a failure
        gpt2_engine.load(str(tiny_model_dir), dtype="auto", device="cpu")
    assert autotune.remembered(autotune.key(str(tiny_model_dir), True)) is None
