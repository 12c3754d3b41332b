"""Workers as containers on one or more Docker hosts, through the Docker Engine API.

Each container carries labels (service instance, study, worker id, GPUs), so
a restarted service finds its workers again and removes containers it no
longer knows. GPUs are handed to containers as device requests for exactly
the leased device ids.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from service.launchers.base import LOST, WorkerHandle
from service.launchers.gpus import GpuScheduler, Lease
from service.launchers.local import worker_log_path
from service.settings import DockerHost, Settings

__all__ = ["LABEL", "DockerLauncher", "container_spec", "docker_launcher", "instance_label"]

log = logging.getLogger("helios_hpo.docker")

LABEL = "io.helios-hpo"
_RUNNING = ("created", "running", "restarting", "paused")


def instance_label(database_url: str) -> str:
    """Tells this service's containers from those of a service on another database."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


def container_spec(
    *,
    study: str,
    worker_id: int,
    lease: Lease,
    image: str,
    instance: str,
    database_url: str,
    env: dict[str, str],
    volumes: list[str],
    network: str | None,
) -> dict[str, Any]:
    """The keyword arguments of ``containers.run`` for one worker."""
    import docker.types

    spec: dict[str, Any] = {
        "image": image,
        # The image's entrypoint is `helios-hpo worker`.
        "command": ["--study", study, "--worker-id", str(worker_id)],
        "name": f"helios-hpo-{study}-{worker_id}",
        "environment": {
            **env,
            # In the environment, never on the command line.
            "HELIOS_HPO_DATABASE_URL": database_url,
            "HELIOS_HPO_DATA_DIR": "/data",
            "PYTHONUNBUFFERED": "1",
        },
        "labels": {
            f"{LABEL}.instance": instance,
            f"{LABEL}.study": study,
            f"{LABEL}.worker-id": str(worker_id),
            f"{LABEL}.gpus": ",".join(map(str, lease.gpus)),
        },
        "volumes": list(volumes),
        "detach": True,
        "stop_signal": "SIGTERM",
        "device_requests": [],
    }
    if lease.gpus:
        spec["device_requests"] = [
            docker.types.DeviceRequest(
                driver="nvidia",
                device_ids=[str(g) for g in lease.gpus],
                capabilities=[["gpu"]],
            )
        ]
    if network is not None:
        spec["network"] = network
    return spec


