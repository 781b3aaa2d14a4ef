"""What a run looks like: a status line, the text (prompt, continuation, ⟲ at window resets), the
memory charts and the numbers under them. Drawn into placeholders, so each draw replaces the last.

Look inside: once a run has ended, each generated token is a span that shows, on hover (or on a click,
which focuses it), the probability GPT-2 gave it and the candidates it beat (the Steps carry the top
INSPECT_CANDIDATES, asked for by controls.py). "Colour by probability" shades each token by how sure the
model was, with a legend. While the model writes, the text is plain (and coloured, if asked): no tooltips.

The model's text is untrusted: it is HTML-escaped and shown with `st.html`, which reads no Markdown,
so `![x](http://...)`, `<script>` or `$x$` in it appear as the characters they are. The tooltips are
escaped attribute values, shown by CSS (`content: attr(data-tip)`), never HTML.
"""

from __future__ import annotations

import html
import math
import time

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from gpt2_engine import GenerationSettings, Step, format_bytes

from . import charts, keys, screen, status
from .run import Run
from .words import count, ordinal, percent, quoted, window_label

# How often a run's parts are redrawn while it writes. Each redraw costs the browser a pass over Streamlit's whole
# page (tens of ms of its main thread), on the cores the model computes on, and a 2-thread decode step waits for
# its slower thread: at 10 text and 2 chart redraws a second, Chromium took half a core beside gpt2-xl's shape.
TEXT_EVERY_S = 0.2  # the text, 5 times a second: a reading pace shows one or two tokens each time
CHARTS_EVERY_S = 1.0  # the status line's count, the charts and the numbers under them
RESET_MARK = '<span class="reset" title="window reset: the model forgot all but the last N tokens">⟲</span>'
INSPECT_CANDIDATES = 5  # per token, for the tooltips: microseconds, against a gpt2-xl token's tenths of a second
COLOUR_KEY = "colour_tokens"  # the "Colour by probability" toggle
CONFIDENCE = (  # (lowest probability, css class, legend): how sure GPT-2 was of the token it wrote
    (0.8, "p-sure", "80% or more: sure"),
    (0.5, "p-likely", "50–80%"),
    (0.2, "p-maybe", "20–50%"),
    (0.05, "p-unsure", "5–20%"),
    (0.0, "p-guess", "under 5%: a guess"),
)


def confidence_class(probability: float) -> str:
    return next(css for lowest, css, _ in CONFIDENCE if probability >= lowest)


def token_tip(step: Step, settings: GenerationSettings) -> str:
    """A token's tooltip, as plain text: its probability, its rank, the top-p set it came from, the candidates."""
    p = math.exp(step.logprob)  # the model's own probability (temperature 1, before top-k and top-p)
    rank = next((r for r, c in enumerate(step.candidates) if c.token_id == step.token_id), None)
    taken = next((c.text for c in step.candidates if c.token_id == step.token_id), step.text)
    place = f", its {ordinal(rank + 1)} choice" if rank is not None else ""
    lines = [f"{quoted(taken)}: GPT-2 gave it {percent(p)}{place}"]
    if step.nucleus_size:
        lines.append(
            f"drawn from the top-p set: {count(step.nucleus_size, 'token')}, {percent(step.nucleus_mass)} together"
        )
    if step.candidates:
        tuned = settings.temperature != 1.0 or settings.top_k is not None
        lines.append("The candidates" + (" (after temperature and top-k):" if tuned else ":"))
        for c in step.candidates:
            marker = "  ← written" if c.token_id == step.token_id else ""
            lines.append(f"{percent(c.probability):>6}  {quoted(c.text)}{marker}")
    return "\n".join(lines)


