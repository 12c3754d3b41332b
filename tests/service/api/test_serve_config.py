"""`helios-hpo serve` refuses a configuration it cannot work with, saying what to change."""

from __future__ import annotations

from pathlib import Path

from tests.support import run_serve


def test_serve_refuses_a_data_dir_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_serve(
        {
            "HELIOS_HPO_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "HELIOS_HPO_DATA_DIR": str(blocker / "data"),
        },
        "--port",
        "1",
    )
    assert result.returncode == 2
    assert f"cannot write worker logs and checkpoints to {blocker / 'data'}" in result.stderr
    assert "HELIOS_HPO_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


def test_serve_refuses_a_ddp_timeout_shorter_than_the_database_retries(tmp_path: Path) -> None:
    result = run_serve(
        {
            "HELIOS_HPO_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "HELIOS_HPO_DDP_TIMEOUT_S": "60",
            "HELIOS_HPO_DB_RETRY_S": "120",
        },
        "--port",
        "1",
    )
    assert result.returncode == 2
    assert "HELIOS_HPO_DDP_TIMEOUT_S (60.0) must exceed HELIOS_HPO_DB_RETRY_S (120.0)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_serve_refuses_slurm_options_the_launcher_sets_naming_the_setting(tmp_path: Path) -> None:
    result = run_serve(
        {
            "HELIOS_HPO_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "HELIOS_HPO_SLURM_EXTRA_ARGS": '["--constraint=a100", "--gres=gpu:8"]',
        },
        "--port",
        "1",
    )
    assert result.returncode == 2
    assert result.stderr == (
        "helios-hpo: invalid setting: HELIOS_HPO_SLURM_EXTRA_ARGS: '--gres=gpu:8': "
        "the launcher sets --gres itself\n"
    )
