"""Evaluation sampler for several processes that does not pad the data set with duplicates.

Lightning's default `DistributedSampler` pads the index list to a multiple of the world size, so a few images
would be evaluated twice and bias whole-set metrics. `UnpaddedDistributedSampler` gives rank r the indices
r, r + R, r + 2R, ... (R = world size): every image exactly once over all ranks; ranks may differ by one sample.
Being a `DistributedSampler`, Lightning keeps it instead of inserting its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Strided, unshuffled, unpadded shard of ``dataset`` for ``rank`` of ``num_replicas``."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
