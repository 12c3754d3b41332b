"""Workers as Slurm batch jobs, through sbatch, squeue, scancel (``--json`` where read).

A worker's ref is its job id. Each job is named ``helios-hpo-<instance>-<worker id>``
and carries the same in its comment, so a restarted service finds its jobs (its
user's, by name) and cancels strays. Slurm assigns the GPUs (``--gres=gpu:N``, hence
``CUDA_VISIBLE_DEVICES`` in the job) and queues jobs while none are free: the
service's own GPU lease table holds nothing for these workers.

The data directory must be one filesystem for the service and the nodes: each job
writes its log there and checks, first, that it sees the service's probe file. The
database URL and the worker's other settings reach the job through an environment
file of mode 0600 in that directory, never its command line or its script.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from service.launchers.base import (
    LOST,
    MISCONFIGURED,
    LauncherUnavailable,
    WorkerHandle,
    WorkerLaunch,
    instance_label,
    register,
    worker_log_path,
)
from service.launchers.gpus import GpuScheduler, Lease
from service.settings import Settings, SlurmSettings
from service.spec.models import WorkersSpec

__all__ = ["NOT_SHARED", "SlurmLauncher", "job_script", "slurm_launcher"]

log = logging.getLogger(__name__)

# A job's exit code when it cannot see the service's probe file.
NOT_SHARED = 97
# Job states of a job that may still run.
_LIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
# Settings a job's environment file carries besides the service's HELIOS_HPO_* ones.
_PASSED = ("PATH", "PYTHONPATH", "HOME", "LANG", "OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME")


class SlurmQueue(GpuScheduler):
    """Leases nothing: Slurm queues the jobs and assigns their GPUs. Every worker gets an
    empty lease on the cluster at once; a spec may ask up to ``max_gpus`` per worker."""

    def __init__(self, max_gpus: int) -> None:
        super().__init__({"slurm": range(max_gpus)})

    def lease(self, owner: int, count: int) -> Lease | None:
        lease = Lease("slurm", ())
        self.hold(owner, lease)
        return lease


def job_script(*, probe: Path, env_file: Path, command: list[str], data_dir: Path) -> str:
    """The batch script of a worker: check the shared folder, load the environment, run."""
    q = shlex.quote
    return f"""#!/bin/sh
if [ ! -f {q(str(probe))} ]; then
    echo "helios-hpo: $(hostname) does not see {probe}: the data directory {data_dir} must be \
on a filesystem shared by the service and the Slurm nodes" >&2
    exit {NOT_SHARED}
