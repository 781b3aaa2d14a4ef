"""The Hugging Face hub without waiting on it: what this machine already has, and one short look at the network.

A model already whole in the local Hugging Face cache (config, weights and tokenizer) loads from its snapshot
folder, with no network call at all. Only a model that is not there needs the hub, and then one request with a
short limit (`PROBE_TIMEOUT_S`) says whether the hub answers, before transformers' own client would retry for
half a minute. Offline, the error can then name at once what this machine does have (`cached_models()`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .shapes import KNOWN_MODELS


def _probe_timeout(default: float = 1.5) -> float:
    """How long one look at the hub may take before it counts as "no network": 1.5 s, or HF_HUB_ETAG_TIMEOUT (the hub
    client's own wait for a file's metadata) where it is set for a slow network."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "").strip() or default)
    except ValueError:
        return default


PROBE_TIMEOUT_S = _probe_timeout()  # one HEAD request to the hub
PROBE_MEMORY_S = 10.0
SMALLEST = next(n for n, k in KNOWN_MODELS.items() if not k.ships)  # smallest download (smallest first): distilgpt2
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_probes: dict[str, _Probe] = {}  # the latest look at each endpoint
_probes_lock = threading.Lock()


class _Probe:
    """One look at the hub, on a thread of its own: `why` once `done` is set (None: the hub answered)."""

    def __init__(self, url: str, timeout_s: float):
        self.started, self.timeout_s = time.monotonic(), timeout_s
        self.done = threading.Event()
        self.why: str | None = None
        threading.Thread(target=self._run, args=(url,), name="hub probe", daemon=True).start()

    def _run(self, url: str) -> None:
        from huggingface_hub.utils import get_session

        try:
            response = get_session().head(url, timeout=self.timeout_s, follow_redirects=False)
            self.why = f"the hub answered {response.status_code}" if response.status_code >= 500 else None
        except Exception as error:  # noqa: BLE001 - any failure to get an answer means "no network"
            text = str(error).strip().splitlines()
            self.why = f"{type(error).__name__}: {text[0] if text else 'no answer'}"
        self.done.set()

    def answer(self) -> str | None:
        """Waits for the answer until `timeout_s` after the start (a name lookup that hangs is bounded too,
        which the request's own timeout does not cover)."""
        if not self.done.wait(max(0.0, self.started + self.timeout_s + 0.2 - time.monotonic())):
            return f"no answer within {self.timeout_s:g} s"
        return self.why


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: nothing is to be downloaded."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_dir() -> Path:
    """The hub cache the hub client and transformers use (HF_HUB_CACHE, or HF_HOME/hub, ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_ids(name: str) -> list[str]:
    """The hub ids a name may be cached under: a known name's current id, then the bare name it had before
    the hub moved GPT-2 under openai-community/ (older caches hold `models--gpt2`)."""
    if name in KNOWN_MODELS:
        return [KNOWN_MODELS[name].hub_id, name] if not KNOWN_MODELS[name].ships else []
    return [name]


def _repo_folder(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _snapshots(repo_id: str) -> list[Path]:
    """The repo's snapshot folders, the one refs/main names first, then the newest."""
    folder = _repo_folder(repo_id)
    try:
        found = sorted((p for p in (folder / "snapshots").iterdir() if p.is_dir()), key=lambda p: -p.stat().st_mtime)
    except OSError:
        return []
    try:
        main = folder / "snapshots" / (folder / "refs" / "main").read_text().strip()
    except OSError:
        return found
    return [main, *(p for p in found if p != main)] if main in found else found


