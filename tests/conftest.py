"""Tiny random GPT-2 models and a small byte-level tokenizer, written to a temporary folder by the test
and read back with the real `from_pretrained`. Nothing is downloaded: HF_HUB_OFFLINE is set here."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import gpt2_engine  # noqa: E402

TRAINING_TEXT = [
    "The cat sat on the mat. Hello world! Is it raining? Yes, it is.",
    "Café, naïve, façade, Ärger, smörgåsbord, jalapeño.",
    "日本語のテキスト、中文文本，한국어 텍스트. Emoji: 😀 🎉 👍🏽 ❤️",
    "Once upon a time, there was a small language model that liked to talk.",
]


def write_tokenizer(folder: Path, vocab_size: int = 400) -> None:
    """A GPT-2-style byte-level BPE tokenizer, trained in a blink on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 20, trainer)
    special = "<|endoftext|>"
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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> gpt2_engine.Engine:
    return gpt2_engine.load(str(tiny_model_dir), dtype="fp32", device="cpu")
