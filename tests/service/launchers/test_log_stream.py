"""Worker logs: a followed file yields each line once, whole, as its writer appends to it;
a container's lines come through its launcher; a stream ends cleanly when its worker goes;
log reads share the API's thread limit."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from service.api import create_app
from service.launchers.logs import CHUNK_BYTES, FileLines, LauncherLines, log_tail
from service.settings import Settings
from service.storage.db import make_engine, make_session_factory, session_scope
from service.storage.rows import StudyRow, WorkerRow
from tests.specs import synthetic
from tests.support import serving, wait_for


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


class _Containers:
    """A launcher whose running worker's log is read through it, as a container's is."""

    def __init__(self) -> None:
        self.lines: list[str] | None = []

    def log_lines(self, ref: str) -> list[str] | None:
        return None if self.lines is None else list(self.lines)


def test_launcher_lines_arrive_once_each_then_from_the_kept_file(tmp_path: Path) -> None:
    launcher, kept = _Containers(), tmp_path / "worker-7.log"
    new_lines = LauncherLines(launcher, "a/7", kept)  # type: ignore[arg-type]
    assert launcher.lines is not None
    launcher.lines += ["a", "b"]
    assert new_lines(False) == ["a", "b"]
    launcher.lines += ["c"]
    assert new_lines(False) == ["c"]
    assert new_lines(False) == []
    kept.write_bytes(b"a\nb\nc\nd\ne")  # the container ended and was removed; its log kept
    launcher.lines = None
    assert new_lines(False) == ["d"]
    assert new_lines(True) == ["e"]


def _worker_with_log(settings: Settings, client: TestClient, log_path: Path) -> int:
    """A study of the service and one live worker of it that logs to ``log_path``."""
    assert client.post("/studies", json=synthetic("logged")).status_code == 201
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            row = session.scalar(select(StudyRow).where(StudyRow.name == "logged"))
            assert row is not None
            worker = WorkerRow(
                launcher="local", host="here", state="running", log_path=str(log_path)
            )
            row.workers.append(worker)
            session.flush()
            return worker.id
    finally:
        engine.dispose()


def test_a_followed_log_ends_cleanly_when_its_study_is_deleted(
    settings: Settings, client: TestClient, tmp_path: Path
) -> None:
    # The stream read the worker's row at each poll; once the worker ended and its study
    # was deleted between two polls, the read raised inside the streaming response.
    log = tmp_path / "worker.log"
    log.write_text("first\n")
    worker_id = _worker_with_log(settings, client, log)
    with client.stream("GET", f"/workers/{worker_id}/logs?follow=true") as response:
        lines = response.iter_lines()
        assert next(lines) == "data: first"
        engine = make_engine(settings.database_url)
        with engine.begin() as conn:  # ended and deleted with its study
            conn.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))
        engine.dispose()
        rest = [line for line in lines if line]
    assert rest == ["event: end", "data: worker ended"]


def test_log_reads_wait_for_the_api_threads_like_every_request(settings: Settings) -> None:
    # They ran in asyncio's own executor, beside HELIOS_HPO_API_THREADS: a slow log read
    # (here a FIFO no one writes yet) took a thread the limit did not count.
    settings = settings.model_copy(update={"api_threads": 1})
    fifo = settings.data_dir / "worker.fifo"
    settings.data_dir.mkdir(parents=True)
    os.mkfifo(fifo)
    with (
        serving(create_app(settings, supervise=False)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        with TestClient(create_app(settings, supervise=False)) as client:
            worker_id = _worker_with_log(settings, client, fifo)
        done: dict[str, int] = {}

        def get(key: str, path: str) -> None:
            done[key] = http.get(path).status_code

        reading = threading.Thread(target=get, args=("log", f"/workers/{worker_id}/logs"))
        reading.start()
        # The log read has opened the FIFO and waits in read(): it holds the one thread.
        writer = wait_for(lambda: _open_writer(fifo), 30, "the log read to open the FIFO")
        listing = threading.Thread(target=get, args=("studies", "/studies"))
        listing.start()
        listing.join(timeout=1.0)
        assert listing.is_alive(), "a request ran while the log read held the only thread"
        os.write(writer, b"a line\n")
        os.close(writer)
        reading.join(timeout=30)
        listing.join(timeout=30)
    assert done == {"log": 200, "studies": 200}


def _open_writer(fifo: Path) -> int | None:
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader yet
        return None


def _big_log(path: Path, mib: int) -> None:
    """``mib`` MiB of trial lines, every tenth of trial 7, then a last line."""
    block = b"".join(
        f"2026-12-07 worker=1 trial={7 if i % 10 == 0 else 1} line {i:06d} ".encode()
        + b"x" * 60
        + b"\n"
        for i in range(8192)
    )
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(block)
        f.write(b"2026-12-07 worker=1 trial=7 the last line\n")


def test_a_followed_or_tailed_log_is_read_in_bounded_memory(tmp_path: Path) -> None:
    # A follower read the whole file at once: one follower of a 200 MB log took the
    # service from 214 to 982 MB; a tail with ?trial= kept up to a million lines.
    path = tmp_path / "worker-1.log"
    _big_log(path, 64)
    tracemalloc.start()
    try:
        followed = FileLines(path)
        assert followed.start(3, None, False)[-1] == "2026-12-07 worker=1 trial=7 the last line"
        assert len(followed.start(3, None, False)) == 3
        assert followed(False) == []
        of_seven = FileLines(path).start(2, 7, False)
        assert log_tail(path, 2, trial=7) == of_seven
        assert log_tail(path, 1) == of_seven[-1:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert of_seven[-1].endswith("the last line")
    assert of_seven[0].startswith("2026-12-07 worker=1 trial=7 line 008190 ")
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held for a 64 MiB log"
    with path.open("ab") as log:  # then each call reads a bounded part of what is new
        log.write(b"y" * (CHUNK_BYTES + 10) + b"\nlast\n")
    assert [len(line) for line in followed(False)] == [CHUNK_BYTES]
    assert followed.behind
    assert followed(False) == ["y" * 10, "last"]
    assert not followed.behind