class DockerLauncher:
    """Starts ``helios-hpo worker`` containers on the configured Docker hosts.

    Args:
        hosts: the Docker engines and their GPUs.
        scheduler: leases GPUs of those hosts.
        database_url: what the containers connect to (in their environment).
        instance: this service's label value (see ``instance_label``).
        data_dir: where the logs of ended workers are kept (the service's side).
        image, env, volumes, network: the containers' defaults.
        client_factory: builds a Docker client for a host (tests pass their own).
    """

    name = "docker"

    def __init__(
        self,
        hosts: Iterable[DockerHost],
        scheduler: GpuScheduler,
        *,
        database_url: str,
        instance: str,
        data_dir: Path,
        image: str,
        env: dict[str, str],
        volumes: list[str],
        network: str | None,
        client_factory: Callable[[DockerHost], Any] | None = None,
    ) -> None:
        self.hosts = {host.name: host for host in hosts}
        self.scheduler = scheduler
        self.database_url, self.instance, self.data_dir = database_url, instance, data_dir
        self.image, self.env, self.volumes, self.network = image, env, volumes, network
        self._client_factory = client_factory or _client
        self._clients: dict[str, Any] = {}
        self._containers: dict[int, tuple[str, Any]] = {}  # worker id -> (host, container)
        self._lock = threading.Lock()
        self.on_exit: Callable[[], None] | None = None

    def client(self, host: str) -> Any:
        with self._lock:
            if host not in self._clients:
                self._clients[host] = self._client_factory(self.hosts[host])
            return self._clients[host]

    def start(
        self, study: str, worker_id: int, lease: Lease, image: str | None = None
    ) -> WorkerHandle:
        """Run a worker container on ``lease.host`` with ``lease.gpus``."""
        spec = container_spec(
            study=study,
            worker_id=worker_id,
            lease=lease,
            image=image or self.image,
            instance=self.instance,
            database_url=self.database_url,
            env=self.env,
            volumes=self.volumes,
            network=self.network,
        )
        container = self.client(lease.host).containers.run(**spec)
        container.reload()
        self._containers[worker_id] = (lease.host, container)
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        return WorkerHandle(
            host=lease.host,
            pid=pid or -1,
            pid_start_time=None,
            log_path=worker_log_path(self.data_dir, study, worker_id),
        )

    def _find(self, worker_id: int) -> tuple[str, Any] | None:
        if worker_id in self._containers:
            return self._containers[worker_id]
        for host in self.hosts:
            found = self.client(host).containers.list(
                all=True,
                filters={
                    "label": [f"{LABEL}.instance={self.instance}", f"{LABEL}.worker-id={worker_id}"]
                },
            )
            if found:
                self._containers[worker_id] = (host, found[0])
                return self._containers[worker_id]
        return None

    def exit_code(self, worker_id: int, pid: int, pid_start_time: float | None) -> int | None:
        found = self._find(worker_id)
        if found is None:
            return LOST
        container = found[1]
        container.reload()
        if container.status in _RUNNING:
            return None
        return int(container.attrs["State"]["ExitCode"])

    def stop(
        self, worker_id: int, pid: int, pid_start_time: float | None, timeout_s: float
    ) -> None:
        found = self._find(worker_id)
        if found is not None:
            found[1].stop(timeout=max(1, int(timeout_s)))  # SIGTERM, SIGKILL after the timeout

    def logs(self, worker_id: int) -> list[str] | None:
        """The container's log lines, or None when it is gone."""
        found = self._find(worker_id)
        if found is None:
            return None
        text: bytes = found[1].logs(stdout=True, stderr=True)
        return text.decode(errors="replace").splitlines()

    def forget(self, worker_id: int) -> None:
        """Keep an ended worker's log under the data dir, then remove its container."""
        found = self._find(worker_id)
        self._containers.pop(worker_id, None)
        if found is None:
            return
        container = found[1]
        labels = container.labels
        path = worker_log_path(self.data_dir, labels[f"{LABEL}.study"], worker_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(container.logs(stdout=True, stderr=True))
        container.remove(force=True)

    def remove_orphans(self, known: set[int], hosts: Iterable[str]) -> set[str]:
        """Remove this service's containers whose worker id is not in ``known``.

        Returns the hosts that could not be reached (to be tried again).
        """
        unreachable = set()
        for host in hosts:
            try:
                containers = self.client(host).containers.list(
                    all=True, filters={"label": f"{LABEL}.instance={self.instance}"}
                )
                for container in containers:
                    if int(container.labels[f"{LABEL}.worker-id"]) not in known:
                        log.warning("removing orphan container %s on %s", container.name, host)
                        container.remove(force=True)
            except Exception as exc:
                log.warning("Docker host %s unreachable (%s); trying again later", host, exc)
                with self._lock:
                    self._clients.pop(host, None)
                unreachable.add(host)
        return unreachable


def docker_launcher(
    settings: Settings, client_factory: Callable[[DockerHost], Any] | None = None
) -> DockerLauncher:
    """The Docker launcher the settings describe (``client_factory``: see DockerLauncher)."""
    hosts = settings.docker_hosts
    database_url = settings.docker_database_url or settings.database_url
    return DockerLauncher(
        hosts,
        GpuScheduler({h.name: h.gpus for h in hosts}, settings.workers_per_gpu),
        database_url=database_url,
        instance=instance_label(settings.database_url),
        data_dir=settings.data_dir.resolve(),
        image=settings.docker_image,
        env=dict(settings.docker_env),
        volumes=list(settings.docker_volumes),
        network=settings.docker_network,
        client_factory=client_factory,
    )


def _client(host: DockerHost) -> Any:
    import docker

    tls: Any = False
    if host.tls:
        if host.cert_path is None:
            raise ValueError(f"Docker host {host.name}: tls needs cert_path")
        tls = docker.tls.TLSConfig(
            client_cert=(str(host.cert_path / "cert.pem"), str(host.cert_path / "key.pem")),
            ca_cert=str(host.cert_path / "ca.pem"),
            verify=True,
        )
    return docker.DockerClient(
        base_url=host.url, tls=tls, use_ssh_client=host.url.startswith("ssh://")
    )
