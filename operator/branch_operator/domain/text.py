"""Text from outside (Funnel events, admin annotations) made safe to show: pure helpers.

Free text reaches operator logs, Kubernetes Events, conditions, audit records and terminals (``kubectl
describe``). Control characters there can forge a log line, drive a terminal or hide text, so they are
written as visible escapes; and anything unbounded is cut, so one value cannot bloat every copy of it.
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["escape_controls", "has_control", "safe_text"]

# Characters that let free text from an event forge or garble what people read: line breaks (a fake log
# line, a fake Event), ANSI/C1 escape sequences (terminal control via kubectl describe) and bidi overrides.
_BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def has_control(text: str) -> bool:
    # Line/paragraph separators and bidi overrides too: in an id they can only forge or hide text.
    return any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS for c in text)


def escape_controls(text: str) -> str:
    """``text`` with control, line-separator and bidi-override characters written as visible escapes
    (``\\n``, ``\\x1b``, ``\\u202e``); other text is unchanged, and escaping twice changes nothing."""
    if text.isprintable():
        return text
    out: list[str] = []
    for char in text:
        if has_control(char):
            out.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def safe_text(text: str, limit: int) -> str:
    """``text`` as it may be shown and stored: stripped, escaped (:func:`escape_controls`) and cut to at most
    ``limit`` characters, an ellipsis marking the cut. Escaped first, so the limit holds for what is shown."""
    shown = escape_controls(text.strip())
    return shown if len(shown) <= limit else shown[: limit - 1] + "\u2026"
