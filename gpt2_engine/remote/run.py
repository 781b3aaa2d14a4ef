"""One run against a server: the window kept on this side, request after request, and a `Step` per streamed token
(remote/__init__.py's note says what stays on this side, and why).

A `RemoteRun` holds everything that belongs to one run (the ids and text so far, the requests it sent, the context
the server turned out to have), so runs started from several threads on one `RemoteEngine` share nothing but the
server's facts, which never change, and the ids of token texts (tokens.PieceIds, under its lock).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..decoding import Candidate, Prompt, Step, length_stop
from ..fast import Progress
from ..settings import GenerationSettings
from ..window import Window
from .answers import Chunk, Ranked
from .probe import ServerFacts, kv_usage
from .server import BackendDroppedError, BackendUnreachableError, RemoteError, Server
from .tokens import PieceIds, RemoteTokenizer

SEED_STRIDE = 1_000_003  # the k-th request of a run is seeded seed + k * SEED_STRIDE (mod 2**31)
KV_EVERY = 8  # a request's tokens between two readings of the server's KV cache (and at its first)


@dataclass(frozen=True)
class RequestLog:
    """One completions request of a run, as sent: what the tests and a curious reader check the window by."""

    prompt_tokens: int  # tokens the request's prompt held
    prompt_ids: tuple[int, ...]  # those tokens
    max_tokens: int
    seed: int
    as_ids: bool  # the prompt went as token ids (else as their text)
    first_index: int  # the index of the first Step it made


class RemoteRun:
    """One run's state and its loop. `steps()` is the run, a plain generator: closing it closes the request in
    flight (the server stops at its next token). `requests` lists the requests sent so far, oldest first."""

    def __init__(
        self,
        server: Server,
        tokenizer: RemoteTokenizer,
        facts: ServerFacts,
        pieces: PieceIds,
        prompt: str,
        settings: GenerationSettings,
        on_prompt: Progress | None = None,
    ):
        self.server, self.tokenizer, self.facts, self.pieces = server, tokenizer, facts, pieces
        self.prompt_text, self.settings, self.on_prompt = prompt, settings, on_prompt
        self.requests: list[RequestLog] = []
        self.n_positions = facts.n_positions  # lowered, for this run, where the server's context proves smaller
        self.generated = 0  # tokens streamed so far
        self.seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)

    def steps(self) -> Generator[Step, None, None]:
        """One Step per generated token, each handed on once the next has come (or the end), so that the last
        one says why the run ended; the Steps so far are handed on before a RemoteError is raised."""
        pending: Step | None = None
        try:
            with closing(self._made()) as made:
                for step in made:
                    if step == "eos":  # the server ended the run: <|endoftext|>
                        if pending is not None:
                            yield replace(pending, stop_reason="eos")
                        return
                    if pending is not None:
                        yield pending
                    pending = step
                    if step.stop_reason:
                        pending = None
                        yield step
                        return
        except RemoteError:
            if pending is not None:  # the last token that came is part of the text so far
                yield pending
            raise
        if pending is not None:
            yield pending

    def _made(self) -> Generator[Step | Literal["eos"], None, None]:
        """Each Step as soon as its token comes, request after request, and "eos" where the server ends the run."""
        start = time.perf_counter()
        settings = self.settings
        prompt = Prompt.fit(
            self.prompt_text,
            self.tokenizer.tokenize,
            self.facts.eos_token_id,
            Window(settings.window, self.n_positions),
        )
        if self.on_prompt is not None:
            self.on_prompt(len(prompt.ids), len(prompt.ids))
        limit = settings.max_new_tokens + (settings.sentence_end_max_extra if settings.stop_at_sentence_end else 0)
        ids = list(prompt.ids)  # prompt + generated, as far as this side knows them (the window's tail)
        text = prompt.text or ""  # the text so far: a reset's prompt is its tail, where the server takes no ids
        held = list(prompt.ids)  # what the next request's prompt holds
        reset = False
        while True:
            window = Window(settings.window, self.n_positions)
            until_reset = window.until_reset(self.generated, len(held))
            max_tokens = max(1, min(until_reset, limit - self.generated))
            request_seed = (self.seed + len(self.requests) * SEED_STRIDE) % 2**31
            self.requests.append(
                RequestLog(len(held), tuple(held), max_tokens, request_seed, self.facts.prompt_as_ids, self.generated)
            )
            got, finish = 0, None
            with closing(self._chunks(held, max_tokens, request_seed)) as chunks:
                for chunk in chunks:
                    finish = chunk.finish or finish
                    if chunk.token is None:
                        continue
                    piece, logprob, top = chunk.token
                    token_id = chunk.token_id if chunk.token_id is not None else self.pieces.id_of(piece)
                    self.generated, got = self.generated + 1, got + 1
                    ids.append(token_id)
                    text += piece
                    step = self._step(token_id, piece, logprob, top, prompt, start)
                    yield replace(
                        step,
                        reset=reset and got == 1,
                        context_tokens=len(held) + got - 1,
                        server_kv_usage=self._kv_usage() if got == 1 or got % KV_EVERY == 0 else None,
                    )
                    if step.stop_reason:
                        return
            if finish == "stop" and got < max_tokens:
                yield "eos"
                return
            if got == 0:
                raise BackendDroppedError(
                    self.server.dropped(self.generated, "ended a request without writing a token")
                )
            if finish == "length" and got < max_tokens:  # the server's context is smaller than it said
                self.n_positions = len(held) + got
            try:
                held, reset = self._tail(ids, text, Window(settings.window, self.n_positions).kept()), True
            except BackendUnreachableError:  # the server died between two requests of the run
                raise BackendDroppedError(self.server.dropped(self.generated, "stopped answering")) from None

    def _step(
        self, token_id: int, piece: str, logprob: float, top: Ranked | None, prompt: Prompt, start: float
    ) -> Step:
        """The Step of the token just streamed (its `reset`, `context_tokens` and `server_kv_usage` are the loop's
        to set)."""
        stop = length_stop(self.settings, self.generated, lambda: piece)
        size, mass, candidates = self._candidates(top)
        return Step(
            index=self.generated - 1,
            token_id=token_id,
            text=piece,
            logprob=logprob,
            reset=False,
            context_tokens=0,
            kv_bytes=0,  # the server's memory is not this process's
            rss_bytes=0,
            anon_bytes=0,
            elapsed_s=time.perf_counter() - start,
            seed=self.seed,
            stop_reason=stop,
            prompt_tokens=len(prompt.ids),
            prompt_tokens_dropped=prompt.dropped,
            nucleus_size=size,
            nucleus_mass=mass,
            candidates=candidates,
        )

    def _kv_usage(self) -> float | None:
        return kv_usage(self.server, self.facts.kv_source)

    def _tail(self, ids: list[int], text: str, keep: int) -> list[int]:
        """The last `keep` tokens of prompt + generated, for the next request. Counted with the server's
        tokenizer over the text so far (the ids the stream named may stand for texts, PieceIds, where the server
        named none), so a prompt sent as text is exactly these tokens' text."""
        if all(i >= 0 for i in ids):  # the server named every id
            return ids[-keep:]
        return self.tokenizer.tokenize(text)[-keep:]

    def _candidates(self, top: Ranked | None) -> tuple[int, float, tuple[Candidate, ...]]:
        settings = self.settings
        if not top or not settings.candidates:
            return 0, 0.0, ()
        out, mass, size = [], 0.0, 0
        for named_id, piece, logprob in sorted(top, key=lambda t: -t[2])[: settings.candidates]:
            probability = math.exp(logprob)
            in_top_p = mass < settings.top_p  # inside the smallest set whose mass reaches top_p
            if in_top_p:
                size, mass = size + 1, mass + probability
            shown = piece or f"#{named_id}"  # vLLM names ids, not their text
            token_id = named_id if named_id is not None else self.pieces.id_of(piece)
            out.append(Candidate(token_id, shown, probability, in_top_p))
        if mass < settings.top_p:  # the set is larger than the candidates the server sent: its size is unknown
            size = 0
        return size, mass, tuple(out)

    def _chunks(self, held: list[int], max_tokens: int, seed: int) -> Generator[Chunk, None, None]:
        """One completions request's streamed choices."""
        settings = self.settings
        body: dict[str, Any] = {
            "model": self.facts.model_id,
            "prompt": held if self.facts.prompt_as_ids else self.tokenizer.detokenize(held),
            "max_tokens": max_tokens,
            "stream": True,
            "seed": seed,
            "temperature": 0.0 if settings.sampler == "greedy" else settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k or 0,  # 0: no limit (llama.cpp's default is 40)
            "min_p": 0.0,  # llama.cpp's default 0.05 would cut the tail top-p keeps
            "repeat_penalty": 1.0,  # llama.cpp's default 1.1 would change the distribution
            "logprobs": max(1, settings.candidates),
            "return_tokens_as_token_ids": True,  # vLLM names each token "token_id:N"; others ignore it
        }
        if not settings.stop_at_eos:
            body["ignore_eos"] = True  # vLLM honours it; llama-cpp-python's server stops at <|endoftext|> anyway
        response = self.server.post("/v1/completions", body, stream=True, generated=self.generated)
        with closing(self.server.events(response, lambda: self.generated)) as events:
            for event in events:
                for choice in event.get("choices") or []:
                    yield Chunk.from_choice(choice)
