"""Self-MM's objective: the Unimodal Label Generation Module (ULGM) and the weighted L1 multi-task loss.

Paper: Yu et al., AAAI 2021, arXiv 2102.04830, section "Unimodal Label Generation Module" and "Optimization
Objectives" (model file: :mod:`hrlf.models.self_mm`).

ULGM, per training sample j and head i in {m (fusion), l, a, v}, all non-parametric:
    * class centres over the stored features of every training sample seen so far (F*_i, the first layer of each
      head), split by that head's current labels: C^p_i = mean{F*_ij : y_ij > 0 (or >= 0)}, C^n_i = mean{F*_ij :
      y_ij < 0};
    * relative distance of the current feature: delta_i = (d^n_i - d^p_i) / (d^p_i + eps), with d the L2 distance
      to the centre (the authors' code; the paper's scaling of the distance cancels in the ratio);
    * generated label for s in {l, a, v}: alpha = delta_s / (delta_m + eps),
      y^_s = 1/2 * alpha * y_m + 1/2 * (y_m + delta_s - delta_m), clipped to [-H, H];
    * momentum update from the second epoch on, n = the epoch: y_s <- (n - 1) / (n + 1) * y_s + 2 / (n + 1) * y^_s;
      unimodal labels start equal to y_m.
Loss: L = |y^_m - y_m| + sum_s w_s |y^_s - y_s| (batch means), w_s = tanh(|y_s - y_m|) per sample.

State and the epoch counter:
    The per-sample labels, stored features and visit counts are buffers indexed by ``batch.index`` (a sample's
    position in the training split), so they are saved with the objective and restored on resume. They grow on
    demand (the objective is built before the data size is known) and are resized to the saved shapes when loaded.
    The epoch n of the momentum update is the sample's own visit count ``seen[j] + 1``: the trainer shows every
    training sample exactly once per epoch, so this equals the epoch without knowing the number of batches per
    epoch or detecting epoch starts, and it survives resume. (With a sampler that skips samples, e.g. drop_last,
    a skipped sample's count would lag the epoch by the number of skips.)

Order within a step, as in the authors' code: the loss uses the labels as they were before this batch; after the
update the batch's labels are regenerated from the centres of the stored state (which does not yet hold this batch's
new features), then the batch's features are stored. So the loss of epoch n sees the labels made in epoch n - 1, and
generated labels first enter the loss in epoch 3 (with a zero weight floor, the unimodal terms are 0 before).
Centres of a class with no member are undefined; labels that would depend on them are left unchanged.

Emotions (IEMOCAP, not in the paper) are handled per emotion with signed targets y_m = +1 (present) / -1 (absent)
and H = 1: the centres, distances and labels carry one column per emotion; the multimodal loss is the per-emotion
cross-entropy and each unimodal loss a soft two-way cross-entropy towards p = (y_s + 1) / 2, weighted by
tanh(|y_s - y_m|).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.objectives.base import Objective
from hrlf.objectives.task import task_loss
from hrlf.types import Batch, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.config import TrainCfg

#: the four tasks: the multimodal one first, then the unimodal ones (named modalities)
HEADS: tuple[str, ...] = ("fusion", "language", "audio", "vision")
UNIMODAL: tuple[str, ...] = HEADS[1:]
EPS = 1e-8  # the authors' MIN


def relative_distance(features: Tensor, positive: Tensor, negative: Tensor, *, eps: float = EPS) -> Tensor:
    """delta = (d_neg - d_pos) / (d_pos + eps) with L2 distances.

    Args:
        features: (B, F) current features.
        positive: (K, F) positive class centre per target column.
        negative: (K, F) negative class centre per target column.

    Returns:
        (B, K) relative distances (NaN where a centre is undefined).
    """
    d_pos = torch.linalg.vector_norm(features.unsqueeze(1) - positive.unsqueeze(0), dim=-1)  # (B, K, F) -> (B, K)
    d_neg = torch.linalg.vector_norm(features.unsqueeze(1) - negative.unsqueeze(0), dim=-1)  # (B, K)
    return (d_neg - d_pos) / (d_pos + eps)


def generate_labels(y_m: Tensor, delta_m: Tensor, delta_s: Tensor, *, bound: float, eps: float = EPS) -> Tensor:
    """y^_s = 1/2 * (delta_s / delta_m) * y_m + 1/2 * (y_m + delta_s - delta_m), clipped to [-bound, bound]."""
    alpha = delta_s / (delta_m + eps)
    return (0.5 * alpha * y_m + 0.5 * (y_m + delta_s - delta_m)).clamp(-bound, bound)


def momentum_update(previous: Tensor, generated: Tensor, epoch: Tensor) -> Tensor:
    """y^(n) = (n - 1) / (n + 1) * y^(n-1) + 2 / (n + 1) * y^_n for the epoch n of each row ((B,) or (B, 1))."""
    n = epoch.to(previous.dtype).reshape(-1, *([1] * (previous.dim() - 1)))  # (B,) -> (B, 1, ...)
    return (n - 1) / (n + 1) * previous + 2 / (n + 1) * generated


def class_centres(features: Tensor, labels: Tensor, *, exclude_zero: bool) -> tuple[Tensor, Tensor]:
    """Positive and negative centres per target column.

    Args:
        features: (N, F) stored features.
        labels: (N, K) the head's current labels.

    Returns:
        (K, F) positive and (K, F) negative centres; NaN rows for a class without members.
    """
    positive = (labels > 0) if exclude_zero else (labels >= 0)  # (N, K)
    negative = labels < 0

    def mean(mask: Tensor) -> Tensor:
        count = mask.sum(dim=0).to(features.dtype)  # (K,)
        total = mask.to(features.dtype).T @ features  # (K, N) @ (N, F) -> (K, F)
        return total / count.unsqueeze(1)  # NaN (0 / 0) for an empty class

    return mean(positive), mean(negative)


class SelfMMObjective(Objective):
    """Weighted multi-task loss over the multimodal and three generated unimodal targets, plus the ULGM state.

    Args:
        task: the task (regression or emotions).
        feature_dims: size of the stored feature F* of every head in :data:`HEADS`.
        label_bound: H, the clip range of generated regression labels (emotion targets use 1).
        exclude_zero: positive centres from labels > 0 instead of >= 0.
        min_unimodal_weight: floor of the per-sample unimodal weight tanh(|y_s - y_m|).
        group_lr: learning rate per parameter-name prefix (its own optimizer group); 0 = ``train.lr``.
        group_weight_decay: weight decay per parameter-name prefix.
    """

    def __init__(
        self,
        *,
        task: TaskSpec,
        feature_dims: Mapping[str, int],
        label_bound: float = 3.0,
        exclude_zero: bool = False,
        min_unimodal_weight: float = 0.0,
        group_lr: Mapping[str, float] | None = None,
        group_weight_decay: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if set(feature_dims) != set(HEADS):
            raise ValueError(f"feature_dims must name {HEADS}, got {sorted(feature_dims)}")
        if not 0.0 <= min_unimodal_weight <= 1.0:
            raise ValueError(f"min_unimodal_weight must lie in [0, 1], got {min_unimodal_weight}")
        self.task = task
        self.bound = label_bound if task.kind == "regression" else 1.0
        self.exclude_zero = exclude_zero
        self.min_unimodal_weight = min_unimodal_weight
        self.group_lr = dict(group_lr or {})
        self.group_weight_decay = dict(group_weight_decay or {})
        self.columns = task.num_targets  # K: 1 for regression, one per emotion
        # per training sample: labels (N, 4, K) in HEADS order, visits (N,), stored features (N, F_i) per head
        self.register_buffer("labels", torch.zeros(0, len(HEADS), self.columns))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.long))
        for name in HEADS:
            self.register_buffer(f"features_{name}", torch.zeros(0, feature_dims[name]))

    # ----------------------------------------------------------------------------------------------- state
    def _state_names(self) -> list[str]:
        return ["labels", "seen", *(f"features_{name}" for name in HEADS)]

    def _ensure_capacity(self, size: int) -> None:
        """Grow every per-sample buffer to at least ``size`` rows (new rows: zeros, never seen)."""
        current = int(self.seen.shape[0])
        if size <= current:
            return
        for name in self._state_names():
            old = getattr(self, name)
            grown = torch.zeros((size, *old.shape[1:]), dtype=old.dtype, device=old.device)
            grown[:current] = old
            setattr(self, name, grown)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the buffers are sized by the data seen so far: take the saved shapes before loading
        for name in self._state_names():
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                old = getattr(self, name)
                setattr(self, name, torch.zeros(saved.shape, dtype=old.dtype, device=old.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def signed_targets(self, label: Tensor) -> Tensor:
        """y_m as (B, K) floats: the score for regression, +1 / -1 for a present / absent emotion."""
        if self.task.kind == "regression":
            return label.float().unsqueeze(1)  # (B,) -> (B, 1)
        return label.float() * 2 - 1  # (B, K)

    def unimodal_targets(self, batch: Batch) -> Tensor:
        """(B, 3, K) current labels y_s of the batch (y_m for a sample not seen yet), in UNIMODAL order."""
        y_m = self.signed_targets(batch.label)
        index = batch.index.to(self.seen.device)
        known = index < self.seen.shape[0]
        stored = torch.zeros(y_m.shape[0], len(UNIMODAL), self.columns, device=y_m.device)
        seen = torch.zeros(y_m.shape[0], dtype=torch.bool, device=y_m.device)
        if bool(known.any()):
            stored[known] = self.labels[index[known], 1:].to(y_m.device)
            seen[known] = self.seen[index[known]].to(y_m.device) > 0
        return torch.where(seen.view(-1, 1, 1), stored, y_m.unsqueeze(1))  # (B, 3, K)

    # ------------------------------------------------------------------------------------------------ loss
    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        y_m = self.signed_targets(batch.label)  # (B, K)
        y_s = self.unimodal_targets(batch)  # (B, 3, K)
        if self.task.kind == "regression":
            fusion = F.l1_loss(output.pred, batch.label)
        else:
            fusion = task_loss(output.pred, batch.label, self.task)
        losses = {"task": fusion}
        total = fusion
        for i, name in enumerate(UNIMODAL):
            weight = torch.tanh((y_s[:, i] - y_m).abs()).clamp_min(self.min_unimodal_weight)  # (B, K)
            pred = output.aux[f"pred.{name}"]
            if self.task.kind == "regression":
                per_sample = (pred.unsqueeze(1) - y_s[:, i]).abs()  # (B, 1)
            else:
                p_present = (y_s[:, i] + 1) / 2  # (B, K)
                log_p = F.log_softmax(pred, dim=-1)  # (B, K, 2)
                per_sample = -((1 - p_present) * log_p[..., 0] + p_present * log_p[..., 1])  # (B, K)
            losses[f"unimodal_{name}"] = (weight * per_sample).mean()
            total = total + losses[f"unimodal_{name}"]
        losses["loss"] = total
        return losses

    # ------------------------------------------------------------------------------------------------ ULGM
    @torch.no_grad()
    def update(self, output: ModelOutput, batch: Batch) -> None:
        """Regenerate the batch's unimodal labels (from its second visit on), then store its features and labels."""
        index = batch.index.to(self.seen.device)
        self._ensure_capacity(int(index.max()) + 1)
        y_m = self.signed_targets(batch.label).to(self.labels.device)  # (B, K)
        epoch = self.seen[index] + 1  # (B,) this visit's epoch number n
        features = {name: output.aux[f"feature.{name}"].detach().to(self.labels.device) for name in HEADS}
        labels = self.labels[index].clone()  # (B, 4, K)
        labels[:, 0] = y_m
        first = epoch == 1
        labels[first, 1:] = y_m[first].unsqueeze(1)  # unimodal labels start at y_m
        later = ~first
        if bool(later.any()):
            stored = self.seen > 0  # (N,) rows that hold features and labels
            deltas = {}
            for h, name in enumerate(HEADS):
                positive, negative = class_centres(
                    getattr(self, f"features_{name}")[stored], self.labels[stored, h], exclude_zero=self.exclude_zero
                )  # (K, F) each
                deltas[name] = relative_distance(features[name][later], positive, negative)  # (B', K)
            for i, name in enumerate(UNIMODAL, start=1):
                generated = generate_labels(y_m[later], deltas["fusion"], deltas[name], bound=self.bound)  # (B', K)
                updated = momentum_update(labels[later, i], generated, epoch[later])
                labels[later, i] = torch.where(torch.isfinite(updated), updated, labels[later, i])
        self.labels[index] = labels
        for name in HEADS:
            getattr(self, f"features_{name}")[index] = features[name]
        self.seen[index] = epoch

    # ------------------------------------------------------------------------------------------- training
    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        """Adam with one group per named sub-network prefix (own lr / weight decay) and one for everything else."""
        groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in self.group_lr}
        other: list[nn.Parameter] = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            prefix = next((p for p in groups if name.startswith(p + ".")), None)
            (groups[prefix] if prefix is not None else other).append(param)
        param_groups: list[dict[str, Any]] = [
            {
                "params": params,
                "lr": self.group_lr[prefix] or cfg.lr,
                "weight_decay": self.group_weight_decay.get(prefix, cfg.weight_decay),
            }
            for prefix, params in groups.items()
            if params
        ]
        param_groups.append({"params": other, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
        return {"main": torch.optim.Adam(param_groups, lr=cfg.lr)}

    def training_step(
        self,
        *,
        model: nn.Module,
        batch: Batch,
        clean: Batch,
        optimizers: dict[str, torch.optim.Optimizer],
        grad_clip: float = 0.0,
    ) -> dict[str, float]:
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        output = model(batch)
        losses = self.forward(output, batch)
        losses["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        self.update(output, batch)
        return {k: float(v.detach()) for k, v in losses.items()}
