"""The digest of a plan: what would change, in a form a later run can compare.

The plan comment of a pull request carries, right after its marker,

    <!-- reconciler-digest v1 sha256:HEX ENTRIES -->

where ENTRIES is base64 of the gzipped JSON list of entries (sorted, compact)
and HEX the sha256 of that JSON. An entry says what would change and to what,
never from what: per Project change `{projectId, field, after}`, per object
`{projectId, kind, name, action, after: {field: after, ...}}`. Leaving the
before-values out lets a plan made after another pull request merged still
match the reviewed one.

On a merge the guard (`reconciler github guard`) takes the union of the digests
of the pull requests merged since the last deployment: every entry of the
merge-time plan must be in it. Pure: data in, data out. `parse_digest` reads
comment bodies anyone can write, so it bounds every size and answers None
rather than raising.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

DIGEST_VERSION = "v1"
# A digest larger than this (decompressed JSON) is not ours: refuse it.
MAX_DIGEST_JSON = 8 * 1024 * 1024
# GitHub's comment limit bounds the encoded part anyway; this bounds the regex.
MAX_DIGEST_ENCODED = 70_000

_DIGEST = re.compile(
    r"<!-- reconciler-digest v1 sha256:([0-9a-f]{64}) "
    rf"([A-Za-z0-9+/=]{{0,{MAX_DIGEST_ENCODED}}}) -->"
)

Entry = dict[str, Any]


def digest_entries(plan_doc: Mapping[str, Any]) -> list[Entry]:
    """The sorted entries of a plan document (`Plan.to_dict()`, format 1 or 2)."""
    entries: list[Entry] = []
    for project in plan_doc.get("projects") or ():
        project_id = project.get("projectId")
        for change in project.get("changes") or ():
            entries.append(
                {"projectId": project_id, "field": change["field"], "after": change["after"]}
            )
        for obj in project.get("objects") or ():
            entries.append(
                {
                    "projectId": project_id,
                    "kind": obj.get("kind"),
                    "name": obj.get("name"),
                    "action": obj.get("action"),
                    "after": {c["field"]: c["after"] for c in obj.get("changes") or ()},
                }
            )
    return sorted(entries, key=entry_key)


def entry_key(entry: Entry) -> str:
    """An entry as one canonical string: equal entries, equal keys."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _entries_json(entries: Iterable[Entry]) -> bytes:
    return ("[" + ",".join(sorted(entry_key(e) for e in entries)) + "]").encode("ascii")


def digest_comment(plan_doc: Mapping[str, Any]) -> str:
    """The hidden comment that carries the plan's digest (deterministic for a plan)."""
    data = _entries_json(digest_entries(plan_doc))
    encoded = base64.b64encode(gzip.compress(data, mtime=0)).decode("ascii")
    hex_digest = hashlib.sha256(data).hexdigest()
    return f"<!-- reconciler-digest {DIGEST_VERSION} sha256:{hex_digest} {encoded} -->"


def find_digest_comment(body: str) -> str | None:
    """The digest comment inside a body, as text, or None."""
    match = _DIGEST.search(body or "")
    return match[0] if match else None


def parse_digest(body: Any) -> list[Entry] | None:
    """The entries of the first digest in a comment body; None when there is none or it
    does not hold together (bad base64, bad gzip, too large, checksum, shape)."""
    if not isinstance(body, str):
        return None
    match = _DIGEST.search(body)
    if match is None:
        return None
    try:
        compressed = base64.b64decode(match[2], validate=True)
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        data = inflater.decompress(compressed, MAX_DIGEST_JSON)
        if inflater.unconsumed_tail or not inflater.eof:
            return None
        if hashlib.sha256(data).hexdigest() != match[1]:
            return None
        entries = json.loads(data)
    except (binascii.Error, zlib.error, ValueError, RecursionError):
        return None
    if not isinstance(entries, list) or not all(_is_entry(e) for e in entries):
        return None
    return entries


def _is_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("projectId"), str):
        return False
    if set(entry) == {"projectId", "field", "after"}:
        return isinstance(entry["field"], str)
    if set(entry) == {"projectId", "kind", "name", "action", "after"}:
        return isinstance(entry["after"], dict)
    return False


def entries_outside(entries: Iterable[Entry], reviewed: Iterable[Entry]) -> list[Entry]:
    """The entries not in `reviewed` (the union of the reviewed digests), in order."""
    allowed = {entry_key(e) for e in reviewed}
    return [e for e in entries if entry_key(e) not in allowed]


def describe_entry(entry: Entry) -> str:
    """One line a person reads: `PROJECT: field = VALUE` or `PROJECT: create role "NAME" {…}`.

    Values are JSON with every non-ASCII character escaped, so nothing from a file
    reaches a terminal or a log raw."""

    def show(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=True)

    def bare(value: Any) -> str:
        return show(value).strip('"')

    where = bare(entry["projectId"])
    if "field" in entry:
        return f"{where}: {bare(entry['field'])} = {show(entry['after'])}"
    what = f"{bare(entry['action'])} {bare(entry['kind'])} {show(entry['name'])}"
    return f"{where}: {what} {show(entry['after'])}"
