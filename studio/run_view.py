"""What a run looks like: a status line, the text (prompt, continuation, ⟲ at window resets), the
memory charts and the numbers under them. Drawn into placeholders, so each draw replaces the last.

The model's text is untrusted: it is HTML-escaped and shown with `st.html`, which reads no Markdown,
so `![x](http://...)`, `<script>` or `$x$` in it appear as the characters they are.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import streamlit as st

from gpt2_engine import STOP_REASONS
from gpt2_engine.memory import format_bytes

from . import charts
from .runner import Run

TEXT_EVERY_S = 0.1  # at most ~10 text updates a second: a tiny model writes faster than a browser draws
CHARTS_EVERY_S = 0.5  # charts and numbers: ~3 ms to build and more to draw, taken from the model's time
RESET_MARK = '<span class="reset" title="window reset: the model forgot all but the last N tokens">⟲</span>'


def text_html(run: Run | None, writing: bool = False) -> str:
    """The prompt, then the continuation with ⟲ where the window reset, all escaped."""
    if run is None:
        body = (
            '<span class="empty">GPT-2\'s text will appear here, word piece by word piece, '
            "and the charts below will show the memory it takes.</span>"
        )
    else:
        pieces = [RESET_MARK + html.escape(s.text) if s.reset else html.escape(s.text) for s in run.steps]
        body = f'<span class="prompt">{html.escape(run.prompt)}</span><span class="generated">{"".join(pieces)}</span>'
        if writing:
            body += '<span class="cursor">▍</span>'
    return f'<div class="studio-text"><div>{body}</div></div>'


def legend_html(window: int | None) -> str:
    reset = f"the window kept only the last {window} tokens" if window else "the context was full: half was kept"
    return (
        '<div class="studio-legend"><span class="prompt-key">grey: your phrase</span> · '
        '<span class="generated-key">dark: GPT-2\'s continuation</span> · '
        f'<span class="reset">⟲</span> {reset}</div>'
    )


class RunView:
    """The placeholders a run is drawn in, made where the page calls this. `update` is throttled for
    streaming; `show` always draws everything (the final state of a run, or a rerun)."""

    def __init__(self, status_area) -> None:
        self.status = status_area.empty()
        self.text = st.empty()
        self.notes = st.empty()
        self.charts = st.empty()
        self.numbers = st.empty()
        self._text_at = self._charts_at = float("-inf")

    def show_waiting(self, ahead: int) -> None:
        others = "1 run is" if ahead == 1 else f"{ahead} runs are"
        self.status.info(
            f"Waiting for the model: {others} ahead of yours. It starts by itself.", icon=":material/hourglass_top:"
        )

    def update(self, run: Run) -> None:
        now = time.monotonic()
        if now - self._text_at >= TEXT_EVERY_S:
            self._text_at = now
            self._draw_status(run)
            self._draw_text(run)
        if now - self._charts_at >= CHARTS_EVERY_S:
            self._charts_at = now
            self._draw_charts(run)
            self._draw_numbers(run)

    def show(self, run: Run | None) -> None:
        self._draw_text(run)
        self._draw_charts(run)
        self._draw_numbers(run)
        self._draw_status(run)  # last: once it says Done or Stopped, everything above is drawn

    def _draw_status(self, run: Run | None) -> None:
        if run is None:
            self.status.info("Type a phrase, then press **Generate**.", icon=":material/edit_note:")
            return
        stats, length = run.stats, run.settings.max_new_tokens
        if run.error is not None:
            self.status.error(run.error, icon=":material/error:")
        elif not run.finished:
            self.status.info(f"Writing… {stats.tokens} of {length} tokens", icon=":material/edit:")
        elif run.stopped:
            self.status.warning(
                f"Stopped after {stats.tokens} of {length} tokens: the text so far is kept.",
                icon=":material/stop_circle:",
            )
        elif stats.stop_reason == "memory":
            self.status.warning(
                f"Stopped after {stats.tokens} tokens: {STOP_REASONS['memory']}.", icon=":material/memory:"
            )
        else:
            ending = STOP_REASONS.get(stats.stop_reason or "", stats.stop_reason)
            self.status.success(f"Done: {stats.tokens} tokens, {ending}.", icon=":material/check_circle:")

    def _draw_text(self, run: Run | None) -> None:
        with self.text.container():
            st.html(text_html(run, writing=run is not None and not run.finished))
            if run is not None and run.stats.resets:
                st.html(legend_html(run.settings.window))
        stats = run.stats if run is not None else None
        if stats is not None and stats.prompt_tokens_dropped:
            self.notes.warning(
                f"Your phrase was longer than the model can read at once: its first {stats.prompt_tokens_dropped} "
                f"tokens were left out, and the model saw the last {stats.prompt_tokens}.",
                icon=":material/content_cut:",
            )
        else:
            self.notes.empty()

    def _draw_charts(self, run: Run | None) -> None:
        if run is None or not run.steps:
            self.charts.empty()
            return
        x_max = len(run.steps) if run.finished else max(run.settings.max_new_tokens, len(run.steps))
        with self.charts.container():
            left, right = st.columns(2)
            memory = charts.process_memory_chart(run.steps, run.weight_bytes, x_max)
            left.vega_lite_chart(spec=memory, width="stretch", height=charts.HEIGHT_PX)
            right.vega_lite_chart(
                spec=charts.kv_cache_chart(run.steps, x_max), width="stretch", height=charts.HEIGHT_PX
            )
            st.caption(charts.EXPLANATION)

    def _draw_numbers(self, run: Run | None) -> None:
        if run is None or not run.steps:
            self.numbers.empty()
            return
        stats = run.stats
        with self.numbers.container():
            speed, tokens, words, peak, seed = st.columns(5)
            speed.metric(
                "Tokens/s",
                f"{stats.tokens_per_s:.1f}",
                help="Tokens written per second, after the phrase was read.",
            )
            tokens.metric("Tokens", stats.tokens, help="Word pieces written so far.")
            words.metric("Words", stats.words)
            peak.metric(
                "Peak memory", format_bytes(stats.peak_rss_bytes), help="The most memory the whole process held (RSS)."
            )
            seed.metric(
                "Seed",
                str(stats.seed),
                help="Type this seed under Advanced, with the same settings, to get the same text again.",
            )
            window = f"window {run.settings.window}" if run.settings.window else "window off"
            model = Path(run.model).name if run.model.startswith(("/", ".", "~")) else run.model  # a folder
            st.caption(
                f"{model} · weights {format_bytes(run.weight_bytes)} · KV cache now "
                f"{format_bytes(run.steps[-1].kv_bytes)}, at most {format_bytes(stats.peak_kv_bytes)} ({window}) · "
                f"{len(stats.resets)} window reset{'s' if len(stats.resets) != 1 else ''} · seed {stats.seed}"
            )
