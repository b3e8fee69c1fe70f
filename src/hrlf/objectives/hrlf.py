"""HRLF's objectives: the teacher's (task + FRF) and the student's (task + FRF + HMI + HAL + output distillation).

Equations refer to the paper (arXiv 2411.02793) as listed in :mod:`hrlf.models.hrlf`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.models.hrlf import HRLFNet, scale_widths, scales
from hrlf.models.layers import mlp
from hrlf.objectives.base import DistillationObjective, Objective
from hrlf.objectives.task import task_loss
from hrlf.types import MODALITIES, Batch, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.config import TrainCfg

SCALE_NAMES = ("E1", "E2", "E3")


def _factor_parts(output: ModelOutput) -> tuple[dict, dict, dict]:
    aux = output.aux
    return (
        {m: aux[f"Z.{m}"] for m in MODALITIES},
        {m: aux[f"Q.{m}"] for m in MODALITIES},
        {m: aux[f"U.{m}"] for m in MODALITIES},
    )


def frf_terms(
    net: HRLFNet,
    output: ModelOutput,
    *,
    detach_targets: bool,
    distance: str,
    normalize: bool,
    encoder_grad: bool = True,
) -> dict[str, Tensor]:
    """L_FRF (Eqs. 1-4) of ``net`` on its own output; empty when the net has no factorization (w/o FRF)."""
    if net.factorization is None:
        return {}
    z, q, u = _factor_parts(output)
    if not encoder_grad:  # FRF shapes E^S, E^M and D_r only; the encoders' Z is shaped by the other losses
        z = {m: v.detach() for m, v in z.items()}
        q, u = net.factorization(z)
    return net.factorization.loss(z, q, u, detach_targets=detach_targets, distance=distance, normalize=normalize)


class TeacherObjective(Objective):
    """Teacher pre-training on complete data: ``L_task + lambda_frf * L_FRF`` (§3.2 step 1, ambiguity #9)."""

    def __init__(
        self,
        *,
        task: TaskSpec,
        lambda_frf: float = 1.0,
        detach_targets: bool = False,
        distance: str = "l2",
        normalize: bool = False,
        encoder_grad: bool = True,
    ) -> None:
        super().__init__()
        self.task = task
        self.distance = distance
        self.normalize = normalize
        self.encoder_grad = encoder_grad
        self.lambda_frf = lambda_frf
        self.detach_targets = detach_targets
        self._net: tuple[HRLFNet, ...] = ()  # the trained net, held outside the module tree (no double params)

    def setup(self, model: nn.Module) -> None:
        if not isinstance(model, HRLFNet):
            raise TypeError(f"TeacherObjective trains an HRLFNet, got {type(model).__name__}")
        self._net = (model,)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if not self._net:
            raise RuntimeError("call setup(model) before computing the FRF loss")
        losses = {"task": task_loss(output.pred, batch.label, self.task)}
        losses.update(
            frf_terms(
                self._net[0],
                output,
                detach_targets=self.detach_targets,
                distance=self.distance,
                normalize=self.normalize,
                encoder_grad=self.encoder_grad,
            )
        )
        losses["loss"] = losses["task"] + self.lambda_frf * losses.get("frf", torch.zeros(()))
        return losses


def jsd_mi(statistics: nn.Module, x: Tensor, y: Tensor, *, negatives: str) -> Tensor:
    """Deep-InfoMax Jensen-Shannon MI lower bound (Eq. 7) between paired rows of ``x`` and ``y``.

    Positives are same-sample pairs; negatives pair x_b with y of another sample (a random non-zero cyclic shift
    of the batch, so no negative is a positive) or with every other sample (``all_pairs``).
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
        grid = torch.cat([x.unsqueeze(1).expand(-1, batch, -1), y.unsqueeze(0).expand(batch, -1, -1)], dim=-1)
        off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=x.device)  # (B, B)
        negative = statistics(grid[off_diagonal])  # (B, B, 2w) -> (B(B-1), 2w) -> (B(B-1), 1)
    else:
        raise ValueError(f"mi_negatives must be shuffle or all_pairs, got {negatives!r}")
    return mi - F.softplus(negative).mean()


class StudentObjective(DistillationObjective):
    """The student stage (§3.2 step 2): a frozen teacher sees the complete batch, the student its MSM copy.

    Owns the per-scale statistics networks (HMI) and discriminators (HAL); the teacher is held outside the
    module tree (it is trained and saved by its own stage, frozen here, and never in an optimizer).
    """

    student_type = HRLFNet

    def __init__(
        self,
        *,
        task: TaskSpec,
        teacher: HRLFNet,
        d_model: int,
        scale_merge: str = "stack",
        mi_negatives: str = "shuffle",
        stat_hidden: int = 0,
        disc_hidden: int = 0,
        gen_loss: str = "saturating",
        disc_lr: float = 0.0,
        kd_tau: float = 1.0,
        kd_regression: str = "mse",
        lambda_frf: float = 1.0,
        lambda_hmi: float = 1.0,
        lambda_hal: float = 1.0,
        lambda_kd: float = 1.0,
        frf: bool = True,
        hmi: bool = True,
        hal: bool = True,
        kd: bool = True,
        detach_targets: bool = False,
        distance: str = "l2",
        normalize: bool = False,
        encoder_grad: bool = True,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(teacher=teacher)
        self.distance = distance
        self.normalize = normalize
        self.encoder_grad = encoder_grad
        self.warmup_epochs = warmup_epochs
        self.ramp = 1.0  # factor on the HMI and HAL weights, raised linearly over the warm-up epochs
        if gen_loss not in ("saturating", "non_saturating"):
            raise ValueError(f"gen_loss must be saturating or non_saturating, got {gen_loss!r}")
        if kd_regression != "mse":
            raise ValueError(f"kd_regression must be mse, got {kd_regression!r}")
        self.task = task
        self.scale_merge = scale_merge
        self.mi_negatives = mi_negatives
        self.gen_loss = gen_loss
        self.disc_lr = disc_lr
        self.kd_tau = kd_tau
        self.weights = {"frf": lambda_frf, "hmi": lambda_hmi, "hal": lambda_hal, "kd": lambda_kd}
        self.use = {"frf": frf, "hmi": hmi, "hal": hal, "kd": kd}
        self.detach_targets = detach_targets
        widths = scale_widths(d_model, merge=scale_merge)
        # one statistics network T_i and one discriminator D_e,i per scale (ambiguity #6); absent when ablated
        self.statistics = (
            nn.ModuleDict({n: mlp([2 * w, stat_hidden or w, 1]) for n, w in zip(SCALE_NAMES, widths, strict=True)})
            if hmi
            else None
        )
        self.discriminators = (
            nn.ModuleDict(
                {
                    n: mlp([w, disc_hidden or w, 1], activation=_LeakyReLU)
                    for n, w in zip(SCALE_NAMES, widths, strict=True)
                }
            )
            if hal
            else None
        )

    def start_epoch(self, epoch: int) -> None:
        self.ramp = min(1.0, epoch / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0

    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        main = [p for p in model.parameters() if p.requires_grad]
        if self.statistics is not None:
            main += list(self.statistics.parameters())  # T_theta maximises MI together with the student
        opts = {"main": torch.optim.Adam(main, lr=cfg.lr, weight_decay=cfg.weight_decay)}
        if self.discriminators is not None:
            opts["disc"] = torch.optim.Adam(self.discriminators.parameters(), lr=self.disc_lr or cfg.lr)
        return opts

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """The student's task loss alone (what validation scores); the full objective is :meth:`losses`."""
        loss = task_loss(output.pred, batch.label, self.task)
        return {"loss": loss, "task": loss}

    def discriminator_loss(self, teacher_out: ModelOutput, student_out: ModelOutput) -> Tensor:
        """BCE of every per-scale discriminator: teacher features = real (1), student features = fake (0)."""
        assert self.discriminators is not None
        total = torch.zeros((), device=student_out.pred.device)
        t_scales = scales(teacher_out.aux, merge=self.scale_merge)
        s_scales = scales(student_out.aux, merge=self.scale_merge)
        for name, t_members, s_members in zip(SCALE_NAMES, t_scales, s_scales, strict=True):
            disc = self.discriminators[name]
            for t, s in zip(t_members, s_members, strict=True):
                real, fake = disc(t.detach()), disc(s.detach())  # (B, 1) each
                total = total + F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                total = total + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return total

    def losses(self, student_out: ModelOutput, batch: Batch, teacher_out: ModelOutput) -> dict[str, Tensor]:
        """L_total (§3.1) of the student step, every term named; ``loss`` is the weighted sum."""
        terms: dict[str, Tensor] = {"task": task_loss(student_out.pred, batch.label, self.task)}
        total = terms["task"]
        if self.use["frf"]:
            terms.update(
                frf_terms(
                    self._student[0],
                    student_out,
                    detach_targets=self.detach_targets,
                    distance=self.distance,
                    normalize=self.normalize,
                    encoder_grad=self.encoder_grad,
                )
            )
            total = total + self.weights["frf"] * terms["frf"]
        t_scales = scales(teacher_out.aux, merge=self.scale_merge)
        s_scales = scales(student_out.aux, merge=self.scale_merge)
        if self.statistics is not None:
            mi = [
                jsd_mi(self.statistics[name], t.detach(), s, negatives=self.mi_negatives)
                for name, t_members, s_members in zip(SCALE_NAMES, t_scales, s_scales, strict=True)
                for t, s in zip(t_members, s_members, strict=True)
            ]
            terms["hmi"] = -torch.stack(mi).sum()  # Eq. 8
            total = total + self.ramp * self.weights["hmi"] * terms["hmi"]
        if self.discriminators is not None:
            gen = []
            for name, s_members in zip(SCALE_NAMES, s_scales, strict=True):
                for s in s_members:
                    logit = self.discriminators[name](s)  # (B, 1)
                    if self.gen_loss == "saturating":
                        gen.append((-F.softplus(logit)).mean())  # log(1 - sigmoid(l)), Eq. 9 as printed
                    else:
                        gen.append(F.softplus(-logit).mean())  # -log sigmoid(l)
            terms["hal"] = torch.stack(gen).sum()
            total = total + self.ramp * self.weights["hal"] * terms["hal"]
        if self.use["kd"]:
            terms["kd"] = self.distillation(student_out.pred, teacher_out.pred.detach())
            total = total + self.weights["kd"] * terms["kd"]
        terms["loss"] = total
        return terms

    def distillation(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Output-level consistency (§2.7): softmax KL(teacher || student) for emotions, MSE for regression."""
        if self.task.kind == "regression":
            return F.mse_loss(student, teacher)
        tau = self.kd_tau
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
        student_out = model(batch)
        logged: dict[str, float] = {}
        if self.discriminators is not None:  # (1) discriminator step on detached features
            disc_opt = optimizers["disc"]
            disc_opt.zero_grad(set_to_none=True)
            d_loss = self.discriminator_loss(teacher_out, student_out)
            d_loss.backward()
            disc_opt.step()
            logged["disc"] = float(d_loss.detach())
        main = optimizers["main"]  # (2) student + statistics-network step
        main.zero_grad(set_to_none=True)
        terms = self.losses(student_out, batch, teacher_out)
        terms["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in main.param_groups for p in g["params"]], grad_clip)
        main.step()
        if self.discriminators is not None:
            self.discriminators.zero_grad(set_to_none=True)  # the student step's gradients are not theirs
        logged.update({k: float(v.detach()) for k, v in terms.items()})
        return logged


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)
