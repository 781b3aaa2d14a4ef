"""The page's small word helpers, in one place: counts with their noun, ordinals, percentages, tokens made visible.

Numbers a person reads carry thousands separators everywhere ("1,000 tokens", "19,543 tokens"), so that two figures
side by side read alike. No Streamlit here: plain functions over numbers and strings.
"""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """1 token, 2 tokens, 1,000 tokens; `plural` where adding an s is wrong."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def tokens(n: int) -> str:
    """1 token, 2 tokens, 19,543 tokens."""
    return count(n, "token")


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th ... 11th, 12th, 13th ... 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def percent(p: float) -> str:
    """23% / 4.2% / 0.3% / <0.1% / 99.8%: as precise as a bar or a tooltip needs, and never 100% short of it."""
    if 0.995 <= p < 1.0:
        return f"{min(100 * p, 99.9):.1f}%"
    return f"{100 * p:.0f}%" if p >= 0.1 else (f"{100 * p:.1f}%" if p >= 0.001 else "<0.1%")


def visible(text: str) -> str:
    """A token's characters made visible: line breaks ⏎, tabs ⇥, other control characters as their byte <0x1B>."""
    text = text.replace("\n", "⏎").replace("\t", "⇥")
    return "".join(ch if ch.isprintable() else f"<0x{ord(ch):02X}>" for ch in text)


def quoted(text: str) -> str:
    """A token in quotes, its spaces kept: “ little”."""
    return "“" + visible(text) + "”"


def window_label(window: int | None) -> str:
    """window 50 / window off: how the page names a window everywhere."""
    return f"window {window:,}" if window else "window off"
