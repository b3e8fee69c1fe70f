"""CorrKD's objectives (arXiv 2404.16456): the teacher's task loss and the student's task + SCD + CPD + RCD.

Every choice the paper leaves open is listed in :mod:`hrlf.models.corrkd`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.models.corrkd import CorrKDNet, categories, num_categories
from hrlf.models.hrlf import jsd_mi
from hrlf.models.layers import mlp
from hrlf.objectives.base import DistillationObjective, Objective
from hrlf.objectives.task import task_loss
from hrlf.types import Batch, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.config import TrainCfg


# ------------------------------------------------------------------------------------------- the three terms


def scd_loss(student: Tensor, teacher: Tensor, *, margin: float, normalize: bool = False) -> Tensor:
    """Sample-level contrastive distillation: margin contrastive loss over teacher/student sample pairs.

    ``mean_i ||s_i - t_i||^2 + mean_{i != j} max(0, margin - ||s_i - t_j||)^2``.

    Args:
        student: (B, w) student joint representations.
        teacher: (B, w) teacher joint representations (detached by the caller).
        margin: eta, the distance beyond which negatives stop being pushed.
        normalize: L2-normalize both sides first.
    """
    if normalize:
        student, teacher = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    positive = (student - teacher).pow(2).sum(dim=-1).mean()  # squared distance: no sqrt at 0
    batch = student.shape[0]
    if batch < 2:
        return positive
    squared = (student.unsqueeze(1) - teacher.unsqueeze(0)).pow(2).sum(dim=-1)  # (B, 1, w) - (1, B, w) -> (B, B)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=student.device)  # (B, B)
    distance = squared[off_diagonal].clamp_min(1e-12).sqrt()  # (B(B-1),)
    return positive + F.relu(margin - distance).pow(2).mean()


def prototype_similarity(features: Tensor, category: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Mini-batch category prototypes and the sample-to-prototype cosine similarities.

    Args:
        features: (B, w) representations.
        category: (B,) int64 categories in [0, count).
        count: number of categories C.

    Returns:
        (B, C) cosine similarity of every sample to every prototype, and (C,) bool: category present in the batch
        (the columns of absent categories are meaningless).
    """
    one_hot = F.one_hot(category, count).to(features.dtype)  # (B, C)
    sizes = one_hot.sum(dim=0)  # (C,)
    prototypes = one_hot.t() @ features / sizes.clamp_min(1.0).unsqueeze(-1)  # (C, B) @ (B, w) -> (C, w)
    similarity = F.cosine_similarity(features.unsqueeze(1), prototypes.unsqueeze(0), dim=-1)  # (B, C)
    return similarity, sizes > 0


def cpd_loss(student: Tensor, teacher: Tensor, category: Tensor, count: int) -> Tensor:
    """Category-guided prototype distillation: MSE between teacher and student sample-prototype similarity maps.

    Prototypes are computed within each network's own features (intra-category similarity = to one's own
    prototype, inter-category = to the others); only categories present in the batch count.
    """
    sim_student, present = prototype_similarity(student, category, count)
    sim_teacher, _ = prototype_similarity(teacher, category, count)
    return (sim_student - sim_teacher)[:, present].pow(2).mean()


def disentangle(logits: Tensor, target: Tensor, *, tau: float) -> tuple[Tensor, Tensor | None]:
    """Splits responses into the target part and the non-target distribution (decoupled-KD style).

    Args:
        logits: (B, C) class responses.
        target: (B,) int64 target class.
        tau: softmax temperature.

    Returns:
        b (B, 2) = (p_target, 1 - p_target), and the softmax over the C - 1 non-target classes (B, C - 1), or
        None when C = 2 (a single non-target class carries no information).
    """
    probs = F.softmax(logits / tau, dim=-1)  # (B, C)
    is_target = F.one_hot(target, logits.shape[-1]).bool()  # (B, C)
    p_target = probs.gather(1, target.unsqueeze(1))  # (B, 1)
    binary = torch.cat([p_target, 1.0 - p_target], dim=-1)  # (B, 2)
    if logits.shape[-1] <= 2:
        return binary, None
    others = (logits / tau)[~is_target].view(logits.shape[0], -1)  # (B, C) -> (B, C - 1)
    return binary, F.softmax(others, dim=-1)


# ---------------------------------------------------------------------------------------------- objectives


class CorrKDTeacherObjective(Objective):
    """The teacher on complete data: the task loss (+ the polarity head's cross-entropy for regression)."""

    def __init__(self, *, task: TaskSpec, regression_categories: str = "binary", lambda_category: float = 1.0) -> None:
        super().__init__()
        self.task = task
        self.scheme = regression_categories
        self.lambda_category = lambda_category

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        terms = {"task": task_loss(output.pred, batch.label, self.task)}
        terms["loss"] = terms["task"]
        if self.task.kind == "regression":
            terms["category"] = category_loss(output, batch, self.task, self.scheme)
            terms["loss"] = terms["loss"] + self.lambda_category * terms["category"]
        return terms


def category_loss(output: ModelOutput, batch: Batch, task: TaskSpec, scheme: str) -> Tensor:
    """Cross-entropy of the polarity head against the sentiment polarity (regression only)."""
    return F.cross_entropy(output.aux["responses"], categories(batch.label, task, scheme))


