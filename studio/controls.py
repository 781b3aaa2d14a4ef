"""The generation form: prompt, length, top-p, window, the advanced settings, and Generate.

The widgets sit in an `st.form`, so moving a slider during a run does not interrupt it: nothing is
sent until Generate. Widget keys are the settings' names in the user's words, and the tests' handles:
prompt, length, top_p, window, sampler, temperature, top_k, seed, sentence_end, tutorial_mode,
memory_share, generate; and in presenter mode, beside Generate, pace (studio/presenter.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import streamlit as st

import gpt2_engine

from . import presenter, status
from .run_view import INSPECT_CANDIDATES

OFF = "off"  # the window slider's last stop: keep the whole context
DEFAULT_LENGTH = 100  # enough to see two window resets at the default window of 50
MAX_LENGTH = 1000  # a few minutes of gpt2-xl on a laptop CPU
SHORT_SEED_BELOW = 1_000_000  # a seed the page picks is short, to read out and type again
MEMORY_GUARD_PERCENT = (10, 100, 80)  # lowest, highest, default: GenerationSettings.memory_share in percent
TUTORIAL_MODE_HELP = (
    "Teaching only. Runs the model as the tutorial did, with PyTorch's autograd left on: every token keeps "
    "the whole chain of sums that made it, in case someone wants gradients (nobody does). Memory then climbs "
    "faster and faster, until a window reset throws the old cache, and its chain, away. Slower, and needs "
    "fp32 weights (Precision, in the sidebar). It runs alone, outside the batch that writes every other "
    "visitor's text at once: its steps take turns with the batch's."
)
SAMPLER_LABELS = {
    "nucleus": "nucleus: pick by probability (usual)",
    "tutorial": "tutorial: pick uniformly among the likely ones",
    "greedy": "greedy: always the most likely",
}


@dataclass(frozen=True)
class Request:
    """What the form asks for."""

    prompt: str
    settings: gpt2_engine.GenerationSettings | None  # None when a value is not allowed
    problem: str | None  # that value, said in words
    generate: bool  # Generate was pressed in this rerun
    pace: float | None = None  # tokens/s to show the text at (presenter mode's Pace), None: full speed


def window_option_label(value: int | str) -> str:
    return "off (whole context)" if value == OFF else f"{value} token{'s' if value != 1 else ''}"


# ---- the widgets every tab builds: one definition each, the tab gives its key, its help and where -------------


def phrase(key: str, help: str, value: str = gpt2_engine.TUTORIAL_PHRASE, height: int = 110) -> str:
    return st.text_area("Your phrase", value=value, key=key, height=height, help=help)


def top_p_slider(key: str, help: str, where=st) -> float:
    return float(where.slider("Top-p", 0.05, 1.0, 0.70, step=0.05, key=key, help=help))


def temperature_slider(key: str, help: str, where=st) -> float:
    return float(where.slider("Temperature", 0.1, 2.0, 1.0, step=0.05, key=key, help=help))


def window_slider(max_window: int, key: str, help: str, value: int | str = 50, label: str = "Window", where=st):
    """The window picker: 1 to the model's largest window, or off. `where`: st or a column."""
    options = [*range(1, max_window + 1), OFF]
    if st.session_state.get(key, OFF) not in options:  # kept from a larger model (a reload): its nearest stop
        st.session_state[key] = max_window
    return where.select_slider(
        label,
        options=options,
        value=value if value == OFF else min(value, max_window),
        format_func=window_option_label,
        key=key,
        help=help,
    )


def window_value(choice: int | str) -> int | None:
    """What the window slider says, as GenerationSettings.window takes it."""
    return None if choice == OFF else int(choice)


def tutorial_toggle(key: str) -> bool:
    return bool(st.toggle("Tutorial mode: autograd on (teaching)", value=False, key=key, help=TUTORIAL_MODE_HELP))


def seed_or_new(text: str) -> int:
    """The seed typed, or a new short one (to read out and type again). Raises SettingsError for a bad one."""
    seed = gpt2_engine.parse_seed(text)
    return seed if seed is not None else secrets.randbelow(SHORT_SEED_BELOW)


