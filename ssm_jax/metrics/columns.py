"""Left-aligned terminal columns that stay aligned for names in scripts whose characters take two cells (Chinese,
Japanese, Korean), which ``str.ljust`` and f-string widths count as one."""

from __future__ import annotations

import unicodedata


def display_width(text: str) -> int:
    """Terminal cells ``text`` takes: two for East Asian wide and full-width characters, none for combining marks."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def left_justified(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal cells (unchanged if it is wider)."""
    return text + " " * max(0, width - display_width(text))
