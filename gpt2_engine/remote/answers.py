"""What OpenAI-compatible servers send, read as they send it (remote/__init__.py drives them): a streamed completion's
choice in either form of `logprobs`, an error's message, and what a server says of its KV cache (vLLM's /metrics
gauge, llama.cpp's llama-server's /slots). Pure functions of the answers: tested on answers recorded off the
servers (tests/test_remote_forms.py)."""

from __future__ import annotations

import json
import math
import re
import urllib.error
from dataclasses import dataclass

METRICS = (  # a server's /metrics gauge of its KV cache in use, as a share (vLLM's names, old and new; llama-server)
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "llamacpp:kv_cache_usage_ratio",
)


def gauge(page: str) -> float | None:
    """The KV-cache gauge in a Prometheus /metrics page (METRICS' names), or None."""
    for name in METRICS:
        match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+([0-9.eE+-]+)", page, re.MULTILINE)
        if match:
            return float(match.group(1))
    return None


def slots_share(slots: list[dict]) -> float | None:
    """llama-server's /slots: tokens held by the busy slots (prompt + decoded) over every slot's context."""
    if not isinstance(slots, list) or not slots:
        return None
    context = sum(int(slot["n_ctx"]) for slot in slots)
    held = sum(
        int(slot.get("n_prompt_tokens", 0)) + sum(int(t.get("n_decoded", 0)) for t in slot.get("next_token", []))
        for slot in slots
        if slot.get("is_processing")
    )
    return held / context if context else None


Ranked = list[tuple[int | None, str, float]]  # a step's top tokens: (id where the server names it, text, logprob)


@dataclass(frozen=True)
class Chunk:
    token: tuple[str, float, Ranked | None] | None  # (text, logprob, top tokens), or None
    token_id: int | None
    finish: str | None

    @staticmethod
    def from_choice(choice: dict) -> Chunk:
        """One streamed choice, in either form servers send: the completions API's `logprobs` (`tokens`,
        `token_logprobs`, `top_logprobs` as {token: logprob}: vLLM, llama-cpp-python), or the chat API's (`content`,
        a list of {id, token, logprob, top_logprobs}: llama.cpp's llama-server), which names every id."""
        finish = choice.get("finish_reason")
        logprobs = choice.get("logprobs") or {}
        text = choice.get("text") or ""
        content = logprobs.get("content") or []
        if content:
            entry = content[0]
            top = [(t.get("id"), t.get("token", ""), float(t["logprob"])) for t in entry.get("top_logprobs") or []]
            return Chunk((text, float(entry.get("logprob", math.nan)), top), entry.get("id"), finish)
        tokens = logprobs.get("tokens") or []
        if not tokens:  # no token in this chunk (the closing one), or a server that sends no logprobs
            return Chunk((text, float("nan"), None) if text else None, None, finish)
        token_id, _ = id_in(tokens[0])
        logprob = (logprobs.get("token_logprobs") or [None])[0]
        top = (logprobs.get("top_logprobs") or [None])[0]
        ranked = [(*id_in(piece), float(lp)) for piece, lp in top.items()] if top else None
        return Chunk((text, float(logprob) if logprob is not None else float("nan"), ranked), token_id, finish)


def id_in(piece: str) -> tuple[int | None, str]:
    """vLLM's "token_id:N" as (N, ""); any other token as (None, its text)."""
    if piece.startswith("token_id:") and piece[9:].isdigit():
        return int(piece[9:]), ""
    return None, piece


def error_message(event: dict) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        return str(error.get("message", error))[:500]
    return str(error or event.get("detail") or event)[:500]


def http_error_message(error: urllib.error.HTTPError) -> str:
    try:
        return error_message(json.loads(error.read()))
    except (ValueError, OSError):
        return error.reason or "no reason given"
