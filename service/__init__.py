"""helios-hpo: the hyperparameter-search service built on helios and Optuna."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("helios-hpo")  # the one version: pyproject.toml's
except PackageNotFoundError:  # pragma: no cover - run from a tree that is not installed
    __version__ = "0+unknown"
