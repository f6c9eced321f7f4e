"""A minimal GitHub REST client: the handful of endpoints the workflows use.

The token comes from `GITHUB_TOKEN` (the job's `github.token`), the API base from
`GITHUB_API_URL` (set by the runner, so GitHub Enterprise Server works too). The
token is a credential like the Project ones: one holding whitespace or a control
character is refused at start, naming the variable, and no form of it (plain,
`repr`, JSON) is ever printed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from reconciler import __version__
from reconciler.credentials import check_credentials
from reconciler.errors import ApiError, CredentialsError, TransportError
from reconciler.escape import add_secrets

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
TOKEN_VARIABLE = "GITHUB_TOKEN"


class GitHubApi:
    """GitHub's REST API with one token. `transport` is swappable like httpx's own, so a
    test may hand in a mock; the tests here use a real local server instead."""

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_API_URL,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._token = token
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": f"reconciler/{__version__}",
            },
        )

    def __repr__(self) -> str:
        return f"GitHubApi({self.base_url!r})"  # never the token

    def __enter__(self) -> GitHubApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send one request and return its JSON, or raise ApiError/TransportError."""
        return self._send(method, url, **kwargs)[1]

    def paginate(
        self, url: str, params: dict[str, Any] | None = None, *, key: str | None = None
    ) -> Iterator[Any]:
        """Yield every item of a list endpoint, following `Link: <…>; rel="next"`. `key`
        names the list inside an object answer (`workflow_runs`, `jobs`)."""
        next_url: str | None = url
        while next_url is not None:
            response, answer = self._send("GET", next_url, params=params)
            items = answer.get(key) if key is not None and isinstance(answer, dict) else answer
            if not isinstance(items, list):
                expected = f"an object with a {key!r} list" if key else "a JSON list"
                raise TransportError(f"GitHub API GET {urlsplit(url).path}: expected {expected}")
            yield from items
            # The next link already carries the query string.
            params = None
            next_url = response.links.get("next", {}).get("url")
            if next_url is not None:
                self._check_same_origin(next_url)

    def _send(self, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, Any]:
        """One request: (response, its JSON) on success, our errors otherwise."""
        where = f"GitHub API {method} {urlsplit(url).path or url}"
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(self._redact(f"{where}: {exc}")) from None
        log.debug("%s -> %s", where, response.status_code)
        if response.is_success:
            try:
                return response, response.json()
            except ValueError:
                raise TransportError(f"{where}: the answer is not JSON") from None
        raise ApiError(
            self._redact(f"{where}: {response.status_code} {error_message(response)}"),
            status=response.status_code,
        )

    def _check_same_origin(self, url: str) -> None:
        # The Authorization header goes with every request this client sends:
        # refuse to follow a pagination link to any other host.
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        if (ours.scheme, ours.netloc) != (theirs.scheme, theirs.netloc):
            raise TransportError(f"GitHub API: refusing to follow a page link to {theirs.netloc}")

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


def error_message(response: httpx.Response) -> str:
    """GitHub's own words: `message`, plus the `errors` detail of a 422."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "error"
    if not isinstance(body, dict):
        return response.reason_phrase or "error"
    message = str(body.get("message") or response.reason_phrase or "error")
    details = [
        str(error.get("message") or error.get("code"))
        for error in body.get("errors") or []
        if isinstance(error, dict) and (error.get("message") or error.get("code"))
    ]
    if details:
        message += f" ({'; '.join(details)})"
    if response.status_code == 403 and "not accessible by integration" in message:
        message += " - does the job grant the permission this needs?"
    return message


def segment(value: str, safe: str = "") -> str:
    """A URL path segment built from a name or a sha: percent-encoded, so it can never
    become another path (`safe="/"` for a branch name, which may hold slashes)."""
    return quote(value, safe=safe)


def api_from_env(env: Mapping[str, str]) -> GitHubApi:
    """The client a workflow step means: GITHUB_TOKEN, at GITHUB_API_URL."""
    token = env.get(TOKEN_VARIABLE, "")
    if not token:
        raise CredentialsError(
            f"{TOKEN_VARIABLE} is not set (in a workflow: env: "
            f"{TOKEN_VARIABLE}: ${{{{ github.token }}}})"
        )
    check_credentials([TOKEN_VARIABLE], env)
    add_secrets([token])
    return GitHubApi(token, env.get("GITHUB_API_URL") or DEFAULT_API_URL)


def branch_tip(api: GitHubApi, repo: str, branch: str) -> str:
    """The commit `branch` points at now."""
    ref = api.request("GET", f"/repos/{repo}/git/ref/heads/{segment(branch, safe='/')}")
    sha = (ref.get("object") or {}).get("sha") if isinstance(ref, dict) else None
    if not isinstance(sha, str):
        raise TransportError(f"GitHub API: refs/heads/{branch} has no commit")
    return sha
