"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd in a folder.

Debian's slurm-wlm and munge (installed with apt when missing). The node has two fake
GPUs: character devices (the same device as /dev/null) that Slurm hands out through
``--gres=gpu:N`` and ``CUDA_VISIBLE_DEVICES`` as it would real ones. Each daemon is
stopped by its pid; nothing of the machine's own is touched but munge's default socket
folder, which slurm's clients look in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import debian_tool, free_port, wait_for

__all__ = ["GPUS", "SLURM_GROUP", "SlurmCluster", "slurm_cluster"]

GPUS = 2
# One cluster per run: under pytest-xdist every test of it runs in the same process.
SLURM_GROUP = pytest.mark.xdist_group("slurm")
_MUNGE_SOCKET = Path("/run/munge")


@dataclass
class SlurmCluster:
    """A started cluster: ``env`` points Slurm's commands at it."""

    root: Path
    node: str
    env: dict[str, str]
    pids: dict[str, int]

    def run(self, *argv: str, check: bool = True) -> str:
        proc = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=30, check=False
        )
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(argv)}: {proc.stderr}")
        return proc.stdout

    def jobs(self) -> list[dict[str, Any]]:
        """Every job slurmctld still knows, as ``squeue --json`` gives them."""
        jobs: list[dict[str, Any]] = json.loads(self.run("squeue", "--json", "--states=all"))[
            "jobs"
        ]
        return jobs

    def cancel_all(self) -> None:
        """Cancel every job and wait until none runs."""
        for job in _safe_jobs(self):
            self.run("scancel", str(job["job_id"]), check=False)
        wait_for(lambda: not _safe_jobs(self), 30, "the cancelled jobs to end")

    def set_node(self, state: str) -> None:
        """``down`` (as an admin would, with a reason) or ``resume``."""
        reason = ["reason=test"] if state == "down" else []
        self.run("scontrol", "update", f"nodename={self.node}", f"state={state}", *reason)


def _config(root: Path, node: str, port: int) -> str:
    return f"""ClusterName=helios-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={port + 1}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=1
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=1
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=16000 Gres=gpu:fake:{GPUS} State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``root``; stop each by its pid after."""
    for command, package in (
        ("munged", "munge"),
        ("slurmctld", "slurmctld"),
        ("slurmd", "slurmd"),
        ("sbatch", "slurm-client"),
    ):
        debian_tool(command, package)
    node = socket.gethostname()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "dev"):
        (root / sub).mkdir(exist_ok=True)
    for gpu in range(GPUS):  # fake GPUs: Slurm refuses plain files
        dev = root / "dev" / f"nvidia{gpu}"
        if not dev.exists():
            os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
    conf = root / "slurm.conf"
    conf.write_text(_config(root, node, free_port()))
    (root / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={node} Name=gpu Type=fake File={root}/dev/nvidia[0-{GPUS - 1}]\n"
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids: dict[str, int] = {}
    cluster = SlurmCluster(root, node, env, pids)
    try:
        _start_munge(root, pids)
        for daemon, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D"])):
            log = (root / f"{daemon}.out").open("ab")
            proc = subprocess.Popen(  # noqa: S603
                [shutil.which(daemon) or daemon, *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            pids[daemon] = proc.pid

        def idle() -> bool:
            out = cluster.run("sinfo", "--noheader", "-o", "%t", check=False).strip()
            return out in ("idle", "mix", "alloc")

        wait_for(idle, 60, "the Slurm node to be idle")
        yield cluster
    finally:
        with contextlib.suppress(AssertionError):
            cluster.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            if name in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pids[name], signal.SIGTERM)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in pids:
                _wait_gone(pids[name])
        _kill_step_daemons(conf)
        with contextlib.suppress(OSError):
            shutil.rmtree((root / "munge").resolve())


def _safe_jobs(cluster: SlurmCluster) -> list[dict[str, Any]]:
    try:
        live = ("PENDING", "RUNNING", "COMPLETING")
        return [j for j in cluster.jobs() if j["job_state"] in live]
    except Exception:
        return []


def _kill_step_daemons(conf: Path) -> None:
    """slurmstepd processes of this cluster outlive slurmd, waiting to report to it."""
    marker = f"SLURM_CONF={conf}".encode()
    for entry in Path("/proc").iterdir():
        try:
            ours = entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0")
            if ours and (entry / "cmdline").read_bytes().startswith(b"slurmstepd"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _start_munge(root: Path, pids: dict[str, int]) -> None:
    """munged as the munge user, with a key of its own, on munge's default socket."""
    # Its own folder in /tmp: the munge user cannot pass through pytest's (mode 0700).
    munge_dir = Path(tempfile.mkdtemp(prefix="helios-hpo-munge-"))
    (root / "munge").symlink_to(munge_dir)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    _MUNGE_SOCKET.mkdir(mode=0o755, exist_ok=True)
    for path in (munge_dir, key, _MUNGE_SOCKET):
        shutil.chown(path, "munge", "munge")
    pidfile = munge_dir / "munged.pid"
    subprocess.run(  # noqa: S603
        [
            shutil.which("munged") or "munged",
            f"--key-file={key}",
            f"--pid-file={pidfile}",
            f"--log-file={munge_dir / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
            "--force",
        ],
        check=True,
        timeout=30,
        user="munge",
    )
    wait_for(pidfile.exists, 10, "munged to start")
    pids["munged"] = int(pidfile.read_text())


def _wait_gone(pid: int) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False

    try:
        wait_for(gone, 15, f"process {pid} to exit")
    except AssertionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
