"""A real Docker engine for tests: Debian's dockerd, started in a folder of its own.

The daemon never touches the host's networking (no bridge, no iptables): containers
use the host's network. Images cannot be pulled here, so the base image is made
with debootstrap and imported; it and the images built on it stay in a data root
under ``~/.cache/helios-hpo`` (``HELIOS_HPO_CACHE``) so a later run finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import debian_tool, unavailable

__all__ = [
    "BASE_IMAGE",
    "DOCKER_BUILD_TIMEOUT",
    "DOCKER_GROUP",
    "COMPOSE_IMAGES",
    "SERVICE_IMAGE",
    "TORCH_IMAGE",
    "WORKER_IMAGE",
    "Dockerd",
    "build_compose_images",
    "build_images",
    "cache_dir",
]

REPO = Path(__file__).resolve().parents[1]
# One engine per run: under pytest-xdist every test of it runs in the same process.
DOCKER_GROUP = pytest.mark.xdist_group("docker")
# The group's first test starts the engine and builds the images in its setup: about
# 5 minutes on a fresh machine (no layer cache), past the 300 s a test gets by default.
DOCKER_BUILD_TIMEOUT = pytest.mark.timeout(900)
# On dockerd's PATH: a stand-in for the NVIDIA Container Toolkit's hook, so the engine
# takes GPU device requests (compose reservations, the launcher's default) as a GPU host's.
ENGINE_BIN = REPO / "tests" / "engine_bin"
BASE_IMAGE = "local/debian-py:bookworm"
TORCH_IMAGE = "local/torch-cpu:2.13.0"  # stands in for pytorch/pytorch: torch in the system
WORKER_IMAGE = "helios-hpo-worker:test"
SERVICE_IMAGE = "helios-hpo-service:test"
# Debian's servers behind the official images' environment (tests/compose/).
COMPOSE_IMAGES = {
    "postgres.Dockerfile": "local/postgres:15-bookworm",
    "pgbouncer.Dockerfile": "local/pgbouncer:1.18-bookworm",
}
TORCH_WHEELS = Path(os.environ.get("HELIOS_HPO_TORCH_WHEELS", "/opt/wheels"))
_PACKAGES = {
    "dockerd": "docker.io",
    "debootstrap": "debootstrap",
    "docker-compose": "docker-compose",
}


def cache_dir() -> Path:
    """Where engine state is kept between runs on this machine."""
    return Path(os.environ.get("HELIOS_HPO_CACHE", Path.home() / ".cache" / "helios-hpo"))


def engine_tools() -> dict[str, str]:
    """Debian's dockerd, debootstrap and docker-compose, installed when missing (as root)."""
    if os.geteuid() != 0:
        unavailable("a Docker engine needs root to start (run the docker tests as root)")
    if shutil.which("apt-get") is None:
        unavailable("no apt-get to install Debian's docker.io with")
    # Debian's own CLI: another `docker` on PATH may lack what the tests use.
    tools = {command: debian_tool(command, package) for command, package in _PACKAGES.items()}
    tools["docker"] = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
    return tools


class Dockerd:
    """One dockerd: ``start`` it, use ``client()`` or ``env``, ``stop`` it by its PID."""

    def __init__(self, dockerd: str, run_dir: Path, data_root: Path) -> None:
        self.dockerd, self.run_dir, self.data_root = dockerd, run_dir, data_root
        self.socket = run_dir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.gpu_hook_log = run_dir / "gpu-hook.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.url}

    def start(self, timeout_s: float = 60) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        exec_root = Path(
            tempfile.mkdtemp(prefix="exec-", dir="/run" if os.access("/run", os.W_OK) else None)
        )
        self._exec_root = exec_root
        argv = [
            self.dockerd,
            "--data-root", str(self.data_root),
            "--exec-root", str(exec_root),
            "--pidfile", str(self.run_dir / "dockerd.pid"),
            "-H", self.url,
            "--iptables=false", "--ip-forward=false", "--ip-masq=false",
            "--bridge=none", "--userland-proxy=false",
        ]  # fmt: skip
        log = (self.run_dir / "dockerd.log").open("ab")
        env = {
            **os.environ,
            "PATH": f"{ENGINE_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HELIOS_HPO_GPU_HOOK_LOG": str(self.gpu_hook_log),
        }
        self.process = subprocess.Popen(  # noqa: S603 (Debian's dockerd)
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self.log_tail()}")
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"dockerd did not answer in {timeout_s} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM by PID (it stops its containerd), then unmount what it leaves."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        netns = self._exec_root / "netns" / "default"
        if os.path.ismount(netns):
            subprocess.run(["umount", str(netns)], check=False)  # noqa: S607
        shutil.rmtree(self._exec_root, ignore_errors=True)

    def remove_containers(self) -> None:
        """Remove every container, e.g. those an interrupted run left in the data root."""
        for container in self.client().containers.list(all=True):
            container.remove(force=True)

    def gpus_given(self) -> dict[str, str | None]:
        """Container id -> NVIDIA_VISIBLE_DEVICES, for the containers given GPUs so far."""
        if not self.gpu_hook_log.exists():
            return {}
        lines = self.gpu_hook_log.read_text().splitlines()
        return {entry["id"]: entry["gpus"] for entry in map(json.loads, lines)}

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=120)

    def log_tail(self, lines: int = 20) -> str:
        path = self.run_dir / "dockerd.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )


