"""Split tensors with named modalities, served as :class:`~hrlf.types.Batch` objects."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hrlf.data.features import SplitData
from hrlf.types import Batch, Modality, TaskSpec


class MSADataset(torch.utils.data.Dataset):
    """One split held as tensors (shared with the numpy arrays, no copies); batches are gathered by index.

    ``__getitems__`` returns a whole :class:`Batch`, so a DataLoader with a batch sampler does one gather per
    batch instead of one per sample.
    """

    def __init__(self, split: SplitData, *, task: TaskSpec) -> None:
        self.task = task
        self.features: dict[Modality, torch.Tensor] = {m: torch.from_numpy(x) for m, x in split.features.items()}
        self.valid: dict[Modality, torch.Tensor] = {m: torch.from_numpy(v) for m, v in split.valid.items()}
        labels = torch.from_numpy(split.labels)
        self.labels = labels.float() if task.kind == "regression" else labels.long()
        self.ids = list(split.ids)
        self.tokens = None if split.tokens is None else torch.from_numpy(split.tokens)  # (N, T_language) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        valid = {m: v.index_select(0, idx) for m, v in self.valid.items()}
        return Batch(
            features={m: x.index_select(0, idx) for m, x in self.features.items()},  # (B, T, D)
            valid=valid,  # (B, T)
            missing={m: torch.zeros_like(v) for m, v in valid.items()},  # (B, T), nothing removed yet
            label=self.labels.index_select(0, idx),
            index=idx,
            ids=[self.ids[i] for i in idx.tolist()],
            tokens=None if self.tokens is None else self.tokens.index_select(0, idx),
        )
