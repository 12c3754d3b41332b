"""helios: a light-weight PyTorch trainer whose plug-ins extend or override it.

It implements helios-ml 1.4.1's public API (``__version__`` names that API), with
this project's additions on top.
"""

from helios.data import DataLoaderParams, DataModule, ResumableSampler
from helios.model import Model
from helios.plugins import (
    PLUGIN_REGISTRY,
    CUDAPlugin,
    DuplicatePluginError,
    Plugin,
    PluginConflictError,
    UniquePluginOverrides,
    create_plugin,
)
from helios.registry import Registry, UnknownNameError
from helios.trainer import Trainer, TrainingState, TrainingUnit

__version__ = "1.4.1"

__all__ = [
    "__version__",
    "PLUGIN_REGISTRY",
    "CUDAPlugin",
    "DataLoaderParams",
    "DataModule",
    "DuplicatePluginError",
    "Model",
    "Plugin",
    "PluginConflictError",
    "Registry",
    "ResumableSampler",
    "Trainer",
    "TrainingState",
    "TrainingUnit",
    "UniquePluginOverrides",
    "UnknownNameError",
    "create_plugin",
]
