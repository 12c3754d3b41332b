"""helios-ml's default loggers: the root logger (the ``helios`` logger, to the console and
a log file) and a TensorBoard writer, made once per process and set up per run.

    create_default_loggers(enable_tensorboard=True)
    setup_default_loggers("my-run", log_root=Path("logs"), runs_root=Path("runs"))
    get_root_logger().info("training")
    get_tensorboard_writer().add_scalar("loss", 0.1, 10)
    close_default_loggers()

Only the process of global rank 0 writes info messages and TensorBoard events; every
rank writes errors. TensorBoard needs the ``tensorboard`` package (the
``helios-hpo[helios-full]`` extra); nothing imports it until a writer is set up.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from helios.core.distributed import get_global_rank

if TYPE_CHECKING:
    import numpy.typing as npt
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "RootLogger",
    "TensorboardWriter",
    "close_default_loggers",
    "create_default_loggers",
    "flush_default_loggers",
    "get_default_log_name",
    "get_root_logger",
    "get_tensorboard_writer",
    "is_root_logger_active",
    "restore_default_loggers",
    "setup_default_loggers",
]

LOG_FORMAT = "[%(asctime)s] [%(levelname)s]: %(message)s"


class RootLogger:
    """The ``helios`` logger: warnings and errors to the console, everything from
    ``INFO`` to the log file once ``setup`` names one.

    Args:
        capture_warnings: route ``warnings.warn`` into the log.
    """

    def __init__(self, capture_warnings: bool = True) -> None:
        logging.captureWarnings(capture_warnings)
        self._rank = get_global_rank()
        self._logger = logging.getLogger("helios")
        self._logger.setLevel(logging.INFO if self._rank == 0 else logging.ERROR)
        self._handlers: list[logging.Handler] = []
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        self._add(console)
        self._log_file: Path | None = None

    def _add(self, handler: logging.Handler) -> None:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._logger.addHandler(handler)
        self._handlers.append(handler)

    def setup(self, log_file: Path | None = None) -> None:
        """Log to ``log_file`` too, appending when it exists (None: the console only)."""
        if log_file is None:
            return
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        handler.setLevel(logging.INFO)
        self._add(handler)
        self._log_file = log_file

    @property
    def logger(self) -> logging.Logger:
        """The ``helios`` logger itself."""
        return self._logger

    @property
    def log_file(self) -> Path | None:
        """The log file ``setup`` named, if any."""
        return self._log_file

    def info(self, msg: str, **kwargs: Any) -> None:
        """An ``INFO`` line (rank 0 only)."""
        if self._rank == 0:
            self._logger.info(msg, **kwargs)

    def warning(self, msg: str, **kwargs: Any) -> None:
        """A ``WARNING`` line."""
        self._logger.warning(msg, **kwargs)

    def error(self, msg: str, **kwargs: Any) -> None:
        """An ``ERROR`` line."""
        self._logger.error(msg, **kwargs)

    def exception(self, msg: str, **kwargs: Any) -> None:
        """An ``ERROR`` line with the exception being handled."""
        self._logger.exception(msg, **kwargs)

    def flush(self) -> None:
        """Write out what the handlers hold."""
        for handler in self._handlers:
            handler.flush()

    def close(self) -> None:
        """Close this logger's handlers and take them off the ``helios`` logger."""
        for handler in self._handlers:
            handler.close()
            self._logger.removeHandler(handler)
        self._handlers.clear()


def _summary_writer(run_path: Path) -> SummaryWriter:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's module needs the tensorboard package
        raise ImportError(
            "TensorBoard logging needs the tensorboard package: pip install "
            "'helios-hpo[helios-full]' (or tensorboard), or pass enable_tensorboard=False"
        ) from exc
    return SummaryWriter(log_dir=str(run_path), flush_secs=20)