class CorrKDStudentObjective(DistillationObjective):
    """The student stage: a frozen teacher sees the complete batch, the student its MRM copy.

    Owns the RCD statistics networks; the teacher is held outside the module tree (trained and saved by its own
    stage, frozen here, never in an optimizer).
    """

    student_type = CorrKDNet

    def __init__(
        self,
        *,
        task: TaskSpec,
        teacher: CorrKDNet,
        d_model: int,
        regression_categories: str = "binary",
        lambda_category: float = 1.0,
        scd_margin: float = 1.0,
        scd_normalize: bool = True,
        rcd_mode: str = "mi",
        rcd_tau: float = 1.0,
        mi_negatives: str = "shuffle",
        stat_hidden: int = 0,
        lambda_scd: float = 1.0,
        lambda_cpd: float = 1.0,
        lambda_rcd: float = 1.0,
        scd: bool = True,
        cpd: bool = True,
        rcd: bool = True,
    ) -> None:
        super().__init__(teacher=teacher)
        if rcd_mode not in ("mi", "kl"):
            raise ValueError(f"rcd_mode must be mi or kl, got {rcd_mode!r}")
        if mi_negatives not in ("shuffle", "all_pairs"):
            raise ValueError(f"mi_negatives must be shuffle or all_pairs, got {mi_negatives!r}")
        self.task = task
        self.scheme = regression_categories
        self.count = num_categories(task, regression_categories)
        self.lambda_category = lambda_category
        self.scd_margin = scd_margin
        self.scd_normalize = scd_normalize
        self.rcd_mode = rcd_mode
        self.rcd_tau = rcd_tau
        self.mi_negatives = mi_negatives
        self.weights = {"scd": lambda_scd, "cpd": lambda_cpd, "rcd": lambda_rcd}
        self.use = {"scd": scd, "cpd": cpd, "rcd": rcd}
        hidden = stat_hidden or d_model
        # one statistics network per disentangled part (input: teacher and student parts concatenated)
        parts = {"target": 2} if self.count <= 2 else {"target": 2, "nontarget": self.count - 1}
        self.statistics = (
            nn.ModuleDict({name: mlp([2 * w, hidden, 1]) for name, w in parts.items()})
            if rcd and rcd_mode == "mi"
            else None
        )

    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.statistics is not None:
            params += list(self.statistics.parameters())  # T_theta maximises the MI bound together with the student
        return {"main": torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)}

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """The student's task loss alone (what validation scores); the full objective is :meth:`losses`."""
        loss = task_loss(output.pred, batch.label, self.task)
        return {"loss": loss, "task": loss}

    def rcd(self, student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
        """L_RCD between (B, C) student and teacher responses (teacher detached by the caller)."""
        tau = self.rcd_tau
        if self.rcd_mode == "kl":  # the paper's ablation: plain KL(teacher || student) on the whole responses
            log_p_student = F.log_softmax(student / tau, dim=-1)
            p_teacher = F.softmax(teacher / tau, dim=-1)
            return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * tau * tau
        assert self.statistics is not None
        b_student, nt_student = disentangle(student, target, tau=tau)
        b_teacher, nt_teacher = disentangle(teacher, target, tau=tau)
        mi = jsd_mi(self.statistics["target"], b_teacher, b_student, negatives=self.mi_negatives)
        if nt_student is not None and nt_teacher is not None:
            mi = mi + jsd_mi(self.statistics["nontarget"], nt_teacher, nt_student, negatives=self.mi_negatives)
        return -mi

    def losses(self, student_out: ModelOutput, batch: Batch, teacher_out: ModelOutput) -> dict[str, Tensor]:
        """The student's full objective, every term named; ``loss`` is the weighted sum."""
        terms: dict[str, Tensor] = {"task": task_loss(student_out.pred, batch.label, self.task)}
        total = terms["task"]
        if self.task.kind == "regression":
            terms["category"] = category_loss(student_out, batch, self.task, self.scheme)
            total = total + self.lambda_category * terms["category"]
        category = categories(batch.label, self.task, self.scheme)  # (B,)
        h_student, h_teacher = student_out.aux["H"], teacher_out.aux["H"].detach()
        if self.use["scd"]:
            terms["scd"] = scd_loss(h_student, h_teacher, margin=self.scd_margin, normalize=self.scd_normalize)
        if self.use["cpd"]:
            terms["cpd"] = cpd_loss(h_student, h_teacher, category, self.count)
        if self.use["rcd"]:
            terms["rcd"] = self.rcd(student_out.aux["responses"], teacher_out.aux["responses"].detach(), category)
        for name in ("scd", "cpd", "rcd"):
            if name in terms:
                total = total + self.weights[name] * terms[name]
        terms["loss"] = total
        return terms

    def training_step(
        self,
        *,
        model: nn.Module,
        batch: Batch,
        clean: Batch,
        optimizers: dict[str, torch.optim.Optimizer],
        grad_clip: float = 0.0,
    ) -> dict[str, float]:
        teacher_out = self.teacher_output(clean)
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        terms = self.losses(model(batch), batch, teacher_out)
        terms["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}
