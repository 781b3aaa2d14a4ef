"""What a server is, found once when the page connects: its model, that the model is a GPT-2, its tokenizer, whether
it takes token ids as a prompt, and where it says how much of its KV cache is in use.

`probe(server)` asks, and raises a `RemoteError` that says what to do when the server cannot serve the page; its
answer (`ServerFacts`) never changes afterwards, so every run and thread reads it without a lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .answers import gauge, slots_share
from .server import NOT_ANSWERED, BackendRefusedError, NotGPT2Error, Server
from .tokens import RemoteTokenizer

GPT2_VOCAB = 50257  # GPT-2's vocabulary: <|endoftext|> is its last token, 50256
GPT2_POSITIONS = 1024  # GPT-2's context, taken when the server does not say its own
KV_SOURCES = ("/metrics", "/slots")  # vLLM's gauge; llama.cpp's llama-server's busy slots


@dataclass(frozen=True)
class ServerFacts:
    """A server as `probe` found it."""

    model_id: str
    n_positions: int  # the model's context, as the server says it (GPT2_POSITIONS if it does not)
    eos_token_id: int
    prompt_as_ids: bool  # it takes a list of token ids as `prompt` (vLLM, llama-server); else text
    kv_source: str | None  # one of KV_SOURCES, or None: the server does not say its KV cache's use


def probe(server: Server) -> tuple[ServerFacts, RemoteTokenizer]:
    """The server's facts and its tokenizer; raises NotGPT2Error, BackendRefusedError or BackendUnreachableError."""
    models = server.get_json("/v1/models").get("data") or []
    if not models:
        raise NotGPT2Error(f"The server at {server.url} serves no model (its /v1/models list is empty).")
    model = models[0]
    model_id = str(model.get("id", ""))
    tokenizer = RemoteTokenizer.find(server, model_id)
    eos = tokenizer.tokenize("<|endoftext|>")
    if len(eos) != 1 or not 0 <= eos[0] < GPT2_VOCAB:
        raise NotGPT2Error(
            f"The model at {server.url} ({model_id}) is not a GPT-2: its tokenizer "
            + ("has no <|endoftext|> token" if len(eos) != 1 else f"puts <|endoftext|> at {eos[0]:,}")
            + f", where GPT-2's {GPT2_VOCAB:,}-token vocabulary has it as one token, 50,256 at most. Serve a GPT-2 "
            "(vllm serve openai-community/gpt2-xl), or leave the backend empty to run one on this machine."
        )
    facts = ServerFacts(
        model_id=model_id,
        n_positions=int(model.get("max_model_len") or GPT2_POSITIONS),
        eos_token_id=eos[0],
        prompt_as_ids=_takes_ids(server, model_id, eos[0]),
        kv_source=_find_kv_source(server),  # once now: a server that says nothing is not asked again
    )
    return facts, tokenizer


def _takes_ids(server: Server, model_id: str, eos_token_id: int) -> bool:
    """Whether the server takes a list of token ids as `prompt` (vLLM and llama-server do), found with a one-token
    request that asks for `logprobs` as every run does; raises BackendRefusedError when it will not give them
    (llama-cpp-python's server started without --logits_all true)."""
    body = {"model": model_id, "max_tokens": 1, "temperature": 0.0, "logprobs": 1}
    try:
        server.post("/v1/completions", {**body, "prompt": [eos_token_id]})
        return True
    except BackendRefusedError:
        pass
    try:
        server.post("/v1/completions", {**body, "prompt": "<|endoftext|>"})
        return False
    except BackendRefusedError as error:
        raise BackendRefusedError(
            f"{error} The page asks for each token's probability (logprobs): llama-cpp-python's server gives "
            "them only with --logits_all true (its default)."
        ) from None


def kv_usage(server: Server, source: str | None) -> float | None:
    """The share of the server's KV cache in use: vLLM's /metrics gauge, else llama-server's /slots (the tokens its
    busy slots hold over all slots' context). None where the server says neither (llama-cpp-python's)."""
    if source is None:
        return None
    try:
        if source == "/metrics":
            return gauge(server.read("/metrics"))
        return slots_share(json.loads(server.read("/slots")))
    except (*NOT_ANSWERED, ValueError, TypeError, KeyError):
        return None  # a missed reading: the chart has a gap there


def _find_kv_source(server: Server) -> str | None:
    """Where this server says its KV cache's use: "/metrics" (vLLM), "/slots" (llama-server), or None."""
    for source in KV_SOURCES:
        if kv_usage(server, source) is not None:
            return source
    return None


def memory_note(root: str, source: str | None) -> str:
    """What the memory chart can show of the server at `root`, in words."""
    if source == "/metrics":
        return f"The server at {root} reports its KV cache in use (its /metrics); its other memory is not visible from here."
    if source == "/slots":
        return (
            f"The server at {root} says what its busy slots hold (its /slots): the chart shows their tokens as a share "
            "of all its slots' context, every visitor's runs together; its other memory is not visible from here."
        )
    return (
        f"This model runs on the server at {root}, and that server reports no memory (llama-cpp-python's server has "
        "neither /metrics nor /slots; vLLM's /metrics and llama.cpp's llama-server's /slots say it): nothing here "
        "measures its memory, so no memory is charted. This computer's own memory is not the model's."
    )
