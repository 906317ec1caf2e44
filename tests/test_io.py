"""Atomic writes: a failure inside the block leaves the previous file untouched."""

from __future__ import annotations

import os
import stat

import pytest

from nlpcal._io import staged, write_text_atomic


def test_failed_write_keeps_the_previous_copy_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="disk full"), staged(target) as tmp:
        with open(tmp, "w") as f:
            f.write("half-written")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_written_file_gets_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
