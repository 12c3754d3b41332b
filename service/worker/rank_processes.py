"""A several-rank worker's ranks on this host: started, stopped and ended together.

The worker process starts one process per rank (the environment ``torch.distributed``
reads: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and stays their parent:
its pid is the one its launcher knows. SIGTERM is passed on to every rank; a rank that
fails ends the others. The worker's exit code is 0 when every rank exited cleanly, or when
it was stopped and rank 0 (which records the trial) exited cleanly; 1 otherwise
(torchrun's own exit code is non-zero after any SIGTERM). A rank that does not exit
within ``stop_timeout_s`` of a stop, or of another rank's failure, is killed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["run_ranks"]

log = logging.getLogger(__name__)
POLL_S = 0.2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(argv: Sequence[str], ranks: int, stop_timeout_s: float) -> int:
    """Run ``argv`` as ``ranks`` ranks until every one has exited; the worker's exit code.

    A rank that exits non-zero while others run ends them: SIGTERM, then SIGKILL after
    ``stop_timeout_s`` (a rank blocked in a collective of a dead peer may not answer).
    """
    env = {
        **os.environ,
        "WORLD_SIZE": str(ranks),
        "LOCAL_WORLD_SIZE": str(ranks),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    procs = [
        subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            list(argv), env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        )
        for rank in range(ranks)
    ]
    stopping = False
    kill_at: float | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        # A rank blocked in a collective its peer left answers no signal: SIGKILL later.
        nonlocal stopping, kill_at
        stopping = True
        _signal(procs, signal.SIGTERM)
        kill_at = kill_at or time.monotonic() + stop_timeout_s

    signal.signal(signal.SIGTERM, forward)
    while None in [p.poll() for p in procs]:  # every rank polled: any() stops early
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed and kill_at is None:
            log.error(
                "rank %d exited with %s; ending the others",
                procs.index(failed[0]),
                failed[0].returncode,
            )
            _signal(procs, signal.SIGTERM)
            kill_at = time.monotonic() + stop_timeout_s
        if kill_at is not None and time.monotonic() >= kill_at:
            _signal(procs, signal.SIGKILL)
        time.sleep(POLL_S)  # a child's exit interrupts no wait of several children
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    codes = [p.returncode for p in procs]
    if stopping and codes[0] == 0:
        # Rank 0 recorded the trial and exited; the others were stopped with it.
        log.info("stopped; the ranks exited with %s", codes)
        return 0
    if any(codes):
        log.error("ranks exited with %s", codes)
        return 1
    return 0


def _signal(procs: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)
