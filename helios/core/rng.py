"""The random generators a helios run draws from, seeded and saved together.

Python's ``random``, torch (and CUDA where there is one) and a default NumPy
``Generator`` (PCG64) that replaces NumPy's legacy global state: ``seed_rngs`` seeds
them all, ``get_rng_state_dict`` / ``load_rng_state_dict`` save and restore them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "DefaultNumpyRNG",
    "create_default_numpy_rng",
    "get_default_numpy_rng",
    "get_default_seed",
    "get_rng_state_dict",
    "load_rng_state_dict",
    "seed_rngs",
]

DEFAULT_SEED = 6691  # helios-ml's: a program seeded by default draws the same numbers


def get_default_seed() -> int:
    """The seed ``seed_rngs`` uses when given none."""
    return DEFAULT_SEED


class DefaultNumpyRNG:
    """A NumPy ``Generator`` whose state can be saved and restored like torch's.

    Args:
        seed: its seed (entropy from the OS when None).
    """

    def __init__(self, seed: int | Sequence[int] | None = None) -> None:
        self._generator = np.random.default_rng(seed)

    @property
    def generator(self) -> np.random.Generator:
        """The generator to draw from."""
        return self._generator

    def state_dict(self) -> Mapping[str, Any]:
        """The generator's state."""
        return self._generator.bit_generator.state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from a state ``state_dict`` returned."""
        self._generator.bit_generator.state = dict(state_dict)


_default: DefaultNumpyRNG | None = None


def create_default_numpy_rng(seed: int | Sequence[int] | None = None) -> None:
    """Make a new default NumPy generator, seeded with ``seed``."""
    global _default
    _default = DefaultNumpyRNG(seed)


def get_default_numpy_rng() -> DefaultNumpyRNG:
    """The default NumPy generator.

    Raises:
        RuntimeError: none was made yet (``seed_rngs`` or ``create_default_numpy_rng``).
    """
    if _default is None:
        raise RuntimeError(
            "the default NumPy generator does not exist yet: call rng.seed_rngs() or "
            "rng.create_default_numpy_rng() first"
        )
    return _default


def seed_rngs(seed: int | None = None, skip_torch: bool = False) -> None:
    """Seed Python's, torch's (CUDA's too) and the default NumPy generator.

    Args:
        seed: the seed; ``get_default_seed()`` when None.
        skip_torch: leave torch's generators as they are (a data loader's worker,
            which torch seeded already).
    """
    seed = DEFAULT_SEED if seed is None else seed
    if not skip_torch:
        torch.manual_seed(seed)  # CUDA's generators too, where there are any
    random.seed(seed)
    create_default_numpy_rng(seed)


def get_rng_state_dict() -> dict[str, Any]:
    """The state of every default generator (keys ``torch``, ``rand``, ``numpy``, ``cuda``)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "rand": random.getstate(),
        "numpy": get_default_numpy_rng().state_dict(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def load_rng_state_dict(state_dict: Mapping[str, Any]) -> None:
    """Continue every default generator from what ``get_rng_state_dict`` returned."""
    torch.set_rng_state(state_dict["torch"])
    random.setstate(state_dict["rand"])
    if _default is None:
        create_default_numpy_rng()
    get_default_numpy_rng().load_state_dict(state_dict["numpy"])
    if "cuda" in state_dict and torch.cuda.is_available():
        torch.cuda.set_rng_state(state_dict["cuda"])
