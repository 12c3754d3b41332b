"""What a checkpoint holds, how it is named, written, found and pruned."""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "capture_rng_state",
    "checkpoint_path",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 2  # 2: TrainingState's counters mean what helios-ml's mean


def checkpoint_path(root: Path, save_name: str, epoch: int, iteration: int) -> Path:
    """The path of a checkpoint; names sort by training progress."""
    return root / f"{save_name}_epoch{epoch:05d}_iter{iteration:010d}.pth"


def find_checkpoints(root: Path, save_name: str) -> list[Path]:
    """The checkpoints of ``save_name`` in ``root``, oldest first."""
    if not root.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(save_name)}_epoch(\d+)_iter(\d+)\.pth")
    found: list[tuple[int, int, Path]] = []
    for path in root.iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match[2]), int(match[1]), path))
    return [path for _, _, path in sorted(found)]


def latest_checkpoint(root: Path, save_name: str) -> Path | None:
    """The most advanced checkpoint of ``save_name`` in ``root``, if any."""
    found = find_checkpoints(root, save_name)
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            torch.save(state, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path, map_location: str | dict[str, str]) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain data only)."""
    state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    fmt = state.get("format")
    if fmt == 1:
        state["training_state"] = _counters_of_format_1(state["training_state"])
    elif fmt != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {fmt!r}; this helios reads 1 and {CHECKPOINT_FORMAT}"
        )
    return state


def _counters_of_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """Format 1 counted epochs completed, batches in the epoch (current_iteration),
    optimizer steps (global_iteration) and batches in total (dataset_iter)."""
    in_epoch = old["current_iteration"]
    return {
        **old,
        "global_epoch": old["global_epoch"] + (1 if in_epoch else 0),
        "current_iteration": old["global_iteration"],
        "global_iteration": old["dataset_iter"],
        "dataset_iter": in_epoch,
    }


def prune_checkpoints(root: Path, save_name: str, keep_last: int, keep: Iterable[Path]) -> None:
    """Delete the checkpoints of ``save_name`` but the last ``keep_last`` and ``keep``.

    ``keep_last <= 0`` keeps every checkpoint.
    """
    if keep_last <= 0:
        return
    found = find_checkpoints(root, save_name)
    spared = {p.name for p in keep} | {p.name for p in found[-keep_last:]}
    for path in found:
        if path.name not in spared:
            path.unlink(missing_ok=True)


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training run draws from."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),  # type: ignore[index]
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``capture_rng_state`` returned."""
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value
