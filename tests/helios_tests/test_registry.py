from __future__ import annotations

import pytest

from helios import PLUGIN_REGISTRY, CUDAPlugin, Plugin, Registry, UnknownNameError, create_plugin


class ResizePlugin(Plugin):
    def __init__(self, size: int = 4) -> None:
        super().__init__("resize")
        self.size = size

    def setup(self) -> None:
        pass


def test_subclassing_registers_and_create_plugin_builds() -> None:
    assert "ResizePlugin" in PLUGIN_REGISTRY
    plugin = create_plugin("ResizePlugin", size=7)
    assert isinstance(plugin, ResizePlugin)
    assert plugin.size == 7
    assert isinstance(create_plugin("CUDAPlugin"), CUDAPlugin)


def test_abstract_subclasses_are_not_registered() -> None:
    import abc

    class HalfDone(Plugin):
        @abc.abstractmethod
        def extra(self) -> None: ...

        def setup(self) -> None:
            pass

    assert "HalfDone" not in PLUGIN_REGISTRY


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_plugin("NoSuchPlugin")
    message = str(info.value)
    assert "unknown plugin 'NoSuchPlugin'" in message
    assert "CUDAPlugin" in message
    assert "ResizePlugin" in message


def test_manual_registration_and_name_clash() -> None:
    registry: Registry[object] = Registry("widget")

    class Widget:
        pass

    assert registry.register(Widget) is Widget
    assert registry.register(Widget) is Widget  # the same class again is fine
    assert list(registry) == ["Widget"]
    assert isinstance(registry.create("Widget"), Widget)

    other = type("Widget", (), {"__module__": "elsewhere"})
    with pytest.raises(ValueError, match="widget name 'Widget' is taken"):
        registry.register(other)


def test_optuna_plugin_registers_only_when_imported() -> None:
    import subprocess
    import sys

    code = (
        "import helios, sys; "
        "assert 'OptunaPlugin' not in helios.PLUGIN_REGISTRY; "
        "import helios.plugins.optuna; "
        "assert 'OptunaPlugin' in helios.PLUGIN_REGISTRY"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_helios_imports_without_optuna_sqlalchemy_or_fastapi() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('optuna', 'sqlalchemy', 'fastapi'):\n"
        "    sys.modules[name] = None  # makes any import of it fail\n"
        "import helios\n"
        "from helios import Trainer, Model, DataModule, CUDAPlugin\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "ok"