class TensorboardWriter:
    """TensorBoard's ``SummaryWriter`` on rank 0; every call a no-op on other ranks and
    before ``setup``."""

    def __init__(self) -> None:
        self._rank = get_global_rank()
        self._writer: SummaryWriter | None = None
        self._run_path: Path | None = None

    def setup(self, run_path: Path) -> None:
        """Write events into ``run_path`` (appended to when the run exists)."""
        if self._rank == 0:
            self._writer = _summary_writer(Path(run_path))
            self._run_path = Path(run_path)

    @property
    def run_path(self) -> Path:
        """The run folder ``setup`` named.

        Raises:
            RuntimeError: before ``setup`` (or on a rank other than 0).
        """
        if self._run_path is None:
            raise RuntimeError("the TensorBoard writer has no run folder: call setup first")
        return self._run_path

    def add_scalar(
        self, tag: str, scalar_value: float | str | torch.Tensor, global_step: int | None = None
    ) -> None:
        """One scalar."""
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: dict[str, float | torch.Tensor],
        global_step: int | None = None,
    ) -> None:
        """Several scalars under one parent tag."""
        if self._writer is not None:
            self._writer.add_scalars(main_tag, tag_scalar_dict, global_step)

    def add_image(
        self,
        tag: str,
        img_tensor: torch.Tensor | npt.NDArray[Any],
        global_step: int | None = None,
        dataformats: str = "CHW",
    ) -> None:
        """One image."""
        if self._writer is not None:
            self._writer.add_image(tag, img_tensor, global_step, dataformats=dataformats)

    def add_images(
        self,
        tag: str,
        img_tensor: torch.Tensor | npt.NDArray[Any],
        global_step: int | None = None,
        dataformats: str = "NCHW",
    ) -> None:
        """A batch of images."""
        if self._writer is not None:
            self._writer.add_images(tag, img_tensor, global_step, dataformats=dataformats)

    def add_figure(
        self, tag: str, figure: Any, global_step: int | None = None, close: bool = True
    ) -> None:
        """A matplotlib figure (or a list of them), rendered."""
        if self._writer is not None:
            self._writer.add_figure(tag, figure, global_step, close=close)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None) -> None:
        """Text."""
        if self._writer is not None:
            self._writer.add_text(tag, text_string, global_step)

    def add_graph(
        self,
        model: torch.nn.Module,
        input_to_model: torch.Tensor | list[torch.Tensor] | None = None,
        verbose: bool = False,
        use_strict_trace: bool = True,
    ) -> None:
        """The model's graph, traced on the CPU from a copy (the model is left as it is)."""
        if self._writer is None:
            return
        import copy

        traced = copy.deepcopy(model).cpu()
        inputs: Any = input_to_model
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.cpu()
        elif isinstance(inputs, list):
            inputs = [t.cpu() for t in inputs]
        self._writer.add_graph(traced, inputs, verbose, use_strict_trace)

    def add_pr_curve(
        self,
        tag: str,
        labels: torch.Tensor | npt.NDArray[Any],
        predictions: torch.Tensor | npt.NDArray[Any],
        global_step: int | None = None,
        num_thresholds: int = 127,
    ) -> None:
        """A precision-recall curve."""
        if self._writer is not None:
            self._writer.add_pr_curve(
                tag, labels, predictions, global_step, num_thresholds=num_thresholds
            )

    def add_hparams(
        self,
        hparam_dict: dict[str, Any],
        metric_dict: dict[str, Any],
        hparam_domain_discrete: dict[str, list[Any]] | None = None,
        run_name: str | None = None,
        global_step: int | None = None,
    ) -> None:
        """Hyper-parameters and the metrics they gave, in this run's folder."""
        if self._writer is not None:
            self._writer.add_hparams(
                hparam_dict,
                metric_dict,
                hparam_domain_discrete,
                run_name=run_name or str(self._run_path),
                global_step=global_step,
            )

    def flush(self) -> None:
        """Write out pending events."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_active: dict[str, RootLogger | TensorboardWriter] = {}


def get_default_log_name(run_name: str) -> str:
    """``RUN_Mon07_13-45-02``: a run's name with the local time, for logs and runs."""
    return f"{run_name}_{dt.datetime.now():%b%d_%H-%M-%S}"


def create_default_loggers(enable_tensorboard: bool = True, capture_warnings: bool = True) -> None:
    """Make the root logger (and the TensorBoard writer), once per process.

    Under DDP call it in each rank's process, after the process group exists.
    """
    if "root" not in _active:
        _active["root"] = RootLogger(capture_warnings=capture_warnings)
    if enable_tensorboard and "tensorboard" not in _active:
        _active["tensorboard"] = TensorboardWriter()


def restore_default_loggers(log_path: Path | None = None, run_path: Path | None = None) -> None:
    """Continue a run's log file and TensorBoard run (each when given).

    Raises:
        RuntimeError: ``create_default_loggers`` was not called.
    """
    if "root" not in _active:
        raise RuntimeError("no default loggers: call create_default_loggers first")
    if log_path is not None:
        _active["root"].setup(log_path)
    if run_path is not None and "tensorboard" in _active:
        _active["tensorboard"].setup(run_path)


def setup_default_loggers(
    run_name: str, log_root: Path | None = None, runs_root: Path | None = None
) -> None:
    """Start a run's log file in ``log_root`` and TensorBoard run in ``runs_root``, each
    named ``get_default_log_name(run_name)`` (None: not written)."""
    name = get_default_log_name(run_name)
    restore_default_loggers(
        None if log_root is None else Path(log_root) / f"{name}.log",
        None if runs_root is None else Path(runs_root) / name,
    )


def flush_default_loggers() -> None:
    """Flush every default logger."""
    for logger in _active.values():
        logger.flush()


def close_default_loggers() -> None:
    """Close the default loggers and forget them."""
    for logger in _active.values():
        logger.close()
    _active.clear()


def get_root_logger() -> RootLogger:
    """The root logger.

    Raises:
        KeyError: ``create_default_loggers`` was not called.
    """
    if "root" not in _active:
        raise KeyError("no root logger: call create_default_loggers first")
    return cast(RootLogger, _active["root"])


def is_root_logger_active() -> bool:
    """The root logger exists."""
    return "root" in _active


def get_tensorboard_writer() -> TensorboardWriter | None:
    """The TensorBoard writer, or None when TensorBoard is off."""
    return cast("TensorboardWriter | None", _active.get("tensorboard"))
