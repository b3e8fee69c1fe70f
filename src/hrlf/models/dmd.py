"""``dmd`` — Decoupled Multimodal Distilling (complete-modality baseline).

Paper: Yong Li, Yuanzhi Wang, Zhen Cui. *Decoupled Multimodal Distilling for Emotion Recognition.* CVPR 2023,
arXiv 2303.13802. Official code: github.com/mdswyz/DMD (the loss weights, priors and recipe below are the code's).

What is implemented (paper concept -> code):
    * Temporal projection: X~_m = Conv1d_k(X_m), no bias, one per modality ............  ``DMD.projection``
    * Feature decoupling: shared modality-irrelevant encoder E^c (1x1 conv, shared by the three modalities) and
      modality-exclusive encoders E^s_m (1x1 conv each): c_m = E^c(X~_m), s_m = E^s_m(X~_m) ......  ``encoder_*``
    * Self-regression: D_m([s_m; c_m]) reconstructs X~_m (L_rec, MSE); the reconstruction is re-encoded,
      s^r_m = E^s_m(D_m(.)), and matched to s_m (L_cyc, MSE) ...................  ``decoder``, DMDObjective
    * Orthogonality between s_m and c_m: cosine-embedding loss with target -1, i.e. max(0, cos(s_m, c_m)) per
      frame (L_ort) ..................................................................  DMDObjective
    * Margin loss on the aligned irrelevant features c^a_m = A_m(c_m): for every anchor, every positive (same label)
      and every negative (other label) in the 3B pooled features, max(0, 0.15 |y_a - y_n| - cos(a, p) + cos(a, n))
      (L_mar) ..............................................................................  ``margin_loss``
    * HomoGD: per-modality residual heads on c_m -> representation + logits; a GD-Unit (graph distillation unit)
      whose 6 directed edges are learned from [W_logit(logit); W_repr(repr)] of both ends, softmax-normalised
      (temperature alpha = 1/8) and added to a fixed prior; L1 logit distillation from the (detached) teacher
      end, weighted by the edge, plus an edge regulariser towards the prior ..........  ``GraphDistillationUnit``
    * HeteroGD: MulT-style cross-modal Transformers on the exclusive features (m <- each other modality), a memory
      self-attention Transformer on their concatenation (2d), last real step -> residual head -> representation +
      logits; a second GD-Unit with L1 logit distillation and a "min-cosine" representation term ....  ``hetero``
    * Fusion: self-attention Transformers on each c_m (last real step), c = [c_l; c_a; c_v] with its own head; the
      code's "gates" sigma(W h) applied to the three hetero states and to c; concatenation (9d) -> residual MLP
      -> the prediction ..................................................................  ``DMD.forward``
    * Total (code): L_task (8 heads: fused, common, 3 homo, 3 hetero) + 0.05 (homo logit + reg) + 0.05 (hetero
      logit + repr + reg) + 0.1 (L_cyc + L_rec + 0.1 (L_mar + L_ort)) ...................  DMDObjective
    * Trained on complete data (the HRLF paper evaluates DMD as a complete-modality method); Adam; gradient values
      clipped to 0.6 (code) before every step (``DMDObjective.clip_gradients``).

Deviations forced by our setting (each a knob where one makes sense):
    * Features instead of fine-tuned BERT: GloVe / COVAREP / Facet projected by the temporal conv like audio and
      vision in the code (``text_dropout`` still applies to the language input).
    * d = 40 (HRLF protocol) instead of the code's 50 (MOSI) / 30 (MOSEI); heads as in HRLF's recipes.
    * The code flattens the (T - k + 1) x d conv output into fixed-length linear layers (HomoGD heads and the
      margin-loss alignment layers), which ties the model to one sequence length and to padding positions. Here the
      conv keeps the length (padding k // 2) and those layers act on the masked mean over real frames (d -> d).
    * Padding is kept out of attention and pooling, and the "last" step is the last real frame (the code assumes
      full-length, post-aligned sequences); missing frames are zero vectors and stay in, like every model here.
      Columns that are padding in every sample are not computed (``real_span``; exact, positions keep their index).
    * Attention is the code's MulT layer written with :func:`~hrlf.models.layers.attention` (separate query and
      key/value projections, same maths).
      A query with no allowed key (e.g. a real frame whose causal window in another modality holds only padding)
      attends to nothing (zero attention output).
    * Batches larger than ``chunk_size`` (evaluation) run in length-sorted chunks, each cut to its own span (exact).
    * Frame-level losses (L_rec, L_cyc, L_ort) average over real frames; the code averages over every position.
      L_ort is the per-frame cosine over channels (the code passes (T, B, d) tensors to CosineEmbeddingLoss).
    * The hetero "min-cosine" representation term weights each sample by its edge; the code multiplies the batch
      mean by the mean edge weight.
    * HomoGD's L1 representation term is computed by the code but left out of its total; it is not computed here.
    * The code's ReduceLROnPlateau (factor 0.5, patience 5 epochs, on the validation loss) is kept
      (``plateau_factor``, ``plateau_patience``; factor 1 switches it off); its gradient accumulation
      (``update_epochs`` = 10 in the code's config) is not: a larger ``train.batch_size`` replaces it if wanted.
    * IEMOCAP (not in the paper): every head outputs 2 logits per emotion with cross-entropy; the GD logit distance
      is L1 between the flattened logits; the margin loss treats two samples as "same label" when all four emotion
      bits agree and uses the Hamming distance in the margin.
    * The code's task loss is L1 on all heads; ``task_loss=mse`` switches to HRLF's MSE.

Sections: config (:class:`DMDCfg`) - network (:class:`DMD`, exactly what ``model.safetensors`` holds) - training
system (:class:`DMDObjective`: the losses and the two GD-Units) - registration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.engine.system import Scheduler, TrainingSystem, regression_or_task_loss
from hrlf.models.layers import (
    Dropout,
    SinusoidalPositions,
    attention,
    check_choices,
    check_counts,
    check_dropouts,
    check_heads,
    expect,
    inverted_dropout,
    last_valid_index,
    masked_mean,
    shape_prediction,
    task_outputs,
)
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

# ----------------------------------------------------------------------------------------------------- config


@dataclass
class DMDCfg:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"task_loss": ("l1", "mse")}

    d_model: int = 40  # feature width d of every modality (HRLF protocol: d = 40; code: 50 MOSI, 30 MOSEI)
    num_heads: int = 10  # attention heads (code: 10 MOSI, 6 MOSEI)
    num_layers: int = 4  # layers of the cross-modal and self-attention Transformers (code: nlevels = 4)
    mem_layers: int = 3  # minimum layers of the hetero memory Transformers (code: max(nlevels, 3))
    kernel_language: int = 5  # temporal conv kernel, language (code: 5 MOSI and MOSEI)
    kernel_audio: int = 5  # temporal conv kernel, audio (code: 5 MOSI, 1 MOSEI)
    kernel_vision: int = 5  # temporal conv kernel, vision (code: 5 MOSI, 3 MOSEI)
    causal: bool = True  # MulT future mask in every Transformer (code: attn_mask = true)
    text_dropout: float = 0.5  # dropout on the language input (code: 0.5 MOSI, 0.3 MOSEI)
    attn_dropout: float = 0.3  # attention dropout of language self/cross attention and the memories (code: 0.3 MOSI)
    attn_dropout_audio: float = 0.2  # attention dropout of audio self-attention and of x <- audio (code: 0.2 MOSI)
    attn_dropout_vision: float = 0.0  # attention dropout of vision self-attention and of x <- vision (code: 0.0)
    relu_dropout: float = 0.0  # dropout inside the Transformer feed-forward (code: 0.0)
    res_dropout: float = 0.0  # dropout on Transformer residual branches (code: 0.0)
    embed_dropout: float = 0.2  # dropout after scaling + positions at Transformer entry (code: 0.2 MOSI, 0.0 MOSEI)
    output_dropout: float = 0.5  # dropout inside every residual head (code: 0.5)
    chunk_size: int = 64  # larger batches run in length-sorted chunks of this many samples (exact; speed only)
    # objective (code values)
    task_loss: str = "l1"  # loss of every regression head: l1 (code) | mse (HRLF); emotions always use CE
    weight_homo: float = 0.05  # weight of HomoGD (logit distillation + edge regulariser)
    weight_hetero: float = 0.05  # weight of HeteroGD (logit + representation distillation + edge regulariser)
    weight_decouple: float = 0.1  # weight of the decoupling block L_cyc + L_rec + inner * (L_mar + L_ort)
    weight_margin_ort: float = 0.1  # inner weight of L_mar + L_ort inside the decoupling block
    margin_scale: float = 0.15  # margin = scale * |y_anchor - y_negative| in L_mar
    gd_size_homo: int = 64  # hidden size of the HomoGD edge network
    gd_size_hetero: int = 32  # hidden size of the HeteroGD edge network
    gd_alpha: float = 0.125  # softmax temperature factor of the edge logits (alpha = 1/8)
    gd_prior_temperature: float = 0.25  # temperature of the softmax that turns the prior logits into the prior
    gd_reg: float = 10.0  # weight of the edge regulariser sum_e (mean_B w_e - prior_e)^2
    gd_weight_logit: float = 1.0  # weight of the logit distance inside a GD-Unit (code: w_losses[0])
    gd_weight_repr: float = 10.0  # weight of the representation distance inside a GD-Unit (code: w_losses[1])
    grad_value_clip: float = 0.6  # clip every gradient value to [-c, c] before the step; 0 = off (code: 0.6)
    plateau_factor: float = 0.5  # ReduceLROnPlateau factor on the validation loss; 1 = constant lr (code: 0.5)
    plateau_patience: int = 5  # epochs without a lower validation loss before the lr is cut (code: 5)

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_choices(self, self.CHOICES)
        check_heads(self.d_model, self.num_heads)
        check_counts(num_layers=self.num_layers)
        check_dropouts(embed_dropout=self.embed_dropout)
        for name, kernel in self.kernels().items():
            if kernel < 1 or kernel % 2 == 0:
                raise ValueError(f"kernel_{name}: expected an odd integer >= 1 (keeps the length), found {kernel!r}")
        factor = self.plateau_factor
        expect(0.0 < factor <= 1.0, "plateau_factor", "a factor in (0, 1] (1 = constant learning rate)", factor)
        expect(self.plateau_patience >= 0, "plateau_patience", "an integer >= 0", self.plateau_patience)

    def kernels(self) -> dict[Modality, int]:
        """The temporal conv kernel per modality."""
        return {"language": self.kernel_language, "audio": self.kernel_audio, "vision": self.kernel_vision}

    def attention_dropouts(self) -> dict[Modality, float]:
        """The attention dropout of each modality's self-attention and of cross-attention over it."""
        return {"language": self.attn_dropout, "audio": self.attn_dropout_audio, "vision": self.attn_dropout_vision}


