"""A worker imports torch only when a trial trains: many idle workers stay small."""

from __future__ import annotations

import subprocess
import sys


def test_the_worker_process_does_not_import_torch_before_a_trial() -> None:
    code = (
        "import sys\n"
        "import service.cli, service.worker, service.tasks\n"
        "service.tasks.all_tasks()\n"  # the registry, entry points included
        "print(sorted(m for m in ('torch', 'helios', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"
