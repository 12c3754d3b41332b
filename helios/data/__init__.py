"""Datasets, data loaders and image helpers (helios-ml's ``helios.data``)."""

from helios.data import functional
from helios.data.datamodule import DataLoaderParams, DataModule, DatasetSplit, ResumableSampler

__all__ = ["DataLoaderParams", "DataModule", "DatasetSplit", "ResumableSampler", "functional"]