def _has_weights(snapshot: Path) -> bool:
    if any((snapshot / name).is_file() for name in WEIGHTS):
        return True
    for index in INDEXES:  # sharded weights: every shard the index names must be there
        try:
            shards = set(json.loads((snapshot / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        return bool(shards) and all((snapshot / shard).is_file() for shard in shards)
    return False


def has_tokenizer(folder: Path) -> bool:
    """A GPT-2 tokenizer's files: tokenizer.json, or vocab.json with merges.txt."""
    return (folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))


def cached_snapshot(name: str) -> Path | None:
    """The snapshot folder in the Hugging Face cache that holds this model whole (config, weights, tokenizer),
    or None. A known name or a hub id; looks at the disk only."""
    for repo_id in repo_ids(name):
        for snapshot in _snapshots(repo_id):
            if (snapshot / "config.json").is_file() and _has_weights(snapshot) and has_tokenizer(snapshot):
                return snapshot
    return None


def cached_tokenizer() -> Path | None:
    """A cached snapshot with GPT-2's tokenizer files (every known GPT-2 has the same tokenizer; a snapshot that
    holds only the tokenizer, as `AutoTokenizer.from_pretrained("gpt2")` leaves it, will do)."""
    for name in KNOWN_MODELS:
        for repo_id in repo_ids(name):
            for snapshot in _snapshots(repo_id):
                if has_tokenizer(snapshot):
                    return snapshot
    return None


def _is_gpt2(snapshot: Path) -> bool:
    try:
        return json.loads((snapshot / "config.json").read_text()).get("model_type") == "gpt2"
    except (OSError, ValueError, AttributeError):
        return False


def shipped_models() -> list[str]:
    """The models that ship with the app (their folder is in the package): every machine has them."""
    return [name for name, k in KNOWN_MODELS.items() if k.folder is not None and (k.folder / "config.json").is_file()]


def cached_models() -> list[str]:
    """The GPT-2 models this machine can load with no network: those that ship with the app, the known names in
    the Hugging Face cache (smallest first), then any other GPT-2 hub id there."""
    names = shipped_models() + [name for name in KNOWN_MODELS if cached_snapshot(name) is not None]
    taken = {repo_id for name in names for repo_id in repo_ids(name)}
    try:
        folders = sorted(p.name for p in cache_dir().iterdir() if p.name.startswith("models--"))
    except OSError:
        return names
    for folder in folders:
        repo_id = folder.removeprefix("models--").replace("--", "/")
        if repo_id in taken or any(repo_id in repo_ids(name) for name in KNOWN_MODELS):
            continue
        snapshot = cached_snapshot(repo_id)
        if snapshot is not None and _is_gpt2(snapshot):
            names.append(repo_id)
    return names


def _probe(repo_id: str, timeout_s: float) -> _Probe:
    """The look at the hub under way or answered within PROBE_MEMORY_S, else a new one."""
    from huggingface_hub import constants, hf_hub_url

    with _probes_lock:
        probe = _probes.get(constants.ENDPOINT)
        if probe is None or time.monotonic() - probe.started > PROBE_MEMORY_S:
            probe = _probes[constants.ENDPOINT] = _Probe(hf_hub_url(repo_id, "config.json"), timeout_s)
        return probe


def unreachable(repo_id: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers a request about `repo_id` within `timeout_s`; else why not, in one line.

    One HEAD request through the hub client's own session (its proxies and endpoint), without retries, waited on
    for at most `timeout_s`. A 5xx answer counts as no answer (the hub client would retry it for long). One look
    serves every question within PROBE_MEMORY_S (a page's plan and load, and `look_ahead`'s early start)."""
    return _probe(repo_id, timeout_s).answer()


def look_ahead(name: str) -> None:
    """Starts the look at the hub that loading `name` will need, without waiting for it: the page calls this
    while its other parts import, so that offline the load's answer is there sooner. Nothing for a model in the
    cache, a folder, or with HF_HUB_OFFLINE set."""
    if offline_mode() or not name or name in shipped_models() or cached_snapshot(name) is not None:
        return
    if name not in KNOWN_MODELS and (name.count("/") != 1 or name.startswith((".", "/", "~")) or Path(name).exists()):
        return  # a folder, not a hub id
    _probe(repo_ids(name)[0], PROBE_TIMEOUT_S)
