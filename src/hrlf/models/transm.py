"""``transm`` — TransModality: modality translation with Transformers as the fusion mechanism.

Paper: Zilong Wang, Zhaohong Wan, Xiaojun Wan. *TransModality: An End2End Fusion Method with Transformer for
Multimodal Sentiment Analysis.* The Web Conference (WWW) 2020, pp. 2514-2520, DOI 10.1145/3366423.3380000,
arXiv 2009.02902. No public code; this is a reconstruction from the paper (see ``field_conventions.md`` §7.5).

What is implemented (paper concept -> code):
    * Modality fusion cell (one per modality pair, run in parallel so that the text-acoustic and the text-visual
      fusions do not interfere) ........................................................  ModalityFusionCell
    * Forward translation source -> target: a Transformer encoder over the source modality and a Transformer
      decoder that writes the target modality's sequence from the encoder's output ...  forward_encoder/_decoder
    * Backward translation target -> source: a second encoder/decoder pair in the opposite direction
      (its input is the real target modality, not the forward translation) .........  backward_encoder/_decoder
    * Prediction from the fused translation representations: the pooled outputs of the four encoders
      (text->audio, audio->text, text->vision, vision->text) are concatenated (4d) and fed to an MLP
      classifier/regressor .............................................................  TransMNet.head
    * Loss = prediction loss + forward translation loss + backward translation loss .......  TransMObjective
      ``L = L_task + lambda_forward * mean_cells L_forward + lambda_backward * mean_cells L_backward``, each
      translation loss the mean squared (or absolute) error per feature between a decoder's output and the target
      modality's sequence, over the target's real frames.

Deviations forced by our setting, and choices where the paper is silent (all knobs of :class:`TransMCfg`):
    * Inputs are word-aligned frame sequences with GloVe/COVAREP/Facet features (the paper translates between
      sequences of utterance-level features of one video); one prediction per sequence, pooled over time
      (``pool=mean``: masked mean over real frames; ``last``: last real frame, HRLF's convention).
    * Every encoder is the shared HRLF encoder (Conv1d_k=3 + sinusoidal positions + pre-norm Transformer, d = 40,
      HRLF protocol) instead of the paper's embedding layer; 3 layers per encoder and per decoder
      (``num_layers``, ``decoder_layers``); heads as in HRLF's protocol (MOSI 10, MOSEI 8, IEMOCAP 10).
    * Decoder input (``decoder_input``): ``shifted_target`` (default) is the standard Transformer training of
      machine translation, the target sequence shifted right by one frame with a causal mask (teacher
      forcing); ``positions`` decodes all frames in parallel from positional queries. The decoder only serves
      the translation losses: predictions never depend on it, so no target is needed at inference, and in eval
      mode the decoders are skipped unless ``eval_translations`` (``aux`` then holds no ``translation.*``).
    * Translation distance (``translation_loss``): mean squared error per feature over the target's real frames
      (the paper does not pin the distance down); weights ``lambda_forward``, ``lambda_backward`` = 1.
    * Training-time missingness. The paper trains on complete data; HRLF lists TransM among the missing-modality
      joint-learning methods and re-trains every baseline "with our experimental paradigms". We therefore train
      with HRLF's Modality Stochastic Missing (the configured ``missing`` section; no protocol of its own) and,
      as in MCTN-style joint translation learning, the translations aim at the *clean* target sequences
      (``translation_target=clean``), so the encoders learn to carry the missing modality's information;
      ``input`` aims at the corrupted input and counts only its present frames.
    * The source modality is language in both cells, as in the paper (``source``).

Sections: config (:class:`TransMCfg`) - network (:class:`TransMNet`, exactly what ``model.safetensors`` holds) -
training system (:class:`TransMObjective`) - registration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from hrlf.engine.system import TrainingSystem, task_loss
from hrlf.models.layers import (
    DecoderLayer,
    DecoderStack,
    ModalityEncoder,
    SinusoidalPositions,
    check_choices,
    check_dropouts,
    check_encoder_settings,
    encoder_settings,
    kept_span,
    masked_mean,
    mlp,
    shape_prediction,
    task_outputs,
)
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

Direction = Literal["forward", "backward"]
DIRECTIONS: tuple[Direction, ...] = ("forward", "backward")

# ----------------------------------------------------------------------------------------------------- config


@dataclass
class TransMCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "source": MODALITIES,
        "pool": ("mean", "last"),
        "decoder_input": ("shifted_target", "positions"),
        "translation_loss": ("mse", "l1"),
        "translation_target": ("clean", "input"),
    }

    d_model: int = 40  # embedding size d (HRLF protocol: 40 on all datasets)
    num_heads: int = 10  # attention heads (HRLF protocol: MOSI 10, MOSEI 8, IEMOCAP 10)
    num_layers: int = 3  # Transformer layers per encoder (HRLF backbone default) [choice]
    decoder_layers: int = 0  # Transformer layers per decoder; 0 = num_layers [choice]
    ffn_mult: int = 4  # FFN width as a multiple of d
    dropout: float = 0.1  # attention / residual / FFN dropout
    embed_dropout: float = 0.2  # dropout after conv + positions
    head_dropout: float = 0.1  # dropout in the prediction MLP
    head_hidden: int = 0  # hidden width of the prediction MLP; 0 = d_model
    conv_kernel: int = 3  # temporal convolution kernel of the encoders (HRLF backbone)
    mask_padding: bool = True  # keep padded frames out of attention
    source: str = "language"  # source modality of both fusion cells (paper: text)
    pool: str = "mean"  # sequence -> vector: mean over real frames | last real frame [choice]
    decoder_input: str = "shifted_target"  # teacher forcing with the shifted target | positional queries
    translation_loss: str = "mse"  # distance between translation and target: mse | l1 [choice]
    translation_target: str = "clean"  # translate into the clean target | into the (corrupted) input
    lambda_forward: float = 1.0  # weight of the forward (source -> target) translation losses
    lambda_backward: float = 1.0  # weight of the backward (target -> source) translation losses
    eval_translations: bool = False  # also run the decoders in eval mode (predictions never use them)

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_encoder_settings(self)
        check_dropouts(head_dropout=self.head_dropout)


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class TransMOutput(ModelOutput):
    """TransModality's output.

    Attributes:
        representations: per (source, target) translation the pooled encoder output E (B, d), the four parts of
            ``fused``, in cell order (source -> audio, audio -> source, source -> vision, vision -> source).
        translations: per (direction, source, target) the decoded target sequence (B, T_tgt, D_tgt) at the
            batch's full length; empty in eval mode unless ``eval_translations``.
        fused: (B, 4d) the concatenated representations the prediction MLP reads.
    """

    representations: dict[tuple[Modality, Modality], Tensor] = field(default_factory=dict)
    translations: dict[tuple[Direction, Modality, Modality], Tensor] = field(default_factory=dict)
    fused: Tensor | None = None


class TranslationDecoder(nn.Module):
    """A Transformer decoder that writes a target modality's sequence from an encoded source sequence."""

    def __init__(
        self,
        *,
        output_dim: int,
        d_model: int,
        num_heads: int,
        num_layers: int,
        ffn_mult: int,
        dropout: float,
        decoder_input: str,
    ) -> None:
        super().__init__()
        if decoder_input not in ("shifted_target", "positions"):
            raise ValueError(f"decoder_input must be shifted_target or positions, got {decoder_input!r}")
        self.decoder_input = decoder_input
        self.positions = SinusoidalPositions(d_model)
        if decoder_input == "shifted_target":
            self.embed = nn.Linear(output_dim, d_model)  # previous target frame -> d
        else:
            self.query = nn.Parameter(torch.zeros(d_model))  # one learned query, told apart by its position
        layer = DecoderLayer(d_model, num_heads, dim_feedforward=ffn_mult * d_model, dropout=dropout)
        self.decoder = DecoderStack(layer, num_layers, d_model=d_model)  # nn.TransformerDecoder's function
        self.out = nn.Linear(d_model, output_dim)

    def self_attention_mask(self, valid: Tensor) -> Tensor:
        """(B, T, T) bool, True = blocked: padding keys (and future frames under teacher forcing).

        Every query may attend to itself, so no row is fully blocked (a fully blocked row gives NaN).
        """
        length = valid.shape[1]
        keys = valid | ~valid.any(dim=1, keepdim=True)  # (B, T): a row without real frames attends everywhere
        allowed = keys[:, None, :].expand(-1, length, -1)  # (B, T, T)
        eye = torch.eye(length, dtype=torch.bool, device=valid.device)  # (T, T)
        if self.decoder_input == "shifted_target":
            allowed = allowed & torch.ones_like(eye).tril()  # causal: frame t sees frames <= t
        allowed = allowed | eye
        return ~allowed  # (B, T, T), one mask for every head

    def forward(
        self, memory: Tensor, *, memory_valid: Tensor, target: Tensor, target_valid: Tensor, start: int
    ) -> Tensor:
        """Translate.

        Args:
            memory: (B, S, d) encoder output over the source's kept span.
            memory_valid: (B, S) bool, real source frames.
            target: (B, T, D_out) target features over the target's kept span, zero where not present (only
                read under teacher forcing).
            target_valid: (B, T) bool, real target frames.
            start: absolute position of the span's first column.

        Returns:
            (B, T, D_out) the translated sequence.
        """
        batch, length = target_valid.shape
        if self.decoder_input == "shifted_target":
            previous = torch.cat([target.new_zeros(batch, 1, target.shape[-1]), target[:, :-1]], dim=1)  # (B, T, D)
            queries = self.embed(previous)  # (B, T, D) -> (B, T, d)
        else:
            queries = self.query.expand(batch, length, -1)  # (d,) -> (B, T, d)
        queries = queries + self.positions(length, start=start)  # (B, T, d)
        memory_pad = ~memory_valid & memory_valid.any(dim=1, keepdim=True)  # (B, S) True = ignore
        h = self.decoder(
            queries, memory, blocked=self.self_attention_mask(target_valid), memory_padding=memory_pad
        )  # (B, T, d)
        return self.out(h)  # (B, T, d) -> (B, T, D_out)


