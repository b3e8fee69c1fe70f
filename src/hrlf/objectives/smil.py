"""SMIL's objective and its meta-learning step (Ma et al., AAAI 2021; model and deviations in :mod:`hrlf.models.smil`).

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
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from hrlf.models.smil import SMIL, SMILCfg
from hrlf.objectives.base import Objective
from hrlf.objectives.task import task_loss
from hrlf.types import MODALITIES, Batch, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from collections.abc import Mapping


def take(batch: Batch, rows: Tensor) -> Batch:
    """The sub-batch of ``rows`` (a (n,) long tensor of row indices)."""
    picked = rows.tolist()
    return replace(
        batch,
        features={m: x[rows] for m, x in batch.features.items()},
        valid={m: x[rows] for m, x in batch.valid.items()},
        missing={m: x[rows] for m, x in batch.missing.items()},
        label=batch.label[rows],
        index=batch.index[rows],
        ids=[batch.ids[i] for i in picked] if batch.ids else [],
    )


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


class SMILObjective(Objective):
    """``L_task + lambda_recon * L_recon + lambda_kl * KL`` per split; a meta-learning :meth:`training_step`."""

    def __init__(
        self,
        *,
        task: TaskSpec,
        inner_lr: float = 1e-3,
        inner_steps: int = 1,
        first_order: bool = False,
        meta_split: str = "missingness",
        lambda_recon: float = 1.0,
        lambda_kl: float = 0.01,
    ) -> None:
        super().__init__()
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        if inner_lr < 0:
            raise ValueError(f"inner_lr must be >= 0, got {inner_lr}")
        if meta_split not in SMILCfg.CHOICES["meta_split"]:
            raise ValueError(f"meta_split must be one of {SMILCfg.CHOICES['meta_split']}, got {meta_split!r}")
        self.task = task
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.meta_split = meta_split
        self.lambda_recon = lambda_recon
        self.lambda_kl = lambda_kl
        self._model: tuple[SMIL, ...] = ()  # the trained model, held outside the module tree

    def setup(self, model: nn.Module) -> None:
        if not isinstance(model, SMIL):
            raise TypeError(f"SMILObjective trains a SMIL model, got {type(model).__name__}")
        self._model = (model,)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        aux = output.aux
        terms = {"task": task_loss(output.pred, batch.label, self.task)}
        errors, counts = [], []
        for m in MODALITIES:
            present = aux[f"avail.{m}"]  # (B,)
            per_sample = (aux[f"Zhat.{m}"] - aux[f"Z.{m}"].detach()).pow(2).mean(dim=-1)  # (B, d) -> (B,)
            errors.append((per_sample * present).sum())
            counts.append(present.sum())
        terms["recon"] = torch.stack(errors).sum() / torch.stack(counts).sum().clamp(min=1.0)
        layers = [k.removeprefix("R.mu.") for k in aux if k.startswith("R.mu.")]
        kls = [gaussian_kl(aux[f"R.mu.{i}"], aux[f"R.logvar.{i}"]) for i in layers]
        terms["kl"] = torch.stack(kls).mean() if kls else output.pred.new_zeros(())
        terms["loss"] = terms["task"] + self.lambda_recon * terms["recon"] + self.lambda_kl * terms["kl"]
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
        if not self._model:
            raise RuntimeError("call setup(model) before training")
        net = self._model[0]
        support_rows, query_rows = meta_split(batch, mode=self.meta_split)
        support, query = take(batch, support_rows), take(batch, query_rows)
        theta = {n: p for n, p in net.named_parameters() if p.requires_grad and net.is_main_parameter(n)}
        # second-order MAML differentiates the attention backward: only the math kernel supports that
        kernel = contextlib.nullcontext() if self.first_order else sdpa_kernel(SDPBackend.MATH)
        with kernel:
            # inner loop (meta-train): adapt theta on the support set; phi is shared and not adapted
            support_out = net(support)
            support_terms = self(support_out, support)
            fast = inner_update(support_terms["loss"], theta, lr=self.inner_lr, first_order=self.first_order)
            for _ in range(self.inner_steps - 1):
                adapted = self(functional_call(net, fast, (support,)), support)
                fast = inner_update(adapted["loss"], fast, lr=self.inner_lr, first_order=self.first_order)
            # outer loop (meta-test): the query loss at the fast weights, plus the support loss at theta
            query_out = functional_call(net, fast, (query,))
            query_terms = self(query_out, query)
        total = support_terms["loss"] + query_terms["loss"]
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        net.update_priors(support_out)
        net.update_priors(query_out)
        logged = {"loss": float(total.detach())}
        for prefix, terms in (("support", support_terms), ("query", query_terms)):
            logged.update({f"{prefix}_{k}": float(v.detach()) for k, v in terms.items()})
        return logged
