"""``smil`` — SMIL: Bayesian meta-learning for multimodal learning with severely missing modalities.

Paper: Mengmeng Ma, Jian Ren, Long Zhao, Sergey Tulyakov, Cathy Wu, Xi Peng. *SMIL: Multimodal Learning with
Severely Missing Modality.* AAAI 2021, 35(3): 2302-2310, arXiv 2103.05677 (code: mengmenm/SMIL, partial; its
README lists "training with missing modality" as a TODO). Re-implemented for sequences from the paper
(``field_conventions.md`` §7.6); the meta-learning procedure lives in :mod:`hrlf.objectives.smil`.

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
      fast weights .................................................  objectives/smil.py: SMILObjective
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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.missing.patterns import sample_subsets
from hrlf.missing.protocol import apply_missing
from hrlf.models.layers import modality_encoders, shape_prediction, task_outputs
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.objectives.smil import SMILObjective

#: parameter-name prefixes of the main network theta (updated in the inner loop); the rest is phi
MAIN_PREFIXES: tuple[str, ...] = ("encoders.", "fusion.", "head.")


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


# ------------------------------------------------------------------------------------------------- modules


class ModalityPriors(nn.Module):
    """K modality priors (cluster centres) per modality, tracked by mini-batch K-means or learned."""

    def __init__(self, *, d_model: int, num_priors: int, learned: bool, momentum: float) -> None:
        super().__init__()
        if num_priors < 1:
            raise ValueError(f"num_priors must be >= 1, got {num_priors}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"prior_momentum must lie in [0, 1), got {momentum}")
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
        num_priors: int = 10,
        prior: str = "kmeans",
        prior_momentum: float = 0.9,
        regularize: bool = True,
        recon_hidden: int = 0,
        logvar_clamp: float = 10.0,
        fusion_mults: Sequence[int] = (2, 1),
    ) -> None:
        super().__init__()
        if prior not in SMILCfg.CHOICES["prior"]:
            raise ValueError(f"prior must be one of {SMILCfg.CHOICES['prior']}, got {prior!r}")
        if not fusion_mults or min(fusion_mults) < 1:
            raise ValueError(f"fusion_mults must be one or more integers >= 1, got {list(fusion_mults)}")
        self.task = task
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
        self.priors = ModalityPriors(
            d_model=d_model, num_priors=num_priors, learned=prior == "learned", momentum=prior_momentum
        )
        self.reconstructors = nn.ModuleDict(
            {
                m: FeatureReconstructor(
                    sources=[n for n in MODALITIES if n != m],
                    d_model=d_model,
                    num_priors=num_priors,
                    hidden=recon_hidden or d_model,
                )
                for m in MODALITIES
            }
        )
        widths = [len(MODALITIES) * d_model] + [k * d_model for k in fusion_mults]  # default 3d -> 2d -> d
        self.fusion = nn.ModuleList([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.regularizers = (
            nn.ModuleList([FeatureRegularizer(width=w, logvar_clamp=logvar_clamp) for w in widths[1:]])
            if regularize
            else None
        )
        self.fusion_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(widths[-1], task_outputs(task.kind, task.num_targets))

    @staticmethod
    def is_main_parameter(name: str) -> bool:
        """True for the main network's parameters (theta, adapted in the inner loop); False for phi."""
        return name.startswith(MAIN_PREFIXES)

    def forward(self, batch: Batch) -> ModelOutput:
        z: dict[Modality, Tensor] = {}
        available: dict[Modality, Tensor] = {}
        for m in MODALITIES:
            present = batch.present(m)  # (B, T)
            z[m] = self.encoders[m](batch.features[m], present=present, valid=batch.valid[m])[0]  # (B, d)
            available[m] = present.any(dim=1).to(z[m].dtype)  # (B,)
        completed: dict[Modality, Tensor] = {}
        aux: dict[str, Tensor] = {}
        for m in MODALITIES:
            others = [n for n in MODALITIES if n != m]
            z_hat, weights = self.reconstructors[m](
                {n: z[n] for n in others}, {n: available[n] for n in others}, priors=self.priors.get(m)
            )
            completed[m] = torch.where(available[m][:, None] > 0, z[m], z_hat)  # (B, d): reconstruct if absent
            aux.update({f"Z.{m}": z[m], f"Zhat.{m}": z_hat, f"W.{m}": weights, f"avail.{m}": available[m]})
        h = torch.cat([completed[m] for m in MODALITIES], dim=-1)  # (B, 3d)
        aux["H"] = h
        for i, layer in enumerate(self.fusion):
            h = torch.relu(layer(h))  # (B, w_i)
            if self.regularizers is not None:
                h, mu, logvar = self.regularizers[i](h)
                aux[f"R.mu.{i}"], aux[f"R.logvar.{i}"] = mu, logvar
            h = self.fusion_dropout(h)
        pred = shape_prediction(self.head(h), self.task.kind, self.task.num_targets)
        return ModelOutput(pred=pred, aux=aux)

    @torch.no_grad()
    def update_priors(self, output: ModelOutput) -> None:
        """One K-means step per modality on the detached features of the samples in which it is present."""
        for m in MODALITIES:
            present = output.aux[f"avail.{m}"] > 0  # (B,)
            self.priors.update(m, output.aux[f"Z.{m}"][present])


def build(cfg: SMILCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> SMIL:
    return SMIL(
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
        num_priors=cfg.num_priors,
        prior=cfg.prior,
        prior_momentum=cfg.prior_momentum,
        regularize=cfg.regularize,
        recon_hidden=cfg.recon_hidden,
        logvar_clamp=cfg.logvar_clamp,
        fusion_mults=cfg.fusion_mults,
    )


def objective(cfg: SMILCfg, *, task: TaskSpec) -> SMILObjective:
    from hrlf.objectives.smil import SMILObjective

    return SMILObjective(
        task=task,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        first_order=cfg.first_order,
        meta_split=cfg.meta_split,
        lambda_recon=cfg.lambda_recon,
        lambda_kl=cfg.lambda_kl,
    )


register_model(
    ModelSpec(name="smil", config_cls=SMILCfg, build=build, objective=objective, train_protocol=train_protocol)
)
