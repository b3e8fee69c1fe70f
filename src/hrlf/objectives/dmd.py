"""DMD's objective: task losses on eight heads, decoupling losses and two graph-distillation units.

Weights and distances follow the official code (github.com/mdswyz/DMD); see :mod:`hrlf.models.dmd` for the map
from the paper to the code and every deviation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.models.dmd import DMD, GD_EDGES, HETERO_PRIOR, HOMO_PRIOR, GraphDistillationUnit
from hrlf.objectives.base import Objective, Scheduler
from hrlf.objectives.task import task_loss
from hrlf.types import MODALITIES, Batch, ModelOutput, TaskSpec


def masked_frame_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, T, ...) values over the True frames of a (B, T) mask (and over any trailing dims)."""
    weight = mask.to(values.dtype).view(*mask.shape, *([1] * (values.dim() - 2)))  # (B, T, 1...)
    per_frame = values.numel() // max(values.shape[0] * values.shape[1], 1)
    return (values * weight).sum() / (weight.sum() * per_frame).clamp_min(1.0)


def margin_loss(features: Tensor, labels: Tensor, *, scale: float, chunk: int = 64) -> Tensor:
    """DMD's label-aware margin (hinge) loss on the aligned modality-irrelevant features.

    For every anchor a among the N = 3B features, every positive p (same label, p != a) and every negative n
    (different label): max(0, scale * dist(y_a, y_n) - cos(a, p) + cos(a, n)), averaged over the anchor's (p, n)
    pairs, then over the anchors that have both a positive and a negative.

    Args:
        features: (N, D) features.
        labels: (N,) scores or (N, K) emotion bits (distance = L1, i.e. Hamming for bits).
        scale: margin per unit of label distance (code: 0.15).
        chunk: anchors processed at once (memory N^2 per anchor).
    """
    n = features.shape[0]
    flat = labels.reshape(n, -1).to(features.dtype)  # (N, K)
    normed = features / features.norm(dim=1, keepdim=True).clamp_min(1e-8)
    cos = normed @ normed.T  # (N, N)
    distance = torch.cdist(flat, flat, p=1)  # (N, N)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    positive = (distance == 0) & ~eye  # (N, N)
    negative = distance > 0
    total = features.new_zeros(())
    anchors = 0
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        # hinge[a, p, q] = margin(a, q) - cos(a, p) + cos(a, q) with p a positive and q a negative of anchor a
        hinge = F.relu((scale * distance[rows] + cos[rows]).unsqueeze(1) - cos[rows].unsqueeze(2))  # (c, N, N)
        pairs = positive[rows].unsqueeze(2) & negative[rows].unsqueeze(1)  # (c, N, N)
        count = pairs.sum(dim=(1, 2))  # (c,)
        per_anchor = (hinge * pairs).sum(dim=(1, 2)) / count.clamp_min(1)  # (c,)
        used = count > 0
        total = total + per_anchor[used].sum()
        anchors += int(used.sum())
    return total / max(anchors, 1)


