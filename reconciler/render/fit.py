"""Fitting a comment into GitHub's limit: summarise the largest sections first.

A comment is a head (marker, heading, the counts table: never summarised), its
sections, and a footer. Each :class:`Section` carries its renderings from the
fullest to the shortest (a table of objects with their fields; their names only;
their counts only). Parts a section must always show (a Project's heading, its
errors, its deletes) are in every rendering. :func:`fit` steps the largest section
down one rendering at a time, all sections to names before any to counts, until the
whole fits; only then, as a last resort, does it drop whole sections and table
rows from the end, with a visible notice. The marker stays first whatever happens.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler.escape import plural


@dataclass
class Section:
    """One part of a comment, as renderings from the fullest to the most summarised."""

    levels: Sequence[str]
    level: int = field(default=0)

    @property
    def text(self) -> str:
        return self.levels[self.level]


def _size(lines: Sequence[str]) -> int:
    """The length of the lines joined with newlines, with a final newline."""
    return sum(map(len, lines)) + len(lines)


def fit(
    head: Sequence[str],
    rows: Sequence[str],
    sections: Sequence[Section],
    footer: Sequence[str],
    limit: int,
    *,
    summarised: str = "",
    full: str = "",
) -> str:
    """The comment, at most ``limit`` characters. ``summarised`` is the notice shown
    when any section was stepped down; ``full`` says where the whole plan is (it ends
    the truncation notice too)."""
    notice = [f"> {summarised} {full}".rstrip(), ""] if summarised else []

    def total() -> int:
        return (
            _size(head) + _size(rows) + 1 + sum(len(s.text) + 1 for s in sections) + _size(footer)
        )

    size = total()
    if size <= limit:
        return _join(head, rows, [], sections, footer)
    size += _size(notice)
    deepest = max((len(s.levels) - 1 for s in sections), default=0)
    for target in range(1, deepest + 1):
        # Largest first; a section stepped down is pushed back only for the next round.
        heap = [
            (-len(s.text), i) for i, s in enumerate(sections) if s.level < target < len(s.levels)
        ]
        heapq.heapify(heap)
        while heap and size > limit:
            _, index = heapq.heappop(heap)
            section = sections[index]
            before = len(section.text)
            section.level = target
            size += len(section.text) - before
        if size <= limit:
            return _join(head, rows, notice, sections, footer)
    return _truncated(head, rows, notice, sections, footer, limit, full)


def _truncated(
    head: Sequence[str],
    rows: Sequence[str],
    notice: Sequence[str],
    sections: Sequence[Section],
    footer: Sequence[str],
    limit: int,
    full: str,
) -> str:
    """The last resort: drop sections, then table rows, from the end, saying so."""

    def attempt(rows_kept: int, sections_kept: int) -> str:
        left_rows, left_sections = len(rows) - rows_kept, len(sections) - sections_kept
        said = (
            f"> **Truncated** to fit a comment: {plural(left_rows, 'more table row')} and "
            f"{plural(left_sections, 'more section')} are not shown. {full}".rstrip()
        )
        return _join(head, rows[:rows_kept], [said, "", *notice], sections[:sections_kept], footer)

    rows_kept, sections_kept = len(rows), len(sections)
    text = attempt(rows_kept, sections_kept)
    while sections_kept and len(text) > limit:
        sections_kept = max(0, sections_kept - max(1, sections_kept // 8))
        text = attempt(rows_kept, sections_kept)
    while rows_kept and len(text) > limit:
        rows_kept = max(0, rows_kept - max(1, rows_kept // 8))
        text = attempt(rows_kept, sections_kept)
    return text[:limit]


def _join(
    head: Sequence[str],
    rows: Sequence[str],
    notice: Sequence[str],
    sections: Sequence[Section],
    footer: Sequence[str],
) -> str:
    lines = [*head, *rows, "", *notice, *(s.text for s in sections), *footer]
    return "\n".join(lines) + "\n"
