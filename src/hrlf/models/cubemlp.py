"""``cubemlp`` — CubeMLP: an all-MLP fusion that mixes the multimodal feature cube along three axes.

Paper: Hao Sun, Hongyi Wang, Jiaqing Liu, Yen-Wei Chen, Lanfen Lin, *CubeMLP: An MLP-based Model for Multimodal
Sentiment Analysis and Depression Estimation*, ACM MM 2022, arXiv 2207.14087, DOI 10.1145/3503161.3548025
(code: kiva12138/CubeMLP).

What is implemented (paper -> code):
    * Feature extraction to a common width D: text features projected by a bias-free linear map; audio and vision
      encoded by a bidirectional recurrent network (GRU, 2 layers, by default; LSTM or Conv1d as options) whose two
      directions are summed, then LayerNorm + ReLU (``SequenceEncoder``); dropout on all three.
    * The cube: the three sequences padded to a common length L and stacked into X in R^{L x M x D}, M = 3
      modalities (``(B, L, 3, D)``).
    * CubeMLP blocks (``CubeBlock``): three MLP units, each two affine maps with an activation (GELU), applied in
      turn along the sequence axis L (sequence mixing), the modality axis M (modality mixing) and the channel axis D
      (channel mixing); each unit with LayerNorm, dropout and a residual connection, projected by a bias-free linear
      map so a block can shrink its axes (the authors' MOSI command: 50-3-128 -> 10-3-32, LayerNorm first, every
      residual projected, bias on).
    * Prediction: the mixed cube pooled over time (mean) and flattened over modalities, then a linear classifier
      (Linear-ReLU-Dropout-Linear when the pooled width exceeds ``head_hidden`` = 128), as in the authors' code.
    * Task loss only (:class:`CubeMLPObjective`): L1 for regression by default, as the authors' code trains
      MOSI/MOSEI (``regression_loss=mse`` gives the harness's MSE); per-emotion cross-entropy for IEMOCAP.

Sections: config (:class:`CubeMLPCfg`) - network (:class:`CubeMLP`, exactly what ``model.safetensors`` holds) -
training system (:class:`CubeMLPObjective`) - registration.

Deviations forced by our setting, and choices the paper leaves open:
    * Text: word features from our files instead of BERT token states (BERT, partly frozen at 0.01x lr, in the
      paper); the projection W_t is kept.
    * Sequences: each modality's real frames are gathered to the front (so CMU-SDK pre-padding and MMSA post-padding
      give the same cube), truncated or zero-padded to ``seq_len`` = L. The authors pad BERT tokens to 100 and
      centre audio/vision inside them; our aligned files have 50 frames, so L = 50 and the first block keeps it.
    * Positions past a sample's real length are set to zero after the encoders (the authors' code leaves
      ReLU(LayerNorm(0)) there, which depends on the longest sample of the batch); non-present frames are zero
      vectors on entry (the HRLF rule), so nothing written at padded or missing positions can reach the output.
    * Widths and depth keep the paper's (D = 128 -> 32, two blocks), not HRLF's d = 40: CubeMLP is an MLP over the
      whole cube, and its axis sizes are part of the method.
    * No learning-rate step decay (the code's step at epoch 60 of 70) and no gradient clipping inside the model: the
      recipes set the harness's ``grad_clip`` to the code's 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hrlf.engine.system import TrainingSystem, regression_or_task_loss
from hrlf.models.layers import (
    check_choices,
    check_counts,
    check_dropouts,
    check_odd_kernel,
    front_aligned,
    shape_prediction,
    task_outputs,
)
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


# ----------------------------------------------------------------------------------------------------- config


@dataclass
class CubeMLPCfg:
    seq_len: int = 50  # L: every modality is cut or zero-padded to this many frames (aligned MOSI/MOSEI: 50)
    d_model: int = 128  # D: common channel width of the cube (d_common)
    num_layers: int = 2  # CubeMLP blocks; the last maps the cube to (seq_out, modality_out, d_out)
    seq_out: int = 10  # L after the last block (code's MOSI command: 10)
    modality_out: int = 3  # M after the last block (code's MOSI command: 3)
    d_out: int = 32  # D after the last block (code's MOSI command: 32)
    av_encoder: str = "gru"  # audio/vision encoder: gru (bi-GRU) | lstm (1-layer bi-LSTM) | conv (Conv1d)
    gru_layers: int = 2  # layers of the bi-GRU audio/vision encoder (code: 2)
    conv_kernel: int = 3  # kernel of the Conv1d audio/vision encoder, odd to keep the length (code: 3)
    norm_eps: float = 1e-6  # epsilon of every LayerNorm (encoders and MLP units; code: 1e-6)
    head_hidden: int = 128  # hidden width of the two-layer classifier, used when the pooled width exceeds it
    activation: str = "gelu"  # activation inside every MLP unit
    bias: bool = True  # affine maps of the MLP units carry a bias (code: --bias)
    norm_first: bool = True  # LayerNorm before each MLP unit (code: --ln_first) instead of after the residual
    res_project: bool = True  # project every residual by a bias-free linear map (code: --res_project 1-1)
    dropout: float = 0.1  # dropout after every MLP unit (code: --dropout_mlp 0.1-0.1-0.1)
    input_dropout: float = 0.1  # dropout on the text/audio/vision sequences before the cube (code: --dropout 0.1)
    head_dropout: float = 0.1  # dropout inside the two-layer classifier (used when the pooled width > head_hidden)
    pool_time: str = "mean"  # collapse the sequence axis: mean | flatten (code: --features_compose_t mean)
    pool_modality: str = "flatten"  # collapse the modality axis: mean | flatten (code: --features_compose_k cat)
    regression_loss: str = "l1"  # l1 (code's MAE) | mse (the harness's task loss)

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "av_encoder": ("gru", "lstm", "conv"),
        "activation": ("gelu", "relu"),
        "pool_time": ("mean", "flatten"),
        "pool_modality": ("mean", "flatten"),
        "regression_loss": ("l1", "mse"),
    }

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_counts(num_layers=self.num_layers)
        check_dropouts(dropout=self.dropout, head_dropout=self.head_dropout)
        check_odd_kernel("conv_kernel", self.conv_kernel)  # whatever av_encoder is, as the config loader always did


# ---------------------------------------------------------------------------------------------------- network


class SequenceEncoder(nn.Module):
    """Audio/vision feature extractor to width D: bi-GRU / bi-LSTM (directions summed) or Conv1d, LayerNorm, ReLU."""

    def __init__(
        self,
        *,
        input_dim: int,
        d_model: int,
        kind: str,
        gru_layers: int = 2,
        conv_kernel: int = 3,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gru":
            self.net: nn.Module = nn.GRU(
                input_dim, d_model, num_layers=gru_layers, bidirectional=True, batch_first=True
            )
        elif kind == "lstm":
            self.net = nn.LSTM(input_dim, d_model, num_layers=1, bidirectional=True, batch_first=True)
        elif kind == "conv":
            if conv_kernel < 1 or conv_kernel % 2 == 0:
                raise ValueError(f"conv_kernel must be odd to keep the sequence length, got {conv_kernel}")
            self.net = nn.Conv1d(input_dim, d_model, kernel_size=conv_kernel, padding=conv_kernel // 2)
        else:
            raise ValueError(f"av_encoder must be one of {CubeMLPCfg.CHOICES['av_encoder']}, got {kind!r}")
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.d_model = d_model

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, L, D_m) front-aligned features with (B,) real lengths -> (B, L, D)."""
        if self.kind == "conv":
            h = self.net(x.transpose(1, 2)).transpose(1, 2)  # (B, D_m, L) -> (B, D, L) -> (B, L, D)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.net(packed)
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, L, 2D)
            h = h.view(*h.shape[:2], 2, self.d_model).sum(dim=2)  # (B, L, 2, D) -> (B, L, D): directions summed
        return F.relu(self.norm(h))