# ---------------------------------------------------------------------------------------------------- network


#: directed GD edges (student <- teacher) in the code's order for modalities [l, v, a]
GD_EDGES: tuple[tuple[Modality, Modality], ...] = (
    ("language", "vision"),
    ("language", "audio"),
    ("vision", "language"),
    ("vision", "audio"),
    ("audio", "language"),
    ("audio", "vision"),
)
#: prior logits of the edges (softmax at temperature 0.25 gives the prior): language teaches the others (HomoGD);
#: HeteroGD adds vision -> audio (code: softmax([0, 0, 1, 0, 1, 0], 0.25) and softmax([0, 0, 1, 0, 1, 1], 0.25))
HOMO_PRIOR: tuple[float, ...] = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0)
HETERO_PRIOR: tuple[float, ...] = (0.0, 0.0, 1.0, 0.0, 1.0, 1.0)


def attention_bias(query_len: int, key_valid: Tensor, *, causal: bool) -> tuple[Tensor, Tensor]:
    """Additive attention mask (B, 1, Tq, Tk), broadcast over heads (0 = allowed, -1e9 = not), and (B, 1, Tq, 1)
    True where a query has at least one allowed key.

    A query with no allowed key (a padded position, or a real one whose causal window in the other modality holds
    only padding) gets a zero attention output: a large finite value (not -inf) keeps its softmax finite and the
    result is then zeroed, so padding never reaches a real position; allowed keys get exactly their own weights.
    """
    batch, key_len = key_valid.shape
    blocked = ~key_valid.unsqueeze(1).expand(batch, query_len, key_len)  # (B, Tq, Tk)
    if causal:  # MulT's future mask, also for unequal lengths
        future = torch.ones(query_len, key_len, dtype=torch.bool, device=key_valid.device)
        future = torch.triu(future, diagonal=1 + abs(key_len - query_len))  # (Tq, Tk)
        blocked = blocked | future
    bias = torch.zeros(blocked.shape, device=key_valid.device).masked_fill(blocked, -1e9)  # (B, Tq, Tk)
    has_key = ~blocked.all(dim=2)  # (B, Tq)
    return bias.unsqueeze(1), has_key[:, None, :, None]  # (B, 1, Tq, Tk), (B, 1, Tq, 1)


