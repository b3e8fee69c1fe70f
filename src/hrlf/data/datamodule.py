"""Splits to batch iterators: shuffled train batches from an explicit seed, fixed-order eval batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hrlf.data.dataset import MSADataset
from hrlf.data.features import FeatureFile
from hrlf.types import Batch, Modality, Split, TaskSpec


def _unwrap(batch: Batch) -> Batch:
    # the dataset already returns a collated Batch (see MSADataset.__getitems__)
    return batch


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


class DataModule:
    """Batches over the three splits of a feature file.

    Training order is a pure function of ``(seed, epoch)``; valid and test are never shuffled.
    """

    def __init__(self, data: FeatureFile, *, num_workers: int = 0) -> None:
        self.file = data
        self.task: TaskSpec = data.task
        self.dims: dict[Modality, int] = data.dims
        self.datasets: dict[Split, MSADataset] = {s: MSADataset(d, task=data.task) for s, d in data.splits.items()}
        self.num_workers = num_workers

    def batches(
        self, split: Split, *, batch_size: int, shuffle_seed: int | None = None, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Yield batches of ``split``; shuffled by a generator seeded with ``shuffle_seed`` when given."""
        dataset = self.datasets[split]
        n = len(dataset)
        if shuffle_seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
        chunks = [c.tolist() for c in order.split(batch_size)]
        if drop_last and len(chunks) > 1 and len(chunks[-1]) < batch_size:
            chunks = chunks[:-1]
        if self.num_workers == 0:
            for chunk in chunks:
                yield dataset.__getitems__(chunk)
            return
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=chunks,
            collate_fn=_unwrap,
            num_workers=self.num_workers,
            worker_init_fn=_one_thread,
        )
        yield from loader

    def num_batches(self, split: Split, *, batch_size: int) -> int:
        return -(-len(self.datasets[split]) // batch_size)
