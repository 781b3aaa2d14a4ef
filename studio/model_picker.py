"""The sidebar's model choice, what that model needs, and loading it once per server with visible progress.

The start-up model comes from GPT2_STUDIO_MODEL (a known name, a hub id or a folder), else gpt2-xl, and
its precision from GPT2_STUDIO_PRECISION (auto, fp32, bf16, fp16, int8 or q8: those that run here), else auto.
Every failure ends as a message on the page that says what to do; the page stays usable.

A start-up model this machine cannot have (not in the cache, and no network to download it) is not an error: the
page starts on the shipped model instead, says so in one line with the command that downloads the one asked for,
and the server remembers it, so that every later visitor lands on the model it holds. A model picked by hand in
the sidebar that fails says why, as any failure does.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

import gpt2_engine
from gpt2_engine import (
    SMALLEST_MODEL,
    LoadPlan,
    RemoteEngine,
    SharedModel,
    available_bytes,
    cached_models,
    format_bytes,
    look_ahead,
    plan_load,
    resolve_device,
    runnable,
    supported,
)

from . import status

LOG = logging.getLogger("gpt2_studio")
ENV_MODEL = "GPT2_STUDIO_MODEL"
ENV_BACKEND = "GPT2_STUDIO_BACKEND"
ENV_PRECISION = "GPT2_STUDIO_PRECISION"
OTHER = "other"  # the last choice in the model list: a folder on this computer, or a hub id
PRECISION_LABELS = {
    "auto": "auto (measured: fastest here)",
    "fp32": "fp32 (full)",
    "bf16": "bf16 (half the memory)",
    "fp16": "fp16 (half, GPU)",
    "int8": "int8 (a quarter, CPU)",
    "q8": "q8 (a quarter, CPU; 8-bit math, as llama.cpp)",
}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # either set: nothing is downloaded
ON_START = "_model_on_start"  # session: the model box holds the start-up model, not one picked by hand
FELL_BACK = "_model_fell_back"  # session: the start-up model could not be had; the next script run takes the shipped


@dataclass(frozen=True)
class ModelChoice:
    name: str  # a known name, a hub id or a folder
    precision: str  # one of gpt2_engine.DTYPE_CHOICES


def start_model() -> str:
    """The model asked for at start-up: GPT2_STUDIO_MODEL, else the default (gpt2-xl)."""
    return os.environ.get(ENV_MODEL, "").strip() or gpt2_engine.DEFAULT_MODEL


@st.cache_resource(show_spinner=False)
def unavailable_starts() -> dict[str, str]:
    """One per server: each start-up model this server could not have (not on this machine, no network to
    download it) and why, from its first visitor on; a load of it that works (picked by hand) takes it out."""
    return {}


def first_model() -> str:
    """The model a new visitor starts on: the start-up model, or the shipped one where this server could not have
    it (the model the server holds, so the new visitor does not wait on a failure again)."""
    asked = start_model()
    return gpt2_engine.SHIPPED_MODEL if asked in unavailable_starts() else asked


def _is_folder(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def _falls_back(choice: ModelChoice, error: Exception) -> bool:
    """The start-up model, not picked by hand, failed because this machine does not have it and could not download
    it (a folder, or a model the cache holds, that fails is an error: something is wrong with it)."""
    return (
        bool(st.session_state.get(ON_START))
        and choice.name == start_model() != gpt2_engine.SHIPPED_MODEL
        and not isinstance(error, (gpt2_engine.NotEnoughMemoryError, gpt2_engine.PrecisionUnavailableError))
        and not _is_folder(choice.name)
        and gpt2_engine.SHIPPED_MODEL in (have := cached_models())
        and choice.name not in have
    )


def download_command(name: str) -> str:
    """The command that downloads `name` into the Hugging Face cache once (and writes one token with it)."""
    return f"python -m gpt2_engine --model {shlex.quote(name)} --length 1 Hello"


def fallback_note(asked: str) -> str:
    """The one line a page started on the shipped model says: why, and how to get the model asked for."""
    known = gpt2_engine.KNOWN_MODELS.get(asked)
    size = f" ({format_bytes(known.shape.weight_bytes('fp32'))})" if known else ""
    offline = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")]
    return (
        f"Writing with **{gpt2_engine.SHIPPED_MODEL}**, a small GPT-2 trained on Shakespeare that ships with the app: "
        f"**{asked}** is not on this machine and could not be downloaded now. To get it{size}, run "
        f"`{download_command(asked)}` once while online{f' ({offline[0]} unset)' if offline else ''}, then pick it "
        "under **Which GPT-2** in the sidebar."
    )


def offered_precisions() -> list[str]:
    """auto and the precisions that run on this machine's device (the others are named with their reason)."""
    return ["auto", *runnable(resolve_device("auto"))]


