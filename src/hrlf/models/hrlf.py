"""``hrlf`` — Hierarchical Representation Learning Framework, end to end in one file.

Paper: Mingcheng Li, Dingkang Yang, Yang Liu, Shunli Wang, Jiawei Chen, Shuaibing Wang, Jinjie Wei, Yue Jiang,
Qingyao Xu, Xiaolu Hou, Mingyang Sun, Ziyun Qian, Dongliang Kou, Lihua Zhang. *Toward Robust Incomplete
Multimodal Sentiment Analysis via Hierarchical Representation Learning.* NeurIPS 2024, arXiv 2411.02793.
No official code exists; this follows ``shared/docs/hrlf_method.md`` (section numbers below refer to it).

Equation map (paper numbering -> code):
    §2.1  R = Conv1d_{k=3}(X) + PE, Z = last element of a per-modality Transformer ....  layers.ModalityEncoder
    §2.2  Q = E^S(Z), U = E^M(Z) per modality; shared decoder D_r ..................  FineGrainedFactorization
    Eq. 1 L_trans^self = 1/n sum_a ||D_r(Q_a, U_a) - Z_a||_2 ..........................  FineGrainedFactorization.loss
    Eq. 2 L_trans^cross = 1/(n^2-n) sum_{a!=b} ||D_r(Q_a, U_b) - Z_b||_2 ...............  FineGrainedFactorization.loss
    Eq. 3 L_recon = 1/n^2 sum_{a,b} ||E^S_a(D_r(Q_b, U_a)) - Q_a||_2 ..................  FineGrainedFactorization.loss
    Eq. 4 L_FRF = L_trans^self + L_trans^cross + L_recon ................................  FineGrainedFactorization.loss
    §2.3  H = [Q_l;U_l;Q_a;U_a;Q_v;U_v], hourglass 3d->2d->d->2d->3d, scales E1, E2, E3 ..  HRLFNet, scales()
    Eq. 7 Deep-InfoMax JSD bound MI = E_P[-sp(-T(x,y))] - E_PxP[sp(T(x,y'))] .......  objectives/hrlf.py: jsd_mi
    Eq. 8 L_HMI = -sum_i MI(E^t_i, E^s_i) ........................................  objectives/hrlf.py: HMI
    Eq. 9 L_HAL = sum_i log(1 - D_i(E^s_i)) + log D_i(E^t_i), min-max ................  objectives/hrlf.py: HAL
    §2.7  L_KL = KL(L^t, L^s) (emotions); MSE(L^t, L^s) for regression (our reading) ..  objectives/hrlf.py
    §3.1  L_total = L_task + L_FRF + L_HMI + L_HAL + L_KL (weights 1) ................  objectives/hrlf.py
    §3.2  teacher on complete data (task + FRF), frozen; student on MSM copies ........  stages()

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
    Stop-gradient on the FRF targets: none, as written (``frf_detach_targets=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.models.layers import Hourglass, encode_last, mlp, modality_encoders, shape_prediction, task_outputs
from hrlf.registry import ModelSpec, Stage, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec


@dataclass
class HRLFCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "scale_merge": ("stack", "mean", "concat"),
        "mi_negatives": ("shuffle", "all_pairs"),
        "gen_loss": ("saturating", "non_saturating"),
        "kd_regression": ("mse",),
        "frf_distance": ("l2", "mse"),
        "hourglass_activation": ("relu", "leaky_relu", "gelu"),
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
    scale_merge: str = "stack"  # members of E1/E2: stack | mean | concat (ambiguity #5)
    mi_negatives: str = "shuffle"  # JSD negatives: shuffle (in-batch permutation) | all_pairs (ambiguity #6)
    stat_hidden: int = 0  # statistics-network hidden width; 0 = the scale's width
    disc_hidden: int = 0  # discriminator hidden width; 0 = the scale's width
    gen_loss: str = "saturating"  # student's adversarial term: saturating log(1-D) | non_saturating -log D
    disc_lr: float = 0.0  # discriminator Adam learning rate; 0 = the student's lr (ambiguity #7)
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


class FineGrainedFactorization(nn.Module):
    """FRF (§2.2): per-modality sentiment encoder E^S and modality encoder E^M, one shared decoder D_r."""

    def __init__(self, *, d_model: int, qu_dim: int, factor_hidden: int, decoder_hidden: int) -> None:
        super().__init__()
        self.sentiment_encoders = nn.ModuleDict({m: mlp([d_model, factor_hidden, qu_dim]) for m in MODALITIES})
        self.modality_encoders = nn.ModuleDict({m: mlp([d_model, factor_hidden, qu_dim]) for m in MODALITIES})
        self.decoder = mlp([2 * qu_dim, decoder_hidden, d_model])  # D_r, shared by every (alpha, beta) pair

    def forward(self, z: Mapping[Modality, Tensor]) -> tuple[dict[Modality, Tensor], dict[Modality, Tensor]]:
        q = {m: self.sentiment_encoders[m](z[m]) for m in MODALITIES}  # each (B, d) -> (B, d/2)
        u = {m: self.modality_encoders[m](z[m]) for m in MODALITIES}  # each (B, d) -> (B, d/2)
        return q, u

    def loss(
        self,
        z: Mapping[Modality, Tensor],
        q: Mapping[Modality, Tensor],
        u: Mapping[Modality, Tensor],
        *,
        detach_targets: bool = False,
        distance: str = "l2",
        normalize: bool = False,
    ) -> dict[str, Tensor]:
        """Eqs. 1-4 averaged over the batch; the nine decoder passes run as one.

        ``distance="l2"`` is the non-squared L2 norm as printed; ``"mse"`` the mean squared error per element.
        """
        if distance not in ("l2", "mse"):
            raise ValueError(f"frf_distance must be l2 or mse, got {distance!r}")

        def dist(a: Tensor, b: Tensor) -> Tensor:
            if normalize:  # compare shapes, not scales: shrinking every representation no longer lowers the loss
                a, b = F.layer_norm(a, a.shape[-1:]), F.layer_norm(b, b.shape[-1:])
            if distance == "l2":
                return torch.linalg.vector_norm(a - b, dim=-1).mean()
            return (a - b).pow(2).mean()

        n = len(MODALITIES)
        pairs = [(a, b) for a in MODALITIES for b in MODALITIES]  # (alpha, beta): Q from alpha, U from beta
        stacked = torch.stack([torch.cat([q[a], u[b]], dim=-1) for a, b in pairs])  # (9, B, d)
        z_bar = self.decoder(stacked)  # (9, B, d): Z_bar[alpha beta] ~ Z_beta
        target = {m: (z[m].detach() if detach_targets else z[m]) for m in MODALITIES}
        q_target = {m: (q[m].detach() if detach_targets else q[m]) for m in MODALITIES}
        self_terms, cross_terms, recon_terms = [], [], []
        for k, (a, b) in enumerate(pairs):
            (self_terms if a == b else cross_terms).append(dist(z_bar[k], target[b]))  # E ||Z_bar_ab - Z_b||
            # Eq. 3 with (beta, alpha) = (a, b): re-encode Z_bar_ab = D_r(Q_a, U_b) with E^S_b and match Q_b
            q_bar = self.sentiment_encoders[b](z_bar[k])  # (B, d) -> (B, d/2)
            recon_terms.append(dist(q_bar, q_target[b]))
        trans_self = torch.stack(self_terms).sum() / n
        trans_cross = torch.stack(cross_terms).sum() / (n * n - n)
        recon = torch.stack(recon_terms).sum() / (n * n)
        return {
            "frf_trans_self": trans_self,
            "frf_trans_cross": trans_cross,
            "frf_recon": recon,
            "frf": trans_self + trans_cross + recon,
        }


class HRLFNet(nn.Module):
    """The network used for both the teacher and the student (same structure, separate parameters)."""

    def __init__(
        self,
        *,
        dims: Mapping[Modality, int],
        task: TaskSpec,
        d_model: int = 40,
        num_heads: int = 10,
        num_layers: int = 3,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        embed_dropout: float = 0.2,
        head_dropout: float = 0.1,
        conv_kernel: int = 3,
        mask_padding: bool = True,
        hourglass_activation: str = "relu",
        qu_dim: int = 0,
        factor_hidden: int = 0,
        decoder_hidden: int = 0,
        frf: bool = True,
    ) -> None:
        super().__init__()
        self.task = task
        self.d_model = d_model
        self.encoders = modality_encoders(
            dims=dims,
            d_model=d_model,
            num_heads=num_heads,
            num_layers=num_layers,
            ffn_mult=ffn_mult,
            dropout=dropout,
            embed_dropout=embed_dropout,
            conv_kernel=conv_kernel,
            mask_padding=mask_padding,
        )
        qu = qu_dim or d_model // 2
        if frf and 2 * qu != d_model:
            raise ValueError(f"C = [Q; U] must have size d: qu_dim {qu} x 2 != d_model {d_model}")
        self.factorization = (
            FineGrainedFactorization(
                d_model=d_model,
                qu_dim=qu,
                factor_hidden=factor_hidden or d_model,
                decoder_hidden=decoder_hidden or d_model,
            )
            if frf
            else None
        )
        self.fusion = Hourglass(width=3 * d_model, dropout=head_dropout, activation=hourglass_activation)
        self.head = mlp([3 * d_model, d_model, task_outputs(task.kind, task.num_targets)], dropout=head_dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        z = encode_last(self.encoders, batch)  # each (B, d)
        aux: dict[str, Tensor] = {f"Z.{m}": z[m] for m in MODALITIES}
        if self.factorization is not None:
            q, u = self.factorization(z)
            aux.update({f"Q.{m}": q[m] for m in MODALITIES})
            aux.update({f"U.{m}": u[m] for m in MODALITIES})
            c = [torch.cat([q[m], u[m]], dim=-1) for m in MODALITIES]  # 3 x (B, d): C_m = [Q_m; U_m]
        else:
            c = [z[m] for m in MODALITIES]  # w/o FRF: C_m = Z_m
        h = torch.cat(c, dim=-1)  # (B, 3d)
        i1, i2, i3, refined = self.fusion(h)
        aux.update(H=h, I1=i1, I2=i2, I3=i3, H_refined=refined)
        pred = shape_prediction(self.head(refined), self.task.kind, self.task.num_targets)
        return ModelOutput(pred=pred, aux=aux)


def scales(aux: Mapping[str, Tensor], *, merge: str) -> list[list[Tensor]]:
    """The multi-scale representations E1 (3d), E2 (2d), E3 (d), each a list of members (§2.3, ambiguity #5)."""
    groups = [[aux["H"], aux["H_refined"]], [aux["I1"], aux["I3"]], [aux["I2"]]]
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


def build_net(cfg: HRLFCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> HRLFNet:
    return HRLFNet(
        dims=dims,
        task=task,
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        ffn_mult=cfg.ffn_mult,
        dropout=cfg.dropout,
        embed_dropout=cfg.embed_dropout,
        head_dropout=cfg.head_dropout,
        conv_kernel=cfg.conv_kernel,
        mask_padding=cfg.mask_padding,
        hourglass_activation=cfg.hourglass_activation,
        qu_dim=cfg.qu_dim,
        factor_hidden=cfg.factor_hidden,
        decoder_hidden=cfg.decoder_hidden,
        frf=cfg.frf,
    )


def teacher_objective(cfg: HRLFCfg, *, task: TaskSpec, net: HRLFNet | None = None):  # noqa: ANN201
    from hrlf.objectives.hrlf import TeacherObjective

    return TeacherObjective(
        task=task,
        lambda_frf=cfg.lambda_frf,
        detach_targets=cfg.frf_detach_targets,
        distance=cfg.frf_distance,
        normalize=cfg.frf_normalize,
        encoder_grad=cfg.frf_encoder_grad,
    )


def stages(cfg: HRLFCfg, *, dims: Mapping[Modality, int], task: TaskSpec, missing: bool) -> list[Stage]:
    """Teacher on complete data (task + FRF), then the student on MSM copies distilled from the frozen teacher."""
    from hrlf.objectives.hrlf import StudentObjective

    teacher = build_net(cfg, dims=dims, task=task)
    student = build_net(cfg, dims=dims, task=task)
    student_objective = StudentObjective(
        task=task,
        teacher=teacher,
        d_model=cfg.d_model,
        scale_merge=cfg.scale_merge,
        mi_negatives=cfg.mi_negatives,
        stat_hidden=cfg.stat_hidden,
        disc_hidden=cfg.disc_hidden,
        gen_loss=cfg.gen_loss,
        disc_lr=cfg.disc_lr,
        kd_tau=cfg.kd_tau,
        kd_regression=cfg.kd_regression,
        lambda_frf=cfg.lambda_frf,
        lambda_hmi=cfg.lambda_hmi,
        lambda_hal=cfg.lambda_hal,
        lambda_kd=cfg.lambda_kd,
        frf=cfg.frf,
        hmi=cfg.hmi,
        hal=cfg.hal,
        kd=cfg.kd,
        detach_targets=cfg.frf_detach_targets,
        distance=cfg.frf_distance,
        normalize=cfg.frf_normalize,
        encoder_grad=cfg.frf_encoder_grad,
        warmup_epochs=cfg.distill_warmup_epochs,
    )
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


register_model(ModelSpec(name="hrlf", config_cls=HRLFCfg, build=build_net, objective=teacher_objective, stages=stages))
