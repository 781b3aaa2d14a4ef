"""llama.cpp's OpenAI-compatible server (llama-cpp-python's `python -m llama_cpp.server`) on a GGUF conversion of
the tests' tiny model, started on a free local port and stopped after: the real server the remote backend's tests
drive (no mock stands in for it).

The converter is llama.cpp's own `convert_hf_to_gguf.py`, from llama-cpp-python's source tree: $LLAMA_CPP_CONVERT,
else the copy .ci/run unpacks under /tmp/llama. The model is the tiny one made to write whole characters and never
<|endoftext|>: llama-cpp-python's server, streaming with logprobs, sends a character split over several tokens as
empty, repeated pieces (more chunks than tokens), which the random tiny model would do at almost every token; the
real GPT-2 rarely splits a character. Its runs then also always reach their length.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

DEFAULT_CONVERTER = "/tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py"
N_CTX = 128  # the tiny model's context
START_TIMEOUT_S = 120.0


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    try:
        import fastapi  # noqa: F401
        import llama_cpp  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
    except ImportError as error:
        return f"llama-cpp-python's server is not installed ({error}): pip install 'llama-cpp-python[server]==0.3.36'"
    if not Path(converter()).is_file():
        return f"llama.cpp's converter is not at {converter()}: set LLAMA_CPP_CONVERT (see .ci/run)"
    return None


def converter() -> str:
    return os.environ.get("LLAMA_CPP_CONVERT", DEFAULT_CONVERTER)


def whole_characters(model_dir: Path, out_dir: Path) -> Path:
    """A copy of the tiny model that never writes a token that is not whole UTF-8 text, nor <|endoftext|>: one
    hidden dimension is pinned to a constant after the last layer norm, and those tokens' (tied) embeddings get a
    large negative weight on it, so their logits are always far below the others'."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from gpt2_engine.detokenize import byte_decoder

    decoder = byte_decoder()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    banned = [tokenizer.eos_token_id]
    for token_id in range(len(tokenizer)):
        try:
            bytes(decoder[c] for c in tokenizer.convert_ids_to_tokens(token_id)).decode("utf-8")
        except (UnicodeDecodeError, KeyError):
            banned.append(token_id)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 10.0
        wte = model.transformer.wte.weight
        wte[:, 0] = 0.0
        wte[banned, 0] = -10.0
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def to_gguf(model_dir: Path, out_dir: Path) -> Path:
    from bench.llama_peer import convert_gguf

    return convert_gguf(str(model_dir), "f32", Path(converter()), out_dir, pretokenizer="gpt-2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One `python -m llama_cpp.server` process on a free port; `url` is its API's base (…/v1)."""

    def __init__(self, gguf: Path, log: Path, alias: str = "tiny-gpt2"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--n_ctx", str(N_CTX), "--logits_all", "true", "--n_threads", "1"]
        command += ["--model_alias", alias, "--interrupt_requests", "false"]  # a second visitor waits, not cuts in
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp's server exited at start: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/models", timeout=2).close()
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"llama.cpp's server did not answer within {START_TIMEOUT_S:.0f} s: {log.read_text()[-2000:]}"
        )

    def kill(self) -> None:
        """As a crash would: SIGKILL, no goodbye."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
