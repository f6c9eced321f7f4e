"""Zambda zips on disk: opened safely, bounded, and reduced to their code hash.

The code hash is what a function's code *is*, without state and without build noise:
the SHA-256 over the zip's entries sorted by name (UTF-8), each as its name, a NUL
byte and the SHA-256 of its uncompressed bytes. Timestamps, compression levels and
entry order do not count, so rebuilding the same code changes nothing.

A zip is a build output in the repository, and a pull request decides what is there:
so it is opened component by component without following any symlink (O_NOFOLLOW),
must be a regular file, and both it and its total uncompressed size (from its
directory, read before anything is decompressed) must be at most 250 MB; reading
stops at each entry's declared size and its CRC is checked. Anything else — missing,
a link, a folder, corrupt, encrypted, a zip bomb — is one line (:class:`ZipError`).

Apply uploads a *private copy*: :class:`PrivateCopies` copies each zip once (into
memory, or a folder only this process can read), hashes the copy, and later hands out
its bytes, hashed again, so what is uploaded is what was checked whatever happens to
the repository's file meanwhile.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import shutil
import stat
import struct
import tempfile
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from reconciler.errors import ReconcilerError

MB = 2**20
MAX_ZIP_BYTES = 250 * MB
MAX_UNCOMPRESSED_BYTES = 250 * MB
MAX_ENTRIES = 100_000
# Checked copies are kept in memory up to this much in all; past it, in private files.
MEMORY_COPY_BYTES = 512 * MB
# Uploads of copies kept in files read them back while they are sent: at most this
# much at once (and always at least one zip, however large).
UPLOAD_MEMORY_BYTES = 512 * MB
_CHUNK = MB

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open


class ZipError(ReconcilerError):
    """A zip that cannot be a function's code; the message says why, in one line."""


@dataclass(frozen=True)
class Code:
    """A zip's code hash and where it is (repository-relative)."""

    path: str
    hash: str


def read_code(root: str, relative: str) -> Code:
    """The code hash of the zip at `relative` (under the repository `root`)."""
    with open_zip(root, relative) as handle:
        return Code(relative, code_hash(handle, relative))


@contextmanager
def open_zip(root: str, relative: str) -> Iterator[BinaryIO]:
    """The zip as a file object: a regular file reached through no symlink, at most
    MAX_ZIP_BYTES."""
    fd = _open_regular(root, relative)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_ZIP_BYTES:
            raise ZipError(
                f"{relative} is {size / MB:,.1f} MB, over the {MAX_ZIP_BYTES // MB} MB a "
                "function's zip may be"
            )
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def code_hash(handle: BinaryIO, what: str) -> str:
    """The code hash of an open zip (see the module docstring)."""
    _check_entry_count(handle, what)
    try:
        with zipfile.ZipFile(handle) as archive:
            entries = archive.infolist()
            total = sum(entry.file_size for entry in entries)
            if total > MAX_UNCOMPRESSED_BYTES:
                raise ZipError(
                    f"{what} unpacks to {total / MB:,.1f} MB, over the "
                    f"{MAX_UNCOMPRESSED_BYTES // MB} MB a function's code may be (a zip bomb?)"
                )
            twice = sorted(
                name for name, n in Counter(e.filename for e in entries).items() if n > 1
            )
            if twice:
                raise ZipError(f"{what} holds two entries named {twice[0]!r}")
            outer = hashlib.sha256()
            for entry in sorted(entries, key=lambda e: e.filename.encode("utf-8")):
                inner = hashlib.sha256()
                with archive.open(entry) as data:
                    while chunk := data.read(_CHUNK):
                        inner.update(chunk)
                outer.update(entry.filename.encode("utf-8") + b"\x00" + inner.digest())
            return outer.hexdigest()
    except ZipError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise ZipError(f"{what} is not a valid zip ({exc})") from None
    except RuntimeError as exc:  # an encrypted entry
        raise ZipError(f"{what} cannot be read ({exc})") from None
    except NotImplementedError as exc:  # a compression method zipfile lacks
        raise ZipError(f"{what} cannot be read ({exc})") from None
    except OSError as exc:
        raise ZipError(f"{what} cannot be read ({exc.strerror or exc})") from None


