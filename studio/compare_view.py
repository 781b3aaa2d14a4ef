"""Compare's view: the placeholders a comparison is drawn in (`CompareView`) and what fills them: the two texts (tinted
from where they part), the chart of both KV caches, the table beside it and its sentence, and what explains them
under it. The form and the running are compare.py's; the numbers and words, comparison.py's."""

from __future__ import annotations

import html
import time

import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from . import coherence_view, compare_chart, keys, screen, status
from .comparison import TABLE_COLUMNS, Comparison, first_difference, summary, table
from .run import Run
from .run_view import CHARTS_EVERY_S, RESET_MARK, TEXT_EVERY_S
from .words import tokens, window_label

EVIDENCE_SPLIT = [1.85, 1]  # the chart, and beside it the table and its sentence
SHOWN_COLUMNS = ("peak_kv_cache", "reading")  # the table beside the chart; all, under it
FULL_FORMATS = {  # the table in full, under them: its numbers written as the table beside the chart writes them
    "tokens": "{:,}",
    "tokens_per_s": "{:,.1f}",
    "resets": "{:,}",
    "reading": "{:,.2f}",
    "perplexity": "{:,.1f}",
}
SHOWN_LABELS = {  # shorter headings beside the chart (each column's help says it in full)
    "peak_kv_cache": TABLE_COLUMNS["peak_kv_cache"] | {"label": "KV cache"},
    "reading": TABLE_COLUMNS["reading"] | {"label": "Perplexity"},
}


def _reuse_seed(seed: int) -> None:
    st.session_state[keys.COMPARE_SEED] = str(seed)


def _texts_html(comparison: Comparison, which: int, writing: bool) -> str:
    """One run's text: the phrase, then what it wrote, with ⟲ at resets; from where the two runs part, the
    text is tinted in the run's colour."""
    run, other = comparison.runs[which], comparison.runs[1 - which]
    parted = first_difference(run, other) if other.steps else None
    tint = ("rgba(12, 166, 120, 0.13)", "rgba(31, 111, 235, 0.12)")[which]
    pieces = []
    for step in run.steps:
        if parted is not None and step.index == parted:
            pieces.append(f'<span class="parted" style="background: {tint}" title="from here the two texts differ">')
        pieces.append((RESET_MARK if step.reset else "") + html.escape(step.text))
    if parted is not None and parted < len(run.steps):
        pieces.append("</span>")
    cursor = '<span class="cursor">▍</span>' if writing else ""
    body = f'<span class="prompt">{html.escape(run.prompt)}</span><span class="generated">{"".join(pieces)}</span>'
    return f'<div class="studio-text compare-text"><div>{body}{cursor}</div></div>'


