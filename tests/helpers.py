"""Shared test builders: tiny batches with named modalities."""

from __future__ import annotations

import torch

from hrlf.types import MODALITIES, Batch, Modality, TaskSpec

DIMS: dict[Modality, int] = {"language": 12, "audio": 5, "vision": 7}
REGRESSION = TaskSpec(kind="regression")
EMOTIONS = TaskSpec(kind="emotions", label_names=("Neutral", "Happy", "Sad", "Angry"))


def make_batch(
    *, batch_size: int = 3, length: int = 7, task: TaskSpec = REGRESSION, seed: int = 0, pre_pad: bool = True
) -> Batch:
    """Random features with varying real lengths (padding at the start when ``pre_pad``, else at the end)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (batch_size,), generator=g)
    steps = torch.arange(length)
    valid_one = (steps >= length - lengths[:, None]) if pre_pad else (steps < lengths[:, None])  # (B, T)
    features = {}
    for m in MODALITIES:
        x = torch.randn(batch_size, length, DIMS[m], generator=g)
        features[m] = x * valid_one.unsqueeze(-1)
    if task.kind == "regression":
        label = torch.empty(batch_size).uniform_(-3, 3, generator=g)
    else:
        label = torch.randint(0, 2, (batch_size, task.num_targets), generator=g)
    return Batch(
        features=features,
        valid={m: valid_one.clone() for m in MODALITIES},
        missing={m: torch.zeros(batch_size, length, dtype=torch.bool) for m in MODALITIES},
        label=label,
        index=torch.arange(batch_size),
        ids=[f"clip{i}" for i in range(batch_size)],
    )