def _check_entry_count(handle: BinaryIO, what: str) -> None:
    """Refuse a zip of more than MAX_ENTRIES entries before zipfile reads its directory
    (it would hold every entry in memory): as its end records declare them, and as its
    directory holds them. zipfile reads every record of the directory's bytes whatever
    the count says, so a directory of millions of records behind an end record saying
    "1" is counted too (from the directory's signatures, a chunk at a time)."""
    declared = _declared_entries(handle)
    if declared > MAX_ENTRIES:
        raise ZipError(
            f"{what} lists {declared:,} entries, over the {MAX_ENTRIES:,} a function's zip may hold"
        )
    if _directory_records(handle) > MAX_ENTRIES:
        raise ZipError(
            f"{what} holds more than {MAX_ENTRIES:,} entries in its directory (its end record "
            f"says {declared:,}), over the {MAX_ENTRIES:,} a function's zip may hold"
        )
    handle.seek(0)


def _declared_entries(handle: BinaryIO) -> int:
    """The entry count the end records give (0 when there are none: zipfile says what is
    wrong)."""
    size = handle.seek(0, io.SEEK_END)
    tail_start = max(0, size - (22 + 65535))
    handle.seek(tail_start)
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return 0
    (count,) = struct.unpack("<H", tail[at + 10 : at + 12])
    if count == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
        (offset,) = struct.unpack("<Q", tail[at - 12 : at - 4])
        if offset + 40 <= size:
            handle.seek(offset)
            record = handle.read(40)
            if record[:4] == b"PK\x06\x06":
                (count,) = struct.unpack("<Q", record[32:40])
    return count


_CENTRAL_RECORD = b"PK\x01\x02"


