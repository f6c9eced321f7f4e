"""Tried as an attacker would, against what landed for sections 10-14: a pull-request
author, a hostile or broken server, a crafted plan file, a hostile live Project, the CI
job's environment. Each test is one attempt that got through before its fix, run
end to end where it can be (a real emulator or a hostile server on a real socket, a real
git repository, real zips).
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from reconciler.zips import MAX_ENTRIES, ZipError, read_code

# -- zips: a directory that lies about its size ----------------------------------------


def _zip_of(records: int, *, declared: int, name: bytes = b"a") -> bytes:
    """A zip of one empty stored entry whose central directory holds `records` copies of
    its record, behind an end record declaring `declared` entries."""
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0)
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0
    )
    directory = (central + name) * records
    end = struct.pack(
        "<4s4H2LH",
        b"PK\x05\x06",
        0,
        0,
        min(declared, 0xFFFF),
        min(declared, 0xFFFF),
        len(directory),
        len(local) + len(name),
        0,
    )
    return local + name + directory + end


def test_a_zip_whose_end_record_understates_its_directory_is_refused(tmp_path):
    # zipfile reads every record of the directory whatever the end record says: a zip
    # saying "1 entry" over a million records took 31 s and 600 MB before it was hashed.
    (tmp_path / "many.zip").write_bytes(_zip_of(MAX_ENTRIES + 1, declared=1))
    with pytest.raises(ZipError) as refused:
        read_code(str(tmp_path), "many.zip")
    assert str(refused.value) == (
        "many.zip holds more than 100,000 entries in its directory (its end record says 1), "
        "over the 100,000 a function's zip may hold"
    )
    # The same directory, honest and within the bound, is read (and its duplicate names
    # refused).
    (tmp_path / "fine.zip").write_bytes(_zip_of(3, declared=3))
    with pytest.raises(ZipError, match=r"^fine.zip holds two entries named 'a'$"):
        read_code(str(tmp_path), "fine.zip")


def test_many_entries_with_one_name_are_refused_in_linear_time(tmp_path):
    # Finding the duplicated name compared every name with every other: 100,000 entries
    # named alike took about 20 s (quadratic) before the refusal.
    (tmp_path / "same.zip").write_bytes(_zip_of(MAX_ENTRIES, declared=MAX_ENTRIES))
    script = (
        "from reconciler.zips import read_code, ZipError\n"
        "try:\n"
        f"    read_code({str(tmp_path)!r}, 'same.zip')\n"
        "except ZipError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=10
    )
    assert done.stdout == "same.zip holds two entries named 'a'\n"


def test_the_counting_reads_the_directory_zipfile_reads(tmp_path):
    # A zip behind a prefix (a self-extracting stub): zipfile finds its directory where
    # the end record says, shifted by the prefix; so does the count.
    (tmp_path / "prefixed.zip").write_bytes(
        b"#!stub\n" * 100 + _zip_of(MAX_ENTRIES + 1, declared=1)
    )
    with pytest.raises(ZipError, match=r"holds more than 100,000 entries in its directory"):
        read_code(str(tmp_path), "prefixed.zip")
