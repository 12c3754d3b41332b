"""Worker logs: the tail of a log file, one trial's lines, new lines as they are written."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["ContainerLines", "FileLines", "log_tail", "of_trial"]


def log_tail(path: str | Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file (none when it does not exist)."""
    try:
        with Path(path).open(errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except FileNotFoundError:
        return []


def of_trial(lines: list[str], trial: int | None) -> list[str]:
    """The lines of one trial (tagged ``trial=N``), or all of them."""
    if trial is None:
        return lines
    tag = f" trial={trial} "
    return [line for line in lines if tag in line]


class FileLines:
    """The new complete lines of a log file at each call, read from one byte position on,
    so that none is lost or sent twice; the last unterminated one once the worker ended."""

    def __init__(self, path: Path) -> None:
        self.path, self.position, self.pending = path, 0, b""

    def __call__(self, ended: bool) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.position)
                data = f.read()
        except FileNotFoundError:
            data = b""
        self.position += len(data)
        *complete, self.pending = (self.pending + data).split(b"\n")
        if ended and self.pending:
            complete.append(self.pending)
            self.pending = b""
        return [line.decode(errors="replace") for line in complete]


class ContainerLines:
    """The new lines of a container's log at each call, through the Docker API."""

    def __init__(self, docker: Any, worker_id: int, path: Path) -> None:
        self.docker, self.worker_id, self.path, self.sent = docker, worker_id, path, 0

    def __call__(self, ended: bool) -> list[str]:
        lines: list[str] | None = self.docker.logs(self.worker_id)
        if lines is None:  # removed once ended; its log was kept in the file
            lines = log_tail(self.path, 1_000_000)
        new, self.sent = lines[self.sent :], len(lines)
        return new
