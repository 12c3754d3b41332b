"""Trainer: the training, validation and testing loops around a Model and a DataModule."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import enum
import logging
import random
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import tqdm

from helios import checkpoint as ckpt
from helios import distributed
from helios.data import DataModule, ResumableSampler
from helios.model import Model
from helios.plugins.plugin import Plugin, PluginConflictError, check_unique_overrides

__all__ = ["Precision", "Trainer", "TrainingState", "TrainingUnit"]

log = logging.getLogger(__name__)

Precision = Literal["32", "bf16", "fp16"]
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingUnit(enum.Enum):
    """What ``total_steps``, ``valid_frequency`` and ``chkpt_frequency`` count."""

    EPOCH = "epoch"
    ITERATION = "iteration"


@dataclasses.dataclass
class TrainingState:
    """Where a training run is; saved in checkpoints. Counters mean what helios-ml's mean.

    Attributes:
        current_iteration: optimizer steps taken (one per ``accumulation_steps``
            batches), counting the one the current batch makes.
        global_iteration: batches trained in total, counting the current one.
        global_epoch: epochs started: the current epoch's number, from 1; between
            epochs, the epochs completed.
        validation_cycles: validation cycles completed.
        dataset_iter: batches trained in the current epoch, before the current one.
        early_stop_count: validation cycles in a row without improvement.
        average_iter_time: mean seconds per batch, over the last ones.
        running_iter: optimizer steps since the last validation cycle.
        best_checkpoint: file name of the checkpoint kept as best, if any.
        stopped_early: training ended before ``total_steps`` (early stop, pruning,
            a plug-in or the model).
    """

    current_iteration: int = 0
    global_iteration: int = 0
    global_epoch: int = 0
    validation_cycles: int = 0
    dataset_iter: int = 0
    early_stop_count: int = 0
    average_iter_time: float = 0.0
    running_iter: int = 0
    best_checkpoint: str | None = None
    stopped_early: bool = False

    def dict(self) -> builtins.dict[str, Any]:
        """The state as a plain dict."""
        return dataclasses.asdict(self)

    @property
    def epochs_completed(self) -> int:
        """Epochs trained to their end."""
        return self.global_epoch - 1 if self.dataset_iter else self.global_epoch


class Trainer:
    """Fits and tests a ``Model`` on a ``DataModule``.

    Args:
        total_steps: how long to train, in ``train_unit``s (``fit`` needs it).
        train_unit: whether steps are epochs or optimizer iterations.
        valid_frequency: validate every this many units (None: never).
        chkpt_frequency: checkpoint every this many units (None: never).
        chkpt_root: the checkpoint folder; ``fit`` resumes from the latest
            checkpoint of the model's ``save_name`` found there.
        keep_last_checkpoints: how many recent checkpoints to keep besides the
            best (<= 0 keeps all).
        early_stop_cycles: stop after this many validation cycles in a row
            without improvement (``Model.have_metrics_improved``).
        accumulation_steps: batches whose gradients make one optimizer step.
        precision: ``"32"``, or autocast to ``"bf16"``/``"fp16"``.
        seed: seeds Python, NumPy and torch, and the data order; random if None.
        device: where to train; CUDA when available (``cuda:LOCAL_RANK`` under
            torchrun), else the CPU.
        enable_progress_bar: tqdm bars; None shows them when stderr is a terminal.
        plugins: plug-ins to register (as ``register_plugin`` does).

    Plug-ins enter ``plugins`` (id -> plug-in) through ``Trainer(plugins=...)``,
    ``register_plugin``, their ``configure_trainer`` or directly; each gets the
    trainer's context when training or testing starts. ``train_exceptions`` and
    ``test_exceptions`` list the exceptions plug-ins expect from ``fit`` and
    ``test`` (e.g. ``optuna.TrialPruned``): when one is raised by an end hook the
    other end hooks still run, then it propagates. No exception is swallowed.

    After ``fit``, ``state`` is where training ended and ``resumed_from`` the
    checkpointed state it resumed from (None when it started afresh).
    """

    def __init__(
        self,
        *,
        total_steps: int | None = None,
        train_unit: TrainingUnit | str = TrainingUnit.EPOCH,
        valid_frequency: int | None = 1,
        chkpt_frequency: int | None = None,
        chkpt_root: str | Path | None = None,
        keep_last_checkpoints: int = 1,
        early_stop_cycles: int | None = None,
        accumulation_steps: int = 1,
        precision: Precision = "32",
        seed: int | None = None,
        device: str | torch.device | None = None,
        enable_progress_bar: bool | None = None,
        plugins: Iterable[Plugin] = (),
    ) -> None:
        if total_steps is not None:
            _require_positive(total_steps=total_steps)
        _require_positive(accumulation_steps=accumulation_steps)
        _require_positive_or_none(
            valid_frequency=valid_frequency,
            chkpt_frequency=chkpt_frequency,
            early_stop_cycles=early_stop_cycles,
        )
        if chkpt_frequency is not None and chkpt_root is None:
            raise ValueError("chkpt_frequency needs chkpt_root: where should checkpoints go?")
        if precision not in ("32", "bf16", "fp16"):
            raise ValueError(f"precision must be '32', 'bf16' or 'fp16', got {precision!r}")
        self.total_steps = total_steps  # None: fit refuses (a Trainer for plug-ins or test)
        self.train_unit = TrainingUnit(train_unit)
        self.valid_frequency = valid_frequency
        self.chkpt_frequency = chkpt_frequency
        self.chkpt_root = Path(chkpt_root) if chkpt_root is not None else None
        self.keep_last_checkpoints = keep_last_checkpoints
        self.early_stop_cycles = early_stop_cycles
        self.accumulation_steps = accumulation_steps
        self.precision: Precision = precision
        self.dist_env = distributed.detect()
        self.device = _pick_device(device, self.dist_env)
        if self.is_distributed:
            distributed.init_process_group(self.device)
        if seed is None:  # drawn here, where every rank runs: not in a getter one rank may call
            seed = distributed.broadcast_object(random.randrange(2**31))  # noqa: S311 (a seed)
        self._seed = seed
        self.enable_progress_bar = enable_progress_bar
        self.plugins: dict[str, Plugin] = {}
        self.train_exceptions: list[type[BaseException]] = []
        self.test_exceptions: list[type[BaseException]] = []
        self._model: Model | None = None
        self._datamodule: DataModule | None = None
        self._configures_model: set[str] = set()  # ids whose configure_model fit calls
        self.state = TrainingState()
        self.resumed_from: TrainingState | None = None
        self._set_up_model: Model | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._scaler_state: dict[str, Any] | None = None
        for plugin in plugins:
            self.register_plugin(plugin)

    # -- context the model, data module and plug-ins read ------------------
    @property
    def rank(self) -> int:
        """Global rank of this process."""
        return self.dist_env.rank

    @property
    def local_rank(self) -> int:
        """Rank of this process on its host (its device index)."""
        return self.dist_env.local_rank

    @property
    def world_size(self) -> int:
        """Number of processes training together."""
        return self.dist_env.world_size

    @property
    def is_distributed(self) -> bool:
        """Whether this is a distributed data parallel run."""
        return self.dist_env.is_distributed

    @property
    def map_loc(self) -> str:
        """``map_location`` that loads checkpoints onto this process's device."""
        return str(self.device)

    @property
    def seed(self) -> int:
        """The seed of this run (drawn at random, the same on every rank, when not given)."""
        return self._seed

    @property
    def model(self) -> Model:
        """The model being fitted or tested."""
        if self._model is None:
            raise RuntimeError("the trainer has no model yet: fit() or test() sets it")
        return self._model

    @property
    def datamodule(self) -> DataModule:
        """The data module being fitted or tested on."""
        if self._datamodule is None:
            raise RuntimeError("the trainer has no data module yet: fit() or test() sets it")
        return self._datamodule

    @property
    def queue(self) -> None:
        """Always None: helios runs distributed under torchrun only, never spawning."""
        return None

    # -- public API --------------------------------------------------------
    def register_plugin(self, plugin: Plugin) -> None:
        """Register ``plugin`` through its ``configure_trainer``; ``fit`` and ``test`` then
        call its ``configure_model``.

        Raises:
            DuplicatePluginError: another plug-in holds its id (a ``KeyError``).
            PluginConflictError: it claims an override another plug-in claims.
        """
        plugin.configure_trainer(self)
        if self.plugins.get(plugin.plug_id) is not plugin:  # its override did not register
            plugin._register_in_trainer(self)  # noqa: SLF001 (the plug-in API's own helper)
        try:
            check_unique_overrides(self.plugins.values())
        except PluginConflictError:
            del self.plugins[plugin.plug_id]
            raise
        self._configures_model.add(plugin.plug_id)

    def fit(self, model: Model, datamodule: DataModule) -> TrainingState:
        """Train ``model``, resuming from the latest checkpoint in ``chkpt_root``.

        Exceptions from the model, data or plug-ins propagate unchanged.

        Returns:
            The final training state.
        """
        if self.total_steps is None:
            raise ValueError("the Trainer has no total_steps: create it with total_steps=N")
        self._attach(model, datamodule)
        try:
            self._prepare(model, datamodule, for_training=True)
            loader = datamodule.train_dataloader()
            if loader is None or len(loader) == 0:
                raise ValueError(f"{type(datamodule).__name__} has no training batches")
            valid_loader = datamodule.valid_dataloader()
            self._call("on_training_start", model)
            self._train(model, loader, valid_loader)
            self._call_to_end("on_training_end", model, self.train_exceptions)
        finally:
            datamodule.teardown()
        return self.state

    def test(self, model: Model, datamodule: DataModule) -> dict[str, float]:
        """Test ``model``; a model this trainer did not fit is set up first.

        Returns:
            The model's metrics after ``on_testing_end``.
        """
        self._attach(model, datamodule)
        try:
            self._prepare(model, datamodule, for_training=False)
            loader = datamodule.test_dataloader()
            if loader is None:
                raise ValueError(f"{type(datamodule).__name__}.setup() left test_dataset None")
            batch_plugin = self._claimant("testing_batch")
            self._call("on_testing_start", model)
            model.eval()
            with torch.no_grad():
                for step, batch in enumerate(self._bar(loader, "test")):
                    if batch_plugin is not None:
                        batch = batch_plugin.process_testing_batch(batch, step)
                    model.on_testing_batch_start(step)
                    with self._autocast():
                        model.test_step(batch, step)
                    model.on_testing_batch_end(step)
            self._call_to_end("on_testing_end", model, self.test_exceptions)
        finally:
            datamodule.teardown()
        return dict(model.metrics)

    # -- set-up ------------------------------------------------------------
    def _attach(self, model: Model, datamodule: DataModule) -> None:
        check_unique_overrides(self.plugins.values())  # before any hook runs
        self._model, self._datamodule = model, datamodule
        model.trainer = self
        datamodule.trainer = self
        for plug_id, plugin in self.plugins.items():
            plugin.trainer = self
            plugin.is_distributed = self.is_distributed
            plugin.device = self.device
            plugin.rank = self.local_rank
            plugin.map_loc = self.map_loc
            # Plug-ins registered through configure_trainer alone are configured by
            # their user, as in helios-ml.
            if plug_id in self._configures_model:
                plugin.configure_model(model)

    def _prepare(self, model: Model, datamodule: DataModule, *, for_training: bool) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        already_set_up = self._set_up_model is model
        if not already_set_up:
            _seed_everything(self.seed)
        if self.rank == 0:
            datamodule.prepare_data()
        if self.is_distributed:
            dist.barrier()
        for plugin in self.plugins.values():
            plugin.setup()
        datamodule.setup()
        if not already_set_up:
            model.setup()
            self._set_up_model = model
        if for_training:
            self.state = TrainingState()
            self.resumed_from = None
            self._scaler_state = None
            self._resume(model)

    def _resume(self, model: Model) -> None:
        if self.chkpt_root is None:
            return
        path = ckpt.latest_checkpoint(self.chkpt_root, model.save_name)
        if path is None:
            return
        saved = ckpt.load_checkpoint(path, self.map_loc)
        model.load_state_dict(saved["model"])
        for plug_id, plugin in self.plugins.items():
            if plug_id in saved["plugins"]:
                plugin.load_state_dict(saved["plugins"][plug_id])
        self.state = TrainingState(**saved["training_state"])
        self.resumed_from = dataclasses.replace(self.state)
        self._seed = saved["seed"]
        ckpt.restore_rng_state(saved["rng"])
        self._scaler_state = saved.get("scaler")
        log.info("resumed %s from %s", model.save_name, path)

    # -- training ----------------------------------------------------------
    def _train(
        self,
        model: Model,
        loader: torch.utils.data.DataLoader[Any],
        valid_loader: torch.utils.data.DataLoader[Any] | None,
    ) -> None:
        state = self.state
        by_epoch = self.train_unit is TrainingUnit.EPOCH
        batch_plugin = self._claimant("training_batch")
        scaler = self._grad_scaler()
        accumulate = self.accumulation_steps
        bar = self._progress(by_epoch)
        timer = _BatchTimer()
        model.train()
        try:
            while not self._done():
                if not state.dataset_iter:  # a new epoch; else resume the current one
                    state.global_epoch += 1
                _start_epoch(loader, self.seed, state.global_epoch - 1, state.dataset_iter)
                model.on_training_epoch_start(state.global_epoch)
                for batch in loader:
                    state.global_iteration += 1
                    stepped = state.global_iteration % accumulate == 0
                    if stepped:
                        state.current_iteration += 1
                        state.running_iter += 1
                    if batch_plugin is not None:
                        batch = batch_plugin.process_training_batch(batch, state)
                    model.on_training_batch_start(state)
                    with self._autocast():
                        loss = model.train_step(batch, state)
                    if loss is not None:
                        if not model.optimizers:
                            raise ValueError(
                                f"{type(model).__name__}.train_step returned a loss but "
                                "model.optimizers is empty; add the optimizers in setup() "
                                "or return None after stepping them yourself"
                            )
                        loss = loss / accumulate if accumulate > 1 else loss
                        scaled: torch.Tensor = scaler.scale(loss) if scaler else loss
                        scaled.backward()
                        if stepped:
                            _optimizer_step(model.optimizers, scaler)
                    state.average_iter_time = timer.record()
                    model.on_training_batch_end(state)
                    state.dataset_iter += 1
                    if self._stop_requested(model):  # after every batch, as in helios-ml
                        state.stopped_early = True
                        return
                    if stepped and not by_epoch:
                        bar.update(1)
                        if self._at_boundary(model, valid_loader, state.current_iteration):
                            return
                else:
                    state.dataset_iter = 0
                    model.on_training_epoch_end(state.global_epoch)
                    if by_epoch:
                        bar.update(1)
                        if self._at_boundary(model, valid_loader, state.global_epoch):
                            return
        finally:
            bar.close()

    def _done(self) -> bool:
        unit = (
            self.state.epochs_completed
            if self.train_unit is TrainingUnit.EPOCH
            else self.state.current_iteration
        )
        return self.state.stopped_early or unit >= (self.total_steps or 0)

    def _stop_requested(self, model: Model) -> bool:
        """Whether a plug-in or the model asks to stop (every one of them is asked)."""
        answers = [plugin.should_training_stop() for plugin in self.plugins.values()]
        return any(answers) or model.should_training_stop()

    def _at_boundary(
        self,
        model: Model,
        valid_loader: torch.utils.data.DataLoader[Any] | None,
        step: int,
    ) -> bool:
        """Validate and checkpoint when due; True when training must end now."""
        stop = validated = False
        if valid_loader is not None and _due(step, self.valid_frequency):
            stop = self._validate(model, valid_loader)
            self.state.stopped_early = stop
            validated = True
        if _due(step, self.chkpt_frequency):
            # Best only when this boundary validated and improved: a checkpoint taken
            # later trained past the validated weights.
            self._save(model, best=validated and self.state.early_stop_count == 0)
        return self._done()

    def _validate(self, model: Model, loader: torch.utils.data.DataLoader[Any]) -> bool:
        state = self.state
        cycle = state.validation_cycles
        batch_plugin = self._claimant("validation_batch")
        model.eval()
        self._call("on_validation_start", model, cycle)
        with torch.no_grad():
            for step, batch in enumerate(self._bar(loader, f"valid {cycle}")):
                if batch_plugin is not None:
                    batch = batch_plugin.process_validation_batch(batch, step)
                model.on_validation_batch_start(step)
                with self._autocast():
                    model.valid_step(batch, step)
                model.on_validation_batch_end(step)
        self._call("on_validation_end", model, cycle)
        model.train()
        state.validation_cycles += 1
        state.running_iter = 0
        state.early_stop_count = 0 if model.have_metrics_improved() else state.early_stop_count + 1
        patience = self.early_stop_cycles
        early = patience is not None and state.early_stop_count >= patience
        # Every rank asks every plug-in here, so a plug-in may decide collectively.
        return distributed.any_rank(self._stop_requested(model) or early, self.device)

    def _save(self, model: Model, *, best: bool) -> None:
        if self.chkpt_root is None or self.rank != 0:
            return
        state = self.state
        path = ckpt.checkpoint_path(
            self.chkpt_root, model.save_name, state.epochs_completed, state.current_iteration
        )
        if best:
            state.best_checkpoint = path.name
        ckpt.save_checkpoint(
            {
                "format": ckpt.CHECKPOINT_FORMAT,
                "training_state": dataclasses.asdict(state),
                "model": model.state_dict(),
                "plugins": {pid: p.state_dict() for pid, p in self.plugins.items()},
                "rng": ckpt.capture_rng_state(),
                "seed": self.seed,
                "scaler": self._scaler.state_dict() if self._scaler is not None else None,
            },
            path,
        )
        keep = [self.chkpt_root / state.best_checkpoint] if state.best_checkpoint else []
        ckpt.prune_checkpoints(self.chkpt_root, model.save_name, self.keep_last_checkpoints, keep)

    # -- helpers -----------------------------------------------------------
    def _claimant(self, override: str) -> Plugin | None:
        for plugin in self.plugins.values():
            if getattr(plugin.unique_overrides, override):
                return plugin
        return None

    def _call(self, hook: str, model: Model, *args: Any) -> None:
        for plugin in self.plugins.values():
            getattr(plugin, hook)(*args)
        getattr(model, hook)(*args)

    def _call_to_end(self, hook: str, model: Model, expected: list[type[BaseException]]) -> None:
        """Call an end hook of every plug-in and the model; an expected exception from one
        lets the others run, then propagates."""
        raised: BaseException | None = None
        for target in [*self.plugins.values(), model]:
            try:
                getattr(target, hook)()
            except tuple(expected) as exc:
                raised = raised or exc
        if raised is not None:
            raise raised

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        self._scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        if self._scaler is not None and self._scaler_state:
            self._scaler.load_state_dict(self._scaler_state)
        return self._scaler

    def _show_bars(self) -> bool:
        if self.rank != 0:
            return False
        if self.enable_progress_bar is None:
            return sys.stderr.isatty()
        return self.enable_progress_bar

    def _progress(self, by_epoch: bool) -> tqdm.tqdm[Any]:
        done = self.state.epochs_completed if by_epoch else self.state.current_iteration
        return tqdm.tqdm(
            total=self.total_steps,
            initial=done,
            unit="epoch" if by_epoch else "it",
            desc="train",
            disable=not self._show_bars(),
            dynamic_ncols=True,
        )

    def _bar(self, loader: Iterable[Any], desc: str) -> Iterator[Any]:
        if not self._show_bars():
            return iter(loader)
        return iter(tqdm.tqdm(loader, desc=desc, leave=False, dynamic_ncols=True))


