"""A Zambda function's code at apply: the zips a plan uploads, checked before any write,
and the upload of one function's checked copy.

Apply uploads exactly the code that was planned, and never builds: `code_copies`
makes a private copy of every zip the plan uploads and checks it holds the code hash
the plan holds, refusing the whole apply otherwise; `upload_code` sends a copy's
bytes (hashed again as they are read) to the URL s3-upload signs. The applier
(``apply.py``) checks the function's code afterwards.
"""

from __future__ import annotations

from typing import Any

from reconciler.client import ProjectApi
from reconciler.errors import RefusedError
from reconciler.includes import RepositoryRoots
from reconciler.kinds import BY_NAME
from reconciler.plan import ObjectChange, Plan, ProjectPlan
from reconciler.zambdas import CODE, ZIP, file_name
from reconciler.zips import PrivateCopies, ZipError


def code_copies(
    plan: Plan, roots: RepositoryRoots, copies: PrivateCopies | None = None
) -> PrivateCopies | None:
    """Private copies of the zips the plan uploads (in `copies`, which may hold some
    already: what this run's plan read), each checked against the code hash the plan
    holds; None when it uploads none. Any zip that is missing, unsafe or holds other code
    refuses the whole apply, naming each, before any write: apply uploads exactly the
    code that was planned, and never builds."""
    uploads = [
        (project, change)
        for project in plan.changed
        for change in project.objects
        if change.extras.get(ZIP) and change.change_of(CODE) is not None
    ]
    if not uploads:
        return None
    from concurrent.futures import ThreadPoolExecutor

    copies = copies if copies is not None else PrivateCopies()

    def check(project: ProjectPlan, change: ObjectChange) -> str | None:
        try:
            root = roots.of(project.file)
            copies.check(root, change.extras[ZIP], change.change_of(CODE).after)
        except ZipError as exc:
            return f"{project.file}: {change.kind} {change.name!r}: {exc}"
        return None

    # Reading and hashing is mostly I/O and C code (zlib, hashlib): a few threads help.
    with ThreadPoolExecutor(max_workers=min(8, len(uploads))) as pool:
        problems = [why for why in pool.map(lambda pair: check(*pair), uploads) if why]
    if problems:
        raise RefusedError("; ".join(problems) + "; nothing was applied")
    return copies


def upload_code(
    api: ProjectApi,
    credentials: Any,
    project: ProjectPlan,
    object_id: str,
    change: ObjectChange,
    copies: PrivateCopies | None,
    roots: RepositoryRoots,
) -> dict:
    """A function's `code` phase: s3-upload, then a PUT of the checked private copy's
    bytes (hashed again) to the signed URL; the function as a GET answers after it."""
    if copies is None:
        raise RefusedError("its zip was not checked before the apply; nothing was uploaded")
    kind = BY_NAME[change.kind]
    code_hash = change.change_of(CODE).after
    pid = project.project_id
    with copies.bytes_of(roots.of(project.file), change.extras[ZIP], code_hash) as data:
        url = api.start_upload(kind, pid, credentials, object_id, file_name(code_hash))
        api.put_upload(url, data)
    return api.get_object(kind, pid, credentials, object_id)
