"""Worker logs: the tail of a log file, one trial's lines, new lines as they are written;
memory bounded whatever a log's size."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from service.launchers import Launcher

__all__ = ["CHUNK_BYTES", "FileLines", "LauncherLines", "log_tail", "of_trial"]


CHUNK_BYTES = 1 << 20  # the most of a log read at once: memory stays bounded
_BLOCK = 64 * 1024


def _tag(trial: int) -> str:
    return f" trial={trial} "


def log_tail(path: str | Path, lines: int, trial: int | None = None) -> list[str]:
    """The last ``lines`` lines of a log file, of one trial's when ``trial`` is given (none
    when it does not exist). Memory stays bounded by ``lines`` whatever the file's size."""
    try:
        with Path(path).open("rb") as f:
            if trial is None and f.seekable():
                f.seek(_start_of_last_lines(f, lines))
            tag = b"" if trial is None else _tag(trial).encode()
            kept = deque((line for line in f if tag in line), maxlen=lines)
            return [line.rstrip(b"\n").decode(errors="replace") for line in kept]
    except FileNotFoundError:
        return []


def _start_of_last_lines(f: BinaryIO, lines: int) -> int:
    """Where the last ``lines`` lines of ``f`` start (an unterminated last line counts as
    one), read backwards in blocks."""
    position = end = f.seek(0, os.SEEK_END)
    if end == 0:
        return 0
    f.seek(end - 1)
    newlines = 0 if f.read(1) == b"\n" else 1  # the unterminated last line
    while position > 0:
        size = min(_BLOCK, position)
        position -= size
        f.seek(position)
        block = f.read(size)
        at = len(block) if position + size < end else len(block) - 1
        while (at := block.rfind(b"\n", 0, at)) != -1:
            newlines += 1
            if newlines > lines:
                return position + at + 1
    return 0


def of_trial(lines: list[str], trial: int | None) -> list[str]:
    """The lines of one trial (tagged ``trial=N``), or all of them."""
    if trial is None:
        return lines
    tag = _tag(trial)
    return [line for line in lines if tag in line]


class FileLines:
    """The new complete lines of a log file at each call, read from one byte position on,
    so that none is lost or sent twice; the last unterminated one once the worker ended.

    Each call reads at most ``CHUNK_BYTES``; ``behind`` says more was there. A line longer
    than that comes in pieces.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.position, self.pending = path, 0, b""
        self.behind = False

    def start(self, tail: int, trial: int | None, ended: bool) -> list[str]:
        """The last ``tail`` lines (of ``trial``'s when given); the calls after it return
        the lines written since."""
        if trial is None:
            with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
                self.position = _start_of_last_lines(f, tail)
            return self(ended)[-tail:]
        kept: deque[str] = deque(maxlen=tail)
        while True:
            kept.extend(of_trial(self(ended), trial))
            if not self.behind:
                return list(kept)

    def __call__(self, ended: bool) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.position)
                data = f.read(CHUNK_BYTES)
        except FileNotFoundError:
            data = b""
        self.position += len(data)
        self.behind = len(data) == CHUNK_BYTES
        *complete, self.pending = (self.pending + data).split(b"\n")
        if (ended and not self.behind and self.pending) or len(self.pending) >= CHUNK_BYTES:
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

    @property
    def behind(self) -> bool:
        """More of the kept file is there to read at once."""
        return self.file is not None and self.file.behind

    def start(self, tail: int, trial: int | None, ended: bool) -> list[str]:
        """The last ``tail`` lines (of ``trial``'s when given)."""
        return of_trial(self(ended), trial)[-tail:]

    def __call__(self, ended: bool) -> list[str]:
        if self.file is None:
            lines = self.launcher.log_lines(self.ref)
            if lines is not None:
                new, self.sent = lines[self.sent :], len(lines)
                return new
            self.file = FileLines(self.path)
            self.file.skip(self.sent)
        return self.file(ended)