def _pick_device(
    device: str | torch.device | None, env: distributed.DistributedEnv
) -> torch.device:
    if device is not None:
        picked = torch.device(device)
        if picked.type == "cuda" and picked.index is None:  # "cuda": this rank's GPU
            return torch.device("cuda", env.local_rank)
        return picked
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _BatchTimer:
    """Mean seconds per batch over the last ``window`` batches or fewer."""

    def __init__(self, window: int = 200) -> None:
        self._window = window
        self._total = 0.0
        self._count = 0
        self._last = time.perf_counter()

    def record(self) -> float:
        now = time.perf_counter()
        if self._count >= self._window:
            self._total, self._count = 0.0, 0
        self._total += now - self._last
        self._count += 1
        self._last = now
        return self._total / self._count


def _start_epoch(
    loader: torch.utils.data.DataLoader[Any], seed: int, epoch: int, start_batch: int
) -> None:
    if loader.generator is not None:  # worker seeds depend only on seed and epoch
        loader.generator.manual_seed(seed + epoch)
    sampler = loader.sampler
    if isinstance(sampler, ResumableSampler):
        batch_size = loader.batch_size or 1
        sampler.set_epoch(epoch, start_index=start_batch * batch_size)
    elif start_batch:
        raise ValueError(
            "resuming mid-epoch needs the DataModule's dataloaders (a ResumableSampler); "
            "checkpoint on epoch boundaries or build loaders with DataModule._dataloader"
        )


def _optimizer_step(
    optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler | None
) -> None:
    for optimizer in optimizers:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
    if scaler is not None:
        scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)


def _due(step: int, frequency: int | None) -> bool:
    return frequency is not None and step % frequency == 0


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _require_positive_or_none(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value}")
