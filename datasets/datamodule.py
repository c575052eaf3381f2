"""The LightningDataModule shared by both tasks: loaders from ``TRAINING.*``, unpadded evaluation under DDP.

Train loader: shuffled, ``drop_last``, batch ``TRAINING.BATCH_SIZE_ON_1_GPU`` per process, ``TRAINING.NUM_THREADS``
workers, started afresh each epoch; under DDP Lightning inserts its shuffling `DistributedSampler`. The training
loader creates its iterator (shuffled order, worker seeds) at the first batch of an epoch, after the
``on_train_epoch_start`` hooks (where `engine.callbacks.EpochSeed` seeds the epoch), never earlier: Lightning calls
``iter()`` on it ahead of the first epoch of a process, so without this a run resumed at epoch e would draw its
order before the seeding and see other batches than an uninterrupted run. Evaluation loader (validation and
test are the same set, as released): in order, batch ``BATCH_SIZE_ON_1_GPU`` (segmentation) or 1 (depth), and under
several processes a `UnpaddedDistributedSampler`, so each image is evaluated exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.io import DataError
from datasets.samplers import UnpaddedDistributedSampler


class _FirstBatchLoader(DataLoader):
    """A DataLoader whose iterator is made at the first ``next()``, not at ``iter()`` (see the module docstring)."""

    def __iter__(self) -> Iterator:
        yield from super().__iter__()


class DenseDataModule(L.LightningDataModule):
    """Builds its data sets lazily in `setup` from the given factories.

    Args:
        make_train: returns the training set (called for stage "fit").
        make_val: returns the evaluation set (every stage).
        batch_size: per-process training batch.
        val_batch_size: per-process evaluation batch.
        num_workers: loader workers.
        prepare: optional, run once per node before `setup` (writes the demo set).
    """

    def __init__(
        self,
        make_train: Callable[[], Dataset],
        make_val: Callable[[], Dataset],
        batch_size: int,
        val_batch_size: int,
        num_workers: int,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.make_train = make_train
        self.make_val = make_val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.prepare = prepare
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.make_train()
            if len(self.train_set) < self.batch_size:
                raise DataError(
                    f"training set has {len(self.train_set)} samples, fewer than one batch "
                    f"(TRAINING.BATCH_SIZE_ON_1_GPU {self.batch_size}); no step would run"
                )
        if self.val_set is None:
            self.val_set = self.make_val()

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler = None
        trainer = self.trainer
        if not train and trainer is not None and trainer.world_size > 1:
            sampler = UnpaddedDistributedSampler(dataset, trainer.world_size, trainer.global_rank)
        return (_FirstBatchLoader if train else DataLoader)(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0 and not train,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
