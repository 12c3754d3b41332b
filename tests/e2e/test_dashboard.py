"""optuna-dashboard beside the API (`serve --dashboard-port`), seen in headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Service, wait_for_status
from tests.specs import synthetic
from tests.support import debian_tool, free_port

ARTIFACTS = Path(os.environ.get("HELIOS_HPO_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed here when missing (the machine has no browser)."""
    return debian_tool("chromium", "chromium")


def _page(chromium: str, url: str, *extra: str) -> str:
    """The page's text after its scripts ran."""
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--virtual-time-budget=15000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    html = re.sub(r"<style.*?</style>", "", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def dashboard_port() -> int:
    return free_port()


@pytest.fixture
def service_args(dashboard_port: int) -> tuple[str, ...]:
    return ("--dashboard-port", str(dashboard_port))


def test_the_dashboard_shows_the_submitted_study(
    service: Service, dashboard_port: int, chromium: str
) -> None:
    name = "seen-in-dashboard"
    # A conditional space: trials carry different sets of parameters.
    space = {
        "kind": {"type": "categorical", "choices": ["bowl", "shifted"]},
        "x": {"type": "float", "low": -5.0, "high": 5.0, "when": {"kind": ["shifted"]}},
        "y": {"type": "int", "low": -3, "high": 3},
    }
    spec = synthetic(name, n_trials=5, search_space=space)
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        finished = wait_for_status(client, name, 60, service)
    assert finished["status"] == "finished"

    dashboard = f"http://127.0.0.1:{dashboard_port}"
    studies = httpx.get(f"{dashboard}/api/studies", timeout=10).json()["study_summaries"]
    (study,) = [s for s in studies if s["study_name"] == name]

    home = _page(chromium, f"{dashboard}/dashboard", "--dump-dom")
    assert name in home, home[:2000]
    trials_url = f"{dashboard}/dashboard/studies/{study['study_id']}/trials"
    trials = _page(chromium, trials_url, "--dump-dom")
    assert "5 Trials" in trials, trials[:2000]
    assert "Trial 4" in trials
    assert "kind" in trials
    # The best trial's stored model, listed on its page from the service's artifact store.
    best = finished["best_trial"]
    best_page = _page(chromium, f"{trials_url}?numbers={best}", "--dump-dom")
    assert f"trial-{best}-model.pt" in best_page, best_page[:3000]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = (ARTIFACTS / f"dashboard-{Path(service.database_url).name[:40]}.png").resolve()
    _page(chromium, trials_url, f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one
