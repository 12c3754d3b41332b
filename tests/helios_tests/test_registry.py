from __future__ import annotations

import pytest

from helios import PLUGIN_REGISTRY, CUDAPlugin, Plugin, Registry, UnknownNameError, create_plugin


@PLUGIN_REGISTRY.register
class ResizePlugin(Plugin):
    def __init__(self, size: int = 4) -> None:
        super().__init__("resize")
        self.size = size

    def setup(self) -> None:
        pass


def test_decorated_plugins_are_created_by_name() -> None:
    assert "ResizePlugin" in PLUGIN_REGISTRY
    plugin = create_plugin("ResizePlugin", size=7)
    assert isinstance(plugin, ResizePlugin)
    assert plugin.size == 7
    assert PLUGIN_REGISTRY.get("CUDAPlugin") is CUDAPlugin
    assert {"CUDAPlugin", "ResizePlugin"} <= set(PLUGIN_REGISTRY.keys())
    assert ("ResizePlugin", ResizePlugin) in list(PLUGIN_REGISTRY)  # iteration: (name, class)


def test_the_three_registration_forms_of_the_seed() -> None:
    registry: Registry[Plugin] = Registry("plug-in")

    @registry  # "@hlp.PLUGIN_REGISTRY": registers the class it decorates
    class Called(Plugin):
        def setup(self) -> None:
            pass

    @registry.register
    class Decorated(Plugin):
        def setup(self) -> None:
            pass

    class Manual(Plugin):
        def setup(self) -> None:
            pass

    assert registry.register(Manual) is Manual
    assert [name for name, _ in registry] == ["Called", "Decorated", "Manual"]
    assert str(registry) == "plug-in"


def test_classes_of_one_name_can_be_defined_twice() -> None:
    # Two test functions each defining "class Stopper(Plugin)": defining is not registering.
    def define() -> type[Plugin]:
        class Stopper(Plugin):
            def setup(self) -> None:
                pass

        return Stopper

    first, second = define(), define()
    assert first is not second
    assert "Stopper" not in PLUGIN_REGISTRY


def test_unknown_name_is_a_key_error_listing_registered_names() -> None:
    with pytest.raises(KeyError) as info:
        create_plugin("NoSuchPlugin")
    assert isinstance(info.value, UnknownNameError)
    message = str(info.value)
    assert "unknown plugin 'NoSuchPlugin'" in message
    assert "CUDAPlugin" in message
    assert "ResizePlugin" in message


def test_suffixes_and_name_clashes() -> None:
    registry: Registry[object] = Registry("widget")

    class Widget:
        pass

    assert registry.register(Widget) is Widget
    assert registry.register(Widget) is Widget  # the same class again is fine
    other = type("Widget", (), {"__module__": "elsewhere"})
    with pytest.raises(ValueError, match="widget name 'Widget' is taken"):
        registry.register(other)
    assert registry.register(other, suffix="v2") is other
    assert list(registry.keys()) == ["Widget", "Widget_v2"]
    assert registry.get("Widget") is Widget
    assert registry.get("Widget_v2") is other
    with pytest.raises(KeyError):
        registry.get("Gadget", suffix="v2")
    registry.register(type("Gadget", (), {}), suffix="v2")
    assert registry.get("Gadget", suffix="v2").__name__ == "Gadget"
    assert isinstance(registry.create("Widget"), Widget)


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