def _directory_records(handle: BinaryIO) -> int:
    """How many records the central directory zipfile will read holds (at most one more
    than MAX_ENTRIES is counted): the signatures in the bytes it reads, found with
    zipfile's own reading of the end records. 0 when zipfile will refuse the zip."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # a Python without it: the declared count stands alone
        return 0
    handle.seek(0)
    try:
        end = end_record(handle)
    except (OSError, zipfile.BadZipFile, struct.error):
        return 0
    if not end:
        return 0
    size = end[zipfile._ECD_SIZE]
    start = end[zipfile._ECD_LOCATION] - size  # where zipfile starts reading, as it does
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if start < 0 or size <= 0:
        return 0
    handle.seek(start)
    found, left, carry = 0, size, b""
    while left > 0 and found <= MAX_ENTRIES:
        chunk = handle.read(min(_CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        window = carry + chunk  # a signature across two chunks is counted once
        found += window.count(_CENTRAL_RECORD)
        carry = window[-(len(_CENTRAL_RECORD) - 1) :]
    return found


def _open_regular(root: str, relative: str) -> int:
    """A descriptor of `root/relative`, opened one component at a time with O_NOFOLLOW
    (no symlink anywhere below the root), and only when it is a regular file."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts:
        raise ZipError(f"{relative!r} names no file")
    try:
        if os.open in os.supports_dir_fd and _NOFOLLOW:
            fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
            try:
                folder = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
                for part in parts[:-1]:
                    inner = os.open(part, folder, dir_fd=fd)
                    os.close(fd)
                    fd = inner
                flags = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK
                found = os.open(parts[-1], flags, dir_fd=fd)
            finally:
                os.close(fd)
        else:  # no openat: check each component, then open
            at = root
            for part in parts:
                at = os.path.join(at, part)
                if os.path.islink(at):
                    raise OSError(errno.ELOOP, "a symbolic link")
            found = os.open(at, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ZipError(_open_problem(relative, exc)) from None
    mode = os.fstat(found).st_mode
    if not stat.S_ISREG(mode):
        os.close(found)
        raise ZipError(f"{relative} is not a regular file (a zip must be one)")
    if _NONBLOCK:
        os.set_blocking(found, True)
    return found


def _open_problem(relative: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return (
            f"{relative} does not exist: zips are build outputs, so build them before "
            "planning (in CI: the action's build input, in the plan job, whose artifact "
            "carries them to apply)"
        )
    if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
        return (
            f"{relative}: refused: the path goes through a symbolic link or a non-folder "
            "(a zip must be a regular file inside the repository, reached through no link)"
        )
    if exc.errno == errno.EISDIR:
        return f"{relative} is not a regular file (a zip must be one)"
    return f"cannot open {relative}: {(exc.strerror or str(exc)).lower()}"


class PrivateCopies:
    """The zips an apply uploads, each copied once, checked against the code hash the
    plan says, and handed out later hashed again.

    A copy is kept in memory while the copies held so far stay under
    MEMORY_COPY_BYTES (the usual case: a read, a hash, nothing written), else in a file
    of a folder only this process may read, read back at upload within the upload
    memory budget. Use as a context manager: the folder is removed at the end.
    """

    def __init__(self) -> None:
        self._folder: str | None = None
        # (repository root, zip path) -> (its copy: bytes, or a file's path; its code hash;
        # the SHA-256 of its bytes, which an upload checks again)
        self._copies: dict[tuple[str, str], tuple[bytes | str, str, str]] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._in_memory = 0
        self._memory = threading.Condition()
        self._held = 0

    def __enter__(self) -> PrivateCopies:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def take(self, root: str, relative: str) -> str:
        """Copy the zip (once); its code hash."""
        with self._lock:
            known = self._copies.get((root, relative))
        if known is None:
            known = self._copy(root, relative)
            with self._lock:
                known = self._copies.setdefault((root, relative), known)
        return known[1]

    def check(self, root: str, relative: str, expected: str) -> None:
        """Copy the zip (once) and refuse unless its code hash is `expected`."""
        code = self.take(root, relative)
        if code != expected:
            raise ZipError(
                f"{relative} holds code {code[:8]}…, not the {expected[:8]}… the plan was "
                "made with: apply uploads only the code that was planned (build the same "
                "code, or plan again)"
            )

    def _copy(self, root: str, relative: str) -> tuple[bytes | str, str, str]:
        with open_zip(root, relative) as source:
            size = os.fstat(source.fileno()).st_size
            with self._lock:
                keep = self._in_memory + size <= MEMORY_COPY_BYTES
                if keep:
                    self._in_memory += size
                elif self._folder is None:
                    self._folder = tempfile.mkdtemp(prefix="reconciler-zips-")  # mode 0700
                number = next(self._numbers)
            if keep:
                data = source.read(MAX_ZIP_BYTES + 1)
                if len(data) > MAX_ZIP_BYTES:
                    raise ZipError(f"{relative} grew past {MAX_ZIP_BYTES // MB} MB as it was read")
                code = code_hash(io.BytesIO(data), relative)
                return data, code, hashlib.sha256(data).hexdigest()
            copy = os.path.join(self._folder or "", f"{number}.zip")
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as target:
                copied, digest = _copy_bounded(source, target)
        if copied > MAX_ZIP_BYTES:
            raise ZipError(f"{relative} grew past {MAX_ZIP_BYTES // MB} MB as it was read")
        with open(copy, "rb") as handle:
            return copy, code_hash(handle, relative), digest

    @contextmanager
    def bytes_of(self, root: str, relative: str, expected: str) -> Iterator[bytes]:
        """The checked copy's bytes, hashed again: the SHA-256 of the very bytes that are
        sent must be that of the bytes whose code hash was `expected` (a copy on disk is
        read back within the upload memory budget)."""
        with self._lock:
            copy, code, digest = self._copies[(root, relative)]
        size = len(copy) if isinstance(copy, bytes) else os.path.getsize(copy)
        if isinstance(copy, bytes):
            size = 0  # held already
        with self._memory:
            self._memory.wait_for(
                lambda: self._held == 0 or self._held + size <= UPLOAD_MEMORY_BYTES
            )
            self._held += size
        try:
            if isinstance(copy, bytes):
                data = copy
            else:
                with open(copy, "rb") as handle:
                    data = handle.read()
            if code != expected or hashlib.sha256(data).hexdigest() != digest:
                raise ZipError(f"the private copy of {relative} changed: nothing was uploaded")
            yield data
        finally:
            with self._memory:
                self._held -= size
                self._memory.notify_all()


def _copy_bounded(source: BinaryIO, target: BinaryIO) -> tuple[int, str]:
    """(bytes copied, their SHA-256), stopping just past MAX_ZIP_BYTES."""
    copied, digest = 0, hashlib.sha256()
    while copied <= MAX_ZIP_BYTES and (chunk := source.read(_CHUNK)):
        target.write(chunk)
        digest.update(chunk)
        copied += len(chunk)
    return copied, digest.hexdigest()
