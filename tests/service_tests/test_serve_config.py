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
