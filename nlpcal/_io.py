"""Safe file I/O: a failed save never destroys the previous copy, a damaged file is named.

:func:`staged` and :func:`write_text_atomic` replace one file atomically; :func:`staged_folder`
swaps in the files of a whole save at once. :func:`read_json` and :func:`check_safetensors` turn
a truncated or corrupted file into a ``ValueError`` that names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_safetensors", "read_json", "staged", "staged_folder", "write_text_atomic"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The file gets the permissions a plain ``open(path, "w")`` would give. Nested stages rename
    innermost first, and only after every block body has succeeded.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    with staged(path) as tmp:
        Path(tmp).write_text(text)


@contextlib.contextmanager
def staged_folder(directory: str | os.PathLike, replaces: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty folder beside ``directory``; move what the block wrote into ``directory``.

    Only once the block has succeeded, each entry (file or folder) written into the yielded
    folder replaces the entry of the same name in ``directory``, and entries of ``directory``
    that match a glob pattern of ``replaces`` but were not written again are removed (e.g. the
    weight shards of an older, larger save). Nothing else in ``directory`` is touched. If the
    block or a rename fails, ``directory`` is left as it was. The temporary folder is a sibling
    of ``directory``, so that every move is a rename within one filesystem, and is always removed.

    >>> with tempfile.TemporaryDirectory() as root:
    ...     with staged_folder(Path(root) / "model") as tmp:
    ...         _ = (tmp / "weights.bin").write_text("new")
    ...     sorted(p.name for p in Path(root).rglob("*"))
    ['model', 'weights.bin']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        new, old = tmp / "new", tmp / "old"
        new.mkdir()
        old.mkdir()
        yield new
        _swap_in(new, directory, old, replaces)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, directory: Path, old: Path, replaces: Sequence[str]) -> None:
    """Move ``new``'s entries into ``directory``, the replaced ones into ``old``; undo on error."""
    names = sorted(p.name for p in new.iterdir())
    stale = {p.name for pattern in replaces for p in directory.glob(pattern)} - set(names)
    moves = []
    for name in names:
        if os.path.lexists(directory / name):
            moves.append((directory / name, old / name))
        moves.append((new / name, directory / name))
    moves += [(directory / name, old / name) for name in sorted(stale)]
    done = []
    try:
        for source, target in moves:
            os.replace(source, target)
            done.append((source, target))
    except BaseException:
        for source, target in reversed(done):
            os.replace(target, source)
        raise


def read_json(path: str | os.PathLike, required: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON object in ``path``, which must have the ``required`` keys.

    Raises:
        ValueError: naming ``path``, when it is not valid JSON (e.g. truncated), not an object,
            or lacks a required key.
    """
    expected = f"expected a JSON object with the keys {list(required)}"
    try:
        value = json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is corrupted: not valid JSON ({err}); {expected}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}; {expected}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; {expected}")
    return value


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise a ``ValueError`` naming ``path`` unless it is a complete safetensors file.

    Only the header is read: it must parse and its tensors must cover the file exactly, which
    catches a truncated file without loading any tensor.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except SafetensorError as err:
        raise ValueError(
            f"{path} is corrupted or truncated ({err}); expected a complete safetensors file"
        ) from err
