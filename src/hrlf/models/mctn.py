"""``mctn`` — Multimodal Cyclic Translation Network (hierarchical, three modalities).

Paper: Hai Pham, Paul Pu Liang, Thomas Manzini, Louis-Philippe Morency, Barnabás Póczos. *Found in Translation:
Learning Robust Joint Representations by Cyclic Translations Between Modalities.* AAAI 2019, arXiv 1812.07809,
DOI 10.1609/aaai.v33i01.33016892. Official code: github.com/hainow/MCTN (Keras; hidden sizes, loss weights and
the recipe below are its ``hierarchical_mctn.yaml``); PyTorch port: thuiar/MMSA (teacher forcing 0.5).

What is implemented (paper concept -> code):
    * Seq2seq 1 translates the source (language) into the first target (vision): a bidirectional RNN encoder
      (directions summed) gives E_{S->T}, the joint representation; an attention decoder produces X^_T .........
      ``MCTN.encoder1`` / ``MCTN.decoder1``
    * Cyclic translation: the same encoder and decoder translate X^_T back into the source, X^_S (the code builds
      the cycle from the same two networks). Both modalities are zero-padded to one width W = max(D_S, D_T) so one
      encoder reads both and one decoder writes both; only the real feature dims enter the losses, and the padded
      dims of X^_T are zeroed before it is re-encoded ......................................  ``MCTN.forward``
    * Hierarchy: seq2seq 2 encodes the joint representation E_{S->T} (no cycle: there is no ground truth for it)
      and translates it into the second target (audio); its encoder states are the final joint representation ...
      ``MCTN.encoder2`` / ``MCTN.decoder2``
    * Prediction: an RNN over the final joint representation, additive attention pooling (tanh score, softmax
      over real steps), a linear output with an L2 penalty on its weight (code: l2 0.01) ........  ``Regressor``
    * Coupled translation-prediction objective: 0.1 MSE(X^_T1, X_T1) + 0.1 MSE(X^_S, X_S) + 0.1 MSE(X^_T2,
      X_T2) + 1.0 L_pred (code: MAE) + 0.01 ||W_out||^2 ............................  ``MCTNObjective``
    * At test time only the source modality is needed: the prediction depends on the language frames alone.

Behaviour under missing data (documented, not a bug): like every model here MCTN sees missing frames as zero
vectors. Its prediction ignores audio and vision entirely, so it is unaffected when they are missing ({l} equals
{l, a, v}); when the language is missing it reads only zero vectors, so its output depends on nothing but the
clip's number of frames ({a}, {v} and {a, v} are at chance level, and all three give the same predictions).
Trained on complete data, as in the paper (the translation targets need the target modalities); with
``missing.enabled=true`` the translation losses count only the target frames present.

Decoder details (the paper is silent; the choices and knobs):
    * LSTM cells (``rnn=lstm``, code) or GRU cells (``rnn=gru``); hidden 32 everywhere (code).
    * Sequences are packed: each sample's real frames are moved to the front (pre- or post-padded files alike) and
      the encoders run on packed sequences, so padding never enters a state; missing frames stay in as zeros.
    * Decoder initial state: tanh(Linear(h_fwd + h_bwd)) of the encoder's last layer (cell state zero); first
      input: a zero frame. Each step attends (Bahdanau additive attention with the previous hidden state, masked
      to the real source steps) over the encoder states, feeds [previous frame; context] to the cell and emits
      Linear([h_t; context]). Decoders run for the target's own number of real frames.
    * Teacher forcing: in training each decoding step feeds the true previous frame with probability
      ``teacher_forcing`` (one coin per step and batch, drawn from torch's seeded global generator; MMSA: 0.5),
      otherwise the decoder's own previous output (gradients flow through it). In evaluation decoders run free
      (own outputs), and their outputs never influence the prediction.

Deviations forced by our setting:
    * GloVe/COVAREP/Facet sequences of up to 50 aligned steps (the code used 20-step CMU-MOSI sequences with the
      same kinds of features); no word embedding layer (features are given).
    * Emotions (IEMOCAP, not in the paper): the output layer gives 2 logits per emotion, trained with
      cross-entropy.
    * The code's prediction loss is MAE; ``prediction_loss=mse`` switches to HRLF's MSE.
    * Translation MSE averages over the target's real (present) frames and real feature dims; the code (fixed-length
      sequences) averages over every position.

Sections: config (:class:`MCTNCfg`) - network (:class:`MCTN`, exactly what ``model.safetensors`` holds) - training
system (:class:`MCTNObjective`) - registration.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hrlf.engine.system import TrainingSystem, regression_or_task_loss
from hrlf.models.layers import check_choices, check_counts, check_dropouts, shape_prediction, task_outputs
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

# ----------------------------------------------------------------------------------------------------- config


@dataclass
class MCTNCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "rnn": ("lstm", "gru"),
        "source": MODALITIES,
        "target1": MODALITIES,
        "target2": MODALITIES,
        "prediction_loss": ("l1", "mse"),
    }

    d_model: int = 32  # hidden size of encoders, decoders and attention (code: 32)
    num_layers: int = 1  # layers of each encoder RNN (code: depth 1)
    rnn: str = "lstm"  # recurrent cell: lstm (code) | gru
    bidirectional: bool = True  # bidirectional encoders, directions summed (code)
    dropout: float = 0.0  # dropout between stacked encoder layers and on the joint representations (code: 0.0)
    regressor_hidden: int = 32  # hidden size of the regressor RNN (code: reg_hidden_dim 32)
    teacher_forcing: float = 0.5  # training probability of feeding the true previous frame (MMSA port: 0.5)
    cycle: bool = True  # back-translation target1 -> source with the same seq2seq (code: is_cycled)
    source: str = "language"  # the only modality the prediction reads (paper: language)
    target1: str = "vision"  # first translation target, with the cycle (paper's hierarchy: language -> vision)
    target2: str = "audio"  # second target, translated from the joint representation
    # objective (code values)
    weight_translation: float = 0.1  # weight of MSE(X^_target1, X_target1)
    weight_cycle: float = 0.1  # weight of MSE(X^_source, X_source) after the back-translation
    weight_translation2: float = 0.1  # weight of MSE(X^_target2, X_target2)
    weight_prediction: float = 1.0  # weight of the prediction loss
    prediction_loss: str = "l1"  # regression loss: l1 (code: mae) | mse (HRLF); emotions always use CE
    l2_factor: float = 0.01  # L2 penalty on the regressor's output weight (code: l2_factor 0.01)

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_counts(num_layers=self.num_layers)
        check_dropouts(dropout=self.dropout)
        chosen = (self.source, self.target1, self.target2)
        if len(set(chosen)) != 3:
            raise ValueError(
                f"target1: expected source, target1 and target2 three different modalities, found {chosen}"
            )
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing: expected a probability in [0, 1], found {self.teacher_forcing!r}")


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class MCTNOutput(ModelOutput):
    """MCTN's output: the prediction (from the source alone) and what the translation losses compare.

    Attributes:
        truth: per modality its real frames moved to the front, (B, L_m, D_m), non-present frames zero.
        frames: per modality (B, L_m) bool, the frames of ``truth`` that were present (the losses count them).
        translation: the decoded target1 (from the source) and target2 (from the joint representation).
        cycle: the source decoded back from the translated target1 (None without the cycle).
    """

    truth: dict[Modality, Tensor] = field(default_factory=dict)
    frames: dict[Modality, Tensor] = field(default_factory=dict)
    translation: dict[Modality, Tensor] = field(default_factory=dict)
    cycle: Tensor | None = None


def compact(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's kept frames to the front, in order.

    Args:
        x: (B, T, D) features.
        keep: (B, T) bool, the frames to keep (padding = False).

    Returns:
        (B, L, D) with L the longest row (at least 1) and zeros after each row's frames, and (B,) lengths.
    """
    lengths = keep.sum(dim=1)  # (B,)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # (B, T) kept frames first
    longest = max(int(lengths.max()) if lengths.numel() else 0, 1)
    order = order[:, :longest]  # (B, L)
    gathered = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, T, D) -> (B, L, D)
    inside = torch.arange(longest, device=x.device) < lengths.unsqueeze(1)  # (B, L)
    return gathered * inside.unsqueeze(-1).to(x.dtype), lengths


