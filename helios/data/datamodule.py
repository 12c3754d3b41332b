"""DataModule: the datasets of a training scheme and their dataloaders."""

from __future__ import annotations

import abc
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sized
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:
    from helios.trainer import Trainer

__all__ = ["DataLoaderParams", "DataModule", "DatasetSplit", "ResumableSampler"]


class ResumableSampler(DistributedSampler[int]):
    """Shuffles with a per-epoch seed, shards across ranks, and starts mid-epoch.

    With one replica it is a plain (optionally shuffled) sampler. The order of
    an epoch depends only on the seed and the epoch, so a resumed run sees the
    same batches as an uninterrupted one; ``set_epoch(epoch, start_index)``
    skips the samples already trained on without loading them.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch's order, skipping its first ``start_index`` samples."""
        super().set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start_index, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start_index)


@dataclasses.dataclass
class DataLoaderParams:
    """How to build one dataloader.

    ``pin_memory=None`` pins when the trainer trains on a GPU.
    """

    batch_size: int = 1
    shuffle: bool = False
    num_workers: int = 0
    drop_last: bool = False
    pin_memory: bool | None = None
    persistent_workers: bool = False
    collate_fn: Callable[[list[Any]], Any] | None = None
    is_distributed: bool | None = None  # False: every rank loads all of it; else sharded


@dataclasses.dataclass
class DatasetSplit:
    """A dataset and how to load it, as ``DataModule._create_dataset`` returns them."""

    dataset: Dataset[Any]
    params: DataLoaderParams


class _SplitAlias:
    """``_train_dataset`` and its kin, as helios-ml names them: a ``DatasetSplit`` read
    from, and written to, ``train_dataset`` and ``train_params``."""

    def __init__(self, split: str) -> None:
        self.dataset, self.params = f"{split}_dataset", f"{split}_params"

    def __get__(self, module: Any, owner: type | None = None) -> Any:
        if module is None:  # looked up on the class
            return self
        dataset = getattr(module, self.dataset)
        return None if dataset is None else DatasetSplit(dataset, getattr(module, self.params))

    def __set__(self, module: Any, split: DatasetSplit) -> None:
        setattr(module, self.dataset, split.dataset)
        setattr(module, self.params, split.params)


class DataModule(abc.ABC):
    """Builds the train, validation and test datasets and their dataloaders.

    ``setup`` assigns ``train_dataset``, ``valid_dataset`` and ``test_dataset``
    (any may stay ``None``) and may change the ``*_params``. The dataloaders
    use a ``ResumableSampler`` that shards across ranks when distributed.
    """

    train_dataset: Dataset[Any] | None
    valid_dataset: Dataset[Any] | None
    test_dataset: Dataset[Any] | None
    train_params: DataLoaderParams
    valid_params: DataLoaderParams
    test_params: DataLoaderParams
    _trainer: Trainer | None

    def __new__(cls, *args: Any, **kwargs: Any) -> DataModule:
        # Set here, so a subclass whose __init__ skips super().__init__() (helios-ml's
        # examples do) still has them.
        self = super().__new__(cls)
        self.train_dataset = self.valid_dataset = self.test_dataset = None
        self.train_params = DataLoaderParams(shuffle=True)
        self.valid_params = DataLoaderParams()
        self.test_params = DataLoaderParams()
        self._trainer = None
        return self

    def __init__(self) -> None:
        pass

    @property
    def trainer(self) -> Trainer:
        """The trainer using this data module."""
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a trainer yet")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer) -> None:
        self._trainer = trainer

    # helios-ml's form: ``self._train_dataset = self._create_dataset(dataset, params)``.
    def _create_dataset(self, dataset: Dataset[Any], params: DataLoaderParams) -> DatasetSplit:
        """Pair ``dataset`` with a copy of ``params`` (later changes to them do not apply)."""
        return DatasetSplit(dataset, dataclasses.replace(params))

    _train_dataset = _SplitAlias("train")
    _valid_dataset = _SplitAlias("valid")
    _test_dataset = _SplitAlias("test")

    def prepare_data(self) -> None:
        """Fetch or generate data; runs on rank 0 only, before ``setup``."""

    @abc.abstractmethod
    def setup(self) -> None:
        """Create the datasets."""

    def teardown(self) -> None:
        """Release what ``setup`` acquired."""

    def train_dataloader(self) -> DataLoader[Any] | None:
        """The training dataloader, or None without a training set."""
        return self._dataloader(self.train_dataset, self.train_params)

    def valid_dataloader(self) -> DataLoader[Any] | None:
        """The validation dataloader, or None without a validation set."""
        return self._dataloader(self.valid_dataset, self.valid_params)

    def test_dataloader(self) -> DataLoader[Any] | None:
        """The testing dataloader, or None without a test set."""
        return self._dataloader(self.test_dataset, self.test_params)

    def _dataloader(
        self, dataset: Dataset[Any] | None, params: DataLoaderParams
    ) -> DataLoader[Any] | None:
        if dataset is None:
            return None
        trainer = self.trainer
        if not isinstance(dataset, Sized):
            raise TypeError(
                f"{type(dataset).__name__} has no len(); helios needs map-style datasets"
            )
        sharded = params.is_distributed is not False
        sampler = ResumableSampler(
            dataset,
            shuffle=params.shuffle,
            seed=trainer.seed,
            num_replicas=trainer.world_size if sharded else 1,
            rank=trainer.rank if sharded else 0,
            drop_last=params.drop_last,
        )
        pin = trainer.device.type == "cuda" if params.pin_memory is None else params.pin_memory
        return DataLoader(
            dataset,
            batch_size=params.batch_size,
            sampler=sampler,
            num_workers=params.num_workers,
            drop_last=params.drop_last,
            pin_memory=pin,
            persistent_workers=params.persistent_workers and params.num_workers > 0,
            collate_fn=params.collate_fn,
            generator=torch.Generator().manual_seed(trainer.seed),
        )
