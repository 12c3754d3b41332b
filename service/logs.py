"""Worker logs: the tail of a log file, one trial's lines, new lines as they are written."""

from __future__ import annotations

import contextlib
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.launchers import Launcher

__all__ = ["FileLines", "LauncherLines", "log_tail", "of_trial"]


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

    def skip(self, lines: int) -> None:
        """Start after the first ``lines`` lines (those were sent from elsewhere)."""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            for _ in range(lines):
                if not f.readline():
                    break
            self.position = f.tell()


class LauncherLines:
    """A live worker's new lines at each call, read through its launcher (a container's
    log); from its log file once the launcher has none (its container was removed after
    it ended, and its log kept in the file)."""

    def __init__(self, launcher: Launcher, ref: str, path: Path) -> None:
        self.launcher, self.ref = launcher, ref
        self.file: FileLines | None = None
        self.path, self.sent = path, 0

    def __call__(self, ended: bool) -> list[str]:
        if self.file is None:
            lines = self.launcher.log_lines(self.ref)
            if lines is not None:
                new, self.sent = lines[self.sent :], len(lines)
                return new
            self.file = FileLines(self.path)
            self.file.skip(self.sent)
        return self.file(ended)
