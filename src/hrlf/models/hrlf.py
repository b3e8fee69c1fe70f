"""``hrlf`` — Hierarchical Representation Learning Framework, the whole method in one file.

Paper: Mingcheng Li, Dingkang Yang, Yang Liu, Shunli Wang, Jiawei Chen, Shuaibing Wang, Jinjie Wei, Yue Jiang,
Qingyao Xu, Xiaolu Hou, Mingyang Sun, Ziyun Qian, Dongliang Kou, Lihua Zhang. *Toward Robust Incomplete
Multimodal Sentiment Analysis via Hierarchical Representation Learning.* NeurIPS 2024, arXiv 2411.02793.
No official code exists; this follows ``shared/docs/hrlf_method.md`` (section numbers below refer to it).

Sections: config (:class:`HRLFCfg`) - network (:class:`FineGrainedFactorization`, :class:`HRLFNet`, exactly what
``model.safetensors`` holds) - training system (:class:`HierarchicalMutualInformation`,
:class:`HierarchicalAdversarial`, :class:`TeacherObjective`, :class:`StudentObjective`) - diagnostics
(:func:`diagnose`) - registration.

Equation map (paper numbering -> code):
    §2.1  R = Conv1d_{k=3}(X) + PE, Z = last element of a per-modality Transformer ....  layers.ModalityEncoder
    §2.2  Q = E^S(Z), U = E^M(Z) per modality; shared decoder D_r ..................  FineGrainedFactorization
    Eq. 1 L_trans^self = 1/n sum_a ||D_r(Q_a, U_a) - Z_a||_2 ..........................  FineGrainedFactorization.loss
    Eq. 2 L_trans^cross = 1/(n^2-n) sum_{a!=b} ||D_r(Q_a, U_b) - Z_b||_2 ...............  FineGrainedFactorization.loss
    Eq. 3 L_recon = 1/n^2 sum_{a,b} ||E^S_a(D_r(Q_b, U_a)) - Q_a||_2 ..................  FineGrainedFactorization.loss
    Eq. 4 L_FRF = L_trans^self + L_trans^cross + L_recon ................................  FineGrainedFactorization.loss
    §2.3  H = [Q_l;U_l;Q_a;U_a;Q_v;U_v], hourglass 3d->2d->d->2d->3d, scales E1, E2, E3 ..  HRLFNet, scales()
    Eq. 7 Deep-InfoMax JSD bound MI = E_P[-sp(-T(x,y))] - E_PxP[sp(T(x,y'))] .......  jsd_mi
    Eq. 8 L_HMI = -sum_i MI(E^t_i, E^s_i) ........................................  HierarchicalMutualInformation
    Eq. 9 L_HAL = sum_i log(1 - D_i(E^s_i)) + log D_i(E^t_i), min-max ................  HierarchicalAdversarial
    §2.7  L_KL = KL(L^t, L^s) (emotions); MSE(L^t, L^s) for regression (our reading) ..  StudentObjective.distillation
    §3.1  L_total = L_task + L_FRF + L_HMI + L_HAL + L_KL (weights 1) ................  StudentObjective.losses
    §3.2  teacher on complete data (task + FRF), frozen; student on MSM copies ........  stages(), TeacherObjective

Choices the paper leaves open (hrlf_method.md §9; every one is a field of :class:`HRLFCfg`):
    #1  Q and U have d/2 each, so H has 3d (``qu_dim``; 0 = d/2).
    #2  D_r takes the concatenation [Q_a; U_b] -> MLP d -> d -> d (``decoder_hidden``; 0 = d).
    #3  E^S, E^M are 2-layer MLPs d -> d -> d/2 with ReLU (``factor_hidden``; 0 = d).
    #4  3 Transformer layers, conv kernel 3, last real step (``num_layers``, ``conv_kernel``); padding kept out of
        attention (``mask_padding``), missing frames stay in as zero vectors as the paper says.
    #5  E1 = {H, H~} and E2 = {I1, I3} hold two same-size members: ``scale_merge=stack`` (default) applies the MI
        estimator and the discriminator to each member and sums; ``mean`` averages members; ``concat`` joins them
        (6d / 4d / d, contradicting the printed sizes).
    #6  one statistics network and one discriminator per scale, 2-layer MLPs; JSD negatives by an in-batch
        permutation (``mi_negatives=shuffle``) or all off-diagonal pairs (``all_pairs``).
    #7  the discriminators have their own Adam (``disc_lr``; 0 = the student's lr) and are updated before the
        student in every iteration; the student's adversarial term is ``gen_loss=saturating`` (log(1 - D), as
        printed in Eq. 9) or ``non_saturating`` (-log D).
    #8  KD: softmax KL with temperature ``kd_tau`` for emotions; MSE between teacher and student scores for
        regression (``kd_regression=mse``): a KL between scalar outputs is undefined; MSE equals the KL between
        unit-variance Gaussians centred on the two outputs, up to a factor 2.
    #9  the teacher is trained first on complete data with task + FRF losses, selected on valid, then frozen;
        its features are computed without gradients (``teacher_epochs``; 0 = the student's epochs).
    #13 loss weights ``lambda_*`` default 1 as printed.
    #15 ablations: ``frf=False`` feeds Z_m as C_m and drops E^S, E^M, D_r and L_FRF (teacher too); ``hmi=False``
        / ``hal=False`` / ``kd=False`` drop the term and its networks.

Departures from the literal reading (training hygiene where the paper is silent; the dataclass defaults keep
the literal reading, the recipes in ``configs/hrlf/`` switch them on; docs/results.md measures each):
    * ``aux_features``: the discriminators and statistics networks see the hourglass features of the literal
      forward pass (``post_dropout``: the student's carry dropout masks the eval-mode teacher's never do, so D can
      win on dropout artefacts), the same chain without dropout (``pre_dropout``), or the teacher's features
      computed in train mode too (``teacher_train_mode``: both sides carry dropout noise).
    * ``absent_frf``: the student's FRF terms for modalities that MSM removed from its input: kept as printed
      (``all``; their Z is a fixed code, and D_r(Q_a, U_b) = Z_b^absent teaches Q_a to carry nothing), left out
      (``mask``: a term counts for a sample only if the modalities it involves are present), or given the
      frozen teacher's Z / Q of the complete clip as target (``teacher_target``: reconstruct the missing modality).
    * ``frf_detach_targets`` (stop-gradient on the Z and Q targets), ``frf_recon_frozen`` (E^S's weights get no
      gradient from its re-encoding in Eq. 3), ``frf_variance`` / ``frf_covariance`` (VICReg hinge on the std of
      Z, Q and U per dimension, and the off-diagonal covariance of Q and U): together they remove the trivial
      minimum of Eqs. 1-4 where every clip gets the same Q. The stop-gradient and the frozen re-encoding suffice
      for that on synthetic MOSI; the variance hinge on top cost missing-modality accuracy there (validation and
      test, docs/results.md), so the MOSI recipe leaves it off.
    * ``frf_decorrelation``: a penalty on the squared across-sample correlation between Q_m's and U_m's dimensions.
      Eqs. 1-4 ask Q to be shared across modalities but nothing keeps U from holding the same (sentiment)
      information too, so without it a probe reads sentiment from U as well as from Q; with it, what the cross
      translations put in Q cannot be repeated linearly in U (the paper's "task-independent" U).
    * ``frf_invariance``: the mean squared gap between the sentiment codes of two modalities of the same clip
      (both present), averaged over the three pairs: the paper's "modality-independent, shared across all
      modalities" Q as an explicit term. With ``frf_variance`` and ``frf_decorrelation`` this is VICReg with the
      modalities as the views (invariance, variance, covariance): measured alone, the decorrelation moved the
      sentiment into U and let Q shrink (docs/results.md).
    * ``frf_task_free_u``: the squared across-sample correlation of every dimension of U_m with the label (each
      emotion's label for emotions), the paper's "task-independent" U as a term: no linear read-out of U then
      predicts the label, so the label must reach the head through Q (or non-linearly). No extra network: the
      adversary of a gradient-reversal head would be a moving target, this is the linear adversary's optimum.
    * ``frf_u_adversary``: a non-linear adversary on U (gradient reversal, as in domain-adversarial training): a
      small MLP per modality learns to predict the label from U_m (its own loss, weight 1, ``u_adversary`` in the
      logs), and E^M receives that loss's gradient reversed and scaled by ``frf_u_adversary``, so U is pushed to
      hold what no such read-out can use. The linear ``frf_task_free_u`` lost to the task loss and left the label
      linearly readable from U (docs/results.md); the adversary's loss is the diagnostic (near the label's
      variance: U carries no label the adversary can find). Teacher and student each train their own adversary on
      the U that L_FRF sees (after ``frf_encoder_grad``'s detach, so with the recipe only E^M is pushed); without
      FRF there is no U and the knob does nothing. Measured on synthetic MOSI teachers: the adversary is held near
      a constant guess, yet a fresh linear probe reads the label from U as well as from Q (the known leakiness of
      adversarial removal), so the recipes leave it off (docs/results.md).
    * ``u_downstream_grad=False``: U_m still enters H (and the head reads it), but the gradients of the task,
      distillation, HMI and HAL terms stop at U: E^M is shaped by L_FRF (and its optional terms) alone, the
      paper's "task-independent" U. With the task's gradient in E^M the head makes U a second copy of the
      sentiment (linear probes read the label from U as well as from Q, docs/results.md); with it stopped, the
      label reaches the head through Q unless the translations themselves put it in U, which they do on
      synthetic MOSI (U's probe stays level with Q's; docs/results.md), so the recipes leave it on.
    * ``student_init=teacher``: the student starts from the selected teacher's weights (fresh optimizer state).
    * ``spread_floor``: a hinge that keeps every student code (Z, Q, U per modality, rows where the modality is in
      the student's input) at no less than ``spread_floor`` times the teacher's across-sample std on the same clips,
      per dimension (:func:`spread_floor_hinge`, weight ``lambda_spread``; logged as ``spread``). HAL's per-sample
      discriminators cannot see a code that is constant over the batch (GAN mode collapse): on synthetic MOSI the
      student's audio encoder (audio carries little of the synthetic label: probe R² 0.02) collapsed
      to a point the discriminators accept (Z std 0.08 against the teacher's 0.72) in 2 of 10 seeds, and in
      none without HAL (docs/results.md). The hinge is zero while the student keeps that share of the teacher's
      spread, so it acts only against collapse (VICReg's variance term, with the teacher's spread as target).
    * ``disc_input_norm`` / ``mi_input_norm``: inputs of D and T standardised by the teacher batch's statistics
      (``teacher_batch``) or per sample (``layer``); ``disc_r1`` (R1 penalty on teacher features),
      ``disc_label_smoothing`` (one-sided, real label 1 - s), ``disc_lr`` and ``disc_steps`` (two time scales /
      n discriminator steps per student step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.diagnostics import EpochMeter, across_sample_std, discriminator_accuracy, gradient_norm, linear_probe
from hrlf.engine.system import DistillationSystem, TrainingSystem, adam, task_loss
from hrlf.models.layers import (
    Hourglass,
    check_choices,
    check_dropouts,
    check_encoder_settings,
    encode_last,
    encoder_settings,
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
    from hrlf.data.datamodule import DataModule

SCALE_NAMES = ("E1", "E2", "E3")
CODES = ("Z", "Q", "U")


# ----------------------------------------------------------------------------------------------------- config


@dataclass
class HRLFCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "scale_merge": ("stack", "mean", "concat"),
        "mi_negatives": ("shuffle", "all_pairs"),
        "gen_loss": ("saturating", "non_saturating"),
        "kd_regression": ("mse",),
        "frf_distance": ("l2", "mse"),
        "hourglass_activation": ("relu", "leaky_relu", "gelu"),
        "aux_features": ("post_dropout", "pre_dropout", "teacher_train_mode"),
        "absent_frf": ("all", "mask", "teacher_target"),
        "student_init": ("random", "teacher"),
        "disc_input_norm": ("none", "teacher_batch", "layer"),
        "mi_input_norm": ("none", "teacher_batch", "layer"),
    }

    d_model: int = 40  # embedding size d (paper: 40 on all datasets)
    num_heads: int = 10  # attention heads (paper: MOSI 10, MOSEI 8, IEMOCAP 10)
    num_layers: int = 3  # Transformer layers per modality [U]
    ffn_mult: int = 4  # FFN width as a multiple of d [U]
    dropout: float = 0.1  # attention / residual / FFN dropout [U]
    embed_dropout: float = 0.2  # dropout after conv + positions [U]
    head_dropout: float = 0.1  # dropout in the hourglass and classifier [U]
    conv_kernel: int = 3  # temporal convolution kernel ("3 x 3" read as 3 for a 1-D conv)
    mask_padding: bool = True  # keep padded frames out of attention
    hourglass_activation: str = "relu"  # activation between the hourglass layers: relu | leaky_relu | gelu [U]
    qu_dim: int = 0  # size of Q and U; 0 = d/2 so that H has 3d (ambiguity #1)
    factor_hidden: int = 0  # hidden width of E^S and E^M; 0 = d (ambiguity #3)
    decoder_hidden: int = 0  # hidden width of the shared decoder D_r; 0 = d (ambiguity #2)
    frf_detach_targets: bool = False  # stop-gradient on Z and Q targets of Eqs. 1-3 (paper: none)
    frf_distance: str = "l2"  # distance in Eqs. 1-3: l2 (non-squared norm, as printed) | mse
    frf_normalize: bool = False  # layer-normalize both sides of every Eq. 1-3 distance (scale-free targets)
    frf_encoder_grad: bool = True  # let L_FRF's gradient reach the unimodal encoders (paper: yes, as written)
    frf_recon_frozen: bool = False  # E^S's weights get no gradient from the re-encoding in Eq. 3 (departure)
    frf_variance: float = 0.0  # weight of the VICReg variance hinge on Z, Q, U inside L_FRF (departure; 0 = off)
    frf_variance_target: float = 1.0  # per-dimension std the hinge asks for (VICReg's gamma)
    frf_covariance: float = 0.0  # weight of the VICReg covariance penalty on Q and U (departure; 0 = off)
    frf_decorrelation: float = 0.0  # weight of the Q-U cross-correlation penalty per modality (departure; 0 = off)
    frf_invariance: float = 0.0  # weight of the mean squared Q_a - Q_b gap between modalities (departure; 0 = off)
    frf_task_free_u: float = 0.0  # weight of the squared U-label correlation per dimension (departure; 0 = off)
    frf_u_adversary: float = 0.0  # gradient-reversal scale of the label adversary on U (departure; 0 = off)
    frf_u_adversary_hidden: int = 0  # the adversary's hidden width; 0 = the width of U
    u_downstream_grad: bool = True  # task, KD, HMI and HAL gradients reach E^M through U (False: only L_FRF shapes U)
    absent_frf: str = "all"  # student FRF terms of MSM-removed modalities: all | mask | teacher_target (departure)
    scale_merge: str = "stack"  # members of E1/E2: stack | mean | concat (ambiguity #5)
    aux_features: str = "post_dropout"  # what D and T see: post_dropout | pre_dropout | teacher_train_mode
    mi_negatives: str = "shuffle"  # JSD negatives: shuffle (in-batch permutation) | all_pairs (ambiguity #6)
    mi_input_norm: str = "none"  # standardise T's inputs: none | teacher_batch | layer (departure)
    stat_hidden: int = 0  # statistics-network hidden width; 0 = the scale's width
    disc_hidden: int = 0  # discriminator hidden width; 0 = the scale's width
    gen_loss: str = "saturating"  # student's adversarial term: saturating log(1-D) | non_saturating -log D
    disc_lr: float = 0.0  # discriminator Adam learning rate; 0 = the student's lr (ambiguity #7)
    disc_steps: int = 1  # discriminator updates per student step (departure when > 1)
    disc_input_norm: str = "none"  # standardise D's inputs: none | teacher_batch | layer (departure)
    disc_r1: float = 0.0  # R1 penalty weight gamma on teacher features, gamma/2 E||grad D||^2 (departure; 0 = off)
    disc_label_smoothing: float = 0.0  # one-sided label smoothing: real label 1 - s (departure; 0 = off)
    student_init: str = "random"  # student's initial weights: random | teacher (the selected teacher's; departure)
    spread_floor: float = 0.0  # student codes keep >= this share of the teacher's per-dim std (departure; 0 = off)
    lambda_spread: float = 1.0  # weight of the spread-floor hinge (only with spread_floor > 0)
    kd_tau: float = 1.0  # softmax temperature of the output KL (emotions)
    kd_regression: str = "mse"  # output distillation for regression: mse (ambiguity #8)
    lambda_frf: float = 1.0  # weight of L_FRF
    lambda_hmi: float = 1.0  # weight of L_HMI
    lambda_hal: float = 1.0  # weight of the student's adversarial term
    lambda_kd: float = 1.0  # weight of the output distillation
    frf: bool = True  # ablation switch: fine-grained representation factorization
    hmi: bool = True  # ablation switch: hierarchical mutual information maximization
    hal: bool = True  # ablation switch: hierarchical adversarial learning
    kd: bool = True  # ablation switch: output-level distillation
    teacher_epochs: int = 0  # epochs of the teacher stage; 0 = train.epochs
    distill_warmup_epochs: int = 0  # raise the HMI and HAL weights linearly from 0 over these student epochs
    diagnostics: bool = True  # gradient shares on the first batch of every epoch (codes, MI, D accuracy always)

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_encoder_settings(self)
        check_dropouts(head_dropout=self.head_dropout)
        if self.disc_steps < 1:
            raise ValueError(f"disc_steps: expected an integer >= 1, found {self.disc_steps!r}")
        if self.frf_u_adversary_hidden < 0:
            raise ValueError(f"frf_u_adversary_hidden: expected an integer >= 0, found {self.frf_u_adversary_hidden!r}")
        if not 0.0 <= self.disc_label_smoothing < 0.5:
            raise ValueError(
                f"disc_label_smoothing: expected a number in [0, 0.5), found {self.disc_label_smoothing!r}"
            )
        for name in (
            "frf_variance",
            "frf_covariance",
            "frf_decorrelation",
            "frf_invariance",
            "frf_task_free_u",
            "frf_u_adversary",
            "disc_r1",
            "frf_variance_target",
            "spread_floor",
            "lambda_spread",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, found {getattr(self, name)!r}")

    @property
    def qu(self) -> int:
        return self.qu_dim or self.d_model // 2


# ---------------------------------------------------------------------------------------------------- network


def _per_sample_distance(a: Tensor, b: Tensor, *, distance: str, normalize: bool) -> Tensor:
    """(B, w), (B, w) -> (B,): the non-squared L2 norm (as printed) or the mean squared error per sample."""
    if normalize:  # compare shapes, not scales: shrinking every representation no longer lowers the loss
        a, b = F.layer_norm(a, a.shape[-1:]), F.layer_norm(b, b.shape[-1:])
    if distance == "l2":
        return torch.linalg.vector_norm(a - b, dim=-1)
    return (a - b).pow(2).mean(dim=-1)


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of (B,) ``values``; with a (B,) 0/1 ``weight``, the mean over weighted rows (0 when there are none)."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def variance_hinge(x: Tensor, *, target: float, weight: Tensor | None = None) -> Tensor:
    """VICReg's variance term: mean over dimensions of relu(target - std across samples) of (B, w) ``x``."""
    if weight is not None:
        x = x[weight.bool()]
    if x.shape[0] < 2:
        return x.new_zeros(())
    return F.relu(target - torch.sqrt(x.var(dim=0) + 1e-4)).mean()