def _token_html(step: Step, settings: GenerationSettings, colour: bool, inspect: bool) -> str:
    text = html.escape(step.text)
    mark = RESET_MARK if step.reset else ""
    if not (colour or inspect) or not step.text:
        return mark + text
    css = "tok " + confidence_class(math.exp(step.logprob)) if colour else "tok"
    tip = f' tabindex="0" data-tip="{html.escape(token_tip(step, settings))}"' if inspect else ""
    return f'{mark}<span class="{css}"{tip}>{text}</span>'


def text_html(run: Run | None, writing: bool = False, colour: bool = False, compact: bool = False) -> str:
    """The prompt, then the continuation with ⟲ where the window reset, all escaped. Once the run has ended,
    each token carries its tooltip; with `colour`, each token is shaded by its probability. `compact`: a
    shorter box (it scrolls, the newest line in view), so that the chart under it stays on the screen."""
    if run is None:
        body = (
            '<span class="empty">GPT-2\'s text will appear here, word piece by word piece, '
            "and the chart below will show the memory it takes.</span>"
        )
    else:
        pieces = [_token_html(s, run.settings, colour, inspect=not writing) for s in run.steps]
        body = f'<span class="prompt">{html.escape(run.prompt)}</span><span class="generated">{"".join(pieces)}</span>'
        if writing:
            body += '<span class="cursor">▍</span>'
    inspectable = ' class="inspectable"' if run is not None and not writing else ""
    # the wrapper holds the tooltips: outside the scrolling box, so that its edges do not clip them
    wrap = "studio-text-wrap compact" if compact else "studio-text-wrap"
    return f'<div class="{wrap}"><div class="studio-text"><div{inspectable}>{body}</div></div></div>'


def colour_legend_html() -> str:
    keys = "".join(f'<span class="tok {css}">{label}</span>' for _, css, label in CONFIDENCE)
    return f'<div class="studio-legend confidence">How sure GPT-2 was of each token: {keys}</div>'


def legend_html(window: int | None) -> str:
    reset = f"the window kept only the last {window} tokens" if window else "the context was full: half was kept"
    return (
        '<div class="studio-legend"><span class="prompt-key">grey: your phrase</span> · '
        '<span class="generated-key">dark: GPT-2\'s continuation</span> · '
        f'<span class="reset">⟲</span> {reset}</div>'
    )


