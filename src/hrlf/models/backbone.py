"""``backbone`` — HRLF's encoder and fusion stack without any distillation: the "no distillation" reference.

Paper: Li, Yang et al., *Toward Robust Incomplete Multimodal Sentiment Analysis via Hierarchical Representation
Learning*, NeurIPS 2024, arXiv 2411.02793 (specification: ``shared/docs/hrlf_method.md``).

What is implemented:
    * §2.1 unimodal encoders: R = Conv1d_{k=3}(X) + PE, Z = last element of a per-modality Transformer encoder.
    * §2.3 fusion with Z in place of the factorized C = [Q; U]: H = [Z_l; Z_a; Z_v] (3d), the hourglass
      3d -> 2d -> d -> 2d -> 3d, then a classifier on the refined H~ (this is HRLF's "w/o FRF" reading).
    * Trained by the generic trainer with Modality Stochastic Missing and the task loss only (MSE for regression,
      per-emotion cross-entropy for IEMOCAP); no teacher, no FRF, HMI, HAL or output distillation. ``task_loss:
      l1`` trains regression with L1 instead, the loss of the field's BERT fine-tuning code (a recipe knob; a
      recipe that does not set it keeps MSE).

Choices the paper leaves open ([U]/[I] in hrlf_method.md §9), all knobs below: 3 encoder layers, FFN 4d,
pre-norm layers, dropout 0.1, embedding dropout 0.2, padding kept out of attention (missing frames stay in as
zero vectors), classifier 3d -> d -> out.

Sections: config (:class:`BackboneCfg`) - network (:class:`Backbone`) - registration (trained by the task loss
alone, :class:`hrlf.engine.system.TaskSystem`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from hrlf.engine.system import TaskSystem
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
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

# ----------------------------------------------------------------------------------------------------- config


@dataclass
class BackboneCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"task_loss": ("mse", "l1")}

    d_model: int = 40  # embedding size d (paper: 40 on all datasets)
    num_heads: int = 10  # attention heads (paper: MOSI 10, MOSEI 8, IEMOCAP 10)
    num_layers: int = 3  # Transformer layers per modality [U]
    ffn_mult: int = 4  # FFN width as a multiple of d [U]
    dropout: float = 0.1  # attention / residual / FFN dropout [U]
    embed_dropout: float = 0.2  # dropout after conv + positions [U]
    head_dropout: float = 0.1  # dropout in the hourglass and classifier [U]
    conv_kernel: int = 3  # temporal convolution kernel ("3 x 3" read as 3 for a 1-D conv)
    mask_padding: bool = True  # keep padded frames out of attention
    # training loss for regression: mse (HRLF's task loss, §2.5) | l1 (the MAE loss of the field's BERT
    # fine-tuning code, e.g. MMSA's regression models and Self-MM); emotions always use cross-entropy. Validation
    # and selection are unchanged (the validation loss stays the task loss, MSE) [recipe choice, not the paper's]
    task_loss: str = "mse"

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_encoder_settings(self)
        check_dropouts(head_dropout=self.head_dropout)


# ---------------------------------------------------------------------------------------------------- network


class Backbone(nn.Module):
    """Per-modality encoders, concatenation, hourglass refiner and a task head."""

    def __init__(self, cfg: BackboneCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.encoders = modality_encoders(dims=dims, **encoder_settings(cfg))
        d = cfg.d_model
        self.fusion = Hourglass(width=3 * d, dropout=cfg.head_dropout)
        self.head = mlp([3 * d, d, task_outputs(task.kind, task.num_targets)], dropout=cfg.head_dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        z = encode_last(self.encoders, batch)  # each (B, d)
        h = torch.cat([z[m] for m in MODALITIES], dim=-1)  # (B, 3d)
        i1, i2, i3, refined = self.fusion(h)
        pred = shape_prediction(self.head(refined), self.task.kind, self.task.num_targets)
        aux = {f"Z.{m}": z[m] for m in MODALITIES}
        aux.update(H=h, I1=i1, I2=i2, I3=i3, H_refined=refined)
        return ModelOutput(pred=pred, aux=aux)


# ------------------------------------------------------------------------------------------------ registration


def objective(cfg: BackboneCfg, *, task: TaskSpec) -> TaskSystem:
    """The task loss alone (no distillation): MSE, or L1 with ``task_loss: l1``."""
    return TaskSystem(task=task, regression=cfg.task_loss)


register_model(ModelSpec(name="backbone", config_cls=BackboneCfg, build=Backbone, objective=objective))
