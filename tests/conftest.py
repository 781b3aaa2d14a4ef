"""Tiny random GPT-2 models and a small byte-level tokenizer, written to a temporary folder by the test
and read back with the real `from_pretrained`. Nothing is downloaded: HF_HUB_OFFLINE is set here."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a process the tests start (the CLI, the server) that crashes prints every Python thread's stack
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
# tiny models gain nothing from threads and lose a lot when the cores are busy: one thread, pinned (the engine's
# own thread policy, gpt2_engine.threads, is tested on its own), in this process and the servers it starts
os.environ.setdefault("GPT2_STUDIO_THREADS", "1")
# converted weights (gpt2_engine.weights_cache) go to a folder of this test session, never the user's cache
os.environ["GPT2_STUDIO_CACHE"] = tempfile.mkdtemp(prefix="gpt2-studio-cache-")
atexit.register(shutil.rmtree, os.environ["GPT2_STUDIO_CACHE"], ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import gpt2_engine  # noqa: E402
from gpt2_engine import capabilities, q8, step_kernel  # noqa: E402

torch.set_num_threads(1)
# q8's prompt kernel is kept where it is measured faster (q8.prompt_kernel_pays), a timing that a busy machine can
# turn either way on the tiny models: here it is off, so what a test's model holds never depends on a timing, and
# tests/test_prompt_kernel.py forces each answer (and measures) where it is what is tested
q8.PROMPT_KERNEL = False
step_kernel.FORCED = False  # the same for the step kernel: tests/test_step_kernel.py forces each answer

TRAINING_TEXT = [
    "The cat sat on the mat. Hello world! Is it raining? Yes, it is.",
    "Café, naïve, façade, Ärger, smörgåsbord, jalapeño.",
    "日本語のテキスト、中文文本，한국어 텍스트. Emoji: 😀 🎉 👍🏽 ❤️",
    "Once upon a time, there was a small language model that liked to talk.",
]


def learn_merges(texts: list[str], n_merges: int, alphabet: list[str], pre_tokenize) -> list[tuple[str, str]]:
    """Byte-pair merges learned by the textbook loop, ties broken by the pair itself: the same
    tokenizer in every process (the Rust trainer breaks ties in hash order, which varies)."""
    words: dict[tuple[str, ...], int] = {}
    for text in texts:
        for piece, _ in pre_tokenize(text):
            words[tuple(piece)] = words.get(tuple(piece), 0) + 1
    merges = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = {}
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = count
        words = merged
    return merges


def write_tokenizer(folder: Path, vocab_size: int = 400) -> None:
    """A GPT-2-style byte-level BPE tokenizer (256 bytes, learned merges, <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    special = "<|endoftext|>"
    merges = learn_merges(TRAINING_TEXT, vocab_size - len(alphabet) - 1, alphabet, byte_level.pre_tokenize_str)
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab[special] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    GPT2TokenizerFast(
        tokenizer_object=tokenizer, bos_token=special, eos_token=special, unk_token=special
    ).save_pretrained(folder)


def write_tiny_model(
    folder: Path, n_positions: int = 128, n_embd: int = 32, n_layer: int = 2, n_head: int = 4, seed: int = 0
) -> Path:
    """A random GPT-2 of the given shape with the test tokenizer, as `save_pretrained()` writes it."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # random init is nearly uniform; sharpen it so sampling has real choices to make
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder)
    return folder


UNREACHABLE_PROXY = "http://10.255.255.1:9"  # an address nothing answers from: the network as a venue's dead wifi
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def place_in_hub_cache(files: Path, hub_cache: Path, repo_id: str) -> Path:
    """Copies a model (or tokenizer) folder into a Hugging Face hub cache, laid out as the hub client writes it:
    models--org--name/snapshots/<commit>/... and refs/main. Returns the snapshot folder."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / HUB_COMMIT
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot


def offline_env(home: Path, proxy: str = UNREACHABLE_PROXY, **extra: str) -> dict[str, str]:
    """The environment of a process with no network (every request through `proxy`, which does not answer;
    HF_HUB_OFFLINE not set) and its own Hugging Face cache (`home`/hub) and converted-weights cache."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "ALL_PROXY", "HF_HUB_CACHE")
    }
    env.update(
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        GPT2_STUDIO_CACHE=str(home / "studio-cache"),
        HTTPS_PROXY=proxy,
        HTTP_PROXY=proxy,
        https_proxy=proxy,
        http_proxy=proxy,
        **extra,
    )
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> gpt2_engine.Engine:
    return gpt2_engine.load(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def page_engine(tiny_model_dir: Path) -> gpt2_engine.Engine:
    """The model as the page loads it: its default precision ("auto"), to set the page's output beside."""
    return gpt2_engine.load(str(tiny_model_dir), dtype="auto")


@pytest.fixture
def page(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The real app.py in Streamlit's AppTest, run once, with the tiny model."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GPT2_STUDIO_MODEL", str(tiny_model_dir))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=90).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What each download button would hand the browser when clicked, by the button's widget id."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    made: dict[str, object] = {}
    add_deferred = MediaFileManager.add_deferred

    def record(self, data_callable, mimetype, coordinates, file_name=None, *, element_id=""):
        made[element_id] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name, element_id=element_id)

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    return made


def runs_here(*precisions: str) -> list:
    """Each precision as a parameter that skips, with the engine's own reason, where the engine refuses it."""
    support = capabilities.supported("cpu")
    return [
        pytest.param(
            p, marks=pytest.mark.skipif(not support[p].runs, reason=f"the engine refuses it here: {support[p].why}")
        )
        for p in precisions
    ]
