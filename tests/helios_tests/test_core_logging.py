"""helios.core.logging: the default root logger and TensorBoard writer of a run."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helios.core import logging as hlog


@pytest.fixture(autouse=True)
def _no_loggers_left() -> Iterator[None]:
    yield
    hlog.close_default_loggers()
    logging.captureWarnings(False)  # the root logger captured them; other tests' are theirs


def test_before_creation_nothing_is_there() -> None:
    assert not hlog.is_root_logger_active()
    assert hlog.get_tensorboard_writer() is None
    with pytest.raises(KeyError, match="create_default_loggers"):
        hlog.get_root_logger()
    with pytest.raises(RuntimeError, match="create_default_loggers"):
        hlog.restore_default_loggers(Path("x.log"))


def test_the_log_file_gets_info_and_the_console_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hlog.create_default_loggers(enable_tensorboard=False)
    assert hlog.get_tensorboard_writer() is None
    hlog.setup_default_loggers("run", log_root=tmp_path / "logs")
    root = hlog.get_root_logger()
    (log_file,) = (tmp_path / "logs").glob("run_*.log")
    assert root.log_file == log_file
    assert re.fullmatch(r"run_[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}\.log", log_file.name)
    root.info("training starts")
    root.warning("lr is high")
    logging.getLogger("helios.trainer").info("a module's line reaches the file too")
    hlog.flush_default_loggers()
    text = log_file.read_text()
    assert "[INFO]: training starts" in text
    assert "[WARNING]: lr is high" in text
    assert "a module's line reaches the file too" in text
    console = capsys.readouterr().err
    assert "lr is high" in console
    assert "training starts" not in console  # the console shows warnings and worse


def test_restore_appends_to_the_same_file(tmp_path: Path) -> None:
    log_file = tmp_path / "run.log"
    hlog.create_default_loggers(enable_tensorboard=False)
    hlog.restore_default_loggers(log_path=log_file)
    hlog.get_root_logger().info("first")
    hlog.close_default_loggers()
    assert not hlog.is_root_logger_active()
    hlog.create_default_loggers(enable_tensorboard=False)
    hlog.restore_default_loggers(log_path=log_file)
    hlog.get_root_logger().info("second")
    hlog.flush_default_loggers()
    lines = log_file.read_text().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["first", "second"]


def test_closing_takes_the_handlers_off_the_helios_logger(tmp_path: Path) -> None:
    before = list(logging.getLogger("helios").handlers)
    hlog.create_default_loggers(enable_tensorboard=False)
    hlog.restore_default_loggers(log_path=tmp_path / "x.log")
    hlog.close_default_loggers()
    assert logging.getLogger("helios").handlers == before


def test_tensorboard_writes_event_files_into_the_run_folder(tmp_path: Path) -> None:
    hlog.create_default_loggers(enable_tensorboard=True)
    hlog.setup_default_loggers("tb", runs_root=tmp_path / "runs")
    writer = hlog.get_tensorboard_writer()
    assert writer is not None
    (run,) = (tmp_path / "runs").iterdir()
    assert writer.run_path == run
    writer.add_scalar("loss", 0.5, 1)
    writer.add_text("note", "hello", 1)
    writer.flush()
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    events = EventAccumulator(str(run))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("loss")] == [(1, 0.5)]


def test_a_writer_not_set_up_does_nothing() -> None:
    writer = hlog.TensorboardWriter()
    writer.add_scalar("loss", 1.0, 0)  # no run folder: nothing written, nothing raised
    with pytest.raises(RuntimeError, match="setup"):
        _ = writer.run_path


def test_without_tensorboard_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    hlog.create_default_loggers()
    with pytest.raises(ImportError, match=r"helios-hpo\[helios-full\]"):
        hlog.setup_default_loggers("x", runs_root=tmp_path)
