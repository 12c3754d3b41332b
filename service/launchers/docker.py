"""Workers as containers on one or more Docker hosts, through the Docker Engine API.

A worker's ref is ``host/container id``. Each container carries labels (service
instance, study, worker id, GPUs), so a restarted service finds its workers
again and removes containers it no longer knows. GPUs are handed to containers
as device requests for exactly the leased device ids. Nothing about containers
is kept in memory but the clients: every call asks the engine.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from service.launchers.base import (
    LOST,
    LauncherUnavailable,
    WorkerHandle,
    WorkerLaunch,
    gpu_errors,
    instance_label,
    register,
    worker_log_path,
)
from service.launchers.gpus import GpuScheduler, Lease
from service.settings import DockerHost, DockerSettings, Settings
from service.spec.models import WorkersSpec

__all__ = ["LABEL", "DockerLauncher", "container_spec", "docker_launcher"]

log = logging.getLogger(__name__)

LABEL = "io.helios-hpo"
_RUNNING = ("created", "running", "restarting", "paused")


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
    gpu_devices: str = "request",
    user: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``containers.run`` for one worker."""
    import docker.types

    spec: dict[str, Any] = {
        "image": image,
        # The image's entrypoint is `helios-hpo worker`.
        "command": ["--study", study, "--worker-id", str(worker_id)],
        # Two services (two databases) may share a host and a study name.
        "name": f"helios-hpo-{instance[:8]}-{study}-{worker_id}",
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
    if lease.gpus and gpu_devices == "env":
        spec["environment"]["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, lease.gpus))
    elif lease.gpus:
        spec["device_requests"] = [
            docker.types.DeviceRequest(
                driver="nvidia",
                device_ids=[str(g) for g in lease.gpus],
                capabilities=[["gpu"]],
            )
        ]
    if network is not None:
        spec["network"] = network
    if user is not None:
        spec["user"] = user
    return spec


class DockerLauncher:
    """Starts ``helios-hpo worker`` containers on the configured Docker hosts.

    Args:
        settings: the hosts, images, environment, volumes and network of the containers.
        database_url: what the service's own database URL is (labels tell its containers).
        data_dir: where the logs of ended workers are kept (the service's side).
        workers_per_gpu: how many workers may share one GPU.
        client_factory: builds a Docker client for a host (tests pass their own).
    """

    name = "docker"
    start_one_first = False

    def __init__(
        self,
        settings: DockerSettings,
        *,
        database_url: str,
        data_dir: Path,
        workers_per_gpu: int = 1,
        client_factory: Callable[[DockerHost], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.hosts = {host.name: host for host in settings.hosts}
        self.scheduler = GpuScheduler({h.name: h.gpus for h in settings.hosts}, workers_per_gpu)
        self.database_url = settings.database_url or database_url
        self.instance = instance_label(database_url)
        self.data_dir = data_dir
        self._client_factory = client_factory or _client
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()  # the API's and the supervisor's threads share clients
        self.on_exit: Callable[[], None] | None = None

    def client(self, host: str) -> Any:
        with self._lock:
            if host not in self._clients:
                self._clients[host] = self._client_factory(self.hosts[host])
            return self._clients[host]

    def spec_errors(self, workers: WorkersSpec) -> list[tuple[str, str]]:
        images = {self.settings.image, *self.settings.images}
        if workers.image is not None and workers.image not in images:
            return [
                (
                    "workers.image",
                    f"{workers.image!r} is not an allowed image; allowed: {sorted(images)} "
                    "(HELIOS_HPO_DOCKER_IMAGES)",
                )
            ]
        return gpu_errors(
            workers, self.scheduler, "the largest Docker host", "HELIOS_HPO_DOCKER_HOSTS"
        )

    def start(self, launch: WorkerLaunch) -> WorkerHandle:
        """Run a worker container on ``launch.lease.host`` with its GPUs."""
        spec = container_spec(
            study=launch.study,
            worker_id=launch.worker_id,
            lease=launch.lease,
            image=launch.image or self.settings.image,
            instance=self.instance,
            database_url=self.database_url,
            env=dict(self.settings.env),
            volumes=list(self.settings.volumes),
            network=self.settings.network,
            gpu_devices=self.settings.gpu_devices,
            user=self.settings.user,
        )
        host = launch.lease.host
        try:
            container = self.client(host).containers.run(**spec)
        except Exception as exc:
            if _unreachable(exc):
                raise LauncherUnavailable(f"docker host {host} cannot be reached: {exc}") from exc
            raise
        return self._handle(host, container)

    def _handle(self, host: str, container: Any) -> WorkerHandle:
        container.reload()
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        labels = container.labels
        return WorkerHandle(
            ref=f"{host}/{container.id}",
            host=host,
            log_path=worker_log_path(
                self.data_dir, labels[f"{LABEL}.study"], int(labels[f"{LABEL}.worker-id"])
            ),
            pid=pid or None,
        )

    def find(self, study: str, worker_id: int) -> WorkerHandle | None:
        labels = [f"{LABEL}.instance={self.instance}", f"{LABEL}.worker-id={worker_id}"]
        for host in self.hosts:
            # ignore_removed: one removed while listed (the SDK inspects each) is not an error.
            found = self.client(host).containers.list(
                all=True, filters={"label": labels}, ignore_removed=True
            )
            if found:
                return self._handle(host, found[0])
        return None

    def _container(self, ref: str) -> Any | None:
        """The container ``ref`` names, or None when it is gone (or its host unknown)."""
        import docker.errors

        host, container_id = ref.rsplit("/", 1)
        if host not in self.hosts:
            return None
        try:
            return self.client(host).containers.get(container_id)
        except docker.errors.NotFound:
            return None

    def exit_code(self, ref: str) -> int | None:
        container = self._container(ref)
        if container is None:
            return LOST
        if container.status in _RUNNING:
            return None
        return int(container.attrs["State"]["ExitCode"])

    def stop(self, ref: str) -> None:
        self._signal(ref, "SIGTERM")  # the worker fails its trial and exits

    def kill(self, ref: str) -> None:
        self._signal(ref, "SIGKILL")

    def _signal(self, ref: str, signal: str) -> None:
        import docker.errors

        container = self._container(ref)
        if container is not None:
            # It may have ended meanwhile: the engine then refuses (409).
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.kill(signal=signal)

    def pending(self, ref: str) -> str | None:
        return None  # started at once, or not at all

    def log_lines(self, ref: str) -> list[str] | None:
        """The container's log lines, or None when it is gone (its log was kept)."""
        import docker.errors

        container = self._container(ref)
        if container is None:
            return None
        try:  # removed between the lookup and the read
            text: bytes = container.logs(stdout=True, stderr=True)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # dead or being removed: its log was kept first
                return None
            raise
        return text.decode(errors="replace").splitlines()

    def forget(self, ref: str, log_path: Path) -> None:
        """Keep an ended worker's log under the data dir, then remove its container."""
        container = self._container(ref)
        if container is None:
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(container.logs(stdout=True, stderr=True))
        container.remove(force=True)

    def remove_strays(self, known: Collection[str]) -> bool:
        """Remove this service's containers that no live worker row knows."""
        reached = True
        for host in self.hosts:
            try:
                containers = self.client(host).containers.list(
                    all=True,
                    filters={"label": f"{LABEL}.instance={self.instance}"},
                    ignore_removed=True,
                )
                for container in containers:
                    if f"{host}/{container.id}" not in known:
                        log.warning("removing stray container %s on %s", container.name, host)
                        container.remove(force=True)
            except Exception as exc:
                log.warning("Docker host %s unreachable (%s); trying again later", host, exc)
                with self._lock:
                    self._clients.pop(host, None)
                reached = False
        return reached


@register("docker", enable="set HELIOS_HPO_DOCKER_HOSTS")
def docker_launcher(
    settings: Settings, client_factory: Callable[[DockerHost], Any] | None = None
) -> DockerLauncher | None:
    """The Docker launcher the settings describe, or None without Docker hosts
    (``client_factory``: see DockerLauncher)."""
    if not settings.docker.hosts:
        return None
    return DockerLauncher(
        settings.docker,
        database_url=settings.database_url,
        data_dir=settings.data_dir.resolve(),
        workers_per_gpu=settings.workers_per_gpu,
        client_factory=client_factory,
    )


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the engine could not be reached, rather than refused the request."""
    import docker.errors
    import requests

    if isinstance(exc, docker.errors.APIError):
        return False
    return isinstance(
        exc, (requests.exceptions.ConnectionError, docker.errors.DockerException, OSError)
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
