"""``corrkd`` — Correlation-decoupled Knowledge Distillation for MSA with incomplete modalities.

Paper: Mingcheng Li, Dingkang Yang, Xiao Zhao, Shuaibing Wang, Yan Wang, Kun Yang, Mingyang Sun, Dongliang Kou,
Ziyun Qian, Lihua Zhang. *Correlation-Decoupled Knowledge Distillation for Multimodal Sentiment Analysis with
Incomplete Modalities.* CVPR 2024, pp. 12458-12468, arXiv 2404.16456. No public code; reconstructed from the
paper (``field_conventions.md`` §7.8).

What is implemented (paper concept -> code):
    * Backbone, identical for teacher and student (separate parameters): per modality a temporal convolution,
      positional encoding and a Transformer encoder (the shared :class:`~hrlf.models.layers.ModalityEncoder`);
      the three streams are globally averaged over time and concatenated into the joint representation
      H (3d), then an MLP gives the prediction ......................................  CorrKDNet
    * Modality Random Missing (MRM): the student's input loses modalities at random, missing features are zero
      vectors ....................................................................  ModalityRandomMissing
    * Teacher trained on complete data with the task loss, selected on valid and frozen; student trained on MRM
      copies with L = L_task + L_SCD + L_CPD + L_RCD (all weights 1, none reported) ........  stages()
    * SCD, sample-level contrastive distillation (margin eta) on H ................................  scd_loss
    * CPD, category-guided prototype distillation: mini-batch category prototypes, sample-prototype
      cosine-similarity matrices of teacher and student matched ....................................  cpd_loss
    * RCD, response-disentangled consistency distillation: target vs non-target probabilities, teacher/student
      mutual information maximised with Jensen-Shannon statistics networks (``jsd_mi``, Deep InfoMax bound,
      shared with HRLF) ......................................................  CorrKDStudentObjective.rcd

Deviations and choices where the paper is silent (all knobs of :class:`CorrKDCfg`):
    * d = 40, 3 encoder layers, conv kernel 3, heads MOSI 10 / MOSEI 8 / IEMOCAP 10 (HRLF protocol, same group and
      setup). "Concatenated and globally averaged" is read as a masked mean over each modality's real frames,
      then concatenation (equal to averaging the concatenated aligned streams, and defined for unaligned ones).
    * Categories for CPD/RCD. Emotions (IEMOCAP): the 4 emotions; a sample's category is its first present
      emotion (Neutral when none is marked). Regression (MOSI/MOSEI): sentiment polarity,
      ``regression_categories=binary`` (default: negative < 0 vs non-negative >= 0, the Acc-2/F1 "Has0"
      split, so both prototypes are populated in almost every batch) or ``ternary`` (negative / neutral /
      positive, MMSA's 3-class annotation).
    * Responses for RCD. Emotions: the per-emotion log-odds ``logit_present - logit_absent`` read as 4-way class
      logits. Regression: a scalar score has no class responses, so the net carries a small polarity head
      (Linear 3d -> C) trained with cross-entropy on the categories (``lambda_category``) in both networks;
      its logits are the responses. With binary polarity the non-target distribution has a single class and
      carries no information, so only the target/non-target term of RCD remains.
    * SCD reads as the margin contrastive loss over teacher/student pairs: positives (same sample) pulled
      together by their squared distance, negatives (other samples) pushed beyond ``scd_margin`` by the squared
      hinge; means over the B positive and B(B-1) negative pairs. H is L2-normalized first
      (``scd_normalize=True``): the margin then has a fixed scale (eta = 1 on the unit sphere, where unrelated
      vectors lie about sqrt(2) apart) and the term stays commensurate with the task loss at weight 1 (raw
      squared distances of 3d-dimensional features start near 30); ``False`` uses raw Euclidean distances.
    * CPD: prototypes = mean H per category present in the mini-batch (teacher prototypes from teacher features,
      student prototypes from student features, both with the true categories); MSE between the (B, C)
      sample-to-prototype cosine-similarity matrices, over the categories present.
    * RCD: softmax with temperature ``rcd_tau``; b = (p_target, 1 - p_target); the non-target distribution is
      the softmax over the other classes; one statistics network per part (MLP 2w -> hidden -> 1), negatives by
      an in-batch shift; L_RCD = -(MI_b + MI_nontarget). ``rcd_mode=kl`` is the paper's "RCD replaced by KL"
      ablation (KL(teacher || student) on the full responses).
    * MRM. The paper only says modalities are randomly missing and replaced by zero vectors. Default: every
      sample gets one of the seven non-empty availability patterns uniformly ({l}, {a}, {v}, {l,a}, {l,v},
      {a,v}, complete; ``mrm_include_complete=False`` drops the complete one), re-drawn every batch. HRLF, by the
      same authors, introduces its Modality Stochastic Missing as the one that "simultaneously" performs intra-
      and inter-modality missingness, which suggests MRM is modality-level; ``mrm_frame_drop=True`` adds a
      per-sample frame drop (ratio uniform on {0, 0.1, ..., 1}) for the intra-modality reading.
    * The teacher's features are computed without gradient, in eval mode; the statistics networks are trained
      with the student by the same optimizer (they maximise the same MI bound).

Sections: config (:class:`CorrKDCfg`) - categories - network (:class:`CorrKDNet`, exactly what
``model.safetensors`` holds; teacher and student alike) - Modality Random Missing - training system (SCD, CPD,
RCD; :class:`CorrKDTeacherObjective`, :class:`CorrKDStudentObjective`, :func:`stages`) - registration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.engine.system import DistillationSystem, TrainingSystem, adam, task_loss
from hrlf.missing.patterns import PROPER_SUBSETS, frame_mask, sample_subsets
from hrlf.missing.protocol import apply_missing
from hrlf.models.hrlf import jsd_mi
from hrlf.models.layers import (
    check_choices,
    check_dropouts,
    check_encoder_settings,
    encoder_settings,
    kept_span,
    masked_mean,
    mlp,
    modality_encoders,
    shape_prediction,
    task_outputs,
)
from hrlf.models.text_encoder import parameter_groups
from hrlf.registry import ModelSpec, Stage, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.config import TrainCfg

# ----------------------------------------------------------------------------------------------------- config


@dataclass
class CorrKDCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "regression_categories": ("binary", "ternary"),
        "rcd_mode": ("mi", "kl"),
        "mi_negatives": ("shuffle", "all_pairs"),
    }

    d_model: int = 40  # embedding size d (paper: 40)
    num_heads: int = 10  # attention heads (HRLF protocol: MOSI 10, MOSEI 8, IEMOCAP 10)
    num_layers: int = 3  # Transformer layers per modality (not reported; HRLF backbone default)
    ffn_mult: int = 4  # FFN width as a multiple of d
    dropout: float = 0.1  # attention / residual / FFN dropout
    embed_dropout: float = 0.2  # dropout after conv + positions
    head_dropout: float = 0.1  # dropout in the prediction MLP
    head_hidden: int = 0  # hidden width of the prediction MLP; 0 = d_model
    conv_kernel: int = 3  # temporal convolution kernel
    mask_padding: bool = True  # keep padded frames out of attention and out of the global average
    regression_categories: str = "binary"  # MOSI/MOSEI categories: binary (< 0 | >= 0) | ternary (< 0 | 0 | > 0)
    lambda_category: float = 1.0  # weight of the polarity-head cross-entropy (regression only; see docstring)
    scd_margin: float = 1.0  # SCD margin eta between a student sample and the teacher's other samples
    scd_normalize: bool = True  # L2-normalize H before the SCD distances (margin on the unit sphere)
    rcd_mode: str = "mi"  # RCD: mi (disentangled responses + JSD mutual information) | kl (ablation)
    rcd_tau: float = 1.0  # softmax temperature of the responses
    mi_negatives: str = "shuffle"  # JSD negatives: shuffle (in-batch shift) | all_pairs
    stat_hidden: int = 0  # hidden width of the RCD statistics networks; 0 = d
    lambda_scd: float = 1.0  # weight of L_SCD
    lambda_cpd: float = 1.0  # weight of L_CPD
    lambda_rcd: float = 1.0  # weight of L_RCD
    scd: bool = True  # ablation switch: sample-level contrastive distillation
    cpd: bool = True  # ablation switch: category-guided prototype distillation
    rcd: bool = True  # ablation switch: response-disentangled consistency distillation
    mrm_include_complete: bool = True  # MRM may leave a sample complete (uniform over 7 patterns, else 6)
    mrm_frame_drop: bool = False  # MRM also drops a random fraction of frames per sample (intra-modality)
    mrm_ratio_step: float = 0.1  # grid step of the MRM frame-drop ratio
    teacher_epochs: int = 0  # epochs of the teacher stage; 0 = train.epochs

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_encoder_settings(self)
        check_dropouts(head_dropout=self.head_dropout)
        step = self.mrm_ratio_step
        if not 0.0 < step <= 1.0 or abs(1.0 / step - round(1.0 / step)) > 1e-6:
            raise ValueError(f"mrm_ratio_step: expected a step dividing 1 into whole steps, found {step!r}")


# ------------------------------------------------------------------------------------------------ categories


def num_categories(task: TaskSpec, scheme: str) -> int:
    """How many categories CPD and RCD use: the emotions, or 2 / 3 sentiment polarities."""
    if task.kind == "emotions":
        return task.num_targets
    if scheme not in ("binary", "ternary"):
        raise ValueError(f"regression_categories must be binary or ternary, got {scheme!r}")
    return 2 if scheme == "binary" else 3


def categories(label: Tensor, task: TaskSpec, scheme: str) -> Tensor:
    """(B,) int64 category of every sample (see the module docstring).

    Regression: binary 0 = negative (< 0), 1 = non-negative; ternary 0 = negative, 1 = neutral (== 0),
    2 = positive. Emotions: index of the first present emotion, 0 (Neutral) when none is present.
    """
    if task.kind == "emotions":
        return label.argmax(dim=1)  # (B, K) -> (B,): first maximum = first present emotion
    if scheme == "binary":
        return (label >= 0).long()
    if scheme == "ternary":
        return torch.sign(label).long() + 1
    raise ValueError(f"regression_categories must be binary or ternary, got {scheme!r}")


# --------------------------------------------------------------------------------------------------- network


@dataclass
class CorrKDOutput(ModelOutput):
    """CorrKD's output (teacher and student alike).

    Attributes:
        pooled: per modality its Transformer outputs averaged over the real frames (B, d).
        joint: H = [pooled_l; pooled_a; pooled_v] (B, 3d), what SCD and CPD distil.
        responses: (B, C) class responses RCD distils: the polarity head's logits (regression) or the per-emotion
            log-odds of presence (emotions).
    """

    pooled: dict[Modality, Tensor] = field(default_factory=dict)
    joint: Tensor | None = None
    responses: Tensor | None = None


class CorrKDNet(nn.Module):
    """Teacher and student network: per-modality encoders, global average, concatenation, prediction MLP."""

    def __init__(self, cfg: CorrKDCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.mask_padding = cfg.mask_padding
        self.encoders = modality_encoders(dims=dims, **encoder_settings(cfg))
        width = len(MODALITIES) * cfg.d_model
        self.head = mlp(
            [width, cfg.head_hidden or cfg.d_model, task_outputs(task.kind, task.num_targets)],
            dropout=cfg.head_dropout,
        )
        # regression outputs no class responses: a polarity head supplies them (CPD/RCD categories)
        self.polarity_head = (
            nn.Linear(width, num_categories(task, cfg.regression_categories)) if task.kind == "regression" else None
        )

    def encode(self, batch: Batch, modality: Modality) -> Tensor:
        """(B, d): the modality's Transformer outputs averaged over its real frames."""
        valid = batch.valid[modality]
        _, h = self.encoders[modality](batch.features[modality], present=batch.present(modality), valid=valid)
        start, stop = kept_span(valid, mask_padding=self.mask_padding)  # the encoders' setting
        return masked_mean(h, valid[:, start:stop])  # (B, T', d) -> (B, d) over the span the encoder computed on

    def forward(self, batch: Batch) -> CorrKDOutput:
        pooled = {m: self.encode(batch, m) for m in MODALITIES}  # each (B, d)
        joint = torch.cat([pooled[m] for m in MODALITIES], dim=-1)  # (B, 3d)
        pred = shape_prediction(self.head(joint), self.task.kind, self.task.num_targets)
        # regression: polarity logits (B, 3d) -> (B, C); emotions: log-odds of presence (B, K, 2) -> (B, K)
        responses = self.polarity_head(joint) if self.polarity_head is not None else pred[..., 1] - pred[..., 0]
        return CorrKDOutput(pred=pred, pooled=pooled, joint=joint, responses=responses)


