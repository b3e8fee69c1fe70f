"""``self_mm`` — Self-MM: self-supervised multi-task learning with automatically generated unimodal labels.

Paper: Wenmeng Yu, Hua Xu, Ziqi Yuan, Jiele Wu, *Learning Modality-Specific Representations with Self-Supervised
Multi-Task Learning for Multimodal Sentiment Analysis*, AAAI 2021, arXiv 2102.04830 (code: thuiar/Self-MM).

What is implemented (paper section -> code):
    * Multimodal task (Fig. 1): unimodal representations F_l, F_a, F_v -> concatenation -> dropout -> a 3-layer MLP
      head -> the multimodal prediction y^_m (``pred``); the output of its first (ReLU) layer is the fusion feature
      F*_m that the label generator uses (``SelfMMOutput.features["fusion"]``).
    * Unimodal tasks: one 3-layer MLP head per modality on F_s -> y^_s (``SelfMMOutput.unimodal[<modality>]``);
      the output of its first layer is F*_s (``SelfMMOutput.features[<modality>]``). The multimodal head does not
      see these heads.
    * Audio and vision sub-networks ("sLSTM"): a single-layer LSTM over the real frames, its final hidden state,
      dropout and a linear layer (``LSTMSubNet``), as in the paper and its code.
    * The Unimodal Label Generation Module (ULGM: class centres, relative distances, label generation, momentum
      update from epoch 2) and the weighted L1 multi-task loss are the training system (:class:`SelfMMObjective`),
      because they are training-time state (per-sample labels and features), not part of the network.
    * Adam with parameter groups by name (audio sub-network, vision sub-network, everything else), each with its own
      learning rate and weight decay, as in the authors' configs (:meth:`SelfMMObjective.optimizers`).

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
      ((y_s + 1) / 2 = probability of "present"), weighted per sample as in the paper (below).
    * Gradient accumulation (``update_epochs`` = 4 batches of 32 in the authors' code) is replaced by one batch of
      128 per update (recipes), which Adam treats alike up to the order of the label updates.
    * The weight tanh(|y_s - y_m|) is exactly 0 while the unimodal labels still equal y_m (epoch 1), so the
      unimodal heads get no gradient then; ``min_unimodal_weight`` (default 1e-3) keeps a floor so every parameter
      trains from the first step (the contract tests demand it); recipes set 0 to reproduce the paper exactly.
    * The number of the epoch used by the momentum update is each sample's own visit count, kept as a buffer in the
      training system (below).

ULGM, per training sample j and head i in {m (fusion), l, a, v}, all non-parametric:
    * class centres over the stored features of every training sample seen so far (F*_i, the first layer of each
      head), split by that head's current labels: C^p_i = mean{F*_ij : y_ij > 0 (or >= 0)}, C^n_i = mean{F*_ij :
      y_ij < 0};
    * relative distance of the current feature: delta_i = (d^n_i - d^p_i) / (d^p_i + eps), with d the L2 distance
      to the centre (the authors' code; the paper's scaling of the distance cancels in the ratio);
    * generated label for s in {l, a, v}: alpha = delta_s / (delta_m + eps),
      y^_s = 1/2 * alpha * y_m + 1/2 * (y_m + delta_s - delta_m), clipped to [-H, H];
    * momentum update from the second epoch on, n = the epoch: y_s <- (n - 1) / (n + 1) * y_s + 2 / (n + 1) * y^_s;
      unimodal labels start equal to y_m.
Loss: L = |y^_m - y_m| + sum_s w_s |y^_s - y_s| (batch means), w_s = tanh(|y_s - y_m|) per sample.

State and the epoch counter:
    The per-sample labels, stored features and visit counts are buffers indexed by ``batch.index`` (a sample's
    position in the training split), so they are saved with the training system and restored on resume. They grow
    on demand (the system is built before the data size is known) and are resized to the saved shapes when loaded.
    The epoch n of the momentum update is the sample's own visit count ``seen[j] + 1``: the trainer shows every
    training sample exactly once per epoch, so this equals the epoch without knowing the number of batches per
    epoch or detecting epoch starts, and it survives resume. (With a sampler that skips samples, e.g. drop_last,
    a skipped sample's count would lag the epoch by the number of skips.)

Order within a step, as in the authors' code: the loss uses the labels as they were before this batch; after the
update the batch's labels are regenerated from the centres of the stored state (which does not yet hold this batch's
new features), then the batch's features are stored. So the loss of epoch n sees the labels made in epoch n - 1, and
generated labels first enter the loss in epoch 3 (with a zero weight floor, the unimodal terms are 0 before).
Centres of a class with no member are undefined; labels that would depend on them are left unchanged.

Emotions (IEMOCAP, not in the paper) are handled per emotion with signed targets y_m = +1 (present) / -1 (absent)
and H = 1: the centres, distances and labels carry one column per emotion; the multimodal loss is the per-emotion
cross-entropy and each unimodal loss a soft two-way cross-entropy towards p = (y_s + 1) / 2, weighted by
tanh(|y_s - y_m|).

Sections: config (:class:`SelfMMCfg`) - network (:class:`SelfMM`, exactly what ``model.safetensors`` holds) -
training system (:class:`SelfMMObjective`: ULGM state and the multi-task loss) - registration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from hrlf.engine.system import TrainingSystem, adam, regression_or_task_loss
from hrlf.models.layers import (
    ModalityEncoder,
    check_counts,
    check_dropouts,
    check_heads,
    check_odd_kernel,
    front_aligned,
    shape_prediction,
    task_outputs,
)
from hrlf.models.text_encoder import parameter_groups
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.config import TrainCfg

#: the four tasks: the multimodal one first, then the unimodal ones (named modalities)
HEADS: tuple[str, ...] = ("fusion", "language", "audio", "vision")
UNIMODAL: tuple[Modality, ...] = MODALITIES
EPS = 1e-8  # the authors' MIN


# ----------------------------------------------------------------------------------------------------- config


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

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_heads(self.d_model, self.num_heads)
        check_counts(num_layers=self.num_layers, ffn_mult=self.ffn_mult)
        check_dropouts(dropout=self.dropout, embed_dropout=self.embed_dropout)
        check_odd_kernel("conv_kernel", self.conv_kernel)
        if not 0.0 <= self.min_unimodal_weight <= 1.0:
            raise ValueError(f"min_unimodal_weight: expected a number in [0, 1], found {self.min_unimodal_weight!r}")

    def feature_dims(self) -> dict[str, int]:
        """Sizes of F*_m, F*_l, F*_a, F*_v, the features the label generator stores."""
        return {
            "fusion": self.fusion_dim,
            "language": self.language_dim,
            "audio": self.audio_dim,
            "vision": self.vision_dim,
        }


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class SelfMMOutput(ModelOutput):
    """Self-MM's output: ``pred`` is the multimodal head's y^_m.

    Attributes:
        features: F* of every head in :data:`HEADS` (the first layer's output, (B, F_i)), which the ULGM stores.
        unimodal: y^_s of every unimodal head, shaped like ``pred``.
    """

    features: dict[str, Tensor] = field(default_factory=dict)
    unimodal: dict[Modality, Tensor] = field(default_factory=dict)


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
    the training system's optimizer groups select them by these names.
    """

    def __init__(self, cfg: SelfMMCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.text_encoder = ModalityEncoder(
            input_dim=dims["language"],
            d_model=cfg.d_model,
            num_heads=cfg.num_heads,
            num_layers=cfg.num_layers,
            ffn_mult=cfg.ffn_mult,
            dropout=cfg.dropout,
            embed_dropout=cfg.embed_dropout,
            conv_kernel=cfg.conv_kernel,
            mask_padding=True,
        )
        self.audio_encoder = LSTMSubNet(
            input_dim=dims["audio"], hidden=cfg.audio_hidden, out=cfg.audio_out, dropout=cfg.lstm_dropout
        )
        self.vision_encoder = LSTMSubNet(
            input_dim=dims["vision"], hidden=cfg.vision_hidden, out=cfg.vision_out, dropout=cfg.lstm_dropout
        )
        out = task_outputs(task.kind, task.num_targets)
        inputs = {"fusion": cfg.d_model + cfg.audio_out + cfg.vision_out, "language": cfg.d_model}
        inputs.update(audio=cfg.audio_out, vision=cfg.vision_out)
        dropouts = {"fusion": cfg.fusion_dropout, "language": cfg.language_dropout}
        dropouts.update(audio=cfg.audio_dropout, vision=cfg.vision_dropout)
        widths = cfg.feature_dims()
        self.heads = nn.ModuleDict(
            {h: Head(input_dim=inputs[h], width=widths[h], out=out, dropout=dropouts[h]) for h in HEADS}
        )

    def forward(self, batch: Batch) -> SelfMMOutput:
        represented: dict[str, Tensor] = {  # per modality (keys are also head names)
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
        features: dict[str, Tensor] = {}
        predictions: dict[str, Tensor] = {}
        for name in HEADS:
            features[name], raw = self.heads[name](inputs[name])
            predictions[name] = shape_prediction(raw, self.task.kind, self.task.num_targets)  # (B,) or (B, K, 2)
        unimodal: dict[Modality, Tensor] = {m: predictions[m] for m in UNIMODAL}
        return SelfMMOutput(pred=predictions["fusion"], features=features, unimodal=unimodal)


# -------------------------------------------------------------------------------------------- training system


def relative_distance(features: Tensor, positive: Tensor, negative: Tensor, *, eps: float = EPS) -> Tensor:
    """delta = (d_neg - d_pos) / (d_pos + eps) with L2 distances.

    Args:
        features: (B, F) current features.
        positive: (K, F) positive class centre per target column.
        negative: (K, F) negative class centre per target column.

    Returns:
        (B, K) relative distances (NaN where a centre is undefined).
    """
    d_pos = torch.linalg.vector_norm(features.unsqueeze(1) - positive.unsqueeze(0), dim=-1)  # (B, K, F) -> (B, K)
    d_neg = torch.linalg.vector_norm(features.unsqueeze(1) - negative.unsqueeze(0), dim=-1)  # (B, K)
    return (d_neg - d_pos) / (d_pos + eps)


def generate_labels(y_m: Tensor, delta_m: Tensor, delta_s: Tensor, *, bound: float, eps: float = EPS) -> Tensor:
    """y^_s = 1/2 * (delta_s / delta_m) * y_m + 1/2 * (y_m + delta_s - delta_m), clipped to [-bound, bound]."""
    alpha = delta_s / (delta_m + eps)
    return (0.5 * alpha * y_m + 0.5 * (y_m + delta_s - delta_m)).clamp(-bound, bound)


def momentum_update(previous: Tensor, generated: Tensor, epoch: Tensor) -> Tensor:
    """y^(n) = (n - 1) / (n + 1) * y^(n-1) + 2 / (n + 1) * y^_n for the epoch n of each row ((B,) or (B, 1))."""
    n = epoch.to(previous.dtype).reshape(-1, *([1] * (previous.dim() - 1)))  # (B,) -> (B, 1, ...)
    return (n - 1) / (n + 1) * previous + 2 / (n + 1) * generated


def class_centres(features: Tensor, labels: Tensor, *, exclude_zero: bool) -> tuple[Tensor, Tensor]:
    """Positive and negative centres per target column.

    Args:
        features: (N, F) stored features.
        labels: (N, K) the head's current labels.

    Returns:
        (K, F) positive and (K, F) negative centres; NaN rows for a class without members.
    """
    positive = (labels > 0) if exclude_zero else (labels >= 0)  # (N, K)
    negative = labels < 0

    def mean(mask: Tensor) -> Tensor:
        count = mask.sum(dim=0).to(features.dtype)  # (K,)
        total = mask.to(features.dtype).T @ features  # (K, N) @ (N, F) -> (K, F)
        return total / count.unsqueeze(1)  # NaN (0 / 0) for an empty class

    return mean(positive), mean(negative)


class SelfMMObjective(TrainingSystem):
    """Weighted multi-task loss over the multimodal and three generated unimodal targets, plus the ULGM state.

    The labels are regenerated after every optimizer step (:meth:`after_step`, i.e. :meth:`update`); the loss of
    a step uses the labels as they were before it.
    """

    network_type = SelfMM
    labels: Tensor  # (N, 4, K) buffer: every training sample's labels, in HEADS order
    seen: Tensor  # (N,) buffer: how often each training sample was visited

    def __init__(self, cfg: SelfMMCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.bound = cfg.label_bound if task.kind == "regression" else 1.0
        self.exclude_zero = cfg.exclude_zero
        self.min_unimodal_weight = cfg.min_unimodal_weight
        # learning rate (0 = train.lr) and weight decay per parameter-name prefix, each its own optimizer group
        self.group_lr = {"audio_encoder": cfg.audio_lr, "vision_encoder": cfg.vision_lr}
        self.group_weight_decay = {"audio_encoder": cfg.audio_weight_decay, "vision_encoder": cfg.vision_weight_decay}
        self.columns = task.num_targets  # K: 1 for regression, one per emotion
        # per training sample: labels (N, 4, K) in HEADS order, visits (N,), stored features (N, F_i) per head
        self.register_buffer("labels", torch.zeros(0, len(HEADS), self.columns))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.long))
        for name, width in cfg.feature_dims().items():
            self.register_buffer(f"features_{name}", torch.zeros(0, width))

    # ----------------------------------------------------------------------------------------------- state
    def _state_names(self) -> list[str]:
        return ["labels", "seen", *(f"features_{name}" for name in HEADS)]

    def _ensure_capacity(self, size: int) -> None:
        """Grow every per-sample buffer to at least ``size`` rows (new rows: zeros, never seen)."""
        current = int(self.seen.shape[0])
        if size <= current:
            return
        for name in self._state_names():
            old = getattr(self, name)
            grown = torch.zeros((size, *old.shape[1:]), dtype=old.dtype, device=old.device)
            grown[:current] = old
            setattr(self, name, grown)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the buffers are sized by the data seen so far: take the saved shapes before loading
        for name in self._state_names():
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                old = getattr(self, name)
                setattr(self, name, torch.zeros(saved.shape, dtype=old.dtype, device=old.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def signed_targets(self, label: Tensor) -> Tensor:
        """y_m as (B, K) floats: the score for regression, +1 / -1 for a present / absent emotion."""
        if self.task.kind == "regression":
            return label.float().unsqueeze(1)  # (B,) -> (B, 1)
        return label.float() * 2 - 1  # (B, K)

    def unimodal_targets(self, batch: Batch) -> Tensor:
        """(B, 3, K) current labels y_s of the batch (y_m for a sample not seen yet), in UNIMODAL order."""
        y_m = self.signed_targets(batch.label)
        index = batch.index.to(self.seen.device)
        known = index < self.seen.shape[0]
        stored = torch.zeros(y_m.shape[0], len(UNIMODAL), self.columns, device=y_m.device)
        seen = torch.zeros(y_m.shape[0], dtype=torch.bool, device=y_m.device)
        if bool(known.any()):
            stored[known] = self.labels[index[known], 1:].to(y_m.device)
            seen[known] = self.seen[index[known]].to(y_m.device) > 0
        return torch.where(seen.view(-1, 1, 1), stored, y_m.unsqueeze(1))  # (B, 3, K)

    # ------------------------------------------------------------------------------------------------ loss
    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        assert isinstance(output, SelfMMOutput)
        y_m = self.signed_targets(batch.label)  # (B, K)
        y_s = self.unimodal_targets(batch)  # (B, 3, K)
        fusion = regression_or_task_loss(output.pred, batch.label, self.task, regression="l1")
        losses = {"task": fusion}
        total = fusion
        for i, name in enumerate(UNIMODAL):
            weight = torch.tanh((y_s[:, i] - y_m).abs()).clamp_min(self.min_unimodal_weight)  # (B, K)
            pred = output.unimodal[name]
            if self.task.kind == "regression":
                per_sample = (pred.unsqueeze(1) - y_s[:, i]).abs()  # (B, 1)
            else:
                p_present = (y_s[:, i] + 1) / 2  # (B, K)
                log_p = F.log_softmax(pred, dim=-1)  # (B, K, 2)
                per_sample = -((1 - p_present) * log_p[..., 0] + p_present * log_p[..., 1])  # (B, K)
            losses[f"unimodal_{name}"] = (weight * per_sample).mean()
            total = total + losses[f"unimodal_{name}"]
        losses["loss"] = total
        return losses

    # ------------------------------------------------------------------------------------------------ ULGM
    @torch.no_grad()
    def update(self, output: SelfMMOutput, batch: Batch) -> None:
        """Regenerate the batch's unimodal labels (from its second visit on), then store its features and labels."""
        index = batch.index.to(self.seen.device)
        self._ensure_capacity(int(index.max()) + 1)
        y_m = self.signed_targets(batch.label).to(self.labels.device)  # (B, K)
        epoch = self.seen[index] + 1  # (B,) this visit's epoch number n
        features = {name: output.features[name].detach().to(self.labels.device) for name in HEADS}
        labels = self.labels[index].clone()  # (B, 4, K)
        labels[:, 0] = y_m
        first = epoch == 1
        labels[first, 1:] = y_m[first].unsqueeze(1)  # unimodal labels start at y_m
        later = ~first
        if bool(later.any()):
            stored = self.seen > 0  # (N,) rows that hold features and labels
            deltas = {}
            for h, name in enumerate(HEADS):
                positive, negative = class_centres(
                    getattr(self, f"features_{name}")[stored], self.labels[stored, h], exclude_zero=self.exclude_zero
                )  # (K, F) each
                deltas[name] = relative_distance(features[name][later], positive, negative)  # (B', K)
            for i, name in enumerate(UNIMODAL, start=1):
                generated = generate_labels(y_m[later], deltas["fusion"], deltas[name], bound=self.bound)  # (B', K)
                updated = momentum_update(labels[later, i], generated, epoch[later])
                labels[later, i] = torch.where(torch.isfinite(updated), updated, labels[later, i])
        self.labels[index] = labels
        for name in HEADS:
            getattr(self, f"features_{name}")[index] = features[name]
        self.seen[index] = epoch

    # ------------------------------------------------------------------------------------------- training
    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        """Adam with one group per named sub-network prefix (own lr / weight decay) and one for everything else."""
        groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in self.group_lr}
        other: list[nn.Parameter] = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            prefix = next((p for p in groups if name.startswith(p + ".")), None)
            (groups[prefix] if prefix is not None else other).append(param)
        param_groups: list[dict[str, Any]] = [
            {
                "params": params,
                "lr": self.group_lr[prefix] or cfg.lr,
                "weight_decay": self.group_weight_decay.get(prefix, cfg.weight_decay),
            }
            for prefix, params in groups.items()
            if params
        ]
        param_groups.append({"params": other, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
        # a fine-tuned text encoder inside the network (the text_encoder section) keeps its own learning rate
        param_groups = [
            g
            for group in param_groups
            for g in parameter_groups(group["params"], model, lr=group["lr"], weight_decay=group["weight_decay"])
        ]
        return {"main": adam(param_groups, lr=cfg.lr)}

    def after_step(self, output: ModelOutput, batch: Batch) -> None:
        assert isinstance(output, SelfMMOutput)
        self.update(output, batch)


# ----------------------------------------------------------------------------------------------- registration

register_model(ModelSpec(name="self_mm", config_cls=SelfMMCfg, build=SelfMM, objective=SelfMMObjective))
