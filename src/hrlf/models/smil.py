"""``smil`` — SMIL: Bayesian meta-learning for multimodal learning with severely missing modalities.

Paper: Mengmeng Ma, Jian Ren, Long Zhao, Sergey Tulyakov, Cathy Wu, Xi Peng. *SMIL: Multimodal Learning with
Severely Missing Modality.* AAAI 2021, 35(3): 2302-2310, arXiv 2103.05677 (code: mengmenm/SMIL, partial; its
README lists "training with missing modality" as a TODO). Re-implemented for sequences from the paper
(``field_conventions.md`` §7.6).

What is implemented (paper concept -> code):
    * Main network f_theta: per-modality feature extractors (the HRLF-protocol encoder: Conv1d + positions +
      Transformer, last real step -> Z_m in R^d), fusion of the three features by fully-connected layers, task
      head ......................................................................  SMIL.encoders/fusion/head
    * Missing-modality reconstruction in feature space: the modality priors of modality m are K cluster centres
      C_m (K, d) of m's features; a reconstruction network f_phi_c reads the available modalities' features and
      gives weights w = softmax(f_phi_c(.)) over the K priors; the missing feature is Z^_m = w C_m, and replaces
      Z_m of every sample in which m is absent ..........................  ModalityPriors, FeatureReconstructor
    * Uncertainty-guided feature regularization: a Bayesian (Gaussian) regularization network f_phi_r maps a
      hidden feature h to (mu, log sigma^2); r ~ N(mu, sigma^2) is sampled with the reparametrization trick and the
      feature is perturbed multiplicatively, h <- h * softplus(r); the KL of N(mu, sigma^2) to the N(0, I) prior is
      the Bayesian regularizer of the ELBO. In eval mode r = mu (the mean perturbation, deterministic) ....
      FeatureRegularizer
    * Meta-learning (modified MAML): one inner gradient step on theta (fast weights) with the loss of a support
      split of the batch, outer update of theta and phi = {phi_c, phi_r} with support loss + query loss at the
      fast weights (see below) ..........................................  SMILObjective.training_step
    * Training-time missingness: a large share of training samples (default 90 %, the paper's "severely
      missing" headline setting) lose modalities ...........................................  SevereMissing

Deviations forced by our setting, and choices where the paper is silent (all knobs of :class:`SMILCfg`):
    * Three modalities instead of the paper's two (one always present, one possibly missing): every modality has
      its own priors and reconstruction network, which reads the other two modalities' features (each multiplied
      by its availability flag) and the two flags; a sample with all three modalities absent is reconstructed
      from the flags alone (the networks' biases), i.e. a learned mixture of the priors.
    * Features are GloVe/COVAREP/Facet sequences encoded by the HRLF-protocol encoder (d = 40, 3 layers, heads
      MOSI 10 / MOSEI 8 / IEMOCAP 10), not the paper's pre-trained LeNet/VGG/sound extractors; a modality counts as
      absent for a sample when none of its frames is present (frame-level gaps are left to the encoder, SMIL
      only reconstructs whole modalities).
    * Modality priors. The paper runs K-means on the missing modality's features of the modality-complete
      subset, computed once with a pre-trained extractor. Our extractors are trained jointly, so the centres
      follow the features: ``prior=kmeans`` keeps them as buffers updated after every training step by one
      mini-batch K-means step (assign each detached feature of a sample in which m is present to its nearest
      centre; move each centre that received features towards their mean with ``prior_momentum``); the first
      update seeds the centres with features of the batch. ``prior=learned`` makes the centres parameters
      trained by gradient instead. K = ``num_priors`` (the paper does not give K for MOSI).
    * The reconstruction network is trained on the samples in which the target modality is present with
      MSE(Z^_m, stop_grad(Z_m)) (the feature-reconstruction term of the meta-test loss in the authors' code),
      and end-to-end through the task loss of samples where m is absent.
    * Regularized layers: the hidden fusion layers (``fusion_mults``: 3d -> 2d -> d), each with its own
      regularization network (Linear w -> 2w), log sigma^2 clamped to [-10, 10] (``logvar_clamp``). The authors'
      avMNIST code perturbs its fully-connected layers; which layers to perturb in a sequence model is not given.
      The reconstruction networks' hidden width is d (``recon_hidden``).
    * Task loss of the harness (MSE for MOSI/MOSEI, per-emotion CE for IEMOCAP) instead of the paper's CE.
    * Inner learning rate 1e-3 and one inner step (authors' code: ``lr_inner``, ``inner_loop``); second-order
      MAML by default (``first_order`` drops the second-order term).

Per split of a batch the loss is ``L = L_task + lambda_recon * L_recon + lambda_kl * KL``:

* ``L_task``: the harness task loss on the prediction (absent modalities reconstructed from the priors);
* ``L_recon``: MSE between the reconstruction Z^_m and the (detached) real feature Z_m, over the (sample,
  modality) pairs in which m is present — this is where the reconstruction network learns the mapping;
* ``KL``: KL(N(mu, sigma^2) || N(0, I)) of the regularization network's perturbations (the Bayesian term).

The training step is the paper's modified MAML step (as in the authors' ``meta_training`` function):

1. split the batch into a support set (meta-train: the samples with missing modalities) and a query set
   (meta-test: the complete samples); when one of them is empty the rows are alternated instead;
2. inner loop: fast weights ``theta' = theta - alpha * grad_theta L(support; theta, phi)`` for the main network only
   (encoders, fusion, head); the reconstruction and regularization networks phi are not adapted;
3. outer loop: ``L(support; theta, phi) + L(query; theta', phi)`` is back-propagated (through the inner step, second
   order unless ``first_order``) into theta and phi, and one optimizer step updates both;
4. the K-means modality priors take one mini-batch step on the detached features of both splits.

Second-order MAML differentiates the attention backward pass, which only PyTorch's math attention kernel
supports, so the step forces that kernel unless ``first_order``.

Sections: config (:class:`SMILCfg`) - training protocol (:class:`SevereMissing`) - network (:class:`SMIL`, exactly
what ``model.safetensors`` holds, the K-means priors included) - training system (:class:`SMILObjective`) -
registration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from hrlf.engine.system import TrainingSystem, task_loss
from hrlf.missing.patterns import sample_subsets
from hrlf.missing.protocol import apply_missing
from hrlf.models.layers import (
    check_choices,
    check_dropouts,
    check_encoder_settings,
    encoder_settings,
    modality_encoders,
    shape_prediction,
    task_outputs,
)
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

#: parameter-name prefixes of the main network theta (updated in the inner loop); the rest is phi
MAIN_PREFIXES: tuple[str, ...] = ("encoders.", "fusion.", "head.")

# ----------------------------------------------------------------------------------------------------- config


@dataclass
class SMILCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "prior": ("kmeans", "learned"),
        "meta_split": ("missingness", "alternate"),
    }

    d_model: int = 40  # feature size d of every modality (HRLF protocol: d = 40)
    num_heads: int = 10  # attention heads of the encoders (HRLF protocol: MOSI 10, MOSEI 8, IEMOCAP 10)
    num_layers: int = 3  # Transformer layers per modality (HRLF protocol)
    ffn_mult: int = 4  # encoder FFN width as a multiple of d
    dropout: float = 0.1  # encoder attention / residual / FFN dropout
    embed_dropout: float = 0.2  # dropout after conv + positions
    head_dropout: float = 0.1  # dropout in the fusion layers
    conv_kernel: int = 3  # temporal convolution kernel of the encoders
    mask_padding: bool = True  # keep padded frames out of attention
    num_priors: int = 10  # K, modality priors (cluster centres) per modality [U]
    recon_hidden: int = 0  # hidden width of each reconstruction network f_phi_c; 0 = d_model [U]
    prior: str = "kmeans"  # kmeans: centres tracked by mini-batch K-means | learned: centres are parameters
    prior_momentum: float = 0.9  # K-means centre update: c <- m c + (1 - m) mean(assigned features)
    regularize: bool = True  # uncertainty-guided feature regularization of the fusion layers
    logvar_clamp: float = 10.0  # the perturbation's log sigma^2 is clamped to [-c, c] (keeps exp finite) [U]
    fusion_mults: list[int] = field(default_factory=lambda: [2, 1])  # hidden fusion widths in d (3d -> 2d -> d) [U]
    inner_lr: float = 1e-3  # alpha, SGD step of the inner (meta-train) update (authors' code lr_inner)
    inner_steps: int = 1  # inner gradient steps (authors' code inner_loop = 1)
    first_order: bool = False  # drop the second-order term of the meta-gradient (first-order MAML)
    meta_split: str = "missingness"  # support = incomplete samples, query = complete | alternate rows
    lambda_recon: float = 1.0  # weight of the feature-reconstruction MSE
    lambda_kl: float = 0.01  # weight of the KL of the perturbation posterior to N(0, I) [U]
    incomplete_rate: float = 0.9  # training protocol: share of samples that lose at least one modality

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_encoder_settings(self)
        check_dropouts(head_dropout=self.head_dropout)
        if self.num_priors < 1:
            raise ValueError(f"num_priors: expected an integer >= 1, found {self.num_priors!r}")
        if not 0.0 <= self.prior_momentum < 1.0:
            raise ValueError(f"prior_momentum: expected a number in [0, 1), found {self.prior_momentum!r}")
        if not self.fusion_mults or min(self.fusion_mults) < 1:
            raise ValueError(f"fusion_mults: expected one or more integers >= 1, found {list(self.fusion_mults)!r}")
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps: expected an integer >= 1, found {self.inner_steps!r}")
        if self.inner_lr < 0:
            raise ValueError(f"inner_lr: expected a number >= 0, found {self.inner_lr!r}")
        if not 0.0 <= self.incomplete_rate <= 1.0:
            raise ValueError(f"incomplete_rate: expected a probability in [0, 1], found {self.incomplete_rate!r}")


# ------------------------------------------------------------------------------------------------ protocol


@dataclass(frozen=True)
class SevereMissing:
    """SMIL's training condition: most samples miss modalities ("severely missing", up to 90 % in the paper).

    With probability ``incomplete_rate`` a sample keeps one of the six non-empty proper modality subsets, chosen
    uniformly (:func:`~hrlf.missing.patterns.sample_subsets`); otherwise it stays complete. Whole modalities are
    removed (zero vectors); no frame-level dropping. Masks are re-drawn on every call from ``generator`` only.

    Attributes:
        incomplete_rate: probability that a sample loses at least one modality, in [0, 1].
    """

    incomplete_rate: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.incomplete_rate <= 1.0:
            raise ValueError(f"incomplete_rate must lie in [0, 1], got {self.incomplete_rate}")

    @property
    def name(self) -> str:
        return f"severe_missing(incomplete_rate={self.incomplete_rate!r})"

    def describe(self) -> dict[str, Any]:
        """JSON-able name and parameters, for results files."""
        return {"name": self.name, "type": "severe_missing", "params": {"incomplete_rate": self.incomplete_rate}}

    def apply(self, batch: Batch, *, generator: torch.Generator) -> Batch:
        """Draws fresh availability patterns for ``batch`` (the generator advances; the input is not modified).

        Args:
            batch: the training batch.
            generator: the only source of randomness.

        Returns:
            A new batch with the absent modalities fully missing (padding included) and zeroed.
        """
        available = sample_subsets(batch.size, subset_prob=self.incomplete_rate, generator=generator)  # (B, 3)
        new: dict[Modality, Tensor] = {}
        for j, m in enumerate(MODALITIES):
            if m in batch.features:
                absent = ~available[:, j].to(batch.valid[m].device)  # (B,)
                new[m] = absent[:, None].expand_as(batch.valid[m]).clone()  # (B, T): the whole row
        return apply_missing(batch, new)


def train_protocol(cfg: SMILCfg) -> SevereMissing:
    return SevereMissing(incomplete_rate=cfg.incomplete_rate)


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class SMILOutput(ModelOutput):
    """SMIL's output: the prediction and the intermediates of the reconstruction and regularization terms.

    Attributes:
        features: per modality its encoder feature Z_m (B, d) (a fixed code where the modality is absent).
        reconstructed: per modality the reconstruction Z^_m = w C_m (B, d) from the other modalities.
        prior_weights: per modality the weights w over its K priors (B, K).
        available: per modality (B,) 1.0 where it is in the input, 0.0 where it is absent (and reconstructed).
        fused: (B, 3d) the completed features [Z_l; Z_a; Z_v] entering the fusion layers.
        perturbations: (mu, log sigma^2) of every regularized fusion layer, in order, each (B, w_i).
    """

    features: dict[Modality, Tensor] = field(default_factory=dict)
    reconstructed: dict[Modality, Tensor] = field(default_factory=dict)
    prior_weights: dict[Modality, Tensor] = field(default_factory=dict)
    available: dict[Modality, Tensor] = field(default_factory=dict)
    fused: Tensor | None = None
    perturbations: list[tuple[Tensor, Tensor]] = field(default_factory=list)


class ModalityPriors(nn.Module):
    """K modality priors (cluster centres) per modality, tracked by mini-batch K-means or learned."""

    def __init__(self, *, d_model: int, num_priors: int, learned: bool, momentum: float) -> None:
        super().__init__()
        self.learned = learned
        self.momentum = momentum
        init = {m: torch.randn(num_priors, d_model) for m in MODALITIES}  # (K, d) each
        if learned:
            self.centres = nn.ParameterDict({m: nn.Parameter(c) for m, c in init.items()})
        else:
            for m, c in init.items():
                self.register_buffer(f"centres_{m}", c)
                self.register_buffer(f"seeded_{m}", torch.zeros(()))  # 1 once seeded from data

    def get(self, modality: Modality) -> Tensor:
        """(K, d) centres of ``modality``."""
        if self.learned:
            return self.centres[modality]
        return getattr(self, f"centres_{modality}")

    @torch.no_grad()
    def update(self, modality: Modality, features: Tensor) -> None:
        """One mini-batch K-means step on ``features`` (n, d) of samples in which ``modality`` is present.

        The first call seeds the centres with the given features (cycled when n < K). Afterwards each feature is
        assigned to its nearest centre and every centre that received features moves to
        ``momentum * centre + (1 - momentum) * mean(assigned)``. No-op for learned priors or n = 0.
        """
        if self.learned or features.shape[0] == 0:
            return
        centres = self.get(modality)
        seeded = getattr(self, f"seeded_{modality}")
        x = features.detach().to(centres.dtype)  # (n, d)
        if not bool(seeded):
            rows = torch.arange(centres.shape[0], device=x.device) % x.shape[0]  # (K,)
            centres.copy_(x[rows])
            seeded.fill_(1.0)
            return
        assign = torch.cdist(x, centres).argmin(dim=1)  # (n,)
        one_hot = F.one_hot(assign, centres.shape[0]).to(x.dtype)  # (n, K)
        counts = one_hot.sum(dim=0)  # (K,)
        sums = one_hot.t() @ x  # (K, n) @ (n, d) -> (K, d)
        hit = counts > 0  # (K,)
        means = sums[hit] / counts[hit, None]  # (K', d)
        centres[hit] = self.momentum * centres[hit] + (1.0 - self.momentum) * means


class FeatureReconstructor(nn.Module):
    """f_phi_c for one target modality: weights over its K priors from the other modalities' features.

    The source modalities are named at construction; their features and flags are read in that order.
    """

    def __init__(self, *, sources: Sequence[Modality], d_model: int, num_priors: int, hidden: int) -> None:
        super().__init__()
        self.sources: tuple[Modality, ...] = tuple(sources)
        width = len(self.sources) * (d_model + 1)  # S features of width d and S availability flags
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_priors))

    def forward(
        self, features: Mapping[Modality, Tensor], available: Mapping[Modality, Tensor], *, priors: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Reconstruct a feature from the available sources.

        Args:
            features: (B, d) features of exactly the source modalities.
            available: (B,) float flags of exactly the source modalities, 1 = present.
            priors: (K, d) centres.

        Returns:
            The reconstruction (B, d) and the prior weights (B, K).
        """
        for name, given in (("features", features), ("available", available)):
            if set(given) != set(self.sources):
                raise ValueError(f"{name} must hold exactly the sources {self.sources}, got {sorted(given)}")
        gated = [features[m] * available[m][:, None] for m in self.sources]  # each (B, d)
        flags = torch.stack([available[m] for m in self.sources], dim=-1)  # (B, S)
        x = torch.cat([*gated, flags], dim=-1)  # (B, S d + S)
        weights = torch.softmax(self.net(x), dim=-1)  # (B, K)
        return weights @ priors, weights  # (B, K) @ (K, d) -> (B, d)


