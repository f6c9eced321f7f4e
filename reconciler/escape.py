"""Escaping for every value reconciler writes to a terminal, a CI log or a PR comment.

A Project's name, a file path, an API's error message: any of them may come from
someone else, and a raw one can clear the screen above `Apply? [y/N]` (ANSI),
reorder what a reviewer reads (bidi overrides), or issue GitHub workflow commands
(a line starting with `::`). So every such value goes through :func:`term` before
it is written, and through :func:`markdown` before it goes into a comment.

- :func:`term` makes a value inert on one line: C0 and C1 control characters
  (newlines and ESC included), DEL, bidi controls and line/paragraph separators
  become visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), and a value that would
  start a workflow command (``::`` or ``##[``, after spaces) has its first
  character escaped.
- :func:`shorten` cuts one value to 200 characters with a visible note.
- :func:`markdown` is both, plus the markdown escaping of a table cell.

The JSON plan is not escaped: it is data, and keeps every value whole.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MARKDOWN_VALUE_LIMIT = 200

# C0 controls, DEL, C1 controls; the bidi embeddings/overrides (U+202A-202E), isolates
# (U+2066-2069) and marks (U+200E/F, U+061C); U+2028/2029, which some viewers break on.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# GitHub's runner reads `::name ...::` and the older `##[name]` at the start of a line.
_WORKFLOW_COMMAND = re.compile(r"^(\s*)([:#])(?=:|#\[)")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def term(value: Any) -> str:
    """``value`` as text that is safe on one line of a terminal or CI log."""
    text = _UNSAFE.sub(_visible, value if isinstance(value, str) else str(value))
    return _WORKFLOW_COMMAND.sub(lambda m: f"{m[1]}\\x{ord(m[2]):02x}", text)


def shorten(text: str, limit: int = MARKDOWN_VALUE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it really was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters; the JSON plan has it whole)"


_MD_ESCAPES = {
    "\\": "\\\\",
    "|": "\\|",
    "<": "&lt;",
    ">": "&gt;",
    "&": "&amp;",
    "`": "&#96;",
    "*": "\\*",
    "_": "\\_",
    "[": "\\[",
    "]": "\\]",
    "#": "\\#",
}


def md_escape(text: str) -> str:
    """Escape text for a markdown table cell, so a value can neither break the table nor
    inject markup or HTML into the comment. Newlines become ``<br>`` (for our own
    multi-line text); values from elsewhere go through :func:`markdown` instead."""
    text = text.replace("\r", "")
    return "<br>".join("".join(_MD_ESCAPES.get(ch, ch) for ch in line) for line in text.split("\n"))


def markdown(value: Any, limit: int = MARKDOWN_VALUE_LIMIT) -> str:
    """One value from a file or the API, ready for a markdown comment: on one line, no
    control or bidi characters, at most ``limit`` characters, markdown escaped."""
    return md_escape(shorten(term(value), limit))


def without_userinfo(url: str) -> str:
    """``url`` without any ``user:pass@`` part, for showing it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def plural(count: int, noun: str) -> str:
    """`1 error`, `2 errors`, `0 errors`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
