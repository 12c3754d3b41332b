"""A followed log file yields each line once, whole, as its writer appends to it."""

from __future__ import annotations

from pathlib import Path

from service.logs import ContainerLines, FileLines


def test_lines_arrive_whole_once_each_and_the_last_one_when_the_worker_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker-1.log"
    new_lines = FileLines(path)
    assert new_lines(False) == []  # not written yet
    with path.open("ab", buffering=0) as log:
        log.write(b"first\nsec")
        assert new_lines(False) == ["first"]
        log.write(b"ond\nt\xc3")  # a line and a character cut in two
        assert new_lines(False) == ["second"]
        assert new_lines(False) == []
        log.write(b"\xa9l\xc3\xa9")  # no newline: the worker was killed mid-line
        assert new_lines(False) == []
        assert new_lines(True) == ["télé"]
    assert new_lines(True) == []


class _Engine:
    """A container's log as the Docker API returns it (no engine runs here)."""

    def __init__(self) -> None:
        self.lines: list[str] | None = []

    def logs(self, worker_id: int) -> list[str] | None:
        return None if self.lines is None else list(self.lines)


def test_container_lines_arrive_once_each_then_from_the_kept_file(tmp_path: Path) -> None:
    engine, kept = _Engine(), tmp_path / "worker-7.log"
    new_lines = ContainerLines(engine, 7, kept)
    assert engine.lines is not None
    engine.lines += ["a", "b"]
    assert new_lines(False) == ["a", "b"]
    engine.lines += ["c"]
    assert new_lines(False) == ["c"]
    assert new_lines(False) == []
    kept.write_text("a\nb\nc\nd\n")  # the container ended and was removed; its log kept
    engine.lines = None
    assert new_lines(True) == ["d"]