def step_mask(lengths: Tensor, length: int) -> Tensor:
    """(B,) lengths -> (B, length) bool, True at the first ``lengths`` steps."""
    return torch.arange(length, device=lengths.device) < lengths.unsqueeze(1)


class SequenceEncoder(nn.Module):
    """Packed (bi)directional RNN; returns the per-step states (directions summed) and the decoder's initial state."""

    def __init__(
        self, *, input_dim: int, hidden: int, num_layers: int, rnn: str, bidirectional: bool, dropout: float
    ) -> None:
        super().__init__()
        cell = nn.LSTM if rnn == "lstm" else nn.GRU
        self.rnn = cell(
            input_dim,
            hidden,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.hidden = hidden
        self.init = nn.Linear(hidden, hidden)  # decoder initial state from the final states
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, L, D) front-aligned with (B,) lengths -> states (B, L, d) and initial decoder state (B, d)."""
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, d)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, L, directions * d)
        states = out.view(*out.shape[:2], self.directions, self.hidden).sum(dim=2)  # (B, L, dirs, d) -> (B, L, d)
        final = h_n[-self.directions :].sum(dim=0)  # last layer, directions summed: (B, d)
        return self.dropout(states), torch.tanh(self.init(final))


class AttentionDecoder(nn.Module):
    """Bahdanau-attention RNN decoder that writes one frame per step."""

    def __init__(self, *, output_dim: int, hidden: int, rnn: str) -> None:
        super().__init__()
        self.rnn = rnn
        cell = nn.LSTMCell if rnn == "lstm" else nn.GRUCell
        self.cell = cell(output_dim + hidden, hidden)
        self.attn_state = nn.Linear(hidden, hidden, bias=False)
        self.attn_memory = nn.Linear(hidden, hidden)
        self.attn_score = nn.Linear(hidden, 1, bias=False)
        self.out = nn.Linear(2 * hidden, output_dim)
        self.output_dim = output_dim

    def forward(
        self,
        memory: Tensor,
        memory_lengths: Tensor,
        init: Tensor,
        *,
        steps: int,
        truth: Tensor | None,
        teacher_forcing: float,
    ) -> Tensor:
        """Decode ``steps`` frames.

        Args:
            memory: (B, L, d) encoder states, front-aligned.
            memory_lengths: (B,) real encoder steps (attention is masked to them).
            init: (B, d) initial hidden state.
            steps: number of frames to write.
            truth: (B, steps, D_out) true frames for teacher forcing, or None (free running).
            teacher_forcing: probability per step of feeding the true previous frame (training only).

        Returns:
            (B, steps, D_out) decoded frames.
        """
        batch = memory.shape[0]
        keys = self.attn_memory(memory)  # (B, L, d), computed once
        blocked = ~step_mask(memory_lengths.clamp_min(1), memory.shape[1])  # (B, L)
        h = init
        c = torch.zeros_like(init)
        frame = memory.new_zeros(batch, self.output_dim)  # start frame
        outputs = []
        for t in range(steps):
            energy = self.attn_score(torch.tanh(keys + self.attn_state(h).unsqueeze(1))).squeeze(-1)  # (B, L)
            weights = torch.softmax(energy.masked_fill(blocked, float("-inf")), dim=1)  # (B, L)
            context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # (B, 1, L) x (B, L, d) -> (B, d)
            step_in = torch.cat([frame, context], dim=-1)  # (B, D_out + d)
            if self.rnn == "lstm":
                h, c = self.cell(step_in, (h, c))
            else:
                h = self.cell(step_in, h)
            predicted = self.out(torch.cat([h, context], dim=-1))  # (B, 2d) -> (B, D_out)
            outputs.append(predicted)
            use_truth = truth is not None and teacher_forcing > 0 and float(torch.rand(())) < teacher_forcing
            frame = truth[:, t] if use_truth and truth is not None else predicted
        return torch.stack(outputs, dim=1)  # (B, steps, D_out)


class Regressor(nn.Module):
    """The code's prediction head: RNN over the joint representation, tanh-scored attention pooling, linear out."""

    def __init__(self, *, input_dim: int, hidden: int, out: int, rnn: str) -> None:
        super().__init__()
        cell = nn.LSTM if rnn == "lstm" else nn.GRU
        self.rnn = cell(input_dim, hidden, batch_first=True)
        self.score = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])  # (B, L, h)
        score = torch.tanh(self.score(h)).squeeze(-1)  # (B, L)
        score = score.masked_fill(~step_mask(lengths.clamp_min(1), x.shape[1]), float("-inf"))
        pooled = torch.bmm(torch.softmax(score, dim=1).unsqueeze(1), h).squeeze(1)  # (B, 1, L) x (B, L, h) -> (B, h)
        return self.out(pooled)  # (B, out)


