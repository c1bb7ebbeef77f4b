"""Progress on the terminal: the one-line bar of training (and of a model's pretraining) and
durations for log lines."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line \\r progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool | None = None, stream=None, label: str = "epoch"):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = False

    def update(self, epoch: int, epochs: int, batch: int, batches: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if batch < batches and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        filled = int(width * batch / max(batches, 1))
        self.stream.write(
            f"\r{self.label} {epoch}/{epochs} "
            f"[{'#' * filled}{'.' * (width - filled)}] {batch}/{batches}"
        )
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()
            self._shown = False


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