# ------------------------------------------------------------------------------------------------------ MRM


@dataclass(frozen=True)
class ModalityRandomMissing:
    """CorrKD's Modality Random Missing: each sample keeps a random non-empty subset of its modalities.

    The availability pattern is uniform over the seven non-empty subsets (complete included) or over the six
    proper ones (``include_complete=False``); with ``frame_drop`` a per-sample ratio ``p`` uniform on
    {0, step, ..., 1} first removes ``floor(p * L)`` frames of every modality. Pure: a new batch is returned,
    the only randomness is ``generator``.

    Attributes:
        include_complete: the complete pattern is one of the uniformly drawn patterns.
        frame_drop: also drop frames (intra-modality) before dropping modalities.
        ratio_step: grid step of the frame-drop ratio.
    """

    include_complete: bool = True
    frame_drop: bool = False
    ratio_step: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio_step <= 1.0 or abs(1.0 / self.ratio_step - round(1.0 / self.ratio_step)) > 1e-6:
            raise ValueError(f"ratio_step must divide 1 into an integer number of steps, got {self.ratio_step}")

    @property
    def name(self) -> str:
        return (
            f"mrm(include_complete={self.include_complete!r}, frame_drop={self.frame_drop!r}, "
            f"ratio_step={self.ratio_step!r})"
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able name and parameters, for results files."""
        return {
            "name": self.name,
            "type": "mrm",
            "params": {
                "include_complete": self.include_complete,
                "frame_drop": self.frame_drop,
                "ratio_step": self.ratio_step,
            },
        }

    @property
    def subset_prob(self) -> float:
        """Probability that a sample gets a proper subset: 6/7 makes the seven patterns equally likely."""
        proper = len(PROPER_SUBSETS)
        return proper / (proper + 1) if self.include_complete else 1.0

    def apply(self, batch: Batch, *, generator: torch.Generator) -> Batch:
        """Draws fresh MRM masks for ``batch`` (the generator advances; the input is not modified).

        Args:
            batch: the complete training batch.
            generator: the only source of randomness.

        Returns:
            A new batch with the masks OR-ed in and missing frames zeroed.
        """
        size = batch.size
        new: dict[Modality, Tensor] = {m: torch.zeros_like(batch.valid[m]) for m in MODALITIES if m in batch.features}
        if self.frame_drop:
            levels = round(1.0 / self.ratio_step)
            steps = torch.randint(levels + 1, (size,), generator=generator, device=generator.device)  # (B,)
            ratios = steps.double() / levels  # (B,)
            for m in new:
                new[m] = frame_mask(batch.valid[m], ratios.to(batch.valid[m].device), generator=generator)
        available = sample_subsets(size, subset_prob=self.subset_prob, generator=generator)  # (B, 3)
        for j, m in enumerate(MODALITIES):
            if m in new:
                absent = ~available[:, j].to(new[m].device)  # (B,)
                new[m] = new[m] | absent[:, None]  # (B, T): the whole row, padding included
        return apply_missing(batch, new)


def train_protocol(cfg: CorrKDCfg) -> ModalityRandomMissing:
    return ModalityRandomMissing(
        include_complete=cfg.mrm_include_complete, frame_drop=cfg.mrm_frame_drop, ratio_step=cfg.mrm_ratio_step
    )


# -------------------------------------------------------------------------------------------- training system


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


def category_loss(output: CorrKDOutput, batch: Batch, task: TaskSpec, scheme: str) -> Tensor:
    """Cross-entropy of the polarity head against the sentiment polarity (regression only)."""
    assert output.responses is not None
    return F.cross_entropy(output.responses, categories(batch.label, task, scheme))


class CorrKDTeacherObjective(TrainingSystem):
    """The teacher on complete data: the task loss (+ the polarity head's cross-entropy for regression)."""

    network_type = CorrKDNet

    def __init__(self, cfg: CorrKDCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.scheme = cfg.regression_categories
        self.lambda_category = cfg.lambda_category

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        assert isinstance(output, CorrKDOutput)
        terms = {"task": task_loss(output.pred, batch.label, self.task)}
        terms["loss"] = terms["task"]
        if self.task.kind == "regression":
            terms["category"] = category_loss(output, batch, self.task, self.scheme)
            terms["loss"] = terms["loss"] + self.lambda_category * terms["category"]
        return terms


class CorrKDStudentObjective(DistillationSystem):
    """The student stage: a frozen teacher sees the complete batch, the student its MRM copy.

    Owns the RCD statistics networks; the teacher is held outside the module tree (trained and saved by its own
    stage, frozen here, never in an optimizer). The base step passes the teacher's output on the clean batch to
    :meth:`losses`.
    """

    network_type = CorrKDNet

    def __init__(self, cfg: CorrKDCfg, *, task: TaskSpec, teacher: CorrKDNet) -> None:
        super().__init__(teacher=teacher)
        self.task = task
        self.scheme = cfg.regression_categories
        self.count = num_categories(task, cfg.regression_categories)
        self.lambda_category = cfg.lambda_category
        self.scd_margin = cfg.scd_margin
        self.scd_normalize = cfg.scd_normalize
        self.rcd_mode = cfg.rcd_mode
        self.rcd_tau = cfg.rcd_tau
        self.mi_negatives = cfg.mi_negatives
        self.weights = {"scd": cfg.lambda_scd, "cpd": cfg.lambda_cpd, "rcd": cfg.lambda_rcd}
        self.use = {"scd": cfg.scd, "cpd": cfg.cpd, "rcd": cfg.rcd}
        hidden = cfg.stat_hidden or cfg.d_model
        # one statistics network per disentangled part (input: teacher and student parts concatenated)
        parts = {"target": 2} if self.count <= 2 else {"target": 2, "nontarget": self.count - 1}
        self.statistics = (
            nn.ModuleDict({name: mlp([2 * w, hidden, 1]) for name, w in parts.items()})
            if cfg.rcd and cfg.rcd_mode == "mi"
            else None
        )

    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.statistics is not None:
            params += list(self.statistics.parameters())  # T_theta maximises the MI bound together with the student
        groups = parameter_groups(params, model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"main": adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)}

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

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        """The student's full objective, every term named; ``loss`` is the weighted sum. ``teacher`` is the
        frozen teacher's output on the clean batch (:meth:`teacher_output`)."""
        del clean  # unused here; part of the losses() signature every system shares
        if not isinstance(teacher, CorrKDOutput):
            raise ValueError("the CorrKD student's losses need the teacher's output on the clean batch")
        assert isinstance(output, CorrKDOutput)
        assert output.joint is not None and output.responses is not None
        assert teacher.joint is not None and teacher.responses is not None
        terms: dict[str, Tensor] = {"task": task_loss(output.pred, batch.label, self.task)}
        total = terms["task"]
        if self.task.kind == "regression":
            terms["category"] = category_loss(output, batch, self.task, self.scheme)
            total = total + self.lambda_category * terms["category"]
        category = categories(batch.label, self.task, self.scheme)  # (B,)
        h_student, h_teacher = output.joint, teacher.joint.detach()
        if self.use["scd"]:
            terms["scd"] = scd_loss(h_student, h_teacher, margin=self.scd_margin, normalize=self.scd_normalize)
        if self.use["cpd"]:
            terms["cpd"] = cpd_loss(h_student, h_teacher, category, self.count)
        if self.use["rcd"]:
            terms["rcd"] = self.rcd(output.responses, teacher.responses.detach(), category)
        for name in ("scd", "cpd", "rcd"):
            if name in terms:
                total = total + self.weights[name] * terms[name]
        terms["loss"] = total
        return terms


def stages(cfg: CorrKDCfg, *, dims: Mapping[Modality, int], task: TaskSpec, missing: bool) -> list[Stage]:
    """Teacher on complete data (task loss), then the student on MRM copies distilled from the frozen teacher."""
    teacher = CorrKDNet(cfg, dims=dims, task=task)
    student = CorrKDNet(cfg, dims=dims, task=task)
    student_objective = CorrKDStudentObjective(cfg, task=task, teacher=teacher)
    teacher_overrides = {"epochs": cfg.teacher_epochs} if cfg.teacher_epochs else {}
    return [
        Stage(
            name="teacher",
            model=teacher,
            objective=CorrKDTeacherObjective(cfg, task=task),
            missing=False,
            train_overrides=teacher_overrides,
        ),
        Stage(
            name="student",
            model=student,
            objective=student_objective,
            missing=missing,
            protocol=train_protocol(cfg),
        ),
    ]


# ----------------------------------------------------------------------------------------------- registration

register_model(
    ModelSpec(
        name="corrkd",
        config_cls=CorrKDCfg,
        build=CorrKDNet,
        objective=CorrKDTeacherObjective,
        stages=stages,
    )
)