class MCTN(nn.Module):
    """Hierarchical MCTN: source -> target1 (with the cycle back), joint -> target2, regressor on the joint."""

    def __init__(self, cfg: MCTNCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.dims = dict(dims)
        self.source: Modality = cfg.source  # type: ignore[assignment]
        self.target1: Modality = cfg.target1  # type: ignore[assignment]
        self.target2: Modality = cfg.target2  # type: ignore[assignment]
        self.teacher_forcing = cfg.teacher_forcing
        self.cycle = cfg.cycle
        self.width = max(dims[self.source], dims[self.target1])  # common width of the shared (cyclic) seq2seq
        d, rnn = cfg.d_model, cfg.rnn
        encoder = functools.partial(
            SequenceEncoder, hidden=d, num_layers=cfg.num_layers, rnn=rnn, bidirectional=cfg.bidirectional
        )
        self.encoder1 = encoder(input_dim=self.width, dropout=cfg.dropout)
        self.decoder1 = AttentionDecoder(output_dim=self.width, hidden=d, rnn=rnn)
        self.encoder2 = encoder(input_dim=d, dropout=cfg.dropout)
        self.decoder2 = AttentionDecoder(output_dim=dims[self.target2], hidden=d, rnn=rnn)
        self.regressor = Regressor(
            input_dim=d, hidden=cfg.regressor_hidden, out=task_outputs(task.kind, task.num_targets), rnn=rnn
        )

    def _widen(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, self.width - x.shape[-1]))  # (B, L, D) -> (B, L, W) zero feature dims

    def forward(self, batch: Batch) -> MCTNOutput:
        seqs: dict[Modality, Tensor] = {}
        lengths: dict[Modality, Tensor] = {}
        frames: dict[Modality, Tensor] = {}
        for m in MODALITIES:
            x = batch.features[m] * batch.present(m).unsqueeze(-1).to(batch.features[m].dtype)  # zero non-present
            seqs[m], lengths[m] = compact(x, batch.valid[m])  # (B, L_m, D_m), (B,)
            present, _ = compact(batch.present(m).unsqueeze(-1).to(x.dtype), batch.valid[m])  # (B, L_m, 1)
            frames[m] = present.squeeze(-1) > 0.5  # (B, L_m) frames the translation losses count
        translation: dict[Modality, Tensor] = {}
        cycle = None
        forcing = self.teacher_forcing if self.training else 0.0
        src, tgt1, tgt2 = self.source, self.target1, self.target2
        # seq2seq 1: source -> target1; its encoder states are the joint representation E_{S->T}
        joint1, init1 = self.encoder1(self._widen(seqs[src]), lengths[src])  # (B, L_s, d), (B, d)
        steps1 = seqs[tgt1].shape[1]
        decoded1 = self.decoder1(
            joint1, lengths[src], init1, steps=steps1, truth=self._widen(seqs[tgt1]), teacher_forcing=forcing
        )  # (B, L_t1, W)
        translation[tgt1] = decoded1[..., : self.dims[tgt1]]  # (B, L_t1, D_t1)
        if self.cycle:  # the same seq2seq translates the translation back into the source
            reread = self._widen(translation[tgt1])  # padded dims zeroed, as a real target1 input
            back, init_back = self.encoder1(reread, lengths[tgt1])  # (B, L_t1, d)
            decoded_back = self.decoder1(
                back,
                lengths[tgt1],
                init_back,
                steps=seqs[src].shape[1],
                truth=self._widen(seqs[src]),
                teacher_forcing=forcing,
            )  # (B, L_s, W)
            cycle = decoded_back[..., : self.dims[src]]  # (B, L_s, D_s)
        # seq2seq 2: joint representation -> target2; its encoder states are the final joint representation
        joint2, init2 = self.encoder2(joint1, lengths[src])  # (B, L_s, d)
        translation[tgt2] = self.decoder2(
            joint2, lengths[src], init2, steps=seqs[tgt2].shape[1], truth=seqs[tgt2], teacher_forcing=forcing
        )  # (B, L_t2, D_t2)
        raw = self.regressor(joint2, lengths[src])  # (B, out)
        pred = shape_prediction(raw, self.task.kind, self.task.num_targets)
        return MCTNOutput(pred=pred, truth=seqs, frames=frames, translation=translation, cycle=cycle)


