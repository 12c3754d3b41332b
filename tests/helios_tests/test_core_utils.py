"""helios.core's utilities behave as helios-ml 1.4.1 documents them."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import helios
from helios import core


@dataclasses.dataclass
class Saved:
    a: int
    b: str


def test_get_from_optional_returns_the_value_and_refuses_none() -> None:
    assert core.get_from_optional(3) == 3
    assert core.get_from_optional(0, raise_on_empty=True) == 0  # a value, however falsy
    with pytest.raises(RuntimeError):
        core.get_from_optional(None, raise_on_empty=True)
    with pytest.raises(AssertionError):
        core.get_from_optional(None)


def test_convert_to_list() -> None:
    assert core.convert_to_list(5) == [5]
    same = [1, 2]
    assert core.convert_to_list(same) is same
    assert core.convert_to_list((1, 2, 3)) == [1, 2, 3]


def test_chdir_context_returns_where_it_started_and_goes_back(tmp_path: Path) -> None:
    start = Path.cwd()
    with core.ChdirContext(tmp_path) as previous:
        assert previous == start
        assert Path.cwd() == tmp_path.resolve()
    assert Path.cwd() == start
    with pytest.raises(ValueError, match="inside"), core.ChdirContext(tmp_path):
        raise ValueError("inside")
    assert Path.cwd() == start  # after an exception too


def test_average_timer_averages_the_last_window_of_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("helios.core.utils.perf_counter", lambda: clock[0])
    timer = core.AverageTimer(sliding_window=3)
    assert timer.get_average_time() == 0.0
    timer.start()
    for step in (1.0, 2.0, 3.0, 10.0):
        clock[0] += step
        timer.record()
    assert timer.get_average_time() == pytest.approx((2.0 + 3.0 + 10.0) / 3)


def test_registry_is_helios_mls() -> None:
    registry: core.Registry[Any] = core.Registry("test")
    registry.register(test_convert_to_list)
    assert str(registry) == "test"
    assert "test_convert_to_list" in registry
    assert registry.get("test_convert_to_list") is test_convert_to_list
    assert list(registry.keys()) == ["test_convert_to_list"]
    with pytest.raises(KeyError):
        registry.get("missing")


def test_update_all_registries_imports_the_modules_that_register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "regpkg"
    (package / "nested").mkdir(parents=True)
    (package / "__init__.py").write_text("from helios import core\nREG = core.Registry('r')\n")
    (package / "nested" / "__init__.py").write_text("")
    decorated = "from regpkg import REG\n\n\n@REG.register\ndef {0}():\n    return 1\n"
    (package / "one.py").write_text(decorated.format("one"))
    (package / "nested" / "two.py").write_text(decorated.format("two"))
    (package / "plain.py").write_text("raise ImportError('never imported: registers nothing')\n")
    (package / "data").mkdir()  # a folder that is no package is left alone
    monkeypatch.syspath_prepend(str(tmp_path))
    core.update_all_registries(package, recurse=True)
    registry = sys.modules["regpkg"].REG
    assert sorted(registry.keys()) == ["one", "two"]
    with pytest.raises(RuntimeError, match="not a folder"):
        core.update_all_registries(package / "one.py")
    with pytest.raises(RuntimeError, match="not a Python package"):
        core.update_all_registries(package / "data")


def test_safe_torch_load_loads_only_allowed_types(tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    state = {"a": 1, "b": "x", "c": Saved(2, "y")}
    torch.save(state, path)
    with pytest.raises(pickle.UnpicklingError):
        core.safe_torch_load(path)
    torch.serialization.add_safe_globals([Saved])
    try:
        assert core.safe_torch_load(path) == state
    finally:
        torch.serialization.clear_safe_globals()
    with pytest.raises(TypeError, match="weights_only"):
        core.safe_torch_load(path, weights_only=False)


def test_env_info_names_the_versions() -> None:
    banner = core.get_env_info_str()
    assert f"Helios: {helios.__version__}" in banner
    assert f"PyTorch: {torch.__version__}" in banner
    assert helios.__version__ == "1.4.1"
