"""Shared test configuration: the gpu marker skips cleanly without CUDA; one real Docker
engine for the docker-marked tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from _pytest.nodeid import coerce_node_id

from tests.dockerd import Dockerd, build_images, cache_dir, engine_tools

# Workers the tests start compete with whatever else loads the machine, as the tests do:
# at the product's default niceness (10, for a shared host) two busy loops beside the
# suite starve them past every deadline. Services started in-process or by the e2e
# harness hand their workers this environment.
os.environ.setdefault("HELIOS_HPO_WORKER_NICE", "0")

# Fixtures of their own modules, registered here for every test: database_url,
# postgres_url (tests/databases.py).
pytest_plugins = ["tests.databases"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _tag_xdist_groups(config, items)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _tag_xdist_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a pytest-xdist worker under ``--dist loadgroup``, end each grouped test's id with
    ``@GROUP``, which is how the scheduler keeps a group in one process. xdist 3.8 sets
    the id through an attribute pytest 9 no longer reads, so the tags are set here."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(names))}")


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