def start_precision() -> str:
    """GPT2_STUDIO_PRECISION, else auto; a value that is not a precision here is said on the page, and auto used."""
    asked = os.environ.get(ENV_PRECISION, "").strip().lower()
    if asked in offered_precisions():
        return asked
    if asked in gpt2_engine.DTYPE_CHOICES:
        why = supported(resolve_device("auto"))[asked].why
        st.warning(
            f"{ENV_PRECISION}={asked!r} does not run here: {why}. Starting with auto.", icon=":material/warning:"
        )
    elif asked:
        st.warning(
            f"{ENV_PRECISION}={asked!r} is not a precision: use one of {', '.join(gpt2_engine.DTYPE_CHOICES)}. "
            "Starting with auto.",
            icon=":material/warning:",
        )
    return "auto"


def _model_label(name: str) -> str:
    if name == OTHER:
        return "other: a folder or hub id"
    known = gpt2_engine.KNOWN_MODELS[name]
    billions = known.shape.parameters / 1e9
    size = f"{billions:.2f} billion" if billions >= 1 else f"{billions * 1000:.0f} million"
    return f"{name} ({size} parameters{'; ships with the app, no download' if known.ships else ''})"


def pick_model() -> ModelChoice:
    """The model and precision widgets (keys `model`, `model_folder`, `precision`)."""
    start = first_model()
    if st.session_state.pop(FELL_BACK, False):  # the start-up model failed in the script run before this one
        st.session_state["model"] = start
    if "model" not in st.session_state:  # a new visitor (or the box was not drawn): the box takes the start-up model
        st.session_state[ON_START] = True
    options = [*gpt2_engine.KNOWN_MODELS, OTHER]
    picked = st.selectbox(
        "Which GPT-2",
        options,
        index=options.index(start) if start in gpt2_engine.KNOWN_MODELS else len(options) - 1,
        format_func=_model_label,
        key="model",
        on_change=_picked_by_hand,
        help="Bigger models write better text but need more memory and run slower. "
        "gpt2-xl is the largest GPT-2; distilgpt2 is the smallest download. "
        f"{gpt2_engine.SHIPPED_MODEL} is a small GPT-2 trained on Shakespeare's plays that comes with the app: "
        "it loads in seconds with no network. A model already in the Hugging Face cache loads without a network.",
    )
    name = picked
    if picked == OTHER:
        name = st.text_input(
            "Folder or hub id",
            value="" if start in gpt2_engine.KNOWN_MODELS else start,
            key="model_folder",
            on_change=_picked_by_hand,
            placeholder="/path/to/a/gpt2-folder",
            help="A folder written by save_pretrained() (config.json, weights and tokenizer files), "
            "or a Hugging Face hub id such as openai-community/gpt2.",
        )
    offered = offered_precisions()
    if st.session_state.get("precision", offered[0]) not in offered:  # kept from a visit on another server
        del st.session_state["precision"]
    precision = st.selectbox(
        "Precision",
        offered,
        index=offered.index(start_precision()),
        format_func=lambda p: PRECISION_LABELS.get(p, p),
        key="precision",
        help="How many bits each weight takes. Fewer bits: less memory, often faster, slightly different text. "
        "auto measures, at a model's first load, which one runs fastest here and still writes what fp32 would.",
    )
    refused = [s for s in supported(resolve_device("auto")).values() if not s.runs]
    if refused:
        st.caption("Not on this machine: " + " ".join(f"{s.why}." for s in refused))
    return ModelChoice(name.strip(), precision)


def _picked_by_hand() -> None:
    """The visitor chose a model: from now on its failure is said, never replaced by the shipped model."""
    st.session_state.pop(ON_START, None)


