"""The git commit of the code that produced a result, for provenance records (torch-free)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(directory: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding ``directory`` (default: this package's folder);
    dirty = tracked files differ from the commit. (None, None) outside a checkout or without git."""
    folder = str(Path(directory) if directory is not None else Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def git_commit_label(directory: str | Path | None = None) -> str | None:
    """The commit as one label, ``<sha>`` or ``<sha>-dirty``; None outside a checkout."""
    commit, dirty = git_state(directory)
    return None if commit is None else commit + ("-dirty" if dirty else "")
