"""Working memory is bounded and made at load: q8's scratch does not grow with the shapes a day brings, and a
windowed run's cache is sized to what the window lets it hold."""

from __future__ import annotations

import pytest
import torch

import gpt2_engine
from gpt2_engine import loading, q8, quantize
from gpt2_engine.fast import FastContext
from gpt2_engine.memory import page_in, read_process_memory
from gpt2_engine.q8 import PINS, Q8Linear, Scratch
from gpt2_engine.quantize import quantize_rows
from gpt2_engine.window import Window


def runs_here(precision: str) -> list:
    runs = precision in gpt2_engine.capabilities.runnable("cpu")
    return [pytest.param(precision, marks=pytest.mark.skipif(not runs, reason=f"{precision} does not run here"))]


@pytest.mark.parametrize("precision", runs_here("q8"))
def test_q8_scratch_is_made_at_load_and_never_grows(precision) -> None:
    torch.manual_seed(0)
    scratch = Scratch(rows=16)
    layers = [Q8Linear(*quantize_rows(torch.randn(48, width) * 0.05), torch.randn(48), scratch) for width in (64, 96)]
    made = scratch.nbytes
    assert made == 16 * (64 + 96 + 2 * PINS) * 4  # one buffer per width (each row and its pins), at construction
    with torch.inference_mode():
        for rows in range(1, 60):  # every row count a day of phrases brings, beyond the scratch too
            for layer, width in zip(layers, (64, 96)):
                layer(torch.randn(rows, width))
    assert scratch.nbytes == made


@pytest.mark.parametrize("precision", runs_here("q8"))
def test_q8_rows_beyond_the_scratch_are_read_in_slices_with_the_same_result(precision) -> None:
    torch.manual_seed(1)
    weight, bias = torch.randn(40, 32) * 0.05, torch.randn(40)
    small = Q8Linear(*quantize_rows(weight), bias, Scratch(rows=7))
    large = Q8Linear(*quantize_rows(weight), bias, Scratch(rows=64))
    x = torch.randn(2, 25, 32)  # 50 rows: 8 slices of the small scratch
    with torch.inference_mode():
        assert torch.equal(small(x), large(x))
        assert small(x).shape == (2, 25, 40)


@pytest.mark.parametrize("precision", runs_here("q8"))
def test_a_q8_model_shares_one_scratch(tiny_model_dir, precision) -> None:
    low = gpt2_engine.load(str(tiny_model_dir), dtype=precision, device="cpu")
    scratches = {id(m.scratch) for m in low.model.modules() if isinstance(m, Q8Linear)}
    assert len(scratches) == 1
    scratch = next(m.scratch for m in low.model.modules() if isinstance(m, Q8Linear))
    made = scratch.nbytes
    for words in (3, 40, 120):  # phrases of new lengths
        "".join(step.text for step in low.stream("word " * words, max_new_tokens=4, window=8, seed=1))
    assert scratch.nbytes == made and scratch.rows == q8.SCRATCH_ROWS


