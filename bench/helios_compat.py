"""helios-ml 1.4.1's own test suite run against this repository's helios, side by side
with helios-ml itself on the same machine.

The suite comes from helios-ml's source distribution on the package index, downloaded
once into ~/.cache/helios-hpo (nothing of it is kept in this repository). Our side runs
it with this environment's Python, whose ``helios`` is ours; the baseline installs
helios-ml 1.4.1 into a throwaway virtual environment (cached beside it) and runs the
same files there. Prints passed / failed / skipped per upstream test file for both.

    python bench/helios_compat.py                  # both sides
    python bench/helios_compat.py --ours-only      # no baseline environment
    python bench/helios_compat.py --json out.json  # the counts, for tests
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from tqdm import tqdm

VERSION = "1.4.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "helios-hpo"
# The torch release the Makefile pins. The baseline takes the package index's build of
# it (CUDA's, which runs on the CPU too): torchvision's wheels there load their operators
# only with that build, and helios-ml imports torchvision with helios.core.
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
# Results per test file: passed, failed (errors included), skipped; and the ids failed.
Counts = dict[str, dict[str, int]]
Failed = dict[str, list[str]]


def upstream_source() -> Path:
    """helios-ml's unpacked source distribution (downloaded once)."""
    root = CACHE / f"helios_ml-{VERSION}"
    if (root / "test").is_dir():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
            + ["--dest", tmp, f"helios-ml=={VERSION}"],
            check=True,
        )
        (sdist,) = Path(tmp).glob("helios*ml-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(CACHE, filter="data")
    return root


def baseline_python() -> Path:
    """A virtual environment with helios-ml itself (made once)."""
    venv = CACHE / f"helios-ml-{VERSION}-venv"
    python = venv / "bin" / "python"
    done = venv / ".installed"
    if done.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --isolated: no local wheel folder or constraints file of this machine (its CPU
    # build of torch cannot load torchvision's operators).
    pip = [str(python), "-m", "pip", "install", "--isolated", "-q"]
    # torch pinned in the same resolution: torchvision's newest release wants a newer one.
    subprocess.run([*pip, TORCH_SPEC, f"helios-ml[tune]=={VERSION}", "pytest"], check=True)
    done.touch()
    return python


def run_suite(python: Path, source: Path, env: dict[str, str]) -> tuple[Counts, Failed]:
    """Run upstream's tests with ``python``; counts per file, and the failed tests."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "test"
        shutil.copytree(source / "test", work)
        (Path(tmp) / "pytest.ini").write_text("[pytest]\n")
        report = Path(tmp) / "report.xml"
        subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
            + ["-c", str(Path(tmp) / "pytest.ini"), "--rootdir", tmp]
            + ["--continue-on-collection-errors", f"--junitxml={report}", str(work)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return parse_report(report) if report.exists() else ({}, {})


def parse_report(report: Path) -> tuple[Counts, Failed]:
    """Counts per test file of a JUnit XML report, and the ids of the failed tests."""
    counts: Counts = {}
    failed: Failed = {}
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 (pytest wrote it)
        # A test's class name is its module (test.test_core.TestUtils); a file that
        # could not be collected is a case named after the module.
        parts = f"{case.get('classname', '')}.{case.get('name', '')}".split(".")
        file = next((part for part in parts if part.startswith("test_")), "?") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        counts.setdefault(file, Counter())[outcome] += 1
        if outcome == "failed":
            test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name', '')}"
            failed.setdefault(file, []).append(test_id)
    return {f: dict(c) for f, c in sorted(counts.items())}, failed


def table(ours: Counts, theirs: Counts | None) -> str:
    """Both sides, a row per upstream test file."""
    files = sorted(set(ours) | set(theirs or {}))
    head = f"{'file':<28} {'ours p/f/s':>12}"
    if theirs is not None:
        head += f" {'helios-ml p/f/s':>16}"
    rows = [head]

    def cell(counts: Counts, file: str) -> str:
        c = counts.get(file, {})
        return f"{c.get('passed', 0)}/{c.get('failed', 0)}/{c.get('skipped', 0)}"

    for file in [*files, "total"]:
        pick = (lambda side: {"total": _total(side)}) if file == "total" else (lambda side: side)
        row = f"{file:<28} {cell(pick(ours), file):>12}"
        if theirs is not None:
            row += f" {cell(pick(theirs), file):>16}"
        rows.append(row)
    return "\n".join(rows)


def _total(counts: Counts) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts.values():
        total.update(c)
    return dict(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours-only", action="store_true", help="skip helios-ml's own run")
    parser.add_argument("--json", type=Path, help="write both sides' counts here")
    args = parser.parse_args()
    steps = ["download helios-ml's suite", "run it against our helios"]
    if not args.ours_only:
        steps += ["install helios-ml", "run it against helios-ml"]
    repo = Path(__file__).resolve().parents[1]
    with tqdm(total=len(steps), unit="step") as bar:
        bar.set_description(steps[0])
        source = upstream_source()
        bar.update()
        bar.set_description(steps[1])
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
        ours, ours_failed = run_suite(Path(sys.executable), source, env)
        bar.update()
        theirs, theirs_failed = None, None
        if not args.ours_only:
            bar.set_description(steps[2])
            python = baseline_python()
            bar.update()
            bar.set_description(steps[3])
            clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            theirs, theirs_failed = run_suite(python, source, {**clean, "OMP_NUM_THREADS": "1"})
            bar.update()
    print(table(ours, theirs))
    if args.json:
        both = {
            "ours": ours,
            "helios-ml": theirs,
            "ours_failed": ours_failed,
            "helios-ml_failed": theirs_failed,
        }
        args.json.write_text(json.dumps(both, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
