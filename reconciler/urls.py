"""Where the Oystehr Project API and its token endpoint are, unless told otherwise, and
the checks a URL passes before anything is sent to it.

A module of its own so that the command line's options can show the defaults without
importing the HTTP client (start-up time: `reconciler --help` and `validate` never
touch the network); what it imports, the command line has already imported.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from reconciler.errors import ConfigError, ShapeError
from reconciler.escape import add_secrets, without_userinfo

DEFAULT_API_URL = "https://project-api.zapehr.com/v1"
DEFAULT_AUTH_URL = "https://auth.zapehr.com/oauth/token"
AUDIENCE = "https://api.zapehr.com"


def check_url(url: str, what: str) -> str:
    """`url` when it is https:// (or http:// to this machine) without user:pass@."""
    shown = without_userinfo(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"{what} {shown!r} must start with https:// (or http:// for loopback), "
            "like https://project-api.zapehr.com/v1"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            f"{what} must not hold credentials (user:pass@): give them in the environment "
            "(OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID and OYSTEHR_CLIENT_SECRET)"
        )
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(
            f"{what} {shown} must use https://: plain http:// is only for loopback "
            "(localhost, 127.0.0.0/8, ::1), so a token never crosses a network in the clear"
        )
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def check_upload_url(url: str, api_url: str, what: str) -> None:
    """A signed URL code may be sent to: https (plain http only to this machine, while the
    API itself is on it: the emulator), no user:pass@. The message never holds the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is not None and host and "@" not in parts.netloc:
        if parts.scheme == "https":
            return
        if (
            parts.scheme == "http"
            and _loopback(host)
            and _loopback(urlsplit(api_url).hostname or "")
        ):
            return
    raise ShapeError(
        f"{what}: the signed URL is not https:// (plain http:// only while the API is on "
        "this machine); nothing was uploaded"
    )


def hide_signed_url(url: str) -> None:
    """A signed URL's credential joins the redaction set: each long query value (an S3
    signature, credential or session token) and a long last path segment (the
    emulator's token), so the URL, or any part of it quoted alone, shows them as ***;
    the whole URL when it has neither. (Its host and path say nothing secret, and a
    short set keeps every later redaction fast: a plan may upload hundreds.)"""
    parts = urlsplit(url)
    pieces = [value for _, _, value in (p.partition("=") for p in parts.query.split("&"))]
    pieces.append(parts.path.rsplit("/", 1)[-1])
    secret = [piece for piece in pieces if len(piece) >= 16]
    add_secrets(secret or [url])


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