class FeatureRegularizer(nn.Module):
    """f_phi_r: Gaussian perturbation r ~ N(mu(h), sigma(h)^2), applied as h * softplus(r)."""

    def __init__(self, *, width: int, logvar_clamp: float = 10.0) -> None:
        super().__init__()
        self.net = nn.Linear(width, 2 * width)
        self.logvar_clamp = logvar_clamp

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the perturbed feature (B, w), mu (B, w) and log sigma^2 (B, w)."""
        mu, logvar = self.net(h).chunk(2, dim=-1)  # (B, 2w) -> 2 x (B, w)
        logvar = logvar.clamp(-self.logvar_clamp, self.logvar_clamp)
        r = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu  # (B, w)
        return h * F.softplus(r), mu, logvar


class SMIL(nn.Module):
    """Encoders, feature-space reconstruction of absent modalities, regularized fusion layers, task head."""

    def __init__(self, cfg: SMILCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        d = cfg.d_model
        self.encoders = modality_encoders(dims=dims, **encoder_settings(cfg))
        self.priors = ModalityPriors(
            d_model=d, num_priors=cfg.num_priors, learned=cfg.prior == "learned", momentum=cfg.prior_momentum
        )
        self.reconstructors = nn.ModuleDict(
            {
                m: FeatureReconstructor(
                    sources=[n for n in MODALITIES if n != m],
                    d_model=d,
                    num_priors=cfg.num_priors,
                    hidden=cfg.recon_hidden or d,
                )
                for m in MODALITIES
            }
        )
        widths = [len(MODALITIES) * d] + [k * d for k in cfg.fusion_mults]  # default 3d -> 2d -> d
        self.fusion = nn.ModuleList([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.regularizers = (
            nn.ModuleList([FeatureRegularizer(width=w, logvar_clamp=cfg.logvar_clamp) for w in widths[1:]])
            if cfg.regularize
            else None
        )
        self.fusion_dropout = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(widths[-1], task_outputs(task.kind, task.num_targets))

    @staticmethod
    def is_main_parameter(name: str) -> bool:
        """True for the main network's parameters (theta, adapted in the inner loop); False for phi."""
        return name.startswith(MAIN_PREFIXES)

    def forward(self, batch: Batch) -> SMILOutput:
        z: dict[Modality, Tensor] = {}
        available: dict[Modality, Tensor] = {}
        for m in MODALITIES:
            present = batch.present(m)  # (B, T)
            z[m] = self.encoders[m](batch.features[m], present=present, valid=batch.valid[m])[0]  # (B, d)
            available[m] = present.any(dim=1).to(z[m].dtype)  # (B,)
        completed: dict[Modality, Tensor] = {}
        reconstructed: dict[Modality, Tensor] = {}
        prior_weights: dict[Modality, Tensor] = {}
        for m in MODALITIES:
            others = [n for n in MODALITIES if n != m]
            reconstructed[m], prior_weights[m] = self.reconstructors[m](
                {n: z[n] for n in others}, {n: available[n] for n in others}, priors=self.priors.get(m)
            )
            completed[m] = torch.where(available[m][:, None] > 0, z[m], reconstructed[m])  # (B, d): if absent
        h = torch.cat([completed[m] for m in MODALITIES], dim=-1)  # (B, 3d)
        fused = h
        perturbations: list[tuple[Tensor, Tensor]] = []
        for i, layer in enumerate(self.fusion):
            h = torch.relu(layer(h))  # (B, w_i)
            if self.regularizers is not None:
                h, mu, logvar = self.regularizers[i](h)
                perturbations.append((mu, logvar))
            h = self.fusion_dropout(h)
        pred = shape_prediction(self.head(h), self.task.kind, self.task.num_targets)
        return SMILOutput(
            pred=pred,
            features=z,
            reconstructed=reconstructed,
            prior_weights=prior_weights,
            available=available,
            fused=fused,
            perturbations=perturbations,
        )

    @torch.no_grad()
    def update_priors(self, output: SMILOutput) -> None:
        """One K-means step per modality on the detached features of the samples in which it is present."""
        for m in MODALITIES:
            present = output.available[m] > 0  # (B,)
            self.priors.update(m, output.features[m][present])


