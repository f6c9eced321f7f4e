"""The GitHub half of the GitOps workflow, one module per concern:

    api.py        a minimal GitHub REST client (GITHUB_TOKEN, GITHUB_API_URL)
    comments.py   the sticky plan comment and the drift issue
    guard.py      the merge guard: the last apply, the merged pull requests, the verdict
    explain.py    which changes of a plan the project files explain
    revision.py   the Projects of one commit, read from git's objects
    history.py    git: commits, ancestry, trees and blobs
    cli.py        `reconciler github comment | drift-issue | guard | check-tip`

The workflows in `.github/workflows/` call these commands instead of carrying the
logic in `actions/github-script` steps, so the parts that decide "update or
create", "which comment is ours", "open, update or close the drift issue" and
"was this reviewed" are ordinary Python, tested against a local fake of the GitHub
REST API and real git repositories (`tests/test_github.py`, `tests/test_guard.py`).
"""

from reconciler.github.cli import github

__all__ = ["github"]