class CompareView:
    """The placeholders a comparison is drawn in, in one container (screen.COMPARE): a top row (a note: what to
    do, a wait, or what the seed did; Stop while the runs write, then Keep this seed), two columns (heading,
    status, text), then the chart (the settings both runs share under it) beside the evidence (a progress bar
    while the runs are scored, then the table and the sentence that reads it), and under them what explains them.
    The rows keep one height from the first token to the table, so the run stays where screen.py scrolled it."""

    def __init__(self) -> None:
        with st.container(key=screen.COMPARE, gap="xsmall"):
            note, button = st.columns([6.3, 1.3], vertical_alignment="center")
            self.note = note.empty()
            with button:  # Stop while the runs write, then Keep this seed: one at a time
                self.keep_seed, self.stop = st.empty(), st.empty()
            self.columns = []
            for column in st.columns(2, gap="large"):
                with column.container(gap="xsmall"):
                    self.columns.append((st.empty(), st.empty(), st.empty()))
            chart, evidence = st.columns(EVIDENCE_SPLIT, gap="small")
            with chart.container(gap="xsmall"):
                self.chart, self.settings = st.empty(), st.empty()
            with evidence.container(key=screen.COMPARE_EVIDENCE, gap="xsmall"):
                self.progress = st.empty()
                self.table = st.empty()
            self.explained = st.empty()
            self.scroll = st.empty()
            self.parting = st.empty()
        self._text_at = self._chart_at = float("-inf")
        self._stop_drawn = False

    def start(self, comparison: Comparison) -> None:
        """A comparison begins: Stop in the top row, and the page scrolled to show the runs."""
        self.note.empty()
        self._draw_stop(True)
        self.table.caption(
            "Once both runs are written and reread, a table of what each window saved and cost comes here, with "
            "what it says."
        )
        screen.keep_in_view(self.scroll, screen.COMPARE)

    def _draw_stop(self, writing: bool) -> None:
        """Stop while the runs write or are scored (once per script run: a widget's key is drawn once)."""
        if not writing:
            self.stop.empty()
        elif not self._stop_drawn:
            self._stop_drawn = True
            # Clicking Stop reruns the page, which interrupts a comparison within one token (see studio/runner.py).
            self.stop.button(
                "Stop", key="compare_stop", icon=":material/stop:", help="Stop comparing; the text so far is kept."
            )

    def show_waiting(self, ahead: int) -> None:
        status.waiting(self.note, ahead)

    def writing_more(self, run: Run, done: int, total: int) -> None:
        """A further text being written, to be scored with the two shown: where the table will be, a bar."""
        now = time.monotonic()
        if now - self._text_at >= TEXT_EVERY_S or run.finished:
            self._text_at = now
            length = run.settings.max_new_tokens
            share = (done + len(run.steps) / length) / total
            self.progress.progress(
                min(1.0, share),
                text=f"More texts to score, one sampled text being one draw: {run.label}, {len(run.steps):,} of "
                f"{length:,} tokens ({done + 1} of {total})",
            )

    def update(self, comparison: Comparison) -> None:
        now = time.monotonic()
        if now - self._text_at >= TEXT_EVERY_S:
            self._text_at = now
            self._draw_columns(comparison)
        if now - self._chart_at >= CHARTS_EVERY_S:
            self._chart_at = now
            self._draw_chart(comparison)

    def show(self, comparison: Comparison | None, scored: bool = True) -> None:
        """Everything, as it stands. With `scored`, also the table, the seed note and its button: once per script
        run (the runs' scores come after the texts: a progress bar is where the table will be)."""
        if comparison is None:
            self.note.info(
                "Pick two windows and press **Compare**: the same phrase and seed are written twice, one run after "
                "the other, and the page shows what each window costs in memory and in coherence.",
                icon=":material/compare_arrows:",
            )
            return
        self._draw_columns(comparison)
        self._draw_chart(comparison)
        self._draw_stop(not (comparison.finished and scored))
        if scored:
            self._draw_table(comparison)
            self._draw_note(comparison)
        if comparison.finished:
            screen.show_parting(self.parting, screen.COMPARE)

    def _draw_note(self, comparison: Comparison) -> None:
        a, b = comparison.runs
        parted = first_difference(a, b)
        if parted is None:
            where = "they wrote the same tokens throughout."
        elif parted == 0:
            where = "they parted at the very first token."
        else:
            at_reset = next(
                (label for run, label in zip((a, b), comparison.labels()) if parted in run.stats.resets), None
            )
            when = f", at a reset of {at_reset}" if at_reset else ""
            where = f"the same first {tokens(parted)}, then they parted{when} (tinted)."
        self.note.markdown(
            f"Both runs used **seed {comparison.seed}**: {where}",
            help="The sampler draws one random number per token from the seed, so wherever both windows give the "
            "model the same view, they pick the same token; they part where the smaller window has forgotten "
            "something. Each text box shows where they part: scroll it for the rest.",
        )
        self.keep_seed.button(
            "Keep this seed",
            key="compare_reuse_seed",
            on_click=_reuse_seed,
            args=(comparison.seed,),
            help="Puts this seed in the form, so the next comparison can change one thing and keep the rest.",
        )

    def _draw_columns(self, comparison: Comparison) -> None:
        current = next((run for run in comparison.runs if not run.finished), None)
        self.settings.caption(_settings_line(comparison))
        for which, ((heading, state, text), run, label) in enumerate(
            zip(self.columns, comparison.runs, comparison.labels())
        ):
            color = compare_chart.COMPARE_COLORS[which]
            tutorial = " · :orange-badge[tutorial mode]" if run.settings.autograd else ""
            heading.markdown(
                f"#### <span style='color:{color}'>●</span> {label.capitalize()}{tutorial}", unsafe_allow_html=True
            )
            status.run_status(state, run, after_other=run is not current)
            text.html(_texts_html(comparison, which, writing=run is current and bool(run.steps)))

    def _draw_chart(self, comparison: Comparison) -> None:
        runs = [(label, run.steps) for label, run in zip(comparison.labels(), comparison.runs)]
        if not any(steps for _, steps in runs):
            self.chart.empty()
            return
        length = max(run.settings.max_new_tokens for run in comparison.runs)
        x_max = max(len(run.steps) for run in comparison.runs) if comparison.finished else length
        spec = compare_chart.compare_chart(runs, x_max, comparison.runs[0].kv_per_token)
        self.chart.vega_lite_chart(spec=spec, width="stretch", height=compare_chart.COMPARE_HEIGHT_PX)
        self._draw_explained(comparison)

    def _draw_table(self, comparison: Comparison) -> None:
        if not comparison.finished or not any(run.steps for run in comparison.runs):
            self.table.empty()
            return
        frame = table(comparison)
        with self.table.container(gap="xsmall"):
            st.dataframe(
                frame,
                column_config={**TABLE_COLUMNS, **SHOWN_LABELS},
                column_order=[column for column in SHOWN_COLUMNS if column in frame.columns],
                width="stretch",
            )
            with st.container(key=screen.COMPARE_SUMMARY):
                st.markdown(summary(comparison))
        self._draw_explained(comparison)

    def _draw_explained(self, comparison: Comparison) -> None:
        """Under the chart and the table: the chart's caption, then, once the runs end, every figure of the
        table and what coherence means."""
        runs = [(label, run.steps) for label, run in zip(comparison.labels(), comparison.runs)]
        with self.explained.container():
            st.caption(compare_chart.compare_caption(runs))
            if comparison.finished and any(run.steps for run in comparison.runs):
                with st.expander("The table in full: on gpt2-xl, the texts reread, resets, tokens, speed, memory"):
                    st.table(_full_table(table(comparison)))
                st.caption(coherence_view.EXPLANATION)


def _full_table(frame: pd.DataFrame) -> Styler:
    """Every column of `table`, with its heading, in a static table (st.table): the data frame to sort or
    download is the one beside the chart, which holds them all too."""
    labels = {column: TABLE_COLUMNS[column].get("label") or column for column in frame.columns}
    formats = {labels[column]: shape for column, shape in FULL_FORMATS.items() if column in labels}
    return frame.rename(columns=labels).style.format(formats, na_rep="")


def _settings_line(comparison: Comparison) -> str:
    """What made both runs, in one line: what they share once ("Both written with ..."; their windows are in
    their headings), then what else differs, if anything, run by run."""
    lines = [
        [part for part in status.settings_line(run).split(" · ") if part != window_label(run.settings.window)]
        for run in comparison.runs
    ]
    shared = [part for part in lines[0] if part in lines[1]]
    own = [
        f"{label}: {' · '.join(part for part in line if part not in shared)}"
        for label, line in zip(comparison.labels(), lines)
        if any(part not in shared for part in line)
    ]
    return "Both written with " + " · ".join(shared) + "".join(f"; {said}" for said in own)
