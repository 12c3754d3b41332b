"""Launchers come from the helios_hpo.launchers entry-point group: the built-ins and a
package of a team's own, which the service runs like the built-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import fake_distribution

REPO = Path(__file__).resolve().parents[3]

FAKE = """
from service.launchers import register


@register("cloud", enable="set CLOUD_ENABLED=1")
def cloud_launcher(settings):
    return None  # not enabled here


def plain(settings):
    return None
"""

CHECK = """
import json
from service.launchers import launcher_errors, registered
from service.launchers.base import _REGISTRY
from service.spec.models import WorkersSpec
print(json.dumps({
    "names": registered(),
    "cloud": launcher_errors({}, WorkersSpec.model_validate({"launcher": "cloud"})),
    "plain": _REGISTRY["plain"].enable,
}))
"""


def test_launchers_of_other_packages_register_through_the_entry_point_group(
    tmp_path: Path,
) -> None:
    # Adding a launcher meant editing service/launchers/__init__.py: none could ship as
    # a package of its own (a Kubernetes or cloud launcher).
    fake_distribution(
        tmp_path,
        "cloudlaunch",
        FAKE,
        "[helios_hpo.launchers]\ncloud = cloudlaunch:cloud_launcher\n"
        "plain = cloudlaunch:plain\nbroken = cloudlaunch:MISSING\n",
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True
    )
    found = json.loads(done.stdout)
    assert found["names"] == ["cloud", "docker", "local", "plain", "slurm"]
    assert found["cloud"] == [
        ["workers.launcher", "this service does not run cloud workers (set CLOUD_ENABLED=1)"]
    ]
    assert found["plain"] == "see the cloudlaunch docs"
    assert "could not load launcher entry point broken = cloudlaunch:MISSING" in done.stderr
