"""Markdown as GitHub shows it, for tests: rendered by cmark-gfm (GitHub's own parser,
with its table, autolink and raw-HTML rules), then read back as HTML.

GitHub turns `@user`, `@org/team`, `#123`, `GH-1` and `owner/repo#1` into mentions
and references after parsing, in every text node outside `code`, `pre` and `a`
elements; `Rendered.pings()` finds what it would act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

import cmarkgfm
from cmarkgfm.cmark import Options

# What GitHub acts on in text: mentions, references, and anything link-like.
PINGS = re.compile(
    r"@[A-Za-z0-9]"  # @user, @org/team (and an email's @)
    r"|#\d"  # #123, owner/repo#1
    r"|\bGH-\d"  # GH-1
    r"|[A-Za-z][A-Za-z0-9+.-]*://"  # https://…
    r"|\bwww\.",  # www.…
    re.IGNORECASE,
)


def render(markdown: str) -> Rendered:
    html = cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE)
    parsed = Rendered(html)
    parsed.feed(html)
    parsed.close()
    return parsed


@dataclass
class Cell:
    tag: str
    text: str = ""


class Rendered(HTMLParser):
    """The rendered HTML: its text outside code (what GitHub links), the text of each
    code element, the links cmark made, and the tables as rows of cells."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.outside: list[str] = []
        self.codes: list[str] = []
        self.links: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.tags: dict[str, int] = {}
        self._code_depth = 0
        self._code: list[str] = []
        self._cell: Cell | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag in ("code", "pre"):
            self._code_depth += 1
            self._code = []
        elif tag == "a":
            self.links.append(dict(attrs).get("href") or "")
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = Cell(tag)
        elif tag == "br" and self._cell is not None:
            self._cell.text += "\n"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("code", "pre"):
            self._code_depth -= 1
            self.codes.append("".join(self._code))
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(self._cell.text)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._code_depth:
            self._code.append(data)
        else:
            self.outside.append(data)
        if self._cell is not None:
            self._cell.text += data

    def pings(self) -> list[str]:
        """Every mention, reference or link pattern in text GitHub would act on."""
        return [m.group() for text in self.outside for m in PINGS.finditer(text)] + self.links
