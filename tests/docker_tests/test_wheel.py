"""The images install the project as a wheel, not from the checkout: that wheel alone,
run outside the checkout, must migrate a database, serve, and train a study."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.specs import synthetic
from tests.support import free_port, wait_for, wait_until_ended

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, check=False, cwd=cwd, env=env
    )


def test_the_installed_wheel_migrates_serves_and_trains(tmp_path: Path) -> None:
    # What the Dockerfiles copy into the image before `pip install .`.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "alembic.ini"):
        shutil.copy(REPO / name, source)
    for package in ("helios", "service"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "dist"), str(source)]
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "Warning" not in built.stderr, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("helios_hpo-*.whl")
    site = tmp_path / "site"
    installed = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)]
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    home = tmp_path / "home"  # outside the checkout, so nothing is imported from it
    home.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "HELIOS_HPO_DATABASE_URL": f"sqlite:///{home / 'hpo.db'}",
        "HELIOS_HPO_DATA_DIR": str(home / "data"),
        "HELIOS_HPO_SUPERVISOR_INTERVAL_S": "0.2",
        "OMP_NUM_THREADS": "1",
    }
    where = _run(
        [sys.executable, "-c", "import helios, service; print(helios.__file__, service.__file__)"],
        cwd=home,
        env=env,
    )
    assert where.stdout.split() == [
        str(site / "helios" / "__init__.py"),
        str(site / "service" / "__init__.py"),
    ]
    upgraded = _run([sys.executable, "-m", "service.cli", "db", "upgrade"], cwd=home, env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "at revision head" in upgraded.stdout

    port = free_port()
    with (home / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def healthy() -> bool:
                assert server.poll() is None, (home / "serve.log").read_text()
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(healthy, 60, "the service to answer /healthz")
            spec = synthetic("packaged", n_trials=3, workers=1)
            assert client.post("/studies", json=spec).status_code == 201
            study = wait_until_ended(client, "packaged", 120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 3