def generation_form(max_window: int, enabled: bool) -> Request:
    """Draws the form; `max_window` is the model's largest window, `enabled` False while no model is loaded."""
    with st.form("generation", border=False, enter_to_submit=False):
        prompt = phrase(
            "prompt",
            "GPT-2 continues this text. It has not seen anything else: no question, no chat, just text to go on.",
        )
        length = st.slider(
            "Length (tokens)",
            1,
            MAX_LENGTH,
            DEFAULT_LENGTH,
            key="length",
            help="How much to write, in tokens. A token is a word piece: about 3/4 of a word on average, "
            "so 100 tokens are roughly 75 words.",
        )
        top_p = top_p_slider(
            "top_p",
            "How adventurous the choice of each next token is. The model ranks every possible token; "
            "it keeps the most likely ones until they add up to this share of the probability, and picks among "
            "them. Low: safe and repetitive. High: varied, sometimes odd.",
        )
        window = window_slider(
            max_window,
            key="window",
            help="How many recent tokens the model keeps in mind. Every N tokens it forgets everything but the "
            "last N and re-reads them (marked ⟲ in the text). A small window saves memory but loses the thread; "
            "'off' keeps the whole text, up to the model's limit.",
        )
        with st.expander("Advanced"):
            sampler = st.radio(
                "Sampler",
                gpt2_engine.SAMPLERS,
                format_func=SAMPLER_LABELS.get,
                key="sampler",
                help="How the next token is picked from the likely ones. 'tutorial' is what the original "
                "tutorial did: every likely token has the same chance.",
            )
            temperature = temperature_slider(
                "temperature", "Below 1 the model plays safe; above 1 it takes more risks. 1 leaves it as it is."
            )
            top_k = st.number_input(
                "Top-k",
                min_value=0,
                value=None,
                step=1,
                key="top_k",
                placeholder="off",
                help="Consider only the k most likely tokens before top-p. Empty or 0: no limit.",
            )
            seed_text = st.text_input(
                "Seed",
                key="seed",
                placeholder="empty: a new one each time",
                help="The same seed with the same settings writes exactly the same text. "
                "Every run shows the seed it used, so you can repeat it.",
            )
            sentence_end = st.checkbox(
                "Finish the sentence",
                key="sentence_end",
                help="After the length is reached, keep writing until a sentence ends (. ! or ?), "
                "at most 64 tokens more.",
            )
            tutorial_mode = tutorial_toggle("tutorial_mode")
            low, high, default = MEMORY_GUARD_PERCENT
            memory_percent = st.slider(
                "Memory guard",
                low,
                high,
                default,
                step=5,
                format="%d%%",
                key="memory_share",
                help="Stops a run before the program takes more than this share of the memory that was free "
                "when the run started. The text written so far is kept, and the page says why it stopped.",
            )
        presenting = presenter.on()  # then the pace the text is shown at, beside Generate
        button_at, pace_at, _ = st.columns([1, 1.6, 2], vertical_alignment="center") if presenting else (st, st, st)
        generate = button_at.form_submit_button(
            "Generate", key="generate", type="primary", icon=":material/play_arrow:", disabled=not enabled
        )
        pace = presenter.pace_select(pace_at) if presenting else None
    try:
        settings = gpt2_engine.GenerationSettings(
            max_new_tokens=int(length),
            top_p=top_p,
            window=window_value(window),
            sampler=str(sampler),
            temperature=temperature,
            top_k=int(top_k) if top_k else None,
            seed=seed_or_new(seed_text),
            stop_at_sentence_end=bool(sentence_end),
            autograd=tutorial_mode,
            memory_share=memory_percent / 100,
            candidates=INSPECT_CANDIDATES,  # each token's tooltip: always, its cost is negligible (run_view)
        )
    except gpt2_engine.SettingsError as error:
        return Request(prompt, None, status.setting_problem(error), generate, pace)
    return Request(prompt, settings, None, generate, pace)