def _debootstrap_base(tools: dict[str, str], engine: Dockerd, work: Path) -> None:
    """Debian bookworm with Python 3, pip and this machine's CA certificates."""
    root = work / "rootfs"
    subprocess.run(  # noqa: S603
        [tools["debootstrap"], "--variant=minbase",
         "--include=python3,python3-venv,python3-pip,ca-certificates,passwd",
         "bookworm", str(root), _debian_mirror()],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    # Outbound HTTPS may go through a proxy with its own CA: pip in the images needs it.
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(crt, root / "usr/local/share/ca-certificates" / crt.name)
    subprocess.run(["chroot", str(root), "update-ca-certificates"], check=True, capture_output=True)  # noqa: S607
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)  # noqa: S607
    subprocess.run(  # noqa: S603
        [tools["docker"], "import", "-c", 'CMD ["/bin/bash"]', "-c", "ENV LANG=C.UTF-8",
         "-c", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "-", BASE_IMAGE],
        stdin=tar.stdout, env=engine.env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    tar.wait()


def _debian_mirror() -> str:
    for sources in Path("/etc/apt/sources.list.d").glob("*.sources"):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["deb"] and "security" not in line:
            return parts[1]
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list*")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


@contextlib.contextmanager
def _serving(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1, for pip's --find-links inside builds."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _has(client: Any, image: str) -> bool:
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def _build(client: Any, path: Path, dockerfile: str, tag: str, buildargs: dict[str, str]) -> None:
    import docker.errors

    try:
        client.images.build(
            path=str(path),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=buildargs,
            network_mode="host",
            rm=True,
        )
    except docker.errors.BuildError as exc:
        output = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
        raise RuntimeError(f"building {tag} failed:\n{output[-4000:]}") from None


def build_images(tools: dict[str, str], engine: Dockerd, *, rebuild: bool = True) -> None:
    """The base images when missing, then the service and worker images from this checkout
    (the layer cache makes an unchanged checkout a quick rebuild)."""
    client = engine.client()
    if not _has(client, BASE_IMAGE):
        with tempfile.TemporaryDirectory() as work:
            _debootstrap_base(tools, engine, Path(work))
    if not _has(client, TORCH_IMAGE):
        wheels = sorted(TORCH_WHEELS.glob("torch-2.13.0*cp311*.whl"))
        if not wheels:
            pytest.fail(f"no torch 2.13.0 wheel in {TORCH_WHEELS} (HELIOS_HPO_TORCH_WHEELS)")
        with tempfile.TemporaryDirectory() as work:
            (Path(work) / "Dockerfile").write_text(
                f"FROM {BASE_IMAGE}\n"
                "ARG FIND_LINKS\n"
                "RUN python3 -m pip install --break-system-packages --no-cache-dir "
                '--find-links "$FIND_LINKS" torch==2.13.0\n'
            )
            with _serving(TORCH_WHEELS) as url:
                _build(client, Path(work), "Dockerfile", TORCH_IMAGE, {"FIND_LINKS": url})
    if rebuild or not _has(client, WORKER_IMAGE):
        _build(
            client, REPO, "docker/worker.Dockerfile", WORKER_IMAGE,
            {"BASE": TORCH_IMAGE, "EXPECT_CUDA": "0"},
        )  # fmt: skip
    if rebuild or not _has(client, SERVICE_IMAGE):
        _build(
            client, REPO, "docker/service.Dockerfile", SERVICE_IMAGE,
            {"BASE": TORCH_IMAGE, "TORCH_SPEC": ""},
        )  # fmt: skip


def build_compose_images(engine: Dockerd) -> None:
    """The PostgreSQL and PgBouncer images tests/compose/override.yaml names."""
    client = engine.client()
    for dockerfile, tag in COMPOSE_IMAGES.items():
        _build(client, REPO / "tests" / "compose", dockerfile, tag, {"BASE": BASE_IMAGE})