class RunView:
    """The placeholders a run is drawn in, made where the page calls this. `update` is throttled for
    streaming; `show` always draws everything (the final state of a run, or a rerun).

    Top to bottom: the status beside Stop (shown while it writes), the text in a compact box that scrolls, the
    memory chart right under it (beside it in presenter mode), so that at 1280x720 the status, the text and the
    chart are in view together while GPT-2 writes (screen.py scrolls them there as a run starts), then the chart's
    caption, the text's legends and the colour switch, and the numbers."""

    pace: float | None = None  # tokens/s the run is shown at (presenter mode, runner.generate), None: as written

    def __init__(self, ready: bool = True, side_by_side: bool = False) -> None:
        self.ready = ready  # a model is loaded: Generate can be pressed
        with st.container(key=screen.WRITE):
            status_row, stop_row = st.columns([5, 1], vertical_alignment="center")
            self.status = status_row.container(key="run_status").empty()  # the key: style.css makes it slimmer
            self.stop = stop_row.empty()
            text_side, chart_side = st.columns([1.15, 1], gap="large") if side_by_side else (st, st)  # presenter
            self.text = text_side.empty()
            self.notes = text_side.empty()
            self.charts = chart_side.empty()
            switch, legends = st.columns([1, 2.6], vertical_alignment="center")
            with switch:
                _colour_switch()
            self.legends = legends.empty()
            self.numbers = st.empty()
            self.scroll = st.empty()
        self._text_at = self._charts_at = float("-inf")
        self._drawn: dict[str, object] = {}  # what the parts drawn only on a change show now (`_changed`)
        self._stop_drawn = False

    def start(self, run: Run) -> None:
        """A run begins: everything drawn for it, Stop beside its status, and the page scrolled to show it."""
        self.show(run)
        screen.keep_in_view(self.scroll, screen.WRITE)

    def _draw_stop(self, writing: bool) -> None:
        """Stop while a run writes (once per script run: a widget's key is drawn once); after it, nothing."""
        if not writing:
            self.stop.empty()
        elif not self._stop_drawn:
            self._stop_drawn = True
            # Clicking Stop reruns the page, which interrupts a run within one token (see studio/runner.py).
            self.stop.button("Stop", key="stop", icon=":material/stop:", help="Stop writing; the text so far is kept.")

    def show_waiting(self, ahead: int) -> None:
        status.waiting(self.status, ahead)

    def show_reading(self, read: int, total: int) -> None:
        """While GPT-2 reads the phrase (a long one takes seconds): how far it has got."""
        self.status.info(f"Reading your phrase: {read:,} of {total:,} tokens", icon=":material/menu_book:")

    def update(self, run: Run) -> None:
        now = time.monotonic()
        if now - self._text_at >= TEXT_EVERY_S:
            self._text_at = now
            self._draw_text(run)
        if now - self._charts_at >= CHARTS_EVERY_S:
            self._charts_at = now
            self._draw_status(run)
            self._draw_charts(run)
            self._draw_numbers(run)

    def show(self, run: Run | None) -> None:
        self._draw_text(run)
        self._draw_charts(run)
        self._draw_numbers(run)
        self._draw_status(run)  # last: once it says Done or Stopped, everything above is drawn
        self._draw_stop(run is not None and not run.finished)

    def _draw_status(self, run: Run | None) -> None:
        if run is None and not self.ready:
            self.status.info("Generate waits for a model: see above the tabs.", icon=":material/hourglass_top:")
        elif run is None:
            self.status.info("Type a phrase, then press **Generate**.", icon=":material/edit_note:")
        else:
            status.run_status(self.status, run)

    def _draw_text(self, run: Run | None) -> None:
        colour = bool(st.session_state.get(COLOUR_KEY))
        self.text.html(text_html(run, writing=run is not None and not run.finished, colour=colour, compact=True))
        legends = [legend_html(run.settings.window)] if run is not None and run.stats.resets else []
        if colour and run is not None:
            legends.append(colour_legend_html())
        if self._changed("legends", legends):
            if legends:
                self.legends.html("".join(legends))
            else:
                self.legends.empty()
        line = None if run is None else status.settings_line(run)
        dropped = 0 if run is None else run.stats.prompt_tokens_dropped
        if not self._changed("notes", (line, dropped)):
            return
        if run is None:
            self.notes.empty()
            return
        with self.notes.container():  # under the text: what made it, whatever the widgets show now
            st.caption(f"Written with {line}")
            if dropped:
                st.warning(
                    f"Your phrase was longer than the model can read at once: its first {dropped:,} tokens were "
                    f"left out, and the model saw the last {run.stats.prompt_tokens:,}.",
                    icon=":material/content_cut:",
                )

    def _changed(self, part: str, content: object) -> bool:
        """Whether `part` (legends, notes) would show something other than what it shows now; if so, it will.
        Each redraw costs the browser a pass over the whole page (Streamlit's frontend), tenths of a core while
        GPT-2 writes, on the same cores as the model: a part that has not changed is left as it is."""
        if self._drawn.get(part, self) == content:
            return False
        self._drawn[part] = content
        return True

    def _draw_charts(self, run: Run | None) -> None:
        if run is None or not run.steps:
            self.charts.empty()
            return
        x_max = len(run.steps) if run.finished else max(run.settings.max_new_tokens, len(run.steps))
        if run.remote:  # the server's memory, not this process's: what it reports, or words
            with self.charts.container():
                if any(step.server_kv_usage is not None for step in run.steps):
                    st.vega_lite_chart(
                        spec=charts.server_kv_chart(run.steps, x_max), width="stretch", height=charts.HEIGHT_PX
                    )
                st.caption(run.memory_note)
            return
        with self.charts.container():
            charts.draw_memory(run.steps, x_max, run.weight_bytes, run.kv_per_token, run.settings.autograd)

    def _draw_numbers(self, run: Run | None) -> None:
        if run is None or not run.steps:
            self.numbers.empty()
            return
        stats = run.stats
        # shown at a reading pace (presenter mode) while the model wrote faster: the figure stays the model's own
        # speed, from the times its steps were made (runner.paced), and the words under it say so
        paced = self.pace is not None and stats.tokens_per_s > self.pace
        with self.numbers.container():
            # peak memory carries two figures ("2.50 GB", "+148 MB this run"): the widest column
            speed, tokens, words, peak, seed = st.columns([1, 1, 1, 1.7, 1.1])
            speed.metric(
                "Tokens/s",
                f"{stats.tokens_per_s:.1f}",
                delta=f"shown at {self.pace:g}/s" if paced else None,
                delta_color="off",
                delta_arrow="off",
                help="Tokens the model wrote per second, after the phrase was read: its own speed, from the time it "
                "spent computing, however fast the page shows them (presenter mode's Pace).",
            )
            tokens.metric("Tokens", f"{stats.tokens:,}", help="Word pieces written so far.")
            words.metric("Words", f"{stats.words:,}")
            if run.remote:
                usage = [s.server_kv_usage for s in run.steps if s.server_kv_usage is not None]
                peak.metric(
                    "Server KV cache",
                    f"{100 * max(usage):.{0 if max(usage) >= 0.1 else 1}f}%" if usage else "not reported",
                    help="The most of the server's KV cache in use during this run, as the server says it (vLLM's "
                    "/metrics, llama.cpp's /slots; all its runs together); llama-cpp-python's server says nothing.",
                )
            else:
                peak.metric(
                    "Peak memory",
                    format_bytes(stats.peak_rss_bytes),
                    delta=f"{charts.plus_bytes(stats.peak_added_bytes)} this run",
                    delta_color="off",
                    delta_arrow="off",
                    help="The most memory the whole process held (RSS), and the most this run added to what it held "
                    "before it.",
                )
            seed.metric(
                "Seed",
                str(stats.seed),
                help="Type this seed under Advanced, with the same settings, to get the same text again.",
            )
            window, model = window_label(run.settings.window), status.model_name(run)
            if paced:
                st.caption(
                    f"The text is shown at a reading pace, {self.pace:g} tokens/s, for the room to read; the model "
                    f"wrote it at {stats.tokens_per_s:,.0f} tokens/s."
                )
            if run.remote:
                st.caption(
                    f"{model} · {window}, kept here · {count(len(stats.resets), 'window reset')} · seed {stats.seed}"
                )
                return
            st.caption(
                f"{model} · weights {format_bytes(run.weight_bytes)} · KV cache now "
                f"{format_bytes(run.steps[-1].kv_bytes)}, at most {format_bytes(stats.peak_kv_bytes)} ({window}) · "
                f"{count(len(stats.resets), 'window reset')} · seed {stats.seed}"
            )


def _recolour() -> None:
    st.session_state[keys.RECOLOUR] = True


@st.fragment
def _colour_switch() -> None:
    """The "Colour by probability" toggle. A fragment, so that flipping it while GPT-2 writes does not stop
    the run, as a click elsewhere on the page would: Streamlit holds a fragment's rerun until the script run
    in progress ends. That fragment run then asks for the whole page again, drawn with the new colouring."""
    st.toggle(
        "Colour by probability",
        key=COLOUR_KEY,
        on_change=_recolour,
        help="Shade each token GPT-2 wrote by the probability it gave it: blue where it was sure, orange where "
        "it took a guess. Hover over (or click) a token to see its probability and the candidates it beat.",
    )
    context = get_script_run_ctx()
    if st.session_state.pop(keys.RECOLOUR, False) and context is not None and context.fragment_ids_this_run:
        st.rerun()  # only this fragment ran: the text is outside it