class ModalityFusionCell(nn.Module):
    """One fusion cell: forward translation source -> target and backward translation target -> source."""

    def __init__(self, cfg: TransMCfg, *, source: Modality, target: Modality, dims: Mapping[Modality, int]) -> None:
        super().__init__()
        self.source, self.target = source, target
        self.mask_padding = cfg.mask_padding

        def encoder(m: Modality) -> ModalityEncoder:
            return ModalityEncoder(input_dim=dims[m], **encoder_settings(cfg))

        def decoder(m: Modality) -> TranslationDecoder:
            return TranslationDecoder(
                output_dim=dims[m],
                d_model=cfg.d_model,
                num_heads=cfg.num_heads,
                num_layers=cfg.decoder_layers or cfg.num_layers,
                ffn_mult=cfg.ffn_mult,
                dropout=cfg.dropout,
                decoder_input=cfg.decoder_input,
            )

        self.forward_encoder = encoder(source)
        self.forward_decoder = decoder(target)
        self.backward_encoder = encoder(target)
        self.backward_decoder = decoder(source)

    def _translate(
        self,
        encoder: ModalityEncoder,
        decoder: TranslationDecoder,
        batch: Batch,
        src: Modality,
        tgt: Modality,
        *,
        translate: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Encode ``src`` and (when ``translate``) translate it into ``tgt``.

        Returns:
            last (B, d), the encoded span (B, S, d), its real-frame mask (B, S), and the translation written back
            to full length (B, T_tgt, D_tgt) (zeros outside the target's kept span), or None.
        """
        last, h = encoder(batch.features[src], present=batch.present(src), valid=batch.valid[src])
        s_start, s_stop = kept_span(batch.valid[src], mask_padding=self.mask_padding)
        memory_valid = batch.valid[src][:, s_start:s_stop]  # (B, S)
        if not translate:
            return last, h, memory_valid, None
        t_start, t_stop = kept_span(batch.valid[tgt], mask_padding=self.mask_padding)
        present = batch.present(tgt)[:, t_start:t_stop]  # (B, T')
        target_in = batch.features[tgt][:, t_start:t_stop] * present.unsqueeze(-1).to(h.dtype)  # (B, T', D)
        span = decoder(
            h,
            memory_valid=memory_valid,
            target=target_in,
            target_valid=batch.valid[tgt][:, t_start:t_stop],
            start=t_start,
        )  # (B, T', D_tgt)
        full = span.new_zeros(batch.features[tgt].shape)  # (B, T_tgt, D_tgt)
        full[:, t_start:t_stop] = span
        return last, h, memory_valid, full

    def forward(
        self, batch: Batch, *, translate: bool = True
    ) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        """Both directions: ``{"forward": ..., "backward": ...}``, each as returned by :meth:`_translate`."""
        fwd = self._translate(
            self.forward_encoder, self.forward_decoder, batch, self.source, self.target, translate=translate
        )
        bwd = self._translate(
            self.backward_encoder, self.backward_decoder, batch, self.target, self.source, translate=translate
        )
        return {"forward": fwd, "backward": bwd}


class TransMNet(nn.Module):
    """Two parallel fusion cells (source-audio, source-vision) and a prediction MLP on their encoders' outputs."""

    def __init__(self, cfg: TransMCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.source: Modality = cfg.source  # type: ignore[assignment]
        self.targets: tuple[Modality, ...] = tuple(m for m in MODALITIES if m != cfg.source)
        self.pool = cfg.pool
        self.eval_translations = cfg.eval_translations
        self.cells = nn.ModuleDict(
            {target: ModalityFusionCell(cfg, source=self.source, target=target, dims=dims) for target in self.targets}
        )
        fused = 2 * len(self.targets) * cfg.d_model  # two encoders per cell
        self.head = mlp(
            [fused, cfg.head_hidden or cfg.d_model, task_outputs(task.kind, task.num_targets)],
            dropout=cfg.head_dropout,
        )

    def forward(self, batch: Batch) -> TransMOutput:
        representations: dict[tuple[Modality, Modality], Tensor] = {}
        translations: dict[tuple[Direction, Modality, Modality], Tensor] = {}
        pooled = []
        # the prediction never reads the decoders: in eval mode they run only when asked (saves ~60 % of the time)
        translate = self.training or self.eval_translations
        for target in self.targets:
            directions = self.cells[target](batch, translate=translate)
            for direction, (src, tgt) in zip(DIRECTIONS, ((self.source, target), (target, self.source)), strict=True):
                last, h, valid, translation = directions[direction]
                rep = masked_mean(h, valid) if self.pool == "mean" else last  # (B, d)
                pooled.append(rep)
                representations[(src, tgt)] = rep
                if translation is not None:
                    translations[(direction, src, tgt)] = translation  # (B, T_tgt, D_tgt)
        fused = torch.cat(pooled, dim=-1)  # 4 x (B, d) -> (B, 4d)
        pred = shape_prediction(self.head(fused), self.task.kind, self.task.num_targets)
        return TransMOutput(pred=pred, representations=representations, translations=translations, fused=fused)


# -------------------------------------------------------------------------------------------- training system


def translation_error(translation: Tensor, target: Tensor, mask: Tensor, *, kind: str) -> Tensor:
    """Mean per-feature error over the frames where ``mask`` is True (0 when there are none).

    Args:
        translation: (B, T, D) decoder output.
        target: (B, T, D) target features.
        mask: (B, T) bool, frames that count.
        kind: ``mse`` (squared error) or ``l1`` (absolute error).
    """
    diff = translation - target  # (B, T, D)
    per_frame = (diff.pow(2) if kind == "mse" else diff.abs()).mean(dim=-1)  # (B, T, D) -> (B, T)
    weights = mask.to(per_frame.dtype)
    return (per_frame * weights).sum() / weights.sum().clamp_min(1.0)


class TransMObjective(TrainingSystem):
    """Prediction loss plus the translation losses of every fusion cell, each term logged."""

    network_type = TransMNet

    def __init__(self, cfg: TransMCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.weights = {"forward": cfg.lambda_forward, "backward": cfg.lambda_backward}
        self.translation_loss = cfg.translation_loss
        self.translation_target = cfg.translation_target

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        """All terms: ``task``, one ``trans.<src>_to_<tgt>`` per translation, ``trans_forward`` and
        ``trans_backward`` (means over the cells), and the weighted total ``loss``.

        ``clean`` holds the translation targets under ``translation_target=clean`` (the samples before the
        training protocol; ``batch`` itself when None).
        """
        del teacher  # unused here; part of the losses() signature every system shares
        assert isinstance(output, TransMOutput)
        clean = batch if clean is None else clean
        terms: dict[str, Tensor] = {"task": task_loss(output.pred, batch.label, self.task)}
        per_direction: dict[Direction, list[Tensor]] = {d: [] for d in DIRECTIONS}
        for (direction, src, tgt), translation in output.translations.items():
            if self.translation_target == "clean":
                # every real frame of the complete sequence: the translation must restore what was removed
                target, mask = clean.features[tgt], clean.valid[tgt]
            else:
                target, mask = batch.features[tgt], batch.present(tgt)
            target = target * mask.unsqueeze(-1).to(target.dtype)  # (B, T, D): zero vectors off the mask
            error = translation_error(translation, target, mask, kind=self.translation_loss)
            terms[f"trans.{src}_to_{tgt}"] = error
            per_direction[direction].append(error)
        total = terms["task"]
        for direction, errors in per_direction.items():
            if errors:
                terms[f"trans_{direction}"] = torch.stack(errors).mean()
                total = total + self.weights[direction] * terms[f"trans_{direction}"]
        terms["loss"] = total
        return terms


# ----------------------------------------------------------------------------------------------- registration

# no train_protocol: TransM trains with HRLF's Modality Stochastic Missing (see the module docstring)
register_model(ModelSpec(name="transm", config_cls=TransMCfg, build=TransMNet, objective=TransMObjective))
