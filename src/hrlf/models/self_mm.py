"""``self_mm`` — Self-MM: self-supervised multi-task learning with automatically generated unimodal labels.

Paper: Wenmeng Yu, Hua Xu, Ziqi Yuan, Jiele Wu, *Learning Modality-Specific Representations with Self-Supervised
Multi-Task Learning for Multimodal Sentiment Analysis*, AAAI 2021, arXiv 2102.04830 (code: thuiar/Self-MM).

What is implemented (paper section -> code):
    * Multimodal task (Fig. 1): unimodal representations F_l, F_a, F_v -> concatenation -> dropout -> a 3-layer MLP
      head -> the multimodal prediction y^_m (``pred``); the output of its first (ReLU) layer is the fusion feature
      F*_m that the label generator uses (``aux["feature.fusion"]``).
    * Unimodal tasks: one 3-layer MLP head per modality on F_s -> y^_s (``aux["pred.<modality>"]``); the output of
      its first layer is F*_s (``aux["feature.<modality>"]``). The multimodal head does not see these heads.
    * Audio and vision sub-networks ("sLSTM"): a single-layer LSTM over the real frames, its final hidden state,
      dropout and a linear layer (``LSTMSubNet``), as in the paper and its code.
    * The Unimodal Label Generation Module (ULGM: class centres, relative distances, label generation, momentum
      update from epoch 2) and the weighted L1 multi-task loss live in :mod:`hrlf.objectives.self_mm`, because they
      are training-time state (per-sample labels and features), not part of the network.
    * Adam with parameter groups by name (audio sub-network, vision sub-network, everything else), each with its own
      learning rate and weight decay, as in the authors' configs (the objective's ``optimizers``).

Deviations forced by our setting, and choices the paper leaves open:
    * Text: our files hold word features, not tokens, so the fine-tuned BERT (its [CLS] vector, 768-d) is replaced by
      the project's :class:`~hrlf.models.layers.ModalityEncoder` trained from scratch (Conv1d + positions +
      Transformer, last real step) with width d = 40 (HRLF protocol); the BERT learning-rate group becomes part of
      "everything else".
    * Audio/vision: the LSTM runs over each sample's real (``valid``) frames, gathered to the front so CMU-SDK
      pre-padding and MMSA post-padding give the same result; frames removed by a protocol are zero vectors (the HRLF
      rule), so the LSTM still steps over them.
    * IEMOCAP (emotions; not in the paper): every head outputs two logits per emotion, the multimodal loss is the
      per-emotion cross-entropy, and the ULGM is applied per emotion on signed targets (+1 present, -1 absent,
      H = 1); the unimodal heads are trained with a soft two-way cross-entropy towards the generated label
      ((y_s + 1) / 2 = probability of "present"), weighted per sample as in the paper. See the objective.
    * Gradient accumulation (``update_epochs`` = 4 batches of 32 in the authors' code) is replaced by one batch of
      128 per update (recipes), which Adam treats alike up to the order of the label updates.
    * The weight tanh(|y_s - y_m|) is exactly 0 while the unimodal labels still equal y_m (epoch 1), so the
      unimodal heads get no gradient then; ``min_unimodal_weight`` (default 1e-3) keeps a floor so every parameter
      trains from the first step (the contract tests demand it); recipes set 0 to reproduce the paper exactly.
    * The number of the epoch used by the momentum update is each sample's own visit count, kept as a buffer in the
      objective (see :mod:`hrlf.objectives.self_mm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from hrlf.models.layers import ModalityEncoder, shape_prediction, task_outputs
from hrlf.objectives.self_mm import HEADS, SelfMMObjective
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec


@dataclass
class SelfMMCfg:
    # text encoder (stand-in for the fine-tuned BERT)
    d_model: int = 40  # text representation width (HRLF protocol: d = 40; BERT's was 768)
    num_heads: int = 10  # attention heads of the text encoder (HRLF MOSI setting)
    num_layers: int = 3  # Transformer layers of the text encoder (HRLF backbone default)
    ffn_mult: int = 4  # text encoder FFN width as a multiple of d
    dropout: float = 0.1  # text encoder dropout (the code's t_bert_dropout 0.1)
    embed_dropout: float = 0.2  # dropout after the text encoder's conv + positions (HRLF backbone default)
    conv_kernel: int = 3  # temporal convolution kernel of the text encoder
    # audio / vision sub-networks (Self-MM code, MOSI config)
    audio_hidden: int = 32  # audio LSTM hidden size (a_lstm_hidden_size)
    vision_hidden: int = 64  # vision LSTM hidden size (v_lstm_hidden_size)
    audio_out: int = 16  # audio representation width F_a (audio_out)
    vision_out: int = 32  # vision representation width F_v (video_out)
    lstm_dropout: float = 0.0  # dropout on the LSTMs' final states (a/v_lstm_dropout)
    # post-fusion and unimodal heads (Self-MM code, MOSI config)
    fusion_dim: int = 128  # multimodal head width = size of F*_m (post_fusion_dim)
    language_dim: int = 64  # text head width = size of F*_l (post_text_dim)
    audio_dim: int = 16  # audio head width = size of F*_a (post_audio_dim)
    vision_dim: int = 32  # vision head width = size of F*_v (post_video_dim)
    fusion_dropout: float = 0.1  # dropout before the multimodal head (post_fusion_dropout)
    language_dropout: float = 0.0  # dropout before the text head (post_text_dropout)
    audio_dropout: float = 0.1  # dropout before the audio head (post_audio_dropout)
    vision_dropout: float = 0.1  # dropout before the vision head (post_video_dropout)
    # ULGM and loss
    label_bound: float = 3.0  # H: generated regression labels are clipped to [-H, H] (1 for emotion targets)
    exclude_zero: bool = False  # positive centre from labels > 0 (paper's indicator) instead of >= 0 (code)
    min_unimodal_weight: float = 1e-3  # floor of the per-sample weight tanh(|y_s - y_m|); 0 = the paper exactly
    # optimizer groups (Self-MM code, MOSI config); "everything else" uses train.lr / train.weight_decay
    audio_lr: float = 1e-3  # learning rate of the audio sub-network (learning_rate_audio)
    audio_weight_decay: float = 0.01  # weight decay of the audio sub-network (weight_decay_audio)
    vision_lr: float = 1e-4  # learning rate of the vision sub-network (learning_rate_video)
    vision_weight_decay: float = 1e-3  # weight decay of the vision sub-network (weight_decay_video)

    def feature_dims(self) -> dict[str, int]:
        """Sizes of F*_m, F*_l, F*_a, F*_v, the features the label generator stores."""
        return {
            "fusion": self.fusion_dim,
            "language": self.language_dim,
            "audio": self.audio_dim,
            "vision": self.vision_dim,
        }


def front_aligned(x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Gather each sample's real frames to the front (order kept) and zero the rest.

    Args:
        x: (B, T, D) features, already zero at non-present frames.
        valid: (B, T) bool, real frames.

    Returns:
        (B, T, D) front-aligned features and (B,) int64 lengths (at least 1, so a sample without a real frame is one
        zero frame).
    """
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # (B, T) real frames first
    aligned = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))  # (B, T, D)
    lengths = valid.sum(dim=1)  # (B,)
    keep = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)  # (B, T)
    return aligned * keep.unsqueeze(-1).to(x.dtype), lengths.clamp_min(1)