def pick_backend() -> str:
    """The Backend field (key `backend`): a server's URL, from GPT2_STUDIO_BACKEND at the start; empty: the model
    runs on this machine."""
    return st.text_input(
        "Backend: a server's URL (empty: this machine)",
        value=os.environ.get(ENV_BACKEND, "").strip(),
        key="backend",
        placeholder="http://gpu-box:8000/v1",
        help="A GPT-2 served elsewhere through the OpenAI-compatible API (vLLM, llama.cpp's server), e.g. "
        "http://gpu-box:8000/v1. The page then sends each run there; the window is still kept here.",
    ).strip()


@st.cache_resource(show_spinner=False, max_entries=4)
def remote_engine(url: str) -> RemoteEngine:
    """One per server and URL (a failed check is not kept: the next rerun checks again)."""
    return RemoteEngine(url)


def load_remote(url: str, sidebar) -> RemoteEngine | None:
    """The remote engine at `url`, its model and what its memory chart can show said in the sidebar; None, with a
    message on the page, when the server cannot be used."""
    try:
        engine = remote_engine(url)
    except gpt2_engine.StudioError as error:
        st.error(f"**Could not use this backend.** {error}", icon=status.ERROR_ICON)
        return None
    with sidebar:
        st.markdown(
            f"**Runs on** the server at {engine.root} · **model** {engine.model_id} · "
            f"**context** {engine.n_positions} tokens"
        )
        st.caption(engine.memory_note)
    return engine


@st.cache_data(show_spinner=False, ttl=60)
def _plan(name: str, precision: str) -> LoadPlan:
    return plan_load(name, precision)


@st.cache_resource(show_spinner=False, max_entries=2)  # at most two models in memory at once
def shared_model(name: str, precision: str) -> SharedModel:
    """One per server for each model and precision: every visitor uses the same weights."""
    return SharedModel(name, precision)


def _weights_said(plan: LoadPlan, engine: gpt2_engine.Engine | None) -> str:
    """The weights' size: the engine's once loaded; before that the plan's, "from" it while `auto` is still to
    pick (the plan gives the smallest precision that runs here: the pick may be larger)."""
    if engine is not None:
        return format_bytes(engine.weight_bytes)
    return ("from " if plan.precision == "auto" else "") + format_bytes(plan.weight_bytes)


def show_plan(plan: LoadPlan, engine: gpt2_engine.Engine | None) -> None:
    """Device, precision and memory, in the sidebar: before the load from the plan, after it from the engine
    (with how `auto` chose, when it did)."""
    precision = engine.precision if engine else plan.precision
    st.markdown(
        f"**Runs on** {plan.device.upper()} · **precision** "
        f"{'auto, measured at this first load' if precision == 'auto' else precision}  \n"
        f"**Weights** {_weights_said(plan, engine)} · "
        f"**context** {plan.shape.n_positions} tokens  \n"
        f"**Memory needed** about {format_bytes(plan.shape.memory_needed(precision) if engine else plan.memory_needed_bytes)}"
        + ("" if engine else f" ({format_bytes(available_bytes())} free now)")
    )
    if engine is not None and engine.choice is not None:
        st.caption(f"auto is {engine.choice.why}.")
    if engine is not None and engine.prompt_kernel:
        st.caption(
            "Phrases are read by oneDNN's int8 kernel, measured faster here than the one that writes: it keeps its "
            "own copy of the weights, counted above."
            + (" Each word is written by a kernel built for this CPU at the first load." if engine.step_kernel else "")
        )
    elif engine is not None and engine.step_kernel:
        st.caption("Each word is written by a kernel built for this CPU at the first load, measured faster here.")


