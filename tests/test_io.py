"""Atomic writes: a failure inside the block leaves the previous file untouched."""

from __future__ import annotations

import os
import re
import stat

import pytest

from nlpcal._io import check_safetensors, read_json, staged, staged_folder, write_text_atomic


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


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def previous(tmp_path):
    """A saved folder: weights in two shards, a calibrator, and a log that is no part of a save."""
    out = tmp_path / "out"
    (out / "calibrator").mkdir(parents=True)
    (out / "calibrator" / "calibrator.json").write_text("old")
    (out / "model-1-of-2.bin").write_text("old 1")
    (out / "model-2-of-2.bin").write_text("old 2")
    (out / "logs.txt").write_text("log")
    return out


def test_staged_folder_swaps_in_the_new_save_and_removes_stale_entries(previous):
    with staged_folder(previous, replaces=["model*.bin", "calibrator"]) as tmp:
        (tmp / "model.bin").write_text("new")
    assert tree(previous) == {"model.bin": b"new", "logs.txt": b"log"}
    assert [p.name for p in previous.parent.iterdir()] == ["out"]


def test_staged_folder_leaves_the_previous_save_when_the_block_fails(previous):
    before = tree(previous)
    with pytest.raises(RuntimeError, match="disk full"), staged_folder(previous) as tmp:
        (tmp / "model.bin").write_text("half")
        raise RuntimeError("disk full")
    assert tree(previous) == before
    assert [p.name for p in previous.parent.iterdir()] == ["out"]


def test_staged_folder_undoes_the_swap_when_a_rename_fails(previous, monkeypatch):
    before = tree(previous)
    calls = []

    def replace(source, target):
        calls.append(source)
        if len(calls) == 4:  # after the new calibrator and weights are in, before stale shards go
            raise PermissionError("read-only")
        os.rename(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with (
        pytest.raises(PermissionError, match="read-only"),
        staged_folder(previous, replaces=["model*.bin"]) as tmp,
    ):
        (tmp / "calibrator").mkdir()
        (tmp / "calibrator" / "calibrator.json").write_text("new")
        (tmp / "model.bin").write_text("new")
    monkeypatch.undo()
    assert len(calls) == 7  # three renames, the failing one, three undone
    assert tree(previous) == before
    assert [p.name for p in previous.parent.iterdir()] == ["out"]


def test_read_json_names_the_file_and_what_it_lacks(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"loss": ')
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} is corrupted: not valid JSON"):
        read_json(path, required=["loss"])
    path.write_text('{"calibrator": null}')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} lacks the keys \['loss'\]"):
        read_json(path, required=["loss", "calibrator"])
    path.write_text('{"loss": "ova"}')
    assert read_json(path, required=["loss"]) == {"loss": "ova"}


def test_check_safetensors_catches_a_truncated_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(100)}, str(path))
    check_safetensors(path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} is corrupted or truncated"):
        check_safetensors(path)