def spread_floor_hinge(student: Tensor, teacher: Tensor, *, floor: float, weight: Tensor | None = None) -> Tensor:
    """Mean over dimensions of relu(floor * std_teacher - std_student), stds across the rows of (B, w) codes.

    ``teacher`` is the frozen teacher's code of the same clips (a constant here); ``weight`` (B,) bool keeps the
    rows whose modality the student saw. Fewer than two rows: 0.
    """
    if weight is not None:
        keep = weight.bool()
        student, teacher = student[keep], teacher[keep]
    if student.shape[0] < 2:
        return student.new_zeros(())
    target = floor * teacher.detach().std(dim=0, unbiased=False)
    return F.relu(target - torch.sqrt(student.var(dim=0, unbiased=False) + 1e-8)).mean()


def covariance_penalty(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """VICReg's covariance term: sum of squared off-diagonal covariances of (B, w) ``x``, divided by w."""
    if weight is not None:
        x = x[weight.bool()]
    if x.shape[0] < 2:
        return x.new_zeros(())
    centred = x - x.mean(dim=0)
    cov = centred.T @ centred / (x.shape[0] - 1)  # (w, w)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / x.shape[1]


def cross_correlation_penalty(x: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared across-sample correlation between every column of (B, w) ``x`` and of (B, w') ``y``.

    0 when no linear function of one code's dimensions is correlated with any dimension of the other; 1 when
    they are copies. A constant column counts as uncorrelated (its std is floored, not divided by 0).
    """
    if weight is not None:
        keep = weight.bool()
        x, y = x[keep], y[keep]
    if x.shape[0] < 2:
        return x.new_zeros(())
    xs = (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0) + 1e-4)
    ys = (y - y.mean(dim=0)) / torch.sqrt(y.var(dim=0) + 1e-4)
    corr = xs.T @ ys / (x.shape[0] - 1)  # (w, w')
    return corr.pow(2).mean()


class FineGrainedFactorization(nn.Module):
    """FRF (§2.2): per-modality sentiment encoder E^S and modality encoder E^M, one shared decoder D_r."""

    def __init__(self, cfg: HRLFCfg) -> None:
        super().__init__()
        d, qu, hidden = cfg.d_model, cfg.qu, cfg.factor_hidden or cfg.d_model
        self.sentiment_encoders = nn.ModuleDict({m: mlp([d, hidden, qu]) for m in MODALITIES})
        self.modality_encoders = nn.ModuleDict({m: mlp([d, hidden, qu]) for m in MODALITIES})
        self.decoder = mlp([2 * qu, cfg.decoder_hidden or d, d])  # D_r, shared by every (alpha, beta) pair

    def forward(self, z: Mapping[Modality, Tensor]) -> tuple[dict[Modality, Tensor], dict[Modality, Tensor]]:
        q = {m: self.sentiment_encoders[m](z[m]) for m in MODALITIES}  # each (B, d) -> (B, d/2)
        u = {m: self.modality_encoders[m](z[m]) for m in MODALITIES}  # each (B, d) -> (B, d/2)
        return q, u

    def _reencode(self, modality: Modality, x: Tensor, *, frozen: bool) -> Tensor:
        """E^S_m(x); ``frozen``: E^S's weights enter as constants (the gradient still reaches ``x``)."""
        encoder = self.sentiment_encoders[modality]
        if not frozen:
            return encoder(x)
        params = {name: p.detach() for name, p in encoder.named_parameters()}
        return torch.func.functional_call(encoder, params, (x,))

    def loss(
        self,
        z: Mapping[Modality, Tensor],
        q: Mapping[Modality, Tensor],
        u: Mapping[Modality, Tensor],
        *,
        cfg: HRLFCfg,
        present: Mapping[Modality, Tensor] | None = None,
        teacher: HRLFOutput | None = None,
        label: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Eqs. 1-4 averaged over the batch (the nine decoder passes run as one), plus the optional VICReg terms.

        ``present`` holds (B,) bools: modality m is in this network's input for the sample. With
        ``cfg.absent_frf="mask"`` a term counts only for samples whose modalities it involves are present; with
        ``"teacher_target"`` the targets of absent modalities are ``teacher``'s Z and Q (detached). ``label``
        ((B,) scores or (B, K) emotion labels) is needed by ``cfg.frf_task_free_u`` only.
        """
        n = len(MODALITIES)
        pairs = [(a, b) for a in MODALITIES for b in MODALITIES]  # (alpha, beta): Q from alpha, U from beta
        stacked = torch.stack([torch.cat([q[a], u[b]], dim=-1) for a, b in pairs])  # (9, B, d)
        z_bar = self.decoder(stacked)  # (9, B, d): Z_bar[alpha beta] ~ Z_beta
        detach = cfg.frf_detach_targets
        target = {m: (z[m].detach() if detach else z[m]) for m in MODALITIES}
        q_target = {m: (q[m].detach() if detach else q[m]) for m in MODALITIES}
        weight: dict[tuple[Modality, Modality], Tensor | None] = {pair: None for pair in pairs}
        if present is not None and cfg.absent_frf != "all":
            p = {m: present[m].to(z_bar.dtype) for m in MODALITIES}  # (B,) 1 = present
            use_teacher = cfg.absent_frf == "teacher_target" and teacher is not None
            if use_teacher:
                assert teacher is not None
                for m in MODALITIES:
                    keep = present[m].unsqueeze(-1)  # (B, 1)
                    target[m] = torch.where(keep, target[m], teacher.z[m].detach())
                    q_target[m] = torch.where(keep, q_target[m], teacher.q[m].detach())
            for a, b in pairs:
                if a == b:
                    weight[(a, b)] = p[a]
                else:  # with a teacher target one present side suffices: reconstruct the other from it
                    weight[(a, b)] = torch.maximum(p[a], p[b]) if use_teacher else p[a] * p[b]

        def dist(x: Tensor, y: Tensor, w: Tensor | None) -> Tensor:
            return _weighted_mean(_per_sample_distance(x, y, distance=cfg.frf_distance, normalize=cfg.frf_normalize), w)

        self_terms: list[Tensor] = []
        cross_terms: list[Tensor] = []
        recon_terms: list[Tensor] = []
        for k, (a, b) in enumerate(pairs):
            w = weight[(a, b)]
            (self_terms if a == b else cross_terms).append(dist(z_bar[k], target[b], w))  # E ||Z_bar_ab - Z_b||
            # Eq. 3 with (beta, alpha) = (a, b): re-encode Z_bar_ab = D_r(Q_a, U_b) with E^S_b and match Q_b
            q_bar = self._reencode(b, z_bar[k], frozen=cfg.frf_recon_frozen)  # (B, d) -> (B, d/2)
            recon_terms.append(dist(q_bar, q_target[b], w))
        trans_self = torch.stack(self_terms).sum() / n
        trans_cross = torch.stack(cross_terms).sum() / (n * n - n)
        recon = torch.stack(recon_terms).sum() / (n * n)
        out = {"frf_trans_self": trans_self, "frf_trans_cross": trans_cross, "frf_recon": recon}
        total = trans_self + trans_cross + recon
        rows = {m: (present[m] if present is not None else None) for m in MODALITIES}
        if cfg.frf_variance > 0:
            hinge = [
                variance_hinge(code[m], target=cfg.frf_variance_target, weight=rows[m])
                for code in (z, q, u)
                for m in MODALITIES
            ]
            out["frf_variance"] = torch.stack(hinge).mean()
            total = total + cfg.frf_variance * out["frf_variance"]
        if cfg.frf_covariance > 0:
            cov = [covariance_penalty(code[m], weight=rows[m]) for code in (q, u) for m in MODALITIES]
            out["frf_covariance"] = torch.stack(cov).mean()
            total = total + cfg.frf_covariance * out["frf_covariance"]
        if cfg.frf_decorrelation > 0:
            pen = [cross_correlation_penalty(q[m], u[m], weight=rows[m]) for m in MODALITIES]
            out["frf_decorrelation"] = torch.stack(pen).mean()
            total = total + cfg.frf_decorrelation * out["frf_decorrelation"]
        if cfg.frf_invariance > 0:
            gaps = []
            for i, a in enumerate(MODALITIES):
                for b in MODALITIES[i + 1 :]:
                    both = None if present is None else (present[a] & present[b]).to(q[a].dtype)
                    gaps.append(_weighted_mean((q[a] - q[b]).pow(2).mean(dim=-1), both))
            out["frf_invariance"] = torch.stack(gaps).mean()
            total = total + cfg.frf_invariance * out["frf_invariance"]
        if cfg.frf_task_free_u > 0:
            if label is None:
                raise ValueError("frf_task_free_u needs the batch's labels")
            y = label.to(u[MODALITIES[0]].dtype).reshape(label.shape[0], -1)  # (B,) or (B, K) -> (B, K')
            free = [cross_correlation_penalty(u[m], y, weight=rows[m]) for m in MODALITIES]
            out["frf_task_free_u"] = torch.stack(free).mean()
            total = total + cfg.frf_task_free_u * out["frf_task_free_u"]
        out["frf"] = total
        return out


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient backward is multiplied by ``-scale`` (gradient reversal)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        return -ctx.scale * grads[0], None


class LabelAdversary(nn.Module):
    """The label adversary on U (``frf_u_adversary``): per modality an MLP U_m -> label behind gradient reversal.

    Its loss (the task loss of its predictions, over the clips where the modality is in the input) trains the
    heads to find the label in U; what reaches U is that gradient times ``-frf_u_adversary``.
    """

    def __init__(self, cfg: HRLFCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.scale = cfg.frf_u_adversary
        hidden = cfg.frf_u_adversary_hidden or cfg.qu
        out = task_outputs(task.kind, task.num_targets)
        self.heads = nn.ModuleDict({m: mlp([cfg.qu, hidden, out]) for m in MODALITIES})

    def forward(self, u: Mapping[Modality, Tensor], label: Tensor, present: Mapping[Modality, Tensor]) -> Tensor:
        """Mean over modalities of the adversary's task loss on the present rows of each U_m (B, d/2)."""
        losses = []
        for m in MODALITIES:
            rows = present[m]  # (B,) bool
            if not bool(rows.any()):
                continue
            x = _ReverseGradient.apply(u[m][rows], self.scale)  # (b, d/2)
            pred = shape_prediction(self.heads[m](x), self.task.kind, self.task.num_targets)
            losses.append(task_loss(pred, label[rows], self.task))
        return torch.stack(losses).mean() if losses else torch.zeros(())  # no modality in the input: nothing to read


@dataclass
class HourglassFeatures:
    """The hourglass chain over H (§2.3): I1 (B, 2d), I2 (B, d), I3 (B, 2d) and H~ (B, 3d)."""

    i1: Tensor
    i2: Tensor
    i3: Tensor
    refined: Tensor


@dataclass
class HRLFOutput(ModelOutput):
    """HRLF's output (teacher and student alike): the codes and features the training systems read.

    Attributes:
        z: Z_m per modality, the encoders' last real step (B, d).
        q: Q_m, the sentiment-relevant codes of FRF (B, d/2); empty without FRF.
        u: U_m, the modality-specific codes of FRF (B, d/2); empty without FRF.
        h: H = [C_l; C_a; C_v] (B, 3d), with C_m = [Q_m; U_m] (or Z_m without FRF).
        features: the hourglass chain as the prediction saw it (with dropout in train mode).
        clean: the same chain without dropout, for D and T (``aux_features=pre_dropout``); None otherwise.
    """

    z: dict[Modality, Tensor] = field(default_factory=dict)
    q: dict[Modality, Tensor] = field(default_factory=dict)
    u: dict[Modality, Tensor] = field(default_factory=dict)
    h: Tensor | None = None
    features: HourglassFeatures | None = None
    clean: HourglassFeatures | None = None

    def codes(self) -> dict[str, dict[Modality, Tensor]]:
        """Every code family this output has, by name (``Z``, and ``Q``/``U`` with FRF)."""
        return {name: c for name, c in zip(CODES, (self.z, self.q, self.u), strict=True) if c}


def as_hrlf(output: ModelOutput) -> HRLFOutput:
    """``output`` as HRLF's typed output (the shared losses() signature passes the base type)."""
    if not isinstance(output, HRLFOutput):
        raise TypeError(f"expected an HRLFOutput, found {type(output).__name__}")
    return output


class HRLFNet(nn.Module):
    """The network used for both the teacher and the student (same structure, separate parameters)."""

    def __init__(self, cfg: HRLFCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.d_model = cfg.d_model
        self.clean_features = cfg.aux_features == "pre_dropout"
        self.u_downstream_grad = cfg.u_downstream_grad
        self.encoders = modality_encoders(dims=dims, **encoder_settings(cfg))
        if cfg.frf and 2 * cfg.qu != cfg.d_model:
            raise ValueError(f"C = [Q; U] must have size d: qu_dim {cfg.qu} x 2 != d_model {cfg.d_model}")
        self.factorization = FineGrainedFactorization(cfg) if cfg.frf else None
        width = 3 * cfg.d_model
        self.fusion = Hourglass(width=width, dropout=cfg.head_dropout, activation=cfg.hourglass_activation)
        self.head = mlp([width, cfg.d_model, task_outputs(task.kind, task.num_targets)], dropout=cfg.head_dropout)

    def forward(self, batch: Batch) -> HRLFOutput:
        z = encode_last(self.encoders, batch)  # each (B, d)
        q: dict[Modality, Tensor] = {}
        u: dict[Modality, Tensor] = {}
        if self.factorization is not None:
            q, u = self.factorization(z)
            u_in = u if self.u_downstream_grad else {m: v.detach() for m, v in u.items()}  # ``u_downstream_grad``
            c = [torch.cat([q[m], u_in[m]], dim=-1) for m in MODALITIES]  # 3 x (B, d): C_m = [Q_m; U_m]
        else:
            c = [z[m] for m in MODALITIES]  # w/o FRF: C_m = Z_m
        h = torch.cat(c, dim=-1)  # (B, 3d)
        features = HourglassFeatures(*self.fusion(h))
        clean = None
        if self.clean_features:  # the same hourglass chain without dropout, for D and T (``aux_features``)
            # eval mode has no dropout: the chain above is already clean
            clean = HourglassFeatures(*self.fusion(h, use_dropout=False)) if self.training else features
        pred = shape_prediction(self.head(features.refined), self.task.kind, self.task.num_targets)
        return HRLFOutput(pred=pred, z=z, q=q, u=u, h=h, features=features, clean=clean)


# -------------------------------------------------------------------------------------------- training system


def scales(output: HRLFOutput, *, merge: str, clean: bool = False) -> list[list[Tensor]]:
    """The multi-scale representations E1 (3d), E2 (2d), E3 (d), each a list of members (§2.3, ambiguity #5).

    ``clean`` takes the hourglass features of the dropout-free chain (``aux_features=pre_dropout``).
    """
    f = output.clean if clean else output.features
    if f is None or output.h is None:
        raise ValueError("clean features need aux_features=pre_dropout" if clean else "the output has no features")
    groups = [[output.h, f.refined], [f.i1, f.i3], [f.i2]]
    if merge == "stack":
        return groups
    if merge == "mean":
        return [[torch.stack(g).mean(dim=0)] for g in groups]  # k x (B, w) -> (B, w)
    if merge == "concat":
        return [[torch.cat(g, dim=-1)] for g in groups]  # k x (B, w) -> (B, k w)
    raise ValueError(f"scale_merge must be stack, mean or concat, got {merge!r}")


def scale_widths(d_model: int, *, merge: str) -> list[int]:
    base = [3 * d_model, 2 * d_model, d_model]
    return [w * k for w, k in zip(base, (2, 2, 1), strict=True)] if merge == "concat" else base


def normalize_pair(teacher: Tensor, student: Tensor, *, mode: str) -> tuple[Tensor, Tensor]:
    """Standardise (B, w) teacher and student features the same way before D or T sees them.

    ``teacher_batch``: both centred by the teacher batch's per-feature mean and divided by its root-mean-square
    deviation, one scalar (constants, so the student's gradient is kept; a per-feature std would blow up the dead
    ReLU units and absent-modality dimensions where the teacher's std is ~0); ``layer``: each row by its own mean
    and std; ``none``: unchanged.
    """
    if mode == "none":
        return teacher, student
    if mode == "layer":
        return F.layer_norm(teacher, teacher.shape[-1:]), F.layer_norm(student, student.shape[-1:])
    if mode == "teacher_batch":
        mean = teacher.detach().mean(dim=0)
        scale = (teacher.detach() - mean).pow(2).mean().sqrt().clamp_min(1e-3)
        return (teacher - mean) / scale, (student - mean) / scale
    raise ValueError(f"input norm must be none, teacher_batch or layer, got {mode!r}")


def _all_pairs_statistics(statistics: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """T([x_i; y_j]) for every pair (i, j) of (B, w) ``x`` and (B, w') ``y`` -> (B, B, 1).

    When T starts with a Linear layer (every statistics network here), its pre-activation of [x_i; y_j] is
    W_x x_i + W_y y_j + b, so the first layer runs on the B rows of each side and the pairs are formed by a
    broadcast add: the same function as running T on the (B, B, w + w') grid, without the grid or its
    B^2 (w + w') x h matmul (docs/performance.md). Other statistics networks get the grid.
    """
    batch, width = x.shape
    first = statistics[0] if isinstance(statistics, nn.Sequential) and len(statistics) > 0 else None
    if not isinstance(first, nn.Linear):
        grid = torch.cat([x.unsqueeze(1).expand(-1, batch, -1), y.unsqueeze(0).expand(batch, -1, -1)], dim=-1)
        return statistics(grid)  # (B, B, w + w') -> (B, B, 1)
    assert isinstance(statistics, nn.Sequential)  # ``first`` is its first layer
    w_x, w_y = first.weight[:, :width], first.weight[:, width:]  # (h, w), (h, w')
    pre = (x @ w_x.T).unsqueeze(1) + (y @ w_y.T).unsqueeze(0)  # (B, 1, h) + (1, B, h) -> (B, B, h)
    if first.bias is not None:
        pre = pre + first.bias
    return statistics[1:](pre)  # (B, B, h) -> (B, B, 1)


def jsd_mi(statistics: nn.Module, x: Tensor, y: Tensor, *, negatives: str) -> Tensor:
    """Deep-InfoMax Jensen-Shannon MI lower bound (Eq. 7) between paired rows of ``x`` and ``y``, in nats.

    Positives are same-sample pairs; negatives pair x_b with y of another sample (a random non-zero cyclic shift
    of the batch, so no negative is a positive) or with every other sample (``all_pairs``). The bound lies in
    [-2 log 2, 0]: -2 log 2 for a statistics network that cannot tell the pairs apart.
    """
    batch = x.shape[0]
    positive = statistics(torch.cat([x, y], dim=-1))  # (B, 2w) -> (B, 1)
    mi = (-F.softplus(-positive)).mean()
    if batch < 2:
        return mi
    if negatives == "shuffle":
        shift = int(torch.randint(1, batch, (1,)))
        negative = statistics(torch.cat([x, y.roll(shift, dims=0)], dim=-1))  # (B, 1)
    elif negatives == "all_pairs":
        off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=x.device)  # (B, B)
        negative = _all_pairs_statistics(statistics, x, y)[off_diagonal]  # (B, B, 1) -> (B(B-1), 1)
    else:
        raise ValueError(f"mi_negatives must be shuffle or all_pairs, got {negatives!r}")
    return mi - F.softplus(negative).mean()


class HierarchicalMutualInformation(nn.Module):
    """HMI (Eqs. 7-8): one statistics network T_i per scale; L_HMI = -sum over scales (and members) of the bound.

    The statistics networks are trained with the student (they maximise the same bound).
    """

    def __init__(self, cfg: HRLFCfg) -> None:
        super().__init__()
        self.cfg = cfg
        widths = scale_widths(cfg.d_model, merge=cfg.scale_merge)
        self.statistics = nn.ModuleDict(
            {n: mlp([2 * w, cfg.stat_hidden or w, 1]) for n, w in zip(SCALE_NAMES, widths, strict=True)}
        )

    def forward(
        self, teacher: Sequence[Sequence[Tensor]], student: Sequence[Sequence[Tensor]]
    ) -> tuple[Tensor, dict[str, float]]:
        """(L_HMI, the bound per scale in nats, averaged over the scale's members)."""
        bounds, per_scale = [], {}
        for name, t_members, s_members in zip(SCALE_NAMES, teacher, student, strict=True):
            values = []
            for t, s in zip(t_members, s_members, strict=True):
                t, s = normalize_pair(t.detach(), s, mode=self.cfg.mi_input_norm)
                values.append(jsd_mi(self.statistics[name], t, s, negatives=self.cfg.mi_negatives))
            bounds += values
            per_scale[f"mi.{name}"] = float(torch.stack(values).detach().mean())
        return -torch.stack(bounds).sum(), per_scale


class HierarchicalAdversarial(nn.Module):
    """HAL (Eq. 9): one discriminator D_i per scale, teacher features = real, student features = fake.

    :meth:`discriminator_loss` trains the discriminators (on detached features); :meth:`generator_loss` is the
    student's adversarial term, ``log(1 - D(E^s))`` as printed (``saturating``) or ``-log D(E^s)``.
    """

    def __init__(self, cfg: HRLFCfg) -> None:
        super().__init__()
        self.cfg = cfg
        widths = scale_widths(cfg.d_model, merge=cfg.scale_merge)
        self.discriminators = nn.ModuleDict(
            {
                n: mlp([w, cfg.disc_hidden or w, 1], activation=_LeakyReLU)
                for n, w in zip(SCALE_NAMES, widths, strict=True)
            }
        )

    def discriminator_loss(
        self, teacher: Sequence[Sequence[Tensor]], student: Sequence[Sequence[Tensor]]
    ) -> tuple[Tensor, dict[str, float]]:
        """(BCE of every discriminator + optional R1, accuracy on teacher / student features per scale)."""
        cfg = self.cfg
        total = torch.zeros((), device=student[0][0].device)
        stats: dict[str, float] = {}
        for name, t_members, s_members in zip(SCALE_NAMES, teacher, student, strict=True):
            disc = self.discriminators[name]
            acc_t, acc_s = [], []
            for t, s in zip(t_members, s_members, strict=True):
                t, s = normalize_pair(t.detach(), s.detach(), mode=cfg.disc_input_norm)
                if cfg.disc_r1 > 0:
                    t = t.clone().requires_grad_(True)
                real, fake = disc(t), disc(s)  # (B, 1) each
                total = total + F.binary_cross_entropy_with_logits(
                    real, torch.full_like(real, 1.0 - cfg.disc_label_smoothing)
                )
                total = total + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
                if cfg.disc_r1 > 0:  # R1: the discriminator's gradient on real inputs, kept small
                    (grad,) = torch.autograd.grad(real.sum(), t, create_graph=True)
                    total = total + 0.5 * cfg.disc_r1 * grad.pow(2).sum(dim=-1).mean()
                a_t, a_s = discriminator_accuracy(real, fake)
                acc_t.append(a_t)
                acc_s.append(a_s)
            stats[f"disc_acc_teacher.{name}"] = sum(acc_t) / len(acc_t)
            stats[f"disc_acc_student.{name}"] = sum(acc_s) / len(acc_s)
        return total, stats

    def generator_loss(self, teacher: Sequence[Sequence[Tensor]], student: Sequence[Sequence[Tensor]]) -> Tensor:
        gen = []
        for name, t_members, s_members in zip(SCALE_NAMES, teacher, student, strict=True):
            for t, s in zip(t_members, s_members, strict=True):
                _, s = normalize_pair(t.detach(), s, mode=self.cfg.disc_input_norm)
                logit = self.discriminators[name](s)  # (B, 1)
                if self.cfg.gen_loss == "saturating":
                    gen.append((-F.softplus(logit)).mean())  # log(1 - sigmoid(l)), Eq. 9 as printed
                else:
                    gen.append(F.softplus(-logit).mean())  # -log sigmoid(l)
        return torch.stack(gen).sum()


def presence(batch: Batch) -> dict[Modality, Tensor]:
    """(B,) bool per modality: at least one frame of it is in the network's input."""
    return {m: batch.present(m).any(dim=1) for m in MODALITIES}


def frf_terms(
    net: HRLFNet,
    output: HRLFOutput,
    batch: Batch,
    cfg: HRLFCfg,
    *,
    teacher: HRLFOutput | None = None,
    adversary: LabelAdversary | None = None,
) -> dict[str, Tensor]:
    """L_FRF (Eqs. 1-4) of ``net`` on its own output; empty when the net has no factorization (w/o FRF).

    With ``adversary`` also ``u_adversary``, its loss on the same U (not part of ``frf``: weight 1 in the total).
    """
    if net.factorization is None:
        return {}
    z, q, u = output.z, output.q, output.u
    if not cfg.frf_encoder_grad:  # FRF shapes E^S, E^M and D_r only; the encoders' Z is shaped by the other losses
        z = {m: v.detach() for m, v in z.items()}
        q, u = net.factorization(z)
    present = presence(batch)
    terms = net.factorization.loss(z, q, u, cfg=cfg, present=present, teacher=teacher, label=batch.label)
    if adversary is not None:
        terms["u_adversary"] = adversary(u, batch.label, present)
    return terms


def code_spread(output: HRLFOutput, rows: Mapping[Modality, Tensor]) -> dict[str, float]:
    """Across-sample std of every Z, Q, U code in ``output`` (rows where the modality is present)."""
    return {
        f"std.{name}.{m}": across_sample_std(code[m], rows[m])
        for name, code in output.codes().items()
        for m in MODALITIES
    }


class _GradientShares:
    """Once per epoch: ||d(weighted term)/d encoders|| / ||d task / d encoders|| for every auxiliary term."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.pending = False

    def start_epoch(self) -> None:
        self.pending = self.enabled

    def measure(self, net: HRLFNet, contributions: Mapping[str, Tensor]) -> dict[str, float]:
        if not self.pending:
            return {}
        self.pending = False
        params = [p for p in net.encoders.parameters() if p.requires_grad]
        task = gradient_norm(contributions["task"], params)
        return {
            f"grad_share.{name}": gradient_norm(term, params) / max(task, 1e-12)
            for name, term in contributions.items()
            if name != "task"
        }


class TeacherObjective(TrainingSystem):
    """Teacher pre-training on complete data: ``L_task + lambda_frf * L_FRF`` (§3.2 step 1, ambiguity #9).

    Trained by the engine's base step (one optimizer over the network).
    """

    network_type = HRLFNet

    def __init__(self, cfg: HRLFCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.meter = EpochMeter()
        self.grad_shares = _GradientShares(cfg.diagnostics)
        self.adversary = LabelAdversary(cfg, task=task) if cfg.frf and cfg.frf_u_adversary > 0 else None

    @property
    def net(self) -> HRLFNet:
        net = self.network
        assert isinstance(net, HRLFNet)
        return net

    def start_epoch(self, epoch: int) -> None:  # noqa: ARG002 - TrainingSystem.start_epoch's signature
        self.meter.means()
        self.grad_shares.start_epoch()

    def end_epoch(self) -> dict[str, float]:
        return self.meter.means()

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        output = as_hrlf(output)
        losses = {"task": task_loss(output.pred, batch.label, self.task)}
        losses.update(frf_terms(self.net, output, batch, self.cfg, adversary=self.adversary))
        frf = self.cfg.lambda_frf * losses.get("frf", torch.zeros(()))
        contrib = {"task": losses["task"], "frf": frf}
        if "u_adversary" in losses:
            contrib["u_adversary"] = losses["u_adversary"]
        losses["loss"] = torch.stack(list(contrib.values())).sum()
        if self.training:
            self.meter.update(code_spread(output, presence(batch)))
            self.meter.update(self.grad_shares.measure(self.net, contrib))
        return losses


class StudentObjective(DistillationSystem):
    """The student stage (§3.2 step 2): a frozen teacher sees the complete batch, the student its MSM copy.

    Owns HMI's statistics networks and HAL's discriminators; the teacher is held outside the module tree (it is
    trained and saved by its own stage, frozen here, and never in an optimizer).
    """

    network_type = HRLFNet

    def __init__(self, cfg: HRLFCfg, *, task: TaskSpec, teacher: HRLFNet) -> None:
        super().__init__(teacher=teacher)
        self.cfg = cfg
        self.task = task
        self.ramp = 1.0  # factor on the HMI and HAL weights, raised linearly over the warm-up epochs
        # one statistics network T_i and one discriminator D_e,i per scale (ambiguity #6); absent when ablated
        self.hmi = HierarchicalMutualInformation(cfg) if cfg.hmi else None
        self.hal = HierarchicalAdversarial(cfg) if cfg.hal else None
        self.adversary = LabelAdversary(cfg, task=task) if cfg.frf and cfg.frf_u_adversary > 0 else None
        self.meter = EpochMeter()
        self.grad_shares = _GradientShares(cfg.diagnostics)

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        if self.cfg.student_init == "teacher":  # weights only: the optimizers are built after setup, fresh
            model.load_state_dict(self.teacher.state_dict())

    def start_epoch(self, epoch: int) -> None:
        warmup = self.cfg.distill_warmup_epochs
        self.ramp = min(1.0, epoch / warmup) if warmup > 0 else 1.0
        self.meter.means()
        self.grad_shares.start_epoch()

    def end_epoch(self) -> dict[str, float]:
        return self.meter.means()

    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        main = [p for p in model.parameters() if p.requires_grad]
        if self.hmi is not None:
            main += list(self.hmi.parameters())  # T_theta maximises MI together with the student
        if self.adversary is not None:
            main += list(self.adversary.parameters())  # its gradient reversal needs one backward with the student
        groups = parameter_groups(main, model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        opts: dict[str, torch.optim.Optimizer] = {"main": adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)}
        if self.hal is not None:
            opts["disc"] = adam(self.hal.parameters(), lr=self.cfg.disc_lr or cfg.lr)
        return opts

    def teacher_features(self, clean: Batch, teacher_out: ModelOutput) -> ModelOutput:
        """The teacher output whose features D and T see (``aux_features``); ``teacher_out`` unless train mode."""
        if self.cfg.aux_features != "teacher_train_mode":
            return teacher_out
        self.teacher.train()
        try:
            with torch.no_grad():
                return self.teacher(clean)
        finally:
            self.teacher.eval()

    def _scales(self, output: ModelOutput) -> list[list[Tensor]]:
        return scales(as_hrlf(output), merge=self.cfg.scale_merge, clean=self.cfg.aux_features == "pre_dropout")

    def discriminator_loss(self, teacher_out: ModelOutput, student_out: ModelOutput) -> Tensor:
        """BCE of every per-scale discriminator: teacher features = real (1), student features = fake (0)."""
        assert self.hal is not None
        return self.hal.discriminator_loss(self._scales(teacher_out), self._scales(student_out))[0]

    def _terms(
        self, student_out: ModelOutput, batch: Batch, teacher_out: ModelOutput, feature_out: ModelOutput
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, float]]:
        """(every term named with ``loss`` the weighted sum, each term's weighted contribution, MI per scale)."""
        cfg = self.cfg
        terms: dict[str, Tensor] = {"task": task_loss(student_out.pred, batch.label, self.task)}
        contrib = {"task": terms["task"]}
        mi: dict[str, float] = {}
        if cfg.frf:
            assert isinstance(self.network, HRLFNet)
            own, target = as_hrlf(student_out), as_hrlf(teacher_out)
            terms.update(frf_terms(self.network, own, batch, cfg, teacher=target, adversary=self.adversary))
            contrib["frf"] = cfg.lambda_frf * terms["frf"]
            if "u_adversary" in terms:
                contrib["u_adversary"] = terms["u_adversary"]
        t_scales, s_scales = self._scales(feature_out), self._scales(student_out)
        if self.hmi is not None:
            terms["hmi"], mi = self.hmi(t_scales, s_scales)  # Eq. 8
            contrib["hmi"] = self.ramp * cfg.lambda_hmi * terms["hmi"]
        if self.hal is not None:
            terms["hal"] = self.hal.generator_loss(t_scales, s_scales)
            contrib["hal"] = self.ramp * cfg.lambda_hal * terms["hal"]
        if cfg.kd:
            terms["kd"] = self.distillation(student_out.pred, teacher_out.pred.detach())
            contrib["kd"] = cfg.lambda_kd * terms["kd"]
        if cfg.spread_floor > 0:
            terms["spread"] = self.spread(as_hrlf(student_out), as_hrlf(teacher_out), presence(batch))
            contrib["spread"] = cfg.lambda_spread * terms["spread"]
        terms["loss"] = torch.stack(list(contrib.values())).sum()
        return terms, contrib, mi

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        """L_total (§3.1) of the student step, every term named; ``loss`` is the weighted sum. ``teacher`` is the
        frozen teacher's output on the clean batch (:meth:`teacher_output`); D and T see it as it is."""
        del clean  # unused here; part of the losses() signature every system shares
        if teacher is None:
            raise ValueError("the HRLF student's losses need the teacher's output on the clean batch")
        return self._terms(output, batch, teacher, teacher)[0]

    def spread(self, student: HRLFOutput, teacher: HRLFOutput, rows: Mapping[Modality, Tensor]) -> Tensor:
        """``spread_floor``'s hinge summed over every code family and modality (rows: the student's present ones)."""
        teacher_codes = teacher.codes()
        hinges = [
            spread_floor_hinge(code[m], teacher_codes[name][m], floor=self.cfg.spread_floor, weight=rows[m])
            for name, code in student.codes().items()
            for m in MODALITIES
        ]
        return torch.stack(hinges).sum()

    def distillation(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Output-level consistency (§2.7): softmax KL(teacher || student) for emotions, MSE for regression."""
        if self.task.kind == "regression":
            return F.mse_loss(student, teacher)
        tau = self.cfg.kd_tau
        log_p_student = F.log_softmax(student.reshape(-1, 2) / tau, dim=-1)  # (B, K, 2) -> (B K, 2)
        p_teacher = F.softmax(teacher.reshape(-1, 2) / tau, dim=-1)
        return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * tau * tau

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
        feature_out = self.teacher_features(clean, teacher_out)
        student_out = model(batch)
        logged: dict[str, float] = {}
        if self.hal is not None:  # (1) discriminator steps on detached features
            disc_opt = optimizers["disc"]
            t_scales, s_scales = self._scales(feature_out), self._scales(student_out)
            for _ in range(self.cfg.disc_steps):
                disc_opt.zero_grad(set_to_none=True)
                d_loss, accuracy = self.hal.discriminator_loss(t_scales, s_scales)
                d_loss.backward()
                disc_opt.step()
            logged["disc"] = float(d_loss.detach())
            self.meter.update(accuracy)
        main = optimizers["main"]  # (2) student + statistics-network step
        main.zero_grad(set_to_none=True)
        terms, contrib, mi = self._terms(student_out, batch, teacher_out, feature_out)
        self.meter.update(mi)
        self.meter.update(self.grad_shares.measure(model, contrib))  # type: ignore[arg-type]
        terms["loss"].backward()
        self.clip_gradients([p for g in main.param_groups for p in g["params"]], grad_clip)
        main.step()
        if self.hal is not None:
            self.hal.zero_grad(set_to_none=True)  # the student step's gradients are not theirs
        # the frozen teacher's spread is in the teacher stage's log; only the student's changes here
        self.meter.update(code_spread(student_out, presence(batch)))
        logged.update({k: float(v.detach()) for k, v in terms.items()})
        return logged


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


# ------------------------------------------------------------------------------------------------ diagnostics


@torch.no_grad()
def collect_codes(
    net: HRLFNet, data: DataModule, split: str, *, device: torch.device, batch_size: int = 512
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Every Z, Q, U code of ``net`` (eval mode, complete data) on a split, which rows are present, the labels."""
    was_training = net.training
    net.eval()
    codes: dict[str, list[np.ndarray]] = {}
    rows: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    labels = []
    for batch in data.batches(split, batch_size=batch_size):  # type: ignore[arg-type]
        batch = batch.to(device)
        out = net(batch)
        for name, code in out.codes().items():
            for m, value in code.items():
                codes.setdefault(f"{name}.{m}", []).append(value.float().cpu().numpy())
        for m, present in presence(batch).items():
            rows[m].append(present.cpu().numpy())
        labels.append(batch.label.float().cpu().numpy())
    net.train(was_training)
    return (
        {k: np.concatenate(v) for k, v in codes.items()},
        {m: np.concatenate(v) for m, v in rows.items()},
        np.concatenate(labels),
    )


def diagnose(stages: Sequence[Stage], data: DataModule, device: torch.device) -> dict[str, Any]:
    """After training: per stage, the across-sample std of every code and a linear probe of the label from it.

    On the validation split, complete data, eval mode. The probe is R^2 (regression) or balanced accuracy
    (emotions) of a cross-validated linear model (:func:`hrlf.diagnostics.linear_probe`); a factorization that
    works puts more of the label in Q (sentiment) than in U (modality). Rows whose modality is absent from the
    file are left out of that modality's numbers.
    """
    out: dict[str, Any] = {}
    for stage in stages:
        net = stage.model
        if not isinstance(net, HRLFNet):
            continue
        codes, rows, labels = collect_codes(net, data, "valid", device=device)
        found: dict[str, float] = {}
        for key, value in sorted(codes.items()):
            keep = rows[key.split(".")[1]]
            if keep.sum() < 10:
                continue
            found[f"std.{key}"] = float(value[keep].std(axis=0).mean())
            found[f"probe.{key}"] = linear_probe(value[keep], labels[keep], kind=net.task.kind)
        out[stage.name] = found
    return out


# ----------------------------------------------------------------------------------------------- registration


def build_net(cfg: HRLFCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> HRLFNet:
    return HRLFNet(cfg, dims=dims, task=task)


def teacher_objective(cfg: HRLFCfg, *, task: TaskSpec) -> TeacherObjective:
    return TeacherObjective(cfg, task=task)


def stages(cfg: HRLFCfg, *, dims: Mapping[Modality, int], task: TaskSpec, missing: bool) -> list[Stage]:
    """Teacher on complete data (task + FRF), then the student on MSM copies distilled from the frozen teacher."""
    teacher = build_net(cfg, dims=dims, task=task)
    student = build_net(cfg, dims=dims, task=task)
    student_objective = StudentObjective(cfg, task=task, teacher=teacher)
    teacher_overrides = {"epochs": cfg.teacher_epochs} if cfg.teacher_epochs else {}
    return [
        Stage(
            name="teacher",
            model=teacher,
            objective=teacher_objective(cfg, task=task),
            missing=False,
            train_overrides=teacher_overrides,
        ),
        Stage(name="student", model=student, objective=student_objective, missing=missing),
    ]


register_model(
    ModelSpec(
        name="hrlf",
        config_cls=HRLFCfg,
        build=build_net,
        objective=teacher_objective,
        stages=stages,
        diagnose=diagnose,
    )
)