class Attention(nn.Module):
    """Multi-head attention of queries x over keys/values y with an additive mask and attention dropout."""

    def __init__(self, *, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the width ({d_model})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, y: Tensor, *, bias: tuple[Tensor, Tensor]) -> Tensor:
        batch, tq, d = x.shape
        heads = self.num_heads
        q = self.query(x).view(batch, tq, heads, d // heads).transpose(1, 2)  # (B, Tq, d) -> (B, H, Tq, d/H)
        k, v = self.key_value(y).view(batch, y.shape[1], 2, heads, d // heads).permute(2, 0, 3, 1, 4)  # (B, H, Tk, .)
        additive, has_key = bias
        h = attention(q, k, v, mask=additive, dropout=self.dropout if self.training else 0.0)  # (B, H, Tq, d/H)
        h = h * has_key.to(h.dtype)  # no allowed key -> nothing attended
        return self.out(h.transpose(1, 2).reshape(batch, tq, d))  # (B, H, Tq, d/H) -> (B, Tq, d)


@dataclass
class DMDOutput(ModelOutput):
    """DMD's output: the fused prediction and every head and intermediate its losses read.

    Per modality (dicts keyed by modality), sequences at the batch's full length (B, T, .):
        frames: (B, T) bool, the real frames of the sequences below.
        projected: X~_m, the temporal projection (B, T, d).
        recon: D_m([s_m; c_m]), its self-regression (B, T, d).
        exclusive: s_m = E^s_m(X~_m) (B, T, d).
        exclusive_cycle: E^s_m(D_m(.)), the re-encoded reconstruction (B, T, d).
        common: c_m = E^c(X~_m) (B, T, d).
    Per modality, per sample:
        common_aligned: A_m(mean c_m), the margin loss's features (B, d).
        homo_repr, homo_logit: HomoGD head's representation (B, d) and logits (shaped like ``pred``).
        hetero_repr, hetero_logit: HeteroGD head's representation (B, 2d) and logits.
    And ``common_logit``: the head on the fused irrelevant features, shaped like ``pred``.
    """

    frames: dict[Modality, Tensor] = field(default_factory=dict)
    projected: dict[Modality, Tensor] = field(default_factory=dict)
    recon: dict[Modality, Tensor] = field(default_factory=dict)
    exclusive: dict[Modality, Tensor] = field(default_factory=dict)
    exclusive_cycle: dict[Modality, Tensor] = field(default_factory=dict)
    common: dict[Modality, Tensor] = field(default_factory=dict)
    common_aligned: dict[Modality, Tensor] = field(default_factory=dict)
    homo_repr: dict[Modality, Tensor] = field(default_factory=dict)
    homo_logit: dict[Modality, Tensor] = field(default_factory=dict)
    hetero_repr: dict[Modality, Tensor] = field(default_factory=dict)
    hetero_logit: dict[Modality, Tensor] = field(default_factory=dict)
    common_logit: Tensor | None = None


#: the per-frame fields of :class:`DMDOutput` (computed on the batch's real span, padded back to its length)
SEQUENCE_FIELDS = ("frames", "projected", "recon", "exclusive", "exclusive_cycle", "common")
#: its other per-modality fields
SAMPLE_FIELDS = ("common_aligned", "homo_repr", "homo_logit", "hetero_repr", "hetero_logit")


def concatenated(parts: Sequence[DMDOutput], order: Tensor) -> DMDOutput:
    """The outputs of several sample chunks as one, rows taken in ``order`` ((B,) indices into the concatenation)."""
    merged = DMDOutput(pred=torch.cat([p.pred for p in parts])[order])
    for name in SEQUENCE_FIELDS + SAMPLE_FIELDS:
        setattr(merged, name, {m: torch.cat([getattr(p, name)[m] for p in parts])[order] for m in MODALITIES})
    merged.common_logit = torch.cat([p.common_logit for p in parts if p.common_logit is not None])[order]
    return merged


def span_bounds(valid: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T) bool -> first and one-past-last real column per row, (B,) each (0 and T for a row with none)."""
    steps = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)  # (B, T)
    first = torch.where(valid, steps, torch.full_like(steps, valid.shape[1])).amin(dim=1)  # (B,)
    stop = torch.where(valid, steps + 1, torch.zeros_like(steps)).amax(dim=1)  # (B,)
    empty = ~valid.any(dim=1)
    return first.masked_fill(empty, 0), stop.masked_fill(empty, valid.shape[1])


def pad_columns(x: Tensor, *, before: int, after: int) -> Tensor:
    """Zero (False) columns around a (B, T, ...) tensor: (B, before + T + after, ...)."""
    if before == 0 and after == 0:
        return x
    shape = list(x.shape)
    parts = []
    for width in (before, 0, after):
        shape[1] = width
        parts.append(x.new_zeros(shape) if width else None)
    return torch.cat([p for p in (parts[0], x, parts[2]) if p is not None], dim=1)  # (B, T_full, ...)


def real_span(batch: Batch) -> tuple[int, dict[Modality, slice]]:
    """The columns worth computing: from the first to the last column holding a real frame in any modality.

    Columns that are padding in every sample and every modality change nothing (their inputs are zero, like the
    conv's own zero padding, and padding is kept out of attention and pooling), so they are cut; positions keep
    their absolute index. Cutting needs one sequence length for all modalities; otherwise nothing is cut.
    """
    lengths = {batch.valid[m].shape[1] for m in MODALITIES}
    full = {m: slice(0, batch.valid[m].shape[1]) for m in MODALITIES}
    if len(lengths) != 1:
        return 0, full
    used = torch.stack([batch.valid[m].any(dim=0) for m in MODALITIES]).any(dim=0)  # (T,)
    if not bool(used.any()):
        return 0, full
    columns = used.nonzero()
    start, stop = int(columns[0]), int(columns[-1]) + 1
    return start, {m: slice(start, stop) for m in MODALITIES}


class CrossmodalLayer(nn.Module):
    """One pre-norm MulT layer: attention of x over a memory (itself for self-attention) and a ReLU feed-forward."""

    def __init__(
        self, *, d_model: int, num_heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float
    ) -> None:
        super().__init__()
        self.attn = Attention(d_model=d_model, num_heads=num_heads, dropout=attn_dropout)
        self.norm_attn = nn.LayerNorm(d_model)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.ReLU(), Dropout(relu_dropout), nn.Linear(4 * d_model, d_model)
        )
        self.res_dropout = Dropout(res_dropout)

    def forward(self, x: Tensor, memory: Tensor | None, *, bias: tuple[Tensor, Tensor]) -> Tensor:
        q = self.norm_attn(x)  # (B, Tq, d)
        kv = q if memory is None else self.norm_attn(memory)  # (B, Tk, d), MulT normalises both with one norm
        h = self.attn(q, kv, bias=bias)  # (B, Tq, d)
        x = x + self.res_dropout(h)
        return x + self.res_dropout(self.ffn(self.norm_ffn(x)))  # (B, Tq, d)


class CrossmodalTransformer(nn.Module):
    """MulT's Transformer encoder: sqrt(d)-scaled input + sinusoidal positions, pre-norm layers, final norm.

    ``forward(x, memory)`` attends x over ``memory`` (cross-modal) or over itself when ``memory`` is None.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        num_layers: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        causal: bool,
    ) -> None:
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.causal = causal
        self.positions = SinusoidalPositions(d_model)
        self.embed_dropout = Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            CrossmodalLayer(
                d_model=d_model,
                num_heads=num_heads,
                attn_dropout=attn_dropout,
                relu_dropout=relu_dropout,
                res_dropout=res_dropout,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def _embed(self, x: Tensor, start: int) -> Tensor:
        return self.embed_dropout(self.scale * x + self.positions(x.shape[1], start=start))  # (B, T, d)

    def forward(
        self,
        x: Tensor,
        *,
        valid: Tensor,
        memory: Tensor | None = None,
        memory_valid: Tensor | None = None,
        start: int = 0,
    ) -> Tensor:
        """x (B, Tq, d) with ``valid`` (B, Tq); memory (B, Tk, d) with ``memory_valid`` -> (B, Tq, d).

        ``start`` is the absolute index of the first column (the caller may cut columns that are padding in every
        sample; positions keep their absolute index, so the result equals the uncut computation).
        """
        key_valid = valid if memory is None else memory_valid
        assert key_valid is not None
        bias = attention_bias(x.shape[1], key_valid, causal=self.causal)
        h = self._embed(x, start)
        mem = None if memory is None else self._embed(memory, start)
        for layer in self.layers:
            h = layer(h, mem, bias=bias)
        return self.norm(h)


class ResidualHead(nn.Module):
    """DMD's head: r = W1 h, h' = W2 dropout(relu(r)) + h, logits = W_out h' (returns r, h', logits)."""

    def __init__(self, *, width: int, out: int, dropout: float) -> None:
        super().__init__()
        self.proj1 = nn.Linear(width, width)
        self.proj2 = nn.Linear(width, width)
        self.out = nn.Linear(width, out)
        self.dropout = Dropout(dropout)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r = self.proj1(h)  # (B, w)
        refined = self.proj2(self.dropout(F.relu(r))) + h  # (B, w)
        return r, refined, self.out(refined)  # (B, out)


def _total(terms: Iterable[Tensor]) -> Tensor:
    """``sum(terms)`` (0 + t_1 + t_2 + ...), checked to be the tensor it is for at least one term."""
    total = sum(terms)
    assert isinstance(total, Tensor), "no terms to sum"
    return total


class GraphDistillationUnit(nn.Module):
    """GD-Unit: learned, per-sample directed edge weights between the three modalities' (logits, representations).

    e_{k<-j} = W_edge([z_k; z_j]), z = [W_logit(logit); W_repr(repr)]; the six edges are softmax-normalised per
    sample after scaling by ``alpha``. Distillation from teacher j to student k is weighted by e_{k<-j} + prior.
    """

    prior: Tensor  # (E,) buffer: the fixed edge prior

    def __init__(
        self,
        *,
        logit_dim: int,
        repr_dim: int,
        hidden: int,
        prior_logits: tuple[float, ...],
        prior_temperature: float,
        alpha: float,
    ) -> None:
        super().__init__()
        self.w_logit = nn.Linear(logit_dim, hidden)
        self.w_repr = nn.Linear(repr_dim, hidden)
        self.w_edge = nn.Linear(4 * hidden, 1)
        self.alpha = alpha
        prior = torch.softmax(torch.tensor(prior_logits) / prior_temperature, dim=0)  # (E,)
        self.register_buffer("prior", prior, persistent=False)

    def forward(self, logits: Mapping[Modality, Tensor], reprs: Mapping[Modality, Tensor]) -> Tensor:
        """Per-modality (B, C) logits and (B, R) representations -> normalised edges (E, B) in ``GD_EDGES`` order."""
        z = {m: torch.cat([self.w_logit(logits[m]), self.w_repr(reprs[m])], dim=-1) for m in MODALITIES}  # (B, 2h)
        raw = torch.cat([self.w_edge(torch.cat([z[s], z[t]], dim=-1)) for s, t in GD_EDGES], dim=1)  # (B, E)
        return torch.softmax(raw * self.alpha, dim=1).transpose(0, 1)  # (B, E) -> (E, B)


class DMD(nn.Module):
    """Decoupling, HomoGD heads on the irrelevant part, cross-modal HeteroGD heads on the exclusive part, fusion."""

    def __init__(self, cfg: DMDCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.chunk_size = cfg.chunk_size
        kernels = cfg.kernels()
        attn_dropout = cfg.attention_dropouts()
        self.task = task
        self.text_dropout = cfg.text_dropout
        d, out = cfg.d_model, task_outputs(task.kind, task.num_targets)
        self.d_model, self.out_dim = d, out  # read by the objective to size its GD-Units

        def transformer(width: int, layers: int, dropout: float) -> CrossmodalTransformer:
            return CrossmodalTransformer(
                d_model=width,
                num_heads=cfg.num_heads,
                num_layers=layers,
                attn_dropout=dropout,
                relu_dropout=cfg.relu_dropout,
                res_dropout=cfg.res_dropout,
                embed_dropout=cfg.embed_dropout,
                causal=cfg.causal,
            )

        # temporal projection and decoupling (1x1 convs without bias, as in the code)
        self.projection = nn.ModuleDict(
            {m: nn.Conv1d(dims[m], d, kernels[m], padding=kernels[m] // 2, bias=False) for m in MODALITIES}
        )
        self.encoder_common = nn.Conv1d(d, d, 1, bias=False)  # E^c, shared: modality-irrelevant
        self.encoder_exclusive = nn.ModuleDict({m: nn.Conv1d(d, d, 1, bias=False) for m in MODALITIES})  # E^s_m
        self.decoder = nn.ModuleDict({m: nn.Conv1d(2 * d, d, 1, bias=False) for m in MODALITIES})  # D_m
        self.align_common = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})  # for the margin loss
        # HomoGD heads on the (pooled) irrelevant features
        self.homo_heads = nn.ModuleDict(
            {m: ResidualHead(width=d, out=out, dropout=cfg.output_dropout) for m in MODALITIES}
        )
        # fusion of the irrelevant features: self-attention per modality, last real step
        self.common_attention = nn.ModuleDict({m: transformer(d, cfg.num_layers, attn_dropout[m]) for m in MODALITIES})
        self.common_head = ResidualHead(width=3 * d, out=out, dropout=cfg.output_dropout)
        # HeteroGD: m <- each other modality (cross-modal), then a memory Transformer on the 2d concatenation
        self.crossmodal = nn.ModuleDict(
            {
                f"{m}<-{src}": transformer(d, cfg.num_layers, attn_dropout[src])  # code: the source's dropout
                for m in MODALITIES
                for src in MODALITIES
                if src != m
            }
        )
        self.memory = nn.ModuleDict(
            {m: transformer(2 * d, max(cfg.num_layers, cfg.mem_layers), attn_dropout["language"]) for m in MODALITIES}
        )
        self.hetero_heads = nn.ModuleDict(
            {m: ResidualHead(width=2 * d, out=out, dropout=cfg.output_dropout) for m in MODALITIES}
        )
        # the code's "weights": sigma(W h) replaces each fused part before the final head
        self.gates = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODALITIES})
        self.gate_common = nn.Linear(3 * d, 3 * d)
        self.head = ResidualHead(width=9 * d, out=out, dropout=cfg.output_dropout)

    def _shape(self, raw: Tensor) -> Tensor:
        return shape_prediction(raw, self.task.kind, self.task.num_targets)

    def forward(self, batch: Batch) -> DMDOutput:
        """Predictions and the losses' intermediates; their sequences span the batch's full length.

        Large batches (evaluation) are computed in chunks of samples of similar real length, each cut to its own
        span of real columns; every sample's result is independent of its batch mates, so this is exact.
        """
        if batch.size <= self.chunk_size:
            return self._forward(batch)
        first = torch.stack([span_bounds(batch.valid[m])[0] for m in MODALITIES]).amin(dim=0)  # (B,)
        last = torch.stack([span_bounds(batch.valid[m])[1] for m in MODALITIES]).amax(dim=0)  # (B,)
        order = torch.argsort(last - first, stable=True)  # (B,) similar lengths together
        parts = [self._forward(batch.take(idx)) for idx in order.split(self.chunk_size)]
        return concatenated(parts, torch.argsort(order))  # (B,) back to the batch's order

    def _forward(self, batch: Batch) -> DMDOutput:
        out = DMDOutput(pred=torch.empty(0))  # pred and every field are filled in below
        start, spans = real_span(batch)
        valid = {m: batch.valid[m][:, spans[m]] for m in MODALITIES}  # (B, T') per modality
        last = {m: last_valid_index(valid[m]) for m in MODALITIES}  # (B,)
        rows = torch.arange(batch.size, device=batch.label.device)
        exclusive: dict[Modality, Tensor] = {}
        common: dict[Modality, Tensor] = {}
        for m in MODALITIES:
            present = batch.present(m)[:, spans[m]]  # (B, T')
            x = batch.features[m][:, spans[m]] * present.unsqueeze(-1).to(batch.features[m].dtype)  # (B, T', D)
            if m == "language":
                x = inverted_dropout(x, self.text_dropout) if self.training else x
            keep = valid[m].unsqueeze(1).to(x.dtype)  # (B, 1, T)
            proj = self.projection[m](x.transpose(1, 2)) * keep  # (B, D, T) -> (B, d, T), padding zeroed
            s = self.encoder_exclusive[m](proj)  # (B, d, T)
            c = self.encoder_common(proj)  # (B, d, T)
            recon = self.decoder[m](torch.cat([s, c], dim=1))  # (B, 2d, T) -> (B, d, T)
            s_cycle = self.encoder_exclusive[m](recon)  # (B, d, T)
            exclusive[m], common[m] = s.transpose(1, 2), c.transpose(1, 2)  # (B, T, d)
            out.frames[m] = valid[m]  # (B, T) the real frames of the sequences below
            out.projected[m] = proj.transpose(1, 2)  # (B, T, d)
            out.recon[m] = recon.transpose(1, 2)
            out.exclusive[m] = exclusive[m]
            out.exclusive_cycle[m] = s_cycle.transpose(1, 2)
            out.common[m] = common[m]
            pooled = masked_mean(common[m], valid[m])  # (B, T, d) -> (B, d)
            out.common_aligned[m] = self.align_common[m](pooled)  # (B, d)
            homo_repr, _, homo_logit = self.homo_heads[m](pooled)
            out.homo_repr[m] = homo_repr  # (B, d)
            out.homo_logit[m] = self._shape(homo_logit)
        # fusion branch of the irrelevant features
        common_last = []
        for m in MODALITIES:
            h = self.common_attention[m](common[m], valid=valid[m], start=start)  # (B, T, d)
            common_last.append(h[rows, last[m]])  # (B, T, d) -> (B, d)
        common_fusion = torch.cat(common_last, dim=-1)  # (B, 3d)
        _, _, common_logit = self.common_head(common_fusion)
        out.common_logit = self._shape(common_logit)
        # HeteroGD branch: cross-modal attention over the exclusive features
        hetero_last: dict[Modality, Tensor] = {}
        for m in MODALITIES:
            crossed = [
                self.crossmodal[f"{m}<-{src}"](
                    exclusive[m], valid=valid[m], memory=exclusive[src], memory_valid=valid[src], start=start
                )
                for src in MODALITIES
                if src != m
            ]  # 2 x (B, T, d)
            h = self.memory[m](torch.cat(crossed, dim=-1), valid=valid[m], start=start)  # (B, T, 2d)
            hetero_last[m] = h[rows, last[m]]  # (B, T, 2d) -> (B, 2d)
            _, hetero_repr, hetero_logit = self.hetero_heads[m](hetero_last[m])
            out.hetero_repr[m] = hetero_repr  # (B, 2d)
            out.hetero_logit[m] = self._shape(hetero_logit)
        fused = torch.cat(
            [torch.sigmoid(self.gates[m](hetero_last[m])) for m in MODALITIES]
            + [torch.sigmoid(self.gate_common(common_fusion))],
            dim=-1,
        )  # (B, 9d)
        _, _, raw = self.head(fused)
        out.pred = self._shape(raw)
        for name in SEQUENCE_FIELDS:  # back to the batch's full length
            sequences = getattr(out, name)
            for m in MODALITIES:
                total, cut = batch.valid[m].shape[1], spans[m]
                sequences[m] = pad_columns(sequences[m], before=cut.start, after=total - cut.stop)
        return out


# -------------------------------------------------------------------------------------------- training system


def masked_frame_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, T, ...) values over the True frames of a (B, T) mask (and over any trailing dims)."""
    weight = mask.to(values.dtype).view(*mask.shape, *([1] * (values.dim() - 2)))  # (B, T, 1...)
    per_frame = values.numel() // max(values.shape[0] * values.shape[1], 1)
    return (values * weight).sum() / (weight.sum() * per_frame).clamp_min(1.0)


def margin_loss(features: Tensor, labels: Tensor, *, scale: float, chunk: int = 64) -> Tensor:
    """DMD's label-aware margin (hinge) loss on the aligned modality-irrelevant features.

    For every anchor a among the N = 3B features, every positive p (same label, p != a) and every negative n
    (different label): max(0, scale * dist(y_a, y_n) - cos(a, p) + cos(a, n)), averaged over the anchor's (p, n)
    pairs, then over the anchors that have both a positive and a negative.

    Args:
        features: (N, D) features.
        labels: (N,) scores or (N, K) emotion bits (distance = L1, i.e. Hamming for bits).
        scale: margin per unit of label distance (code: 0.15).
        chunk: anchors processed at once (memory N^2 per anchor).
    """
    n = features.shape[0]
    flat = labels.reshape(n, -1).to(features.dtype)  # (N, K)
    normed = features / features.norm(dim=1, keepdim=True).clamp_min(1e-8)
    cos = normed @ normed.T  # (N, N)
    distance = torch.cdist(flat, flat, p=1)  # (N, N)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    positive = (distance == 0) & ~eye  # (N, N)
    negative = distance > 0
    total = features.new_zeros(())
    anchors = 0
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        # hinge[a, p, q] = margin(a, q) - cos(a, p) + cos(a, q) with p a positive and q a negative of anchor a
        hinge = F.relu((scale * distance[rows] + cos[rows]).unsqueeze(1) - cos[rows].unsqueeze(2))  # (c, N, N)
        pairs = positive[rows].unsqueeze(2) & negative[rows].unsqueeze(1)  # (c, N, N)
        count = pairs.sum(dim=(1, 2))  # (c,)
        per_anchor = (hinge * pairs).sum(dim=(1, 2)) / count.clamp_min(1)  # (c,)
        used = count > 0
        total = total + per_anchor[used].sum()
        anchors += int(used.sum())
    return total / max(anchors, 1)


def positive_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine-embedding loss with target -1 (margin 0), per row over the last dim: max(0, cos(x, y))."""
    return F.relu(F.cosine_similarity(x, y, dim=-1, eps=1e-8))


class DMDObjective(TrainingSystem):
    """``L_task(8 heads) + w_homo (logit + reg) + w_hetero (logit + repr + reg) + w_dec (cyc + rec + w (mar + ort))``.

    Owns the two GD-Units (trained with the model by the same Adam, as in the code); they are built in
    :meth:`setup`, where the model's width is known. Gradient values are clipped to ``grad_value_clip`` before
    every step (:meth:`clip_gradients`, the code's ``clip_grad_value_``), then the base step is used.
    """

    network_type = DMD

    def __init__(self, cfg: DMDCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.homo_unit: GraphDistillationUnit | None = None
        self.hetero_unit: GraphDistillationUnit | None = None

    def setup(self, model: nn.Module) -> None:
        """Build the HomoGD (representation width d) and HeteroGD (2d) units for this model, once."""
        super().setup(model)
        assert isinstance(model, DMD)
        if self.homo_unit is not None and self.homo_unit.w_repr.in_features == model.d_model:
            return
        device = next(model.parameters()).device
        self.homo_unit, self.hetero_unit = (
            GraphDistillationUnit(
                logit_dim=model.out_dim,
                repr_dim=width,
                hidden=hidden,
                prior_logits=prior,
                prior_temperature=self.cfg.gd_prior_temperature,
                alpha=self.cfg.gd_alpha,
            ).to(device)
            for width, hidden, prior in (
                (model.d_model, self.cfg.gd_size_homo, HOMO_PRIOR),
                (2 * model.d_model, self.cfg.gd_size_hetero, HETERO_PRIOR),
            )
        )

    def head_loss(self, pred: Tensor, label: Tensor) -> Tensor:
        return regression_or_task_loss(pred, label, self.task, regression=self.cfg.task_loss)

    def graph_distillation(
        self, unit: GraphDistillationUnit, logits: dict, reprs: dict, *, repr_distance: str | None
    ) -> dict[str, Tensor]:
        """The GD-Unit's terms: edge regulariser, edge-weighted L1 logit distance, optional representation term.

        The teacher end of every edge is detached (only the student is pulled); the edge weights themselves are
        computed from undetached inputs, as in the code.
        """
        flat_logits = {m: v.reshape(v.shape[0], -1) for m, v in logits.items()}  # (B, C) per modality
        edges = unit(flat_logits, reprs)  # (E, B)
        cfg = self.cfg
        terms = {"reg": cfg.gd_reg * (edges.mean(dim=1) - unit.prior).pow(2).sum()}
        logit_term = edges.new_zeros(())
        repr_term = edges.new_zeros(())
        for e, (student, teacher) in enumerate(GD_EDGES):
            weight = edges[e] + unit.prior[e]  # (B,)
            gap = (flat_logits[student] - flat_logits[teacher].detach()).abs().sum(dim=1)  # (B,)
            logit_term = logit_term + cfg.gd_weight_logit * (weight * gap).mean()
            if repr_distance == "l1":
                gap = (reprs[student] - reprs[teacher].detach()).abs().sum(dim=1)  # (B,)
                repr_term = repr_term + cfg.gd_weight_repr * (weight * gap).mean()
            elif repr_distance == "min_cosine":
                gap = positive_cosine(reprs[student], reprs[teacher].detach())  # (B,)
                repr_term = repr_term + cfg.gd_weight_repr * (weight * gap).mean()
        terms["logit"] = logit_term
        if repr_distance is not None:
            terms["repr"] = repr_term
        return terms

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        if self.homo_unit is None or self.hetero_unit is None:
            raise RuntimeError("call setup(model) before computing DMD's losses (it builds the GD-Units)")
        assert isinstance(output, DMDOutput) and output.common_logit is not None
        out, label, cfg = output, batch.label, self.cfg
        losses: dict[str, Tensor] = {"task": self.head_loss(out.pred, label)}
        heads = [out.common_logit] + [
            getattr(out, f"{kind}_logit")[m] for kind in ("homo", "hetero") for m in MODALITIES
        ]
        losses["task_heads"] = losses["task"] + sum(self.head_loss(h, label) for h in heads)
        # decoupling: self-regression, cycle consistency, orthogonality and margin (over the real frames)
        valid = out.frames
        losses["recon"] = _total(
            masked_frame_mean((out.recon[m] - out.projected[m]).pow(2), valid[m]) for m in MODALITIES
        )
        losses["cycle"] = _total(
            masked_frame_mean((out.exclusive_cycle[m] - out.exclusive[m]).pow(2), valid[m]) for m in MODALITIES
        )
        losses["ort"] = _total(
            masked_frame_mean(positive_cosine(out.exclusive[m], out.common[m]), valid[m]) for m in MODALITIES
        )
        aligned = torch.cat([out.common_aligned[m] for m in MODALITIES], dim=0)  # 3 x (B, d) -> (3B, d)
        losses["margin"] = margin_loss(aligned, label.repeat(3, *([1] * (label.dim() - 1))), scale=cfg.margin_scale)
        # graph distillation in the two decoupled spaces
        homo = self.graph_distillation(
            self.homo_unit,
            out.homo_logit,
            out.homo_repr,
            repr_distance=None,  # the code computes an L1 representation term for HomoGD but leaves it out
        )
        hetero = self.graph_distillation(
            self.hetero_unit, out.hetero_logit, out.hetero_repr, repr_distance="min_cosine"
        )
        losses.update({f"homo_{k}": v for k, v in homo.items()})
        losses.update({f"hetero_{k}": v for k, v in hetero.items()})
        decouple = losses["cycle"] + losses["recon"] + cfg.weight_margin_ort * (losses["margin"] + losses["ort"])
        losses["loss"] = (
            losses["task_heads"]
            + cfg.weight_homo * (homo["logit"] + homo["reg"])
            + cfg.weight_hetero * (hetero["logit"] + hetero["repr"] + hetero["reg"])
            + cfg.weight_decouple * decouple
        )
        return losses

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Scheduler]:
        """The code's ReduceLROnPlateau on the validation loss (none when ``plateau_factor`` is 1)."""
        if self.cfg.plateau_factor >= 1.0:
            return {}
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizers["main"], mode="min", factor=self.cfg.plateau_factor, patience=self.cfg.plateau_patience
        )
        return {"plateau": plateau}

    def clip_gradients(self, params: Sequence[Tensor], grad_clip: float) -> None:
        """The code's gradient-value clipping first, then the trainer's norm clipping when set."""
        if self.cfg.grad_value_clip > 0:
            torch.nn.utils.clip_grad_value_(params, self.cfg.grad_value_clip)
        super().clip_gradients(params, grad_clip)


# ----------------------------------------------------------------------------------------------- registration

register_model(ModelSpec(name="dmd", config_cls=DMDCfg, build=DMD, objective=DMDObjective))