# -------------------------------------------------------------------------------------------- training system


def translation_loss(pred: Tensor, truth: Tensor, frames: Tensor) -> Tensor:
    """MSE over the counted frames (B, L) and every feature dim of (B, L, D) sequences; 0 when none counts."""
    weight = frames.unsqueeze(-1).to(pred.dtype)  # (B, L, 1)
    squared = (pred - truth).pow(2) * weight  # (B, L, D)
    return squared.sum() / (weight.sum() * pred.shape[-1]).clamp_min(1.0)


class MCTNObjective(TrainingSystem):
    """``w_t MSE(X^_T1, X_T1) + w_c MSE(X^_S, X_S) + w_t2 MSE(X^_T2, X_T2) + w_p L_pred + l2 ||W_out||^2``, every
    term logged (weights from the official Keras code)."""

    network_type = MCTN

    def __init__(self, cfg: MCTNCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.weights = {
            "translation": cfg.weight_translation,
            "cycle": cfg.weight_cycle,
            "translation2": cfg.weight_translation2,
            "task": cfg.weight_prediction,
        }
        self.prediction_loss = cfg.prediction_loss
        self.l2_factor = cfg.l2_factor

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        assert isinstance(output, MCTNOutput)
        net = self.network  # the L2 term reads the regressor's output weight
        assert isinstance(net, MCTN)
        prediction = regression_or_task_loss(output.pred, batch.label, self.task, regression=self.prediction_loss)
        terms: dict[str, Tensor] = {"task": prediction}
        pairs = {"translation": (net.target1, output.translation), "translation2": (net.target2, output.translation)}
        if output.cycle is not None:
            pairs["cycle"] = (net.source, {net.source: output.cycle})
        for name, (m, decoded) in pairs.items():
            terms[name] = translation_loss(decoded[m], output.truth[m], output.frames[m])
        terms["l2"] = self.l2_factor * net.regressor.out.weight.pow(2).sum()
        terms["loss"] = (
            sum((self.weights[k] * terms[k] for k in self.weights if k in terms), torch.zeros(())) + terms["l2"]
        )
        return terms


# ----------------------------------------------------------------------------------------------- registration

register_model(ModelSpec(name="mctn", config_cls=MCTNCfg, build=MCTN, objective=MCTNObjective))
