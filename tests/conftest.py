"""Shared test configuration: the gpu marker skips cleanly without CUDA; one real Docker
engine for the docker-marked tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.databases import postgres_url
from tests.dockerd import Dockerd, build_images, cache_dir, engine_tools

__all__ = ["postgres_url"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    """Debian's dockerd with the service and worker images built from this checkout.

    Its data root (images, layer cache) stays under ~/.cache/helios-hpo between runs.
    """
    tools = engine_tools()
    engine = Dockerd(tools["dockerd"], tmp_path_factory.mktemp("dockerd"), cache_dir() / "docker")
    engine.start()
    try:
        engine.remove_containers()
        build_images(tools, engine)
        yield engine
    finally:
        engine.stop()
