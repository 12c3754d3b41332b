"""Shared test configuration: the gpu marker skips cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch

from tests.databases import postgres_url

__all__ = ["postgres_url"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
