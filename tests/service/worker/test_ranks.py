"""A several-rank worker's ranks: stopped together, a stuck one killed, the exit code
what the service reads (real processes and signals)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import wait_for

# Each rank writes its pid, then: rank 0 exits 0 on SIGTERM; rank 1 does as RANK1 says.
RANK = """
import os, signal, sys, time
from pathlib import Path
rank = int(os.environ["RANK"])
Path(sys.argv[1], f"rank{rank}").write_text(str(os.getpid()))
if rank == 1 and sys.argv[2] == "stuck":  # in a collective its peer left: no signal helps
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if rank == 1 and sys.argv[2] == "fails":
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(0.05)
"""
PARENT = """
import sys
from service.worker.rank_processes import run_ranks
sys.exit(run_ranks([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]], 2, 1.0))
"""


def _start(tmp_path: Path, rank1: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK))
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", PARENT, str(script), str(tmp_path), rank1]
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def _ranks(tmp_path: Path) -> list[int]:
    files = [tmp_path / f"rank{r}" for r in (0, 1)]
    wait_for(lambda: all(f.exists() and f.read_text() for f in files), 30, "both ranks")
    return [int(f.read_text()) for f in files]


def test_a_stopped_worker_exits_0_and_a_rank_stuck_in_a_collective_is_killed(
    tmp_path: Path,
) -> None:
    # A rank blocked in a collective of a peer that had left never answered SIGTERM:
    # the worker waited for it forever, and its study never went on (seen in a full run).
    parent = _start(tmp_path, "stuck")
    try:
        ranks = _ranks(tmp_path)
        parent.send_signal(signal.SIGTERM)  # what the service sends to stop a worker
        assert parent.wait(timeout=30) == 0  # stopped: exited, code 0
        assert not any(_alive(pid) for pid in ranks)
    finally:
        _kill_all(parent, tmp_path)


def test_a_failed_rank_ends_the_others_and_the_worker_exits_1(tmp_path: Path) -> None:
    # A rank's failure went unseen while rank 0 ran (only the first running rank was
    # polled): the worker never ended and never restarted.
    parent = _start(tmp_path, "fails")
    try:
        assert parent.wait(timeout=30) == 1  # restarted by the supervisor, with its back-off
        rank0 = int((tmp_path / "rank0").read_text())
        assert not _alive(rank0)
    finally:
        _kill_all(parent, tmp_path)


def _kill_all(parent: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """Leave no process behind, whatever failed."""
    parent.kill()
    parent.wait()
    for pid_file in tmp_path.glob("rank[0-9]"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