def positive_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine-embedding loss with target -1 (margin 0), per row over the last dim: max(0, cos(x, y))."""
    return F.relu(F.cosine_similarity(x, y, dim=-1, eps=1e-8))


class DMDObjective(Objective):
    """``L_task(8 heads) + w_homo (logit + reg) + w_hetero (logit + repr + reg) + w_dec (cyc + rec + w (mar + ort))``.

    Owns the two GD-Units (trained with the model by the same Adam, as in the code); they are built in
    :meth:`setup`, where the model's width is known. Gradient values are clipped to ``grad_value_clip`` in
    :meth:`training_step` (the code's ``clip_grad_value_``).
    """

    def __init__(
        self,
        *,
        task: TaskSpec,
        task_loss: str = "l1",
        weight_homo: float = 0.05,
        weight_hetero: float = 0.05,
        weight_decouple: float = 0.1,
        weight_margin_ort: float = 0.1,
        margin_scale: float = 0.15,
        gd_size_homo: int = 64,
        gd_size_hetero: int = 32,
        gd_alpha: float = 0.125,
        gd_prior_temperature: float = 0.25,
        gd_reg: float = 10.0,
        gd_weight_logit: float = 1.0,
        gd_weight_repr: float = 10.0,
        grad_value_clip: float = 0.6,
        plateau_factor: float = 0.5,
        plateau_patience: int = 5,
    ) -> None:
        super().__init__()
        if task_loss not in ("l1", "mse"):
            raise ValueError(f"task_loss must be l1 or mse, got {task_loss!r}")
        self.task = task
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.homo_unit: GraphDistillationUnit | None = None
        self.hetero_unit: GraphDistillationUnit | None = None
        self.gd_size_homo = gd_size_homo
        self.gd_size_hetero = gd_size_hetero
        self.gd_alpha = gd_alpha
        self.gd_prior_temperature = gd_prior_temperature
        self.task_loss = task_loss
        self.weight_homo = weight_homo
        self.weight_hetero = weight_hetero
        self.weight_decouple = weight_decouple
        self.weight_margin_ort = weight_margin_ort
        self.margin_scale = margin_scale
        self.gd_reg = gd_reg
        self.gd_weight_logit = gd_weight_logit
        self.gd_weight_repr = gd_weight_repr
        self.grad_value_clip = grad_value_clip

    def setup(self, model: nn.Module) -> None:
        """Build the HomoGD (representation width d) and HeteroGD (2d) units for this model, once."""
        if not isinstance(model, DMD):
            raise TypeError(f"DMDObjective trains a DMD model, got {type(model).__name__}")
        if self.homo_unit is not None and self.homo_unit.w_repr.in_features == model.d_model:
            return
        device = next(model.parameters()).device
        self.homo_unit, self.hetero_unit = (
            GraphDistillationUnit(
                logit_dim=model.out_dim,
                repr_dim=width,
                hidden=hidden,
                prior_logits=prior,
                prior_temperature=self.gd_prior_temperature,
                alpha=self.gd_alpha,
            ).to(device)
            for width, hidden, prior in (
                (model.d_model, self.gd_size_homo, HOMO_PRIOR),
                (2 * model.d_model, self.gd_size_hetero, HETERO_PRIOR),
            )
        )

    def head_loss(self, pred: Tensor, label: Tensor) -> Tensor:
        if self.task.kind == "regression" and self.task_loss == "l1":
            return F.l1_loss(pred, label)
        return task_loss(pred, label, self.task)

    def graph_distillation(
        self, unit: GraphDistillationUnit, logits: dict, reprs: dict, *, repr_distance: str | None
    ) -> dict[str, Tensor]:
        """The GD-Unit's terms: edge regulariser, edge-weighted L1 logit distance, optional representation term.

        The teacher end of every edge is detached (only the student is pulled); the edge weights themselves are
        computed from undetached inputs, as in the code.
        """
        flat_logits = {m: v.reshape(v.shape[0], -1) for m, v in logits.items()}  # (B, C) per modality
        edges = unit(flat_logits, reprs)  # (E, B)
        terms = {"reg": self.gd_reg * (edges.mean(dim=1) - unit.prior).pow(2).sum()}
        logit_term = edges.new_zeros(())
        repr_term = edges.new_zeros(())
        for e, (student, teacher) in enumerate(GD_EDGES):
            weight = edges[e] + unit.prior[e]  # (B,)
            gap = (flat_logits[student] - flat_logits[teacher].detach()).abs().sum(dim=1)  # (B,)
            logit_term = logit_term + self.gd_weight_logit * (weight * gap).mean()
            if repr_distance == "l1":
                gap = (reprs[student] - reprs[teacher].detach()).abs().sum(dim=1)  # (B,)
                repr_term = repr_term + self.gd_weight_repr * (weight * gap).mean()
            elif repr_distance == "min_cosine":
                gap = positive_cosine(reprs[student], reprs[teacher].detach())  # (B,)
                repr_term = repr_term + self.gd_weight_repr * (weight * gap).mean()
        terms["logit"] = logit_term
        if repr_distance is not None:
            terms["repr"] = repr_term
        return terms

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if self.homo_unit is None or self.hetero_unit is None:
            raise RuntimeError("call setup(model) before computing DMD's losses (it builds the GD-Units)")
        aux, label = output.aux, batch.label
        losses: dict[str, Tensor] = {"task": self.head_loss(output.pred, label)}
        heads = [aux["common_logit"]] + [aux[f"{kind}_logit.{m}"] for kind in ("homo", "hetero") for m in MODALITIES]
        losses["task_heads"] = losses["task"] + sum(self.head_loss(h, label) for h in heads)
        # decoupling: self-regression, cycle consistency, orthogonality and margin
        valid = {m: aux[f"frames.{m}"] for m in MODALITIES}  # the real frames of the model's (cut) sequences
        losses["recon"] = sum(
            masked_frame_mean((aux[f"recon.{m}"] - aux[f"projected.{m}"]).pow(2), valid[m]) for m in MODALITIES
        )
        losses["cycle"] = sum(
            masked_frame_mean((aux[f"exclusive_cycle.{m}"] - aux[f"exclusive.{m}"]).pow(2), valid[m])
            for m in MODALITIES
        )
        losses["ort"] = sum(
            masked_frame_mean(positive_cosine(aux[f"exclusive.{m}"], aux[f"common.{m}"]), valid[m]) for m in MODALITIES
        )
        aligned = torch.cat([aux[f"common_aligned.{m}"] for m in MODALITIES], dim=0)  # 3 x (B, d) -> (3B, d)
        losses["margin"] = margin_loss(aligned, label.repeat(3, *([1] * (label.dim() - 1))), scale=self.margin_scale)
        # graph distillation in the two decoupled spaces
        homo = self.graph_distillation(
            self.homo_unit,
            {m: aux[f"homo_logit.{m}"] for m in MODALITIES},
            {m: aux[f"homo_repr.{m}"] for m in MODALITIES},
            repr_distance=None,  # the code computes an L1 representation term for HomoGD but leaves it out
        )
        hetero = self.graph_distillation(
            self.hetero_unit,
            {m: aux[f"hetero_logit.{m}"] for m in MODALITIES},
            {m: aux[f"hetero_repr.{m}"] for m in MODALITIES},
            repr_distance="min_cosine",
        )
        losses.update({f"homo_{k}": v for k, v in homo.items()})
        losses.update({f"hetero_{k}": v for k, v in hetero.items()})
        decouple = losses["cycle"] + losses["recon"] + self.weight_margin_ort * (losses["margin"] + losses["ort"])
        losses["loss"] = (
            losses["task_heads"]
            + self.weight_homo * (homo["logit"] + homo["reg"])
            + self.weight_hetero * (hetero["logit"] + hetero["repr"] + hetero["reg"])
            + self.weight_decouple * decouple
        )
        return losses

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Scheduler]:
        """The code's ReduceLROnPlateau on the validation loss (none when ``plateau_factor`` is 1)."""
        if self.plateau_factor >= 1.0:
            return {}
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizers["main"], mode="min", factor=self.plateau_factor, patience=self.plateau_patience
        )
        return {"plateau": plateau}

    def training_step(
        self,
        *,
        model: nn.Module,
        batch: Batch,
        clean: Batch,
        optimizers: dict[str, torch.optim.Optimizer],
        grad_clip: float = 0.0,
    ) -> dict[str, float]:
        """One Adam step with the code's gradient-value clipping (and the trainer's norm clipping when set)."""
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        losses = self.forward(model(batch), batch)
        losses["loss"].backward()
        params = [p for group in opt.param_groups for p in group["params"]]
        if self.grad_value_clip > 0:
            torch.nn.utils.clip_grad_value_(params, self.grad_value_clip)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}