def test_a_windowed_runs_cache_holds_what_the_window_allows(engine) -> None:
    settings = engine.settings_for(max_new_tokens=40, window=8, seed=3, stop_at_eos=False)
    decoder = engine.decoder("The cat sat on the mat", settings, window_mode="shadow")
    prompt = len(decoder.prompt.ids)
    cache = decoder.context.cache
    assert prompt > 8 and cache.capacity(0) == prompt + 8 and cache.capacity(1) == 0  # main; no shadow yet
    most, read_ahead = 0, []
    while not decoder.finished:
        step = decoder.step()
        assert all(n <= cache.capacity(row) for row, n in enumerate(cache.lengths))
        most = max(most, *cache.lengths)
        read_ahead.append(step.read_ahead_bytes // decoder.context.cache.bytes_per_token())
    assert most <= prompt + 8 - 1  # the bound the window promises, within the cache
    # the row that held the prompt was made again smaller; the other holds nothing after the last reset (32)
    assert sorted(cache.capacity(row) for row in (0, 1)) == [0, 16]
    # the next window is read ahead only near a reset (4 tokens a step: from 3/4 of the window), never after the last
    assert read_ahead[:5] == [0] * 5 and max(read_ahead[:8]) > 0 and read_ahead[32:] == [0] * 8
    off = engine.decoder("The cat", engine.settings_for(window=None, max_new_tokens=2))
    assert off.context.cache.capacity(0) == engine.n_positions


@pytest.mark.parametrize("mode", ["reprime", "shadow"])
@pytest.mark.parametrize("prompt", ["Hi", "The cat sat on the mat and looked at the door for a long while"])
def test_resized_rows_write_what_a_full_cache_would(engine, mode, prompt) -> None:
    settings = engine.settings_for(max_new_tokens=40, window=6, seed=5, stop_at_eos=False, sampler="greedy")
    small = [s.token_id for s in engine.stream(prompt, settings, window_mode=mode)]
    full = [s.token_id for s in engine.stream(prompt, settings, window_mode=mode, backend="reference")]
    assert small == full


def test_a_cache_never_holds_more_than_its_positions(engine) -> None:
    context = FastContext(engine.model, Window(3, engine.n_positions), prompt_tokens=3)  # max(3, 3) + 3
    assert context.cache.capacity(0) == 6
    with torch.inference_mode():
        context.prime([1, 2, 3, 4, 5, 6])
        with pytest.raises(AssertionError, match="beyond what this cache holds"):
            context.append(7)


@pytest.mark.parametrize("precision", [*runs_here("q8"), *runs_here("int8"), *runs_here("bf16")])
def test_matrices_converted_two_at_a_time_are_the_ones_made_one_at_a_time(
    tiny_model_dir, precision, monkeypatch
) -> None:
    """The load converts two matrices at once on two cores or more (quantize.swap_matrices): the same model."""
    from transformers import GPT2LMHeadModel

    def converted(workers: int):
        monkeypatch.setattr(quantize, "cores", lambda: workers)
        model = GPT2LMHeadModel.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
        {"q8": q8.to_q8, "int8": quantize.to_int8, "bf16": quantize.to_packed}[precision](model)
        return model

    one, two = converted(1), converted(2)
    ids = torch.tensor([[5, 17, 3, 99, 42, 7]])
    with torch.inference_mode():
        assert torch.equal(one(input_ids=ids).logits, two(input_ids=ids).logits)
    names = [type(m).__name__ for m in one.modules()]
    assert names == [type(m).__name__ for m in two.modules()]


def test_page_in_makes_a_mapped_tensor_resident_at_once(tmp_path) -> None:
    path = tmp_path / "embedding.bin"
    path.write_bytes(bytes(32 << 20))  # 32 MB, in the page cache now, but mapped into no process yet
    mapped = torch.from_file(str(path), shared=True, size=(32 << 20) // 4, dtype=torch.float32)
    before = read_process_memory()
    page_in(mapped)
    after = read_process_memory()
    file_pages = (after.rss_bytes - after.anon_bytes) - (before.rss_bytes - before.anon_bytes)
    assert file_pages >= 30e6  # every page of it, counted in this process's RSS from now on


@pytest.mark.parametrize("precision", ["fp32", *runs_here("q8")])
def test_a_load_reads_the_embeddings_whole(tiny_model_dir, monkeypatch, precision) -> None:
    """A step reads one embedding row a token: without this, q8's mapped fp32 `wte` came in one new token at a time
    (gpt2-xl: 322 MB over a soak's hours, the process's RSS creeping)."""
    read: list[int] = []
    monkeypatch.setattr(loading, "page_in", lambda tensor: read.append(tensor.data_ptr()))
    low = gpt2_engine.load(str(tiny_model_dir), dtype=precision, device="cpu")
    transformer = low.model.transformer
    assert {transformer.wte.weight.data_ptr(), transformer.wpe.weight.data_ptr()} <= set(read)


def test_importing_the_engine_leaves_malloc_alone_and_a_load_sets_it(tiny_model_dir) -> None:
    """Issue 30: glibc's mmap threshold was fixed at `import gpt2_engine`, for any program that imported it. Now
    the first load sets it (where the page's memory figures need it), and an import alone does not."""
    import subprocess
    import sys

    code = (
        "import gpt2_engine.memory as m, gpt2_engine\n"
        "print(m._large_allocations_mapped)\n"
        f"gpt2_engine.load({str(tiny_model_dir)!r}, dtype='fp32')\n"
        "print(m._large_allocations_mapped)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