fi
set -a
. {q(str(env_file))}
set +a
exec {" ".join(q(part) for part in command)}
"""


class SlurmLauncher:
    """Starts ``helios-hpo worker`` as Slurm batch jobs.

    Args:
        settings: the operator's Slurm settings.
        database_url: this service's database (and the workers', unless the settings
            give the nodes' URL).
        data_dir: the data directory, shared with the nodes.
    """

    name = "slurm"
    start_one_first = False  # jobs run on nodes of their own

    def __init__(
        self,
        settings: SlurmSettings,
        database_url: str,
        data_dir: Path,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.instance = instance_label(database_url)
        self.scheduler: GpuScheduler = SlurmQueue(settings.max_gpus_per_worker)
        self.on_exit: Callable[[], None] | None = None
        self._jobs: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._lock = threading.Lock()
        folder = data_dir / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        self.probe = folder / f"probe-{self.instance}"
        self.probe.write_text("the Slurm nodes see the service's data directory\n")
        self.env_file = folder / f"worker-{self.instance}.env"
        self._write_env(settings.database_url or database_url)

    def _write_env(self, database_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if k in _PASSED}
        env.update(
            (k, v)
            for k, v in os.environ.items()
            if k.startswith("HELIOS_HPO_")
            and not k.startswith(("HELIOS_HPO_API_TOKENS", "HELIOS_HPO_SLURM_", "HELIOS_HPO_TOKEN"))
        )
        env.update(self.settings.env)
        env.update(
            HELIOS_HPO_DATABASE_URL=database_url,
            HELIOS_HPO_DATA_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
        )
        text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)  # an older file kept its mode
            out.write(text)

    def job_name(self, worker_id: int) -> str:
        return f"helios-hpo-{self.instance}-{worker_id}"

    def spec_errors(self, workers: WorkersSpec) -> list[tuple[str, str]]:
        if workers.image is not None:
            return [("workers.image", "only containers have an image: choose their launcher")]
        most = self.settings.max_gpus_per_worker
        if workers.gpus_per_worker > most:
            why = f"{workers.gpus_per_worker} GPUs per worker asked, at most {most} on this cluster"
            return [
                ("workers.gpus_per_worker", f"{why} (set HELIOS_HPO_SLURM_MAX_GPUS_PER_WORKER)")
            ]
        return []

    def start(self, launch: WorkerLaunch) -> WorkerHandle:
        log_path = worker_log_path(self.data_dir, launch.study, launch.worker_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        name = self.job_name(launch.worker_id)
        s = self.settings
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            f"--comment={name}",
            f"--output={log_path}",
            "--open-mode=append",
            "--export=NONE",  # the job's environment is its file's, not the service's
            "--no-requeue",  # a job that dies is a crashed worker: the service restarts it
            f"--chdir={self.data_dir}",
        ]
        if launch.gpus_per_worker:
            argv.append(f"--gres=gpu:{launch.gpus_per_worker}")
        for option, value in (
            ("--partition", s.partition),
            ("--account", s.account),
            ("--qos", s.qos),
            ("--time", s.time_limit),
        ):
            if value:
                argv.append(f"{option}={value}")
        argv += s.extra_args
        command = [*s.worker_command, "--study", launch.study, "--worker-id", str(launch.worker_id)]
        script = job_script(
            probe=self.probe, env_file=self.env_file, command=command, data_dir=self.data_dir
        )
        job_id = _run(argv, stdin=script).strip().split(";")[0]
        if not job_id.isdigit():
            raise RuntimeError(f"sbatch answered {job_id!r}, not a job id")
        self._jobs = None  # the next look sees it
        return WorkerHandle(ref=job_id, host="slurm", log_path=log_path)

    def _queue(self) -> dict[str, dict[str, Any]]:
        """This user's jobs of this service, by id, as slurmctld knows them (ended ones
        too, for MinJobAge); one squeue per supervisor tick at most."""
        with self._lock:
            if self._jobs is not None and time.monotonic() - self._jobs[0] < 0.5:
                return self._jobs[1]
            out = _run(["squeue", "--json", "--states=all", "--me"])
            prefix = f"helios-hpo-{self.instance}-"
            jobs = {
                str(job["job_id"]): job
                for job in json.loads(out)["jobs"]
                if str(job.get("name", "")).startswith(prefix)
            }
            self._jobs = (time.monotonic(), jobs)
            return jobs

    def find(self, study: str, worker_id: int) -> WorkerHandle | None:
        name = self.job_name(worker_id)
        for job_id, job in self._queue().items():
            if job["name"] == name and job["job_state"] in _LIVE:
                log_path = worker_log_path(self.data_dir, study, worker_id)
                return WorkerHandle(ref=job_id, host=job.get("nodes") or "slurm", log_path=log_path)
        return None

    def exit_code(self, ref: str) -> int | None:
        job = self._queue().get(ref)
        if job is None:
            return LOST  # slurmctld forgot it (MinJobAge): its row may say how it ended
        state = job["job_state"]
        if state in _LIVE:
            return None
        code = _exit_status(job)
        if code == NOT_SHARED:
            return MISCONFIGURED
        if state == "COMPLETED":
            return code
        if state == "CANCELLED":
            return code or -15  # scancel: SIGTERM
        return code or 1  # FAILED, NODE_FAIL, TIMEOUT, OUT_OF_MEMORY, PREEMPTED, ...

    def pending(self, ref: str) -> str | None:
        job = self._queue().get(ref)
        if job is None or job["job_state"] != "PENDING":
            return None
        reason = str(job.get("state_reason") or "None")
        return "queued" if reason == "None" else reason  # None: not looked at yet

    def stop(self, ref: str) -> None:
        job = self._queue().get(ref)
        if job is not None and job["job_state"] == "PENDING":
            _run(["scancel", ref])  # nothing runs yet: nothing to fail
        else:
            _run(["scancel", "--signal=TERM", "--full", ref])
        self._jobs = None

    def kill(self, ref: str) -> None:
        _run(["scancel", "--signal=KILL", "--full", ref])
        _run(["scancel", ref])
        self._jobs = None

    def log_lines(self, ref: str) -> list[str] | None:
        return None  # the job writes its log to the shared data directory

    def forget(self, ref: str, log_path: Path) -> None:
        pass  # slurmctld purges ended jobs itself

    def remove_strays(self, known: Collection[str]) -> bool:
        self._jobs = None
        for job_id, job in self._queue().items():
            if job["job_state"] in _LIVE and job_id not in known:
                log.warning(
                    "cancelling job %s (%s): no worker of this service", job_id, job["name"]
                )
                _run(["scancel", job_id])
        self._jobs = None
        return True


def _exit_status(job: dict[str, Any]) -> int:
    """A job's exit code (squeue's exit_code is the wait status: code << 8, or a signal)."""
    raw = job.get("exit_code", 0)
    if isinstance(raw, dict):  # newer data parsers: {"return_code": N, "signal": ...}
        code = raw.get("return_code", 0)
        return int(code["number"] if isinstance(code, dict) else code or 0)
    status = int(raw or 0)
    if status & 0x7F:
        return -(status & 0x7F)
    return status >> 8


def _which(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise LauncherUnavailable(f"{command} is not installed on the service's host")
    return path


def _run(argv: list[str], stdin: str | None = None) -> str:
    """Run a Slurm command; its stdout. An unreachable controller (or no command) is
    LauncherUnavailable, a refusal (sbatch's "Invalid ...") a RuntimeError."""
    try:
        proc = subprocess.run(  # noqa: S603 (Slurm's own command, no shell)
            [_which(argv[0]), *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LauncherUnavailable(f"{argv[0]}: {exc}") from exc
    if proc.returncode:
        error = f"{' '.join(argv)}: {proc.stderr.strip()}"
        if "Unable to contact" in error or "Socket timed out" in error:
            raise LauncherUnavailable(error)
        raise RuntimeError(error)
    return proc.stdout


@register("slurm", enable="set HELIOS_HPO_SLURM_ENABLED=true")
def slurm_launcher(settings: Settings) -> SlurmLauncher | None:
    """The Slurm launcher, or None unless the operator enabled it."""
    if not settings.slurm.enabled:
        return None
    return SlurmLauncher(settings.slurm, settings.database_url, settings.data_dir.resolve())
