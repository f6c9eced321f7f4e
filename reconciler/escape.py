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
- :func:`markdown` is both, as an inline code span: GitHub never turns text in a code
  span into a mention (``@org/team``), a link (``https://…``, ``www.…``, an email) or
  a reference (``#123``, ``GH-1``, ``owner/repo#1``), so no value can ping anyone or
  link anywhere from a comment. It escapes ``|`` for a table cell unless told
  ``table=False`` (outside a table GitHub would show that backslash; inside one, an
  unescaped ``|`` would split the code span across cells and let its text loose).
  :func:`md_escape` is for our own text with values in it: markup escaped, and
  mention, link and reference patterns broken with an invisible word joiner.
- :func:`redact` replaces every credential value the run knows (:func:`set_secrets`,
  :func:`add_secrets`) with ``***``, in its plain, ``repr`` and JSON forms;
  :func:`term` (and so :func:`markdown`) redacts before anything else.
  :func:`redact_values` does it to the values of a document before it is serialised
  (never to the serialised text, whose checksum would break).

The JSON plan is not escaped: it is data, and keeps every value whole (credentials
aside, redacted by :func:`redact_values`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
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


def has_controls(text: str) -> bool:
    """Whether ``text`` holds a character :func:`term` would escape: a control (a newline
    among them), a bidi control or a line separator. A path holding one cannot be written
    into a workflow or shown as it is."""
    return _UNSAFE.search(text) is not None


def term(value: Any) -> str:
    """``value`` as text that is safe on one line of a terminal or CI log: credentials
    redacted, controls visible, no workflow command."""
    text = redact(value if isinstance(value, str) else str(value))
    if not (text.isascii() and text.isprintable()):  # printable ASCII holds nothing unsafe
        text = _UNSAFE.sub(_visible, text)
    if text.lstrip()[:1] not in (":", "#"):  # no workflow command to break
        return text
    return _WORKFLOW_COMMAND.sub(lambda m: f"{m[1]}\\x{ord(m[2]):02x}", text)


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

# U+2060 WORD JOINER: invisible, and it breaks each pattern GitHub acts on.
_JOINER = "\u2060"
# What GitHub turns into a mention (@user, @org/team; an email's @ too), a reference
# (#123, owner/repo#1, GH-1) or a link (scheme://, www.).
_PINGS = re.compile(r"[@#]|:(?=//)|(?i:www)(?=\.)|(?i:\bgh-)(?=\d)")


def neutralise(text: str) -> str:
    """``text`` with every mention, reference and autolink pattern broken by an
    invisible word joiner, for text that cannot go in a code span."""
    return _PINGS.sub(lambda m: m.group() + _JOINER, text)


def md_escape(text: str) -> str:
    """Escape our own text (which may quote values) for a markdown table cell or line:
    it can neither break the table, inject markup or HTML, nor mention, link or
    reference anything. Newlines become ``<br>``. A value on its own goes through
    :func:`markdown` instead, which keeps it readable as it is."""
    text = text.replace("\r", "")
    return "<br>".join(
        "".join(_MD_ESCAPES.get(ch, ch) for ch in neutralise(line)) for line in text.split("\n")
    )


_BACKTICKS = re.compile("`+")


def code_span(text: str, *, table: bool = True) -> str:
    """``text`` as an inline code span, shown exactly as it is: the fence is one backtick
    longer than any run inside it, padded where the text starts or ends with one (or
    with spaces on both sides, which a code span would otherwise strip). In a table
    cell (``table``) a ``|`` is escaped, as GitHub needs even inside a code span."""
    if not text:
        return "*(empty)*"
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    if text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip()):
        text = f" {text} "
    if table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


def shorten(text: str, limit: int = MARKDOWN_VALUE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it really was."""
    return "".join(_cut(text, limit))


def _cut(text: str, limit: int) -> tuple[str, str]:
    """(``text`` cut to ``limit`` characters, the note saying so or "")."""
    if len(text) <= limit:
        return text, ""
    return text[:limit], f"… ({len(text):,} characters; the JSON plan has it whole)"


def markdown(value: Any, limit: int = MARKDOWN_VALUE_LIMIT, *, table: bool = True) -> str:
    """One value from a file or the API, ready for a markdown comment: on one line, no
    control or bidi characters, at most ``limit`` characters, in a code span (so it can
    neither mention, link, reference nor format anything)."""
    text, note = _cut(term(value), limit)
    return code_span(text, table=table) + note


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


# Credential values -------------------------------------------------------------------

# The variables that hold credentials whatever the files say; each `auth` block adds its own.
CREDENTIAL_VARIABLES = (
    "OYSTEHR_ACCESS_TOKEN",
    "OYSTEHR_CLIENT_ID",
    "OYSTEHR_CLIENT_SECRET",
    "GITHUB_TOKEN",
)


def credential_variables(auths: Iterable[Any] = ()) -> list[str]:
    """Every variable that may hold a credential in this run: the global ones, then each
    name an `auth` block (a mapping of env-var names) gives."""
    names = list(CREDENTIAL_VARIABLES)
    for auth in auths:
        if isinstance(auth, dict):
            names += [n for n in auth.values() if isinstance(n, str) and n not in names]
    return names


# Shorter values are not redacted: replacing every "ab" would garble all output, and a
# credential that short protects nothing.
MIN_SECRET_CHARS = 4
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def _forms(secret: str) -> set[str]:
    """The ways a value shows up in text: as is, inside a repr (of str or bytes: a
    header error says ``b'Bearer …\\r'``), inside JSON."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    try:
        forms.add(repr(secret.encode("latin-1"))[2:-1])
    except UnicodeEncodeError:
        forms.add(repr(secret.encode())[2:-1])
    return forms


def set_secrets(values: Iterable[str | None]) -> None:
    """The run's credential values (unset and short ones are ignored); replaces any
    earlier set, so each command starts with its own."""
    global _secrets
    with _secrets_lock:
        _secrets = ()
    add_secrets(values)


def add_secrets(values: Iterable[str | None]) -> None:
    """More credential values to redact from now on (tokens fetched, auth-named variables)."""
    global _secrets
    new = {form for v in values if v and len(v) >= MIN_SECRET_CHARS for form in _forms(v)}
    with _secrets_lock:
        if new - set(_secrets):
            # Longest first: a secret that contains another is replaced whole.
            _secrets = tuple(sorted(new | set(_secrets), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every known credential value replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def redact_values(value: Any, keep: frozenset[str] = frozenset()) -> Any:
    """``value`` (a JSON-like document) with every string redacted, before it is
    serialised; the values under the keys in ``keep`` (hashes) are left whole."""
    if not _secrets:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: v if k in keep else redact_values(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_values(item, keep) for item in value]
    return value