# -------------------------------------------------------------------------------------------- training system


def meta_split(batch: Batch, *, mode: str) -> tuple[Tensor, Tensor]:
    """Row indices of the support (meta-train) and query (meta-test) sets.

    ``missingness``: support = samples with at least one absent modality, query = complete samples; when either
    set would be empty (or with ``alternate``) even rows are the support and odd rows the query; a batch of one
    sample is both.
    """
    if mode not in SMILCfg.CHOICES["meta_split"]:
        raise ValueError(f"meta_split must be one of {SMILCfg.CHOICES['meta_split']}, got {mode!r}")
    rows = torch.arange(batch.size, device=batch.label.device)  # (B,)
    if mode == "missingness":
        complete = torch.stack([batch.present(m).any(dim=1) for m in MODALITIES], dim=1).all(dim=1)  # (B,)
        if bool(complete.any()) and not bool(complete.all()):
            return rows[~complete], rows[complete]
    if batch.size < 2:
        return rows, rows
    return rows[0::2], rows[1::2]


def inner_update(loss: Tensor, params: Mapping[str, Tensor], *, lr: float, first_order: bool) -> dict[str, Tensor]:
    """One SGD step on ``params`` as fast weights: ``p' = p - lr * dloss/dp`` (differentiable unless first order).

    Parameters the loss does not use are returned unchanged.
    """
    names = list(params)
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=not first_order, retain_graph=True, allow_unused=True
    )
    fast: dict[str, Tensor] = {}
    for name, grad in zip(names, grads, strict=True):
        if grad is None:
            fast[name] = params[name]
        else:
            fast[name] = params[name] - lr * (grad.detach() if first_order else grad)
    return fast


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Mean over elements of KL(N(mu, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).mean()


class SMILObjective(TrainingSystem):
    """``L_task + lambda_recon * L_recon + lambda_kl * KL`` per split; a meta-learning :meth:`training_step`.

    The one system besides HRLF's student that overrides the base step: an inner loop adapts fast weights on the
    support split before the outer update.
    """

    network_type = SMIL

    def __init__(self, cfg: SMILCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.inner_lr = cfg.inner_lr
        self.inner_steps = cfg.inner_steps
        self.first_order = cfg.first_order
        self.meta_split = cfg.meta_split
        self.lambda_recon = cfg.lambda_recon
        self.lambda_kl = cfg.lambda_kl

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        assert isinstance(output, SMILOutput)
        terms = {"task": task_loss(output.pred, batch.label, self.task)}
        errors, counts = [], []
        for m in MODALITIES:
            present = output.available[m]  # (B,)
            per_sample = (output.reconstructed[m] - output.features[m].detach()).pow(2).mean(dim=-1)  # (B, d) -> (B,)
            errors.append((per_sample * present).sum())
            counts.append(present.sum())
        terms["recon"] = torch.stack(errors).sum() / torch.stack(counts).sum().clamp(min=1.0)
        kls = [gaussian_kl(mu, logvar) for mu, logvar in output.perturbations]
        terms["kl"] = torch.stack(kls).mean() if kls else output.pred.new_zeros(())
        terms["loss"] = terms["task"] + self.lambda_recon * terms["recon"] + self.lambda_kl * terms["kl"]
        return terms

    def training_step(
        self,
        *,
        model: nn.Module,  # noqa: ARG002 - TrainingSystem.training_step's signature (SMIL uses self.network)
        batch: Batch,
        clean: Batch,  # noqa: ARG002 - TrainingSystem.training_step's signature
        optimizers: dict[str, torch.optim.Optimizer],
        grad_clip: float = 0.0,
    ) -> dict[str, float]:
        net = self.network
        assert isinstance(net, SMIL)
        support_rows, query_rows = meta_split(batch, mode=self.meta_split)
        support, query = batch.take(support_rows), batch.take(query_rows)
        theta = {n: p for n, p in net.named_parameters() if p.requires_grad and net.is_main_parameter(n)}
        # second-order MAML differentiates the attention backward: only the math kernel supports that
        kernel = contextlib.nullcontext() if self.first_order else sdpa_kernel(SDPBackend.MATH)
        with kernel:
            # inner loop (meta-train): adapt theta on the support set; phi is shared and not adapted
            support_out = net(support)
            support_terms = self.losses(support_out, support)
            fast = inner_update(support_terms["loss"], theta, lr=self.inner_lr, first_order=self.first_order)
            for _ in range(self.inner_steps - 1):
                adapted = self.losses(functional_call(net, fast, (support,)), support)
                fast = inner_update(adapted["loss"], fast, lr=self.inner_lr, first_order=self.first_order)
            # outer loop (meta-test): the query loss at the fast weights, plus the support loss at theta
            query_out = functional_call(net, fast, (query,))
            query_terms = self.losses(query_out, query)
        total = support_terms["loss"] + query_terms["loss"]
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        self.clip_gradients([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        net.update_priors(support_out)
        net.update_priors(query_out)
        logged = {"loss": float(total.detach())}
        for prefix, terms in (("support", support_terms), ("query", query_terms)):
            logged.update({f"{prefix}_{k}": float(v.detach()) for k, v in terms.items()})
        return logged


# ----------------------------------------------------------------------------------------------- registration

register_model(
    ModelSpec(name="smil", config_cls=SMILCfg, build=SMIL, objective=SMILObjective, train_protocol=train_protocol)
)
