"""Helpers shared by the test suites: free ports, polling with a deadline, Debian tools."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


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


def debian_tool(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` when it is missing (as root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    for step in ([install], [["apt-get", "update", "-q"], install]):  # then with fresh lists
        if shutil.which(command) is not None or os.geteuid() != 0:
            break
        for argv in step:
            subprocess.run(argv, env=env, check=False, capture_output=True, timeout=600)  # noqa: S603
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"this test needs Debian's {package}: sudo apt-get install {package}")
    return path
