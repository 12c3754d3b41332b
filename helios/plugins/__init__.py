"""Plug-ins that extend or override the helios trainer.

``OptunaPlugin`` lives in ``helios.plugins.optuna`` and is registered when
that module is imported (it needs optuna).
"""

from helios.plugins.plugin import (
    PLUGIN_REGISTRY,
    CUDAPlugin,
    DuplicatePluginError,
    Plugin,
    PluginConflictError,
    UniquePluginOverrides,
    check_unique_overrides,
    create_plugin,
    move_to_device,
)

__all__ = [
    "PLUGIN_REGISTRY",
    "CUDAPlugin",
    "DuplicatePluginError",
    "Plugin",
    "PluginConflictError",
    "UniquePluginOverrides",
    "check_unique_overrides",
    "create_plugin",
    "move_to_device",
]
