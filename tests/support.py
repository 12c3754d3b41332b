"""Helpers shared by the test suites: free ports, polling with a deadline, Debian tools."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from service.client import follow_study


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`helios-hpo serve ARGS` with only ``env`` (and no PATH), run until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", *args],
        env={**env, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def wait_until_ended(
    client: Any, name: str, timeout_s: float, explain: Callable[[], str] | None = None
) -> dict[str, Any]:
    """Poll study ``name`` through ``client`` (an httpx client of the service) until it
    leaves ``running``; its summary. ``explain`` adds to the error when it does not."""
    try:
        return follow_study(
            lambda: client.get(f"/studies/{name}").json(), interval_s=0.25, timeout_s=timeout_s
        )
    except (TimeoutError, httpx.TimeoutException) as exc:  # the study's, or one request's
        raise AssertionError(f"{exc!r}\n{explain() if explain else ''}") from None


def fake_distribution(root: Path, name: str, module: str, entry_points: str) -> None:
    """An installed-looking package in ``root`` (put it on PYTHONPATH): module ``name``
    with the source ``module``, and ``entry_points`` (the text of entry_points.txt)."""
    (root / f"{name}.py").write_text(textwrap.dedent(module))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def unavailable(reason: str) -> NoReturn:
    """A server or engine a test needs is not here: skip with ``reason``, except in CI
    (``CI=true``), where every test must run and a missing one fails."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: CI installs and starts every engine the tests use)")
    pytest.skip(reason)


def debian_tool(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` when it is missing (as root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    # One apt at a time: parallel test processes would trip over dpkg's lock.
    with open(Path(tempfile.gettempdir()) / "helios-hpo-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for step in ([install], [["apt-get", "update", "-q"], install]):  # then fresh lists
            if shutil.which(command) is not None or os.geteuid() != 0:
                break
            for argv in step:
                subprocess.run(argv, env=env, check=False, capture_output=True, timeout=600)  # noqa: S603
    path = shutil.which(command)
    if path is None:
        why = "as root" if os.geteuid() == 0 else "run the tests as root to install it"
        unavailable(f"this test needs Debian's {package} ({why}: apt-get install {package})")
    return path


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI ``app`` over real HTTP on a free loopback port; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the test server to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run_cli(
    *args: str, env: dict[str, str] | None = None, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """`helios-hpo ARGS` as a user runs it, with no HELIOS_HPO_ variable but those in ``env``;
    ``prelude`` is Python code run in the same process first."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HELIOS_HPO_")}
    main = "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", f"{prelude}\n{main}", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
