"""A worker imports torch only when a trial trains (many idle workers stay small), and
yields the CPU to the service on a shared host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_the_worker_process_does_not_import_torch_before_a_trial() -> None:
    code = (
        "import sys\n"
        "import service.cli, service.worker.main, service.tasks\n"
        "service.tasks.all_tasks()\n"  # the registry, entry points included
        "print(sorted(m for m in ('torch', 'helios', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"


def test_a_worker_runs_at_the_configured_lower_priority() -> None:
    code = (
        "import os\n"
        "from service.settings import Settings\n"
        "from service.worker.signals import lower_priority\n"
        "before = os.nice(0)\n"
        "lower_priority(Settings().worker_nice)\n"
        "print(os.nice(0) - before)\n"
    )
    env = {**os.environ, "HELIOS_HPO_WORKER_NICE": "7"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    ).stdout
    assert out.strip() == "7"


def test_a_worker_leading_its_session_lowers_its_scheduling_group() -> None:
    """With autogroups, a niceness counts only inside the session's group: eight
    workers in eight sessions would get eight shares to the service's one."""
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel schedules without autogroups: the niceness alone counts")
    ours = Path("/proc/self/autogroup").read_text()
    code = (
        "from pathlib import Path\n"
        "from service.worker.signals import lower_priority\n"
        "lower_priority(7)\n"
        "print(Path('/proc/self/autogroup').read_text().split()[-1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        start_new_session=True,  # as the local launcher starts workers
    ).stdout
    assert out.strip() == "7"
    assert Path("/proc/self/autogroup").read_text() == ours  # the test's own group is untouched


def test_the_digits_task_reads_scikit_learns_digits_without_importing_scikit_learn() -> None:
    """scikit-learn's loader imports SciPy and the rest: about 170 MB per worker."""
    code = (
        "import sys\n"
        "from service.tasks.training import DigitsData\n"
        "data = DigitsData(batch_size=32)\n"
        "data.setup()\n"
        "print(len(data.train_dataset) + len(data.valid_dataset), 'sklearn' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.split() == ["1797", "False"]
    from sklearn.datasets import load_digits as sklearns

    from service.tasks.training import load_digits

    pixels, labels = load_digits()
    digits = sklearns()
    assert (pixels == digits.data).all()
    assert (labels == digits.target).all()
