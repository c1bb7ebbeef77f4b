"""Atomic file output: write a temporary file beside the target, then rename it into place.

A process killed mid-write leaves at most a stray ``.tmp-*`` file, never a half-written target.
A write that fails for want of space, or a folder that cannot be made, is a ``UserError``
that names the file and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from grad2vae.errors import UserError

TEMPORARY_PREFIX = ".tmp-"

#: a failed write with less than this free on its file system ran out of space: torch.save
#: reports a short write as RuntimeError("... unexpected pos ..."), without an errno
_NEARLY_FULL_BYTES = 1 << 20


def check_folder_path(path: str | os.PathLike, setting: str) -> Path:
    """``path`` as a Path, or a ``UserError`` naming ``setting`` when it is empty or it or a
    folder above it is a file (nothing is created)."""
    if str(path).strip() == "":
        raise UserError(f"{setting} is empty: give the folder to write into")
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            raise UserError(
                f"{setting} {path}: {folder} is a file, not a folder; choose another {setting}"
            )
    return path


def make_folder(path: str | os.PathLike, setting: str) -> Path:
    """Create the folder ``path`` (and its parents) for writing; a ``UserError`` naming it and
    ``setting`` (the option or key that chose it, e.g. ``--out-dir``) when it cannot be: empty,
    a file or under one, read-only, not permitted."""
    path = check_folder_path(path, setting)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"{setting} {path}: cannot create it ({_why(error)}); {_what_to_do(error, setting)}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(
            f"{setting} {path}: cannot write into it (read-only or not permitted); "
            f"choose another {setting}"
        )
    return path


def _why(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _what_to_do(error: OSError, setting: str) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some space there or choose another {setting}, then run the same command again"
    return f"choose another {setting}"


def _out_of_space(target: Path, error: OSError | RuntimeError) -> bool:
    """Whether writing ``target`` failed for want of space (measured before the partial file
    goes: it holds what little space there was)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(target.parent).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The writer's process id in the name tells a later process whether the file is stale
    # (remove_stale_temporaries).
    handle, tmp_name = tempfile.mkstemp(
        prefix=f"{TEMPORARY_PREFIX}{target.name}-{os.getpid()}-", dir=target.parent
    )
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        # mkstemp creates files as 0600; give the result the mode a plain open() would have, so
        # that data and results on a shared cluster stay readable by the group.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as error:
        if not _out_of_space(target, error):
            raise
        raise UserError(
            f"cannot write {target}: no space left on device (the partial file was removed); "
            "free some space or choose another output folder, then run the same command again "
            "(a training run resumes from its last checkpoint)"
        ) from error
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` whose result appears at ``target`` only if the block finishes without error."""
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in ``folder`` that a process killed mid-write left (its
    process is gone, or the name predates process ids); return them. Files of live processes on
    this machine stay."""
    removed = []
    for path in Path(folder).glob(f"{TEMPORARY_PREFIX}*"):
        if _writer_alive(path.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the process named in a temporary file's name (``.tmp-TARGET-PID-XXXX``) runs."""
    parts = name.rsplit("-", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(target: str | os.PathLike, payload: Any) -> None:
    with atomic_open(target, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write(text)
