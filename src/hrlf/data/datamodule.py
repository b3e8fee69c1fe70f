"""Splits to batch iterators: shuffled train batches from an explicit seed, fixed-order eval batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hrlf.data.dataset import MSADataset
from hrlf.data.features import FeatureFile
from hrlf.types import Batch, Modality, Split, TaskSpec


def video_groups(ids: list[str]) -> list[list[int]]:
    """Sample positions grouped by video id (MMSA ``video$_$clip``), groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, sample_id in enumerate(ids):
        groups.setdefault(sample_id.rpartition("$_$")[0] or sample_id, []).append(i)
    return list(groups.values())


def pack_groups(groups: list[list[int]], batch_size: int) -> list[list[int]]:
    """Consecutive whole groups packed into batches of at most ``batch_size`` (a larger group stands alone)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for group in groups:
        if current and len(current) + len(group) > batch_size:
            chunks.append(current)
            current = []
        current = current + group
    if current:
        chunks.append(current)
    return chunks


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
        # real length of each sample (longest modality), used to group similar lengths when bucketing
        self.lengths: dict[Split, torch.Tensor] = {
            s: torch.stack([v.sum(dim=1) for v in d.valid.values()]).amax(dim=0) for s, d in self.datasets.items()
        }
        # clips of each video (the id part before the last "$_$"), in file order, for conversation models
        self.videos: dict[Split, list[list[int]]] = {s: video_groups(d.ids) for s, d in self.datasets.items()}

    def batches(
        self,
        split: Split,
        *,
        batch_size: int,
        shuffle_seed: int | None = None,
        drop_last: bool = False,
        bucket: int = 1,
        by_video: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches of ``split``; shuffled by a generator seeded with ``shuffle_seed`` when given.

        With ``bucket`` = k > 1 (shuffled splits only), each window of k consecutive shuffled batches is sorted by
        real length before it is cut into batches, and the batch order is shuffled again: batches hold clips of
        similar length, so less padding is computed (models cut all-padding columns).

        With ``by_video`` every batch holds whole videos (the clips sharing the id part before the last ``$_$``),
        packed up to ``batch_size`` clips (a longer video forms a batch of its own), so models that use the other
        clips of a video as context see the same context however batches are cut; shuffling permutes videos.
        """
        dataset = self.datasets[split]
        n = len(dataset)
        if by_video:
            groups = self.videos[split]
            if shuffle_seed is not None:
                picked = torch.randperm(len(groups), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
                groups = [groups[i] for i in picked]
            chunks = pack_groups(groups, batch_size)
        elif shuffle_seed is None:
            chunks = [c.tolist() for c in torch.arange(n).split(batch_size)]
        else:
            gen = torch.Generator().manual_seed(shuffle_seed)
            order = torch.randperm(n, generator=gen)
            if bucket > 1:
                lengths = self.lengths[split]
                cut = [
                    b
                    for window in order.split(batch_size * bucket)
                    for b in window[torch.argsort(lengths[window], stable=True)].split(batch_size)
                ]
                chunks = [cut[i].tolist() for i in torch.randperm(len(cut), generator=gen).tolist()]
            else:
                chunks = [c.tolist() for c in order.split(batch_size)]
        if drop_last and len(chunks) > 1:
            chunks = [c for c in chunks if len(c) == batch_size] or chunks[:1]
        if self.num_workers == 0:
            for chunk in chunks:
                yield dataset.__getitems__(chunk)
            return
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=chunks,
            collate_fn=_unwrap,  # type: ignore[arg-type]  # the stub expects a list; __getitems__ gives a Batch
            num_workers=self.num_workers,
            worker_init_fn=_one_thread,
        )
        yield from loader

    def num_batches(self, split: Split, *, batch_size: int) -> int:
        return -(-len(self.datasets[split]) // batch_size)