class AxisMLP(nn.Module):
    """One MLP unit of a CubeMLP block: two affine maps along one axis of the cube, LayerNorm, dropout, residual."""

    def __init__(
        self,
        *,
        axis: int,
        size_in: int,
        size_out: int,
        activation: str,
        bias: bool,
        dropout: float,
        norm_first: bool,
        res_project: bool,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not res_project and size_in != size_out:
            raise ValueError(
                f"an unprojected residual needs equal sizes along axis {axis}, got {size_in} -> {size_out}"
            )
        self.axis = axis
        self.fc1 = nn.Linear(size_in, size_out, bias=bias)  # hidden width = output width, as in the authors' command
        self.act = _ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(size_out, size_out, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(size_in if norm_first else size_out, eps=norm_eps)
        self.norm_first = norm_first
        self.residual = nn.Linear(size_in, size_out, bias=False) if res_project else nn.Identity()

    def forward(self, cube: Tensor) -> Tensor:
        x = cube.movedim(self.axis, -1)  # (B, L, M, D) -> (..., size_in): the mixed axis last
        residual = self.residual(x)  # (..., size_out)
        if self.norm_first:
            x = self.dropout(self.fc2(self.act(self.fc1(self.norm(x))))) + residual
        else:
            x = self.norm(self.dropout(self.fc2(self.act(self.fc1(x)))) + residual)
        return x.movedim(-1, self.axis)  # (..., size_out) -> (B, L', M', D')


class CubeBlock(nn.Module):
    """Sequence mixing, then modality mixing, then channel mixing: (B, L, M, D) -> (B, L', M', D')."""

    def __init__(
        self,
        *,
        shape_in: tuple[int, int, int],
        shape_out: tuple[int, int, int],
        activation: str = "gelu",
        bias: bool = True,
        dropout: float = 0.1,
        norm_first: bool = True,
        res_project: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        names = ("sequence", "modality", "channel")
        self.units = nn.ModuleDict(
            {
                name: AxisMLP(
                    axis=axis,
                    size_in=shape_in[axis - 1],
                    size_out=shape_out[axis - 1],
                    activation=activation,
                    bias=bias,
                    dropout=dropout,
                    norm_first=norm_first,
                    res_project=res_project,
                    norm_eps=norm_eps,
                )
                for axis, name in enumerate(names, start=1)
            }
        )

    def forward(self, cube: Tensor) -> Tensor:
        for unit in self.units.values():
            cube = unit(cube)
        return cube


#: the modalities read by a sequence encoder (language gets the linear map W_t)
AUDIO_VISION: tuple[Modality, ...] = ("audio", "vision")


class CubeMLP(nn.Module):
    """Per-modality extractors to width D, the (L, 3, D) cube, stacked CubeMLP blocks, pooling and a classifier."""

    def __init__(self, cfg: CubeMLPCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.seq_len = cfg.seq_len
        self.pool_time = cfg.pool_time
        self.pool_modality = cfg.pool_modality
        d = cfg.d_model
        self.text_projection = nn.Linear(dims["language"], d, bias=False)  # W_t
        self.encoders = nn.ModuleDict(
            {
                m: SequenceEncoder(
                    input_dim=dims[m],
                    d_model=d,
                    kind=cfg.av_encoder,
                    gru_layers=cfg.gru_layers,
                    conv_kernel=cfg.conv_kernel,
                    norm_eps=cfg.norm_eps,
                )
                for m in AUDIO_VISION
            }
        )
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        shapes = [(cfg.seq_len, len(MODALITIES), d)] * cfg.num_layers + [(cfg.seq_out, cfg.modality_out, cfg.d_out)]
        self.blocks = nn.ModuleList(
            CubeBlock(
                shape_in=shapes[i],
                shape_out=shapes[i + 1],
                activation=cfg.activation,
                bias=cfg.bias,
                dropout=cfg.dropout,
                norm_first=cfg.norm_first,
                res_project=cfg.res_project,
                norm_eps=cfg.norm_eps,
            )
            for i in range(cfg.num_layers)
        )
        pooled = cfg.d_out * (cfg.seq_out if cfg.pool_time == "flatten" else 1)
        pooled *= cfg.modality_out if cfg.pool_modality == "flatten" else 1
        out = task_outputs(task.kind, task.num_targets)
        if pooled <= cfg.head_hidden:
            self.head: nn.Module = nn.Linear(pooled, out)
        else:
            self.head = nn.Sequential(
                nn.Linear(pooled, cfg.head_hidden),
                nn.ReLU(),
                nn.Dropout(cfg.head_dropout),
                nn.Linear(cfg.head_hidden, out),
            )

    def sequences(self, batch: Batch) -> dict[Modality, Tensor]:
        """Each modality extracted to (B, L, D), real frames first, zero past each sample's length."""
        length = self.seq_len
        out: dict[Modality, Tensor] = {}
        for m in MODALITIES:
            x = batch.features[m] * batch.present(m).unsqueeze(-1).to(batch.features[m].dtype)  # (B, T, D_m)
            x, lengths = front_aligned(x, batch.valid[m])
            x = F.pad(x[:, :length], (0, 0, 0, max(0, length - x.shape[1])))  # (B, T, D_m) -> (B, L, D_m)
            lengths = lengths.clamp_max(length)
            h = self.text_projection(x) if m == "language" else self.encoders[m](x, lengths)  # (B, L, D)
            keep = torch.arange(length, device=x.device) < lengths.unsqueeze(1)  # (B, L)
            out[m] = self.input_dropout(h * keep.unsqueeze(-1).to(h.dtype))
        return out

    def forward(self, batch: Batch) -> ModelOutput:
        seqs = self.sequences(batch)
        cube = torch.stack([seqs[m] for m in MODALITIES], dim=2)  # 3 x (B, L, D) -> (B, L, 3, D)
        for block in self.blocks:
            cube = block(cube)  # (B, L, M, D) -> (B, L', M', D')
        # (B, L', M', D') -> (B, M', D') by the mean over time, or -> (B, M', L' D') flattened
        pooled = cube.mean(dim=1) if self.pool_time == "mean" else cube.permute(0, 2, 1, 3).flatten(2)
        # (B, M', w) -> (B, w) by the mean over modalities, or -> (B, M' w) flattened
        pooled = pooled.mean(dim=1) if self.pool_modality == "mean" else pooled.flatten(1)
        pred = shape_prediction(self.head(pooled), self.task.kind, self.task.num_targets)
        return ModelOutput(pred=pred, aux={"cube": cube, "fused": pooled})


# -------------------------------------------------------------------------------------------- training system


class CubeMLPObjective(TrainingSystem):
    """``{"loss": task, "task": task}`` with an L1 (the authors' code) or MSE regression loss."""

    network_type = CubeMLP

    def __init__(self, cfg: CubeMLPCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.regression_loss = cfg.regression_loss

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        loss = regression_or_task_loss(output.pred, batch.label, self.task, regression=self.regression_loss)
        return {"loss": loss, "task": loss}


# ----------------------------------------------------------------------------------------------- registration

register_model(ModelSpec(name="cubemlp", config_cls=CubeMLPCfg, build=CubeMLP, objective=CubeMLPObjective))