def load_model(choice: ModelChoice, sidebar, loading_box, on_wait=None) -> gpt2_engine.Engine | None:
    """The engine for this choice, loading it with progress in `loading_box` the first time; `on_wait()` is
    called before a load that takes time (the page then hides its old tabs rather than show a faded copy).
    None, with a message in `loading_box` (above the tabs), when it cannot be loaded."""
    if not choice.name:
        loading_box.info("Type the folder (or hub id) of a GPT-2 model in the sidebar.")
        return None
    try:
        plan = _plan(choice.name, choice.precision)
        shared = shared_model(choice.name, choice.precision)
        shown = sidebar.empty()
        with shown.container():
            show_plan(plan, shared.wait(timeout_s=0) if shared.loaded else None)
        engine = _wait_for(shared, plan, loading_box, on_wait)
        with shown.container():
            show_plan(plan, engine)
    except gpt2_engine.PrecisionUnavailableError as error:
        loading_box.error(f"**This precision does not run here.** {error}", icon=status.ERROR_ICON)
    except Exception as error:  # noqa: BLE001 - never a traceback on the page; the log has it
        if not _falls_back(choice, error):
            with loading_box.container():
                _cannot_load(choice, status.in_words(error, "Loading"))
            return None
        LOG.info("Starting on %s: %s", gpt2_engine.SHIPPED_MODEL, status.in_words(error, "Loading"))
        unavailable_starts()[choice.name] = str(error)  # every later visitor starts on the shipped model
        st.session_state[FELL_BACK] = True  # the model box can only be set before it is drawn: in the next run
        st.rerun()
    else:
        unavailable_starts().pop(choice.name, None)  # it can be had now: new visitors start on it again
        asked = start_model()
        if choice.name == gpt2_engine.SHIPPED_MODEL and asked in unavailable_starts():
            loading_box.info(fallback_note(asked), icon=":material/info:")
        return engine
    return None


LOAD_LINES = 4  # the load's latest phases shown: the list stays above the fold at 1280x720, however long the load


def load_label(plan: LoadPlan, seconds: float) -> str:
    """The loading box's heading: the weights' size only once the precision is known (before `auto` has measured
    this CPU, its pick, and so its size, is not), and the time so far, so that a long phase still shows progress."""
    size = "" if plan.precision == "auto" else f": {format_bytes(plan.weight_bytes)} of weights ({plan.precision})"
    return f"Loading {plan.name}{size}, once for everyone · {seconds:,.0f} s so far"


def _wait_for(shared: SharedModel, plan: LoadPlan, loading_box, on_wait) -> gpt2_engine.Engine:
    shared.start()  # a no-op once loaded; after a failed load, tries again
    engine = shared.wait(timeout_s=0.05)
    if engine is not None:
        return engine
    if on_wait is not None:
        on_wait()
    started = time.monotonic()
    try:
        with loading_box.status(load_label(plan, 0), expanded=True) as progress:
            lines, shown = st.empty(), -1
            while engine is None:  # each pass is also where Streamlit can stop this script run
                said = list(shared.progress)
                if len(said) != shown:
                    shown = len(said)
                    earlier = f"({shown - LOAD_LINES} earlier steps done)  \n" if shown > LOAD_LINES else ""
                    lines.markdown(earlier + "  \n".join(said[-LOAD_LINES:]))
                progress.update(label=load_label(plan, time.monotonic() - started))
                engine = shared.wait(timeout_s=0.5)
    finally:
        loading_box.empty()  # loaded, or failed: the message goes on the page instead
    return engine


def _cannot_load(choice: ModelChoice, message: str) -> None:
    st.error(f"**Could not load this model.** {message}", icon=status.ERROR_ICON)
    have = [name for name in cached_models() if name != choice.name]
    st.info(
        "Pick another model in the sidebar"
        + (
            f" ({', '.join(have)}: already on this machine, no network needed)"
            if have
            else f" ({SMALLEST_MODEL} is the smallest download; a first download needs a network)"
        )
        + ", or give the folder of a model written by `save_pretrained()` (the choice *other*).",
        icon=":material/lightbulb:",
    )
    if gpt2_engine.SHIPPED_MODEL in have:  # first offer: it writes, with no network, in seconds
        st.button(
            f"Use {gpt2_engine.SHIPPED_MODEL}: ships with the app, loads in seconds",
            key="use_shipped",
            type="primary",
            on_click=_pick, args=(gpt2_engine.SHIPPED_MODEL,),
        )  # fmt: skip


def _pick(name: str) -> None:
    """The model box's new choice: a button's callback runs before the next script run draws the box."""
    st.session_state["model"] = name


# Offline, loading the start-up model fails at its look at the hub: start that look now, while the page's other
# parts import, so that its answer is there (or nearly) when the load asks (nothing for a cached model or folder).
look_ahead(start_model())
