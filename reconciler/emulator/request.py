"""Reading one request: its body (size, JSON, nesting), its Host, the token form and
the PATCH /v1/project body; and HttpError, the answer to a bad one.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import parse_qs

MAX_BODY = 1 << 20
# A Zambda's zip: the client's limit is 250 MB; S3's single PUT allows 5 GB.
MAX_UPLOAD = 256 << 20
MAX_DEPTH = 64

Headers = list[tuple[str, str]]

_READ_ONLY = ("id", "sandbox", "fhirVersion")


class HttpError(Exception):
    """An error answer: status and message become `{"message","code"}`."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def check_patch(body: Any) -> dict[str, Any]:
    """Check a PATCH /v1/project body: the changes by API name, or HttpError 400.

    Role ids are only type-checked here; the store checks they are the Project's.
    """
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    problems = []
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key in _READ_ONLY:
            problems.append(f"{key} is read-only")
        elif key == "name":
            if isinstance(value, str) and value.strip():
                changes[key] = value
            else:
                problems.append("name must be a non-empty string")
        elif key == "description":
            if isinstance(value, str):
                changes[key] = value
            else:
                problems.append("description must be a string")
        elif key == "signupEnabled":
            if isinstance(value, bool):
                changes[key] = value
            else:
                problems.append("signupEnabled must be true or false")
        elif key in ("defaultPatientRoleId", "defaultSSOUserRoleId"):
            if value is None or (isinstance(value, str) and value):
                changes[key] = value
            else:
                problems.append(f"{key} must be a role id (string) or null")
        elif key in ("defaultPatientRole", "defaultSSOUserRole"):
            # The GET shape sent back to PATCH: a common mistake, name the fix.
            problems.append(f"unknown field {key!r} (PATCH takes {key}Id)")
        else:
            problems.append(f"unknown field {key!r}")
    if problems:
        raise HttpError(400, "; ".join(problems))
    return changes


def host_name(host: str) -> str:
    """The name of a Host header, without its port: `[::1]:80` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def read_body(environ: dict[str, Any], limit: int = MAX_BODY) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length > limit:
        raise HttpError(413, "request body too large")
    return environ["wsgi.input"].read(length) if length > 0 else b""


def json_body(environ: dict[str, Any], optional: bool = False) -> Any:
    raw = read_body(environ)
    if not raw.strip():
        if optional:
            return {}
        raise HttpError(400, "request body must be a JSON object")
    return _parse_json(raw)


def _parse_json(raw: bytes) -> Any:
    """A JSON body, or 400: not JSON, or nested deeper than MAX_DEPTH (never a 500)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise HttpError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError's text is position info only, never the body itself.
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    if _depth(value) > MAX_DEPTH:
        raise HttpError(400, f"request body is nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value (a scalar is 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def token_form(environ: dict[str, Any]) -> dict[str, Any]:
    """The token request's fields from a JSON or a form-encoded body."""
    raw = read_body(environ)
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded" or (
        content_type != "application/json" and not raw.lstrip().startswith(b"{")
    ):
        try:
            fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise HttpError(400, "form body is not UTF-8") from None
        return {key: values[-1] for key, values in fields.items()}
    body = _parse_json(raw)
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body