class LSTMSubNet(nn.Module):
    """Self-MM's audio/vision sub-network: LSTM over the real frames -> final hidden state -> dropout -> linear."""

    def __init__(self, *, input_dim: int, hidden: int, out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_dim, hidden, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: Tensor, *, present: Tensor, valid: Tensor) -> Tensor:
        """(B, T, D) features -> (B, out); non-present frames are zero vectors, padding is skipped."""
        x = x * present.unsqueeze(-1).to(x.dtype)  # (B, T, D): missing and padded frames are zero vectors
        x, lengths = front_aligned(x, valid)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)  # h: (1, B, hidden)
        return self.linear(self.dropout(h[-1]))  # (B, hidden) -> (B, out)


class Head(nn.Module):
    """One Self-MM task head: dropout -> Linear + ReLU (the feature F*) -> Linear + ReLU -> Linear (the output)."""

    def __init__(self, *, input_dim: int, width: int, out: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.layer1 = nn.Linear(input_dim, width)
        self.layer2 = nn.Linear(width, width)
        self.layer3 = nn.Linear(width, out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = F.relu(self.layer1(self.dropout(x)))  # (B, in) -> (B, width)
        return feature, self.layer3(F.relu(self.layer2(feature)))  # (B, width) -> (B, out)


class SelfMM(nn.Module):
    """Text encoder, audio/vision LSTM sub-networks, a multimodal head on their concatenation and three unimodal heads.

    Parameter names start with ``text_encoder.``, ``audio_encoder.`` and ``vision_encoder.`` for the sub-networks;
    the objective's optimizer groups select them by these names.
    """

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
        conv_kernel: int = 3,
        audio_hidden: int = 32,
        vision_hidden: int = 64,
        audio_out: int = 16,
        vision_out: int = 32,
        lstm_dropout: float = 0.0,
        fusion_dim: int = 128,
        language_dim: int = 64,
        audio_dim: int = 16,
        vision_dim: int = 32,
        fusion_dropout: float = 0.1,
        language_dropout: float = 0.0,
        audio_dropout: float = 0.1,
        vision_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.task = task
        self.text_encoder = ModalityEncoder(
            input_dim=dims["language"],
            d_model=d_model,
            num_heads=num_heads,
            num_layers=num_layers,
            ffn_mult=ffn_mult,
            dropout=dropout,
            embed_dropout=embed_dropout,
            conv_kernel=conv_kernel,
            mask_padding=True,
        )
        self.audio_encoder = LSTMSubNet(
            input_dim=dims["audio"], hidden=audio_hidden, out=audio_out, dropout=lstm_dropout
        )
        self.vision_encoder = LSTMSubNet(
            input_dim=dims["vision"], hidden=vision_hidden, out=vision_out, dropout=lstm_dropout
        )
        out = task_outputs(task.kind, task.num_targets)
        self.heads = nn.ModuleDict(
            {
                "fusion": Head(
                    input_dim=d_model + audio_out + vision_out, width=fusion_dim, out=out, dropout=fusion_dropout
                ),
                "language": Head(input_dim=d_model, width=language_dim, out=out, dropout=language_dropout),
                "audio": Head(input_dim=audio_out, width=audio_dim, out=out, dropout=audio_dropout),
                "vision": Head(input_dim=vision_out, width=vision_dim, out=out, dropout=vision_dropout),
            }
        )

    def forward(self, batch: Batch) -> ModelOutput:
        represented: dict[Modality, Tensor] = {
            "language": self.text_encoder(
                batch.features["language"], present=batch.present("language"), valid=batch.valid["language"]
            )[0],  # (B, d)
            "audio": self.audio_encoder(
                batch.features["audio"], present=batch.present("audio"), valid=batch.valid["audio"]
            ),  # (B, audio_out)
            "vision": self.vision_encoder(
                batch.features["vision"], present=batch.present("vision"), valid=batch.valid["vision"]
            ),  # (B, vision_out)
        }
        inputs: dict[str, Tensor] = {
            "fusion": torch.cat([represented[m] for m in MODALITIES], dim=-1),
            **represented,
        }  # (B, d + a + v)
        aux: dict[str, Tensor] = {}
        pred = None
        for name in HEADS:
            feature, raw = self.heads[name](inputs[name])
            shaped = shape_prediction(raw, self.task.kind, self.task.num_targets)  # (B,) or (B, K, 2)
            aux[f"feature.{name}"] = feature
            if name == "fusion":
                pred = shaped
            else:
                aux[f"pred.{name}"] = shaped
        assert pred is not None
        return ModelOutput(pred=pred, aux=aux)


def build(cfg: SelfMMCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> SelfMM:
    return SelfMM(
        dims=dims,
        task=task,
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        ffn_mult=cfg.ffn_mult,
        dropout=cfg.dropout,
        embed_dropout=cfg.embed_dropout,
        conv_kernel=cfg.conv_kernel,
        audio_hidden=cfg.audio_hidden,
        vision_hidden=cfg.vision_hidden,
        audio_out=cfg.audio_out,
        vision_out=cfg.vision_out,
        lstm_dropout=cfg.lstm_dropout,
        fusion_dim=cfg.fusion_dim,
        language_dim=cfg.language_dim,
        audio_dim=cfg.audio_dim,
        vision_dim=cfg.vision_dim,
        fusion_dropout=cfg.fusion_dropout,
        language_dropout=cfg.language_dropout,
        audio_dropout=cfg.audio_dropout,
        vision_dropout=cfg.vision_dropout,
    )


def objective(cfg: SelfMMCfg, *, task: TaskSpec) -> SelfMMObjective:
    return SelfMMObjective(
        task=task,
        feature_dims=cfg.feature_dims(),
        label_bound=cfg.label_bound,
        exclude_zero=cfg.exclude_zero,
        min_unimodal_weight=cfg.min_unimodal_weight,
        group_lr={"audio_encoder": cfg.audio_lr, "vision_encoder": cfg.vision_lr},
        group_weight_decay={"audio_encoder": cfg.audio_weight_decay, "vision_encoder": cfg.vision_weight_decay},
    )


register_model(ModelSpec(name="self_mm", config_cls=SelfMMCfg, build=build, objective=objective))
