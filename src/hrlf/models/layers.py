"""Genuinely shared building blocks: sinusoidal positions, the per-modality encoder, the hourglass FC stack, MLPs,
masked means and the front alignment of real frames."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.types import MODALITIES, Batch, Modality


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position embeddings (Vaswani et al., 2017), computed for any length on demand."""

    table: Tensor  # (max_len, d) buffer

    def __init__(self, d_model: int, *, max_len: int = 1024) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, length: int, *, start: int = 0) -> Tensor:
        """Embeddings of positions ``start .. start + length - 1``: (length, d)."""
        if start + length > self.table.shape[0]:
            raise ValueError(f"sequence length {start + length} exceeds the position table ({self.table.shape[0]})")
        return self.table[start : start + length]  # (T, d)


def last_valid_index(valid: Tensor) -> Tensor:
    """(B, T) bool -> (B,) index of the last real frame; T-1 for a sample with no real frame.

    Handles both CMU-SDK pre-padding (real frames at the end) and MMSA post-padding (real frames first).
    """
    steps = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)  # (B, T)
    last = torch.where(valid, steps, torch.full_like(steps, -1)).amax(dim=1)  # (B,)
    return torch.where(last < 0, torch.full_like(last, valid.shape[1] - 1), last)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T, D) and (B, T) bool -> (B, D) mean over the True frames of each row (zeros for a row with none)."""
    weight = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)  # (B, T, D) -> (B, D)


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


def kept_span(valid: Tensor, *, mask_padding: bool) -> tuple[int, int]:
    """The column span ``[start, stop)`` that :class:`ModalityEncoder` computes on for a batch.

    With padding masked out of attention, the outer columns that are padding in every sample change nothing
    (their inputs are zero, like the conv's own zero padding), so they are cut; positions keep their absolute
    index, which makes the result identical to the uncut computation. Models that use the encoder's sequence
    output align their masks with this span.
    """
    used = valid.any(dim=0)  # (T,) columns holding a real frame in some sample
    if mask_padding and not bool(used.all()):
        if not bool(used.any()):
            # the modality is absent from every sample of the batch: every row gets the fixed absent code, so
            # one column is enough (text-only data would otherwise run audio and vision over all T columns)
            return 0, min(1, valid.shape[1])
        columns = used.nonzero()
        return int(columns[0]), int(columns[-1]) + 1
    return 0, valid.shape[1]


def dropout_keep(x: Tensor, p: float) -> Tensor:
    """Which elements of ``x`` dropout keeps: a bool tensor of ``x``'s shape, True with probability 1 - p.

    ``F.dropout`` on CPU draws one Bernoulli per element through ``bernoulli_``, the largest single cost of a
    training step here (a quarter of a backbone epoch on MOSI). This draws 64 random bits per two elements
    (``random_`` on int64 words, viewed as int32) and keeps an element when its 32-bit integer is at or above
    the threshold ``round(p * 2**32)``: the drop probability is ``p`` to within 2**-33, finer than a float32
    uniform's 2**-24. Same distribution, not the same stream as ``F.dropout``: a seed drops other elements.
    """
    n = x.numel()
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    uniform = words.view(torch.int32)[:n].view(x.shape)  # 32 random bits per element
    return uniform >= round(p * 2**32) - 2**31  # P(keep) = 1 - p, to within 2**-33


def inverted_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout: each element zeroed with probability ``p``, the rest scaled by 1 / (1 - p), the mask drawn by
    :func:`dropout_keep` on CPU and by ``F.dropout`` (fused there) on other devices."""
    if p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * dropout_keep(x, p).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """:func:`inverted_dropout` as a module (active in training mode only), in place of ``nn.Dropout``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return inverted_dropout(x, self.p) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _softmax_last(scores: Tensor) -> Tensor:
    """Softmax over the last axis, in place. For rows shorter than 16 (most word-aligned clips) torch's CPU
    kernel costs ~15 ns per element, four times the plain max / exp / sum / divide written here."""
    if scores.shape[-1] >= 16:
        return torch.softmax(scores, dim=-1)
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    return scores.div_(scores.sum(dim=-1, keepdim=True))


def _t(x: Tensor) -> Tensor:
    return x.transpose(-2, -1)


class _AttentionWithDropout(torch.autograd.Function):
    """softmax(q k^T / sqrt(e) + bias) with dropout on the probabilities, times v; forward and backward by hand.

    The products are the same as autograd's, but each (T, T) x (T, e) product is computed as the transpose of
    (e, T) x (T, T), which the CPU's batched matmul runs 1.6-3x faster when e is 4 (10 heads on width 40); the
    dropout scale is applied to the (T, e) output instead of the (T, T) probabilities, and short rows take
    :func:`_softmax_last`.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float) -> Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1])
        q_scaled = q * scale
        scores = torch.matmul(q_scaled, _t(k))  # (B, H, T, T)
        if bias is not None:
            scores.add_(bias)
        probs = _softmax_last(scores)
        mask = dropout_keep(probs, p).to(probs.dtype)
        dropped = probs * mask
        ctx.save_for_backward(q_scaled, k, v, probs, mask, dropped)
        ctx.scale, ctx.keep_scale = scale, 1.0 / (1.0 - p)
        return _t(torch.matmul(_t(v), _t(dropped))).mul_(ctx.keep_scale)  # (B, H, T, e)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        (grad,) = grads
        q_scaled, k, v, probs, mask, dropped = ctx.saved_tensors
        grad = grad * ctx.keep_scale  # (B, H, T, e)
        grad_v = _t(torch.matmul(_t(grad), dropped))  # (B, H, T, e)
        grad_probs = torch.matmul(grad, _t(v)).mul_(mask)  # (B, H, T, T)
        grad_scores = grad_probs.sub_((grad_probs * probs).sum(dim=-1, keepdim=True)).mul_(probs)
        grad_q = _t(torch.matmul(_t(k), _t(grad_scores))).mul_(ctx.scale)
        grad_k = _t(torch.matmul(_t(q_scaled), grad_scores))
        return grad_q, grad_k, grad_v, None, None


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, dropout: float) -> Tensor:
    """Softmax attention, (B, H, Tq, e), (B, H, Tk, e) x2 -> (B, H, Tq, e), with dropout ``dropout`` on the
    probabilities (0 in evaluation). ``mask``: bool, True = may attend, or an additive float bias; any shape that
    broadcasts to (B, H, Tq, Tk); None = no mask.

    Fused ``F.scaled_dot_product_attention`` wherever torch has a fused kernel (evaluation, and CUDA with or
    without dropout). On CPU with dropout torch falls back to its plain computation plus a guard for rows whose
    every key is masked; :class:`_AttentionWithDropout` computes the same function faster. Without the guard a
    row with no allowed key gets NaN from a bool mask (callers here never build one: :class:`ModalityEncoder` lets
    a sample without a real frame attend everywhere, DMD's masks are finite).
    """
    if dropout <= 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    bias = mask
    if mask is not None and mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, -math.inf)
    out: Tensor = _AttentionWithDropout.apply(q, k, v, bias, dropout)
    return out


class MultiHeadAttention(nn.Module):
    """Multi-head attention (self-attention, or queries on a memory) with the parameters of
    ``nn.MultiheadAttention`` (packed ``in_proj_weight`` / ``in_proj_bias``, ``out_proj``), initialised the same
    way and computing the same function, written on :func:`attention` with the mask as one boolean tensor shared
    by every head, e.g. (B, 1, 1, T) for padding (torch's module expands it to a float mask per head and layer).
    """

    def __init__(self, d_model: int, num_heads: int, *, dropout: float) -> None:
        super().__init__()
        # the draw order of nn.MultiheadAttention: out_proj's Linear init first, then Xavier on the packed input
        # projection, both biases zero; the same seed gives the same weights as torch's module
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)
        self.num_heads = num_heads
        self.dropout = dropout

    def forward(self, x: Tensor, keep: Tensor | None, memory: Tensor | None = None) -> Tensor:
        """(B, T, d) queries and a bool mask of the keys each may attend to, broadcasting to (B, H, T, S) (None:
        all) -> (B, T, d). The keys and values are ``x`` itself, or ``memory`` (B, S, d) for cross-attention
        (``nn.MultiheadAttention(q, memory, memory)``: the first third of the packed projection for the queries,
        the rest for the keys and values)."""
        b, t, d = x.shape
        h = self.num_heads
        if memory is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3d)
            q, k, v = qkv.view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d/H)
        else:
            s = memory.shape[1]
            q = F.linear(x, self.in_proj_weight[:d], self.in_proj_bias[:d]).view(b, t, h, d // h).transpose(1, 2)
            kv = F.linear(memory, self.in_proj_weight[d:], self.in_proj_bias[d:])  # (B, S, 2d)
            k, v = kv.view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, S, d/H)
        out = attention(q, k, v, mask=keep, dropout=self.dropout if self.training else 0.0)  # (B, H, T, d/H)
        # laid out time-major (T, B, d) and returned as a (B, T, d) view, as torch's batch-first module returns
        # it: torch's Bernoulli draw follows memory order, so with it (the equivalence test) the layout decides
        # which elements a seed drops
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(t, b, d))  # (B, H, T, d/H) -> (T, B, d)
        return out.transpose(0, 1)  # (B, T, d)


class EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer: the function, parameter names and initialisation of
    ``nn.TransformerEncoderLayer(norm_first=True, batch_first=True, activation="relu")``, with dropout at the
    same four places in the same order (attention probabilities, after attention, inside the feed-forward block,
    after it): with torch's Bernoulli draw in :func:`dropout_keep` a seed drops the same elements as torch's
    layer (tests/models/test_layers.py); with the project's cheaper draw, other elements by the same law."""

    def __init__(self, d_model: int, num_heads: int, *, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), keep))  # (B, T, d)
        return x + self.dropout2(self.linear2(self.dropout(torch.relu(self.linear1(self.norm2(x))))))


class EncoderStack(nn.Module):
    """``num_layers`` copies of one :class:`EncoderLayer` (identical initial weights, as ``nn.TransformerEncoder``
    clones its layer) and a final LayerNorm; state-dict keys ``layers.<i>.*`` and ``norm.*`` as torch's."""

    def __init__(self, layer: EncoderLayer, num_layers: int, *, d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, *, padding: Tensor | None = None) -> Tensor:
        """(B, T, d) and (B, T) bool, True = a key no query may attend to (None: none) -> (B, T, d)."""
        keep = None if padding is None else (~padding).view(padding.shape[0], 1, 1, padding.shape[1])
        for layer in self.layers:
            x = layer(x, keep)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """A pre-norm Transformer decoder layer: the function, parameter names and initialisation of
    ``nn.TransformerDecoderLayer(norm_first=True, batch_first=True, activation="relu")`` (self-attention,
    attention to the memory, feed-forward block), with dropout at the same six places in the same order, written
    on :func:`attention` and :class:`Dropout` (the equivalence with torch's layer is tested as the encoder's)."""

    def __init__(self, d_model: int, num_heads: int, *, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.multihead_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)  # queries on the memory
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, *, keep: Tensor | None, memory_keep: Tensor | None) -> Tensor:
        """(B, T, d) queries, (B, S, d) memory, bool masks of what may be attended to (True), broadcasting to
        (B, H, T, T) and (B, H, T, S) (None: everything) -> (B, T, d)."""
        x = x + self.dropout1(self.self_attn(self.norm1(x), keep))
        x = x + self.dropout2(self.multihead_attn(self.norm2(x), memory_keep, memory))
        return x + self.dropout3(self.linear2(self.dropout(torch.relu(self.linear1(self.norm3(x))))))


class DecoderStack(nn.Module):
    """``num_layers`` copies of one :class:`DecoderLayer` and a final LayerNorm, as ``nn.TransformerDecoder``
    (state-dict keys ``layers.<i>.*`` and ``norm.*``)."""

    def __init__(self, layer: DecoderLayer, num_layers: int, *, d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, x: Tensor, memory: Tensor, *, blocked: Tensor | None = None, memory_padding: Tensor | None = None
    ) -> Tensor:
        """(B, T, d) and (B, S, d); ``blocked`` (B, T, T) bool, True = query t may not attend to frame t' (None:
        none); ``memory_padding`` (B, S) bool, True = a memory frame no query may attend to -> (B, T, d)."""
        keep = None if blocked is None else (~blocked).unsqueeze(1)  # (B, 1, T, T): one mask for every head
        memory_keep = None
        if memory_padding is not None:
            memory_keep = (~memory_padding).view(memory_padding.shape[0], 1, 1, memory_padding.shape[1])
        for layer in self.layers:
            x = layer(x, memory, keep=keep, memory_keep=memory_keep)
        return self.norm(x)


class ModalityEncoder(nn.Module):
    """HRLF's unimodal encoder: R = Conv1d_k(X) + PE; Z = last real step of a Transformer encoder over R.

    Non-present frames (padding or removed by a protocol) are zeroed on entry: missing features are zero vectors,
    as in the paper, and nothing written at those positions can reach the output.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        d_model: int = 40,
        num_heads: int = 10,
        num_layers: int = 3,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        embed_dropout: float = 0.2,
        conv_kernel: int = 3,
        mask_padding: bool = True,
    ) -> None:
        super().__init__()
        if conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd to keep the sequence length, got {conv_kernel}")
        self.conv = nn.Conv1d(input_dim, d_model, kernel_size=conv_kernel, padding=conv_kernel // 2)
        self.positions = SinusoidalPositions(d_model)
        self.embed_dropout = Dropout(embed_dropout)
        layer = EncoderLayer(d_model, num_heads, dim_feedforward=ffn_mult * d_model, dropout=dropout)
        self.transformer = EncoderStack(layer, num_layers, d_model=d_model)
        self.mask_padding = mask_padding

    def forward(self, x: Tensor, *, present: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Encode one modality.

        Args:
            x: (B, T, D) features.
            present: (B, T) bool, frames that are real and not removed.
            valid: (B, T) bool, frames that are real (padding = False).

        Returns:
            Z (B, d), the last real step, and the encoded sequence (B, T', d) over the span of columns that hold
            a real frame in some sample of the batch.
        """
        start, stop = kept_span(valid, mask_padding=self.mask_padding)
        if (start, stop) != (0, valid.shape[1]):
            x, present, valid = x[:, start:stop], present[:, start:stop], valid[:, start:stop]  # (B, T', .)
        x = x * present.unsqueeze(-1).to(x.dtype)  # (B, T, D): zero vectors at missing and padded frames
        r = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, D, T) -> (B, d, T) -> (B, T, d)
        r = self.embed_dropout(r + self.positions(r.shape[1], start=start))  # (B, T, d)
        pad = None
        if self.mask_padding:
            # padding is not data: keep it out of attention (a row with no real frame attends everywhere)
            pad = ~valid & valid.any(dim=1, keepdim=True)  # (B, T) True = ignore
        h = self.transformer(r, padding=pad)  # (B, T, d)
        last = last_valid_index(valid)  # (B,)
        z = h[torch.arange(h.shape[0], device=h.device), last]  # (B, T, d) -> (B, d)
        empty = ~valid.any(dim=1)  # (B,) no real frame at all: the modality is absent from the file for this clip
        if self.mask_padding and bool(empty.any()):
            # what such a row attends to would depend on the batch's padded length; it gets the code of one zero
            # frame at position 0 instead, the same in any batch (training, evaluation and single-clip prediction)
            z = torch.where(empty.unsqueeze(-1), self._absent_code(x), z)  # (B, d)
        return z, h

    def _absent_code(self, x: Tensor) -> Tensor:
        """(d,) encoding of a one-frame all-zero sequence at position 0."""
        r = self.conv(x.new_zeros(1, x.shape[-1], 1)).transpose(1, 2)  # (1, D, 1) -> (1, d, 1) -> (1, 1, d)
        h = self.transformer(self.embed_dropout(r + self.positions(1, start=0)))  # (1, 1, d)
        return h[0, 0]


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "gelu": F.gelu,
}


class Hourglass(nn.Module):
    """HRLF's fusion refiner 3d -> 2d -> d -> 2d -> 3d, returning every intermediate (I1, I2, I3, H~).

    Linear + ReLU (+ dropout) per layer, no activation after the last one (hrlf_method.md §2.3, [I]).
    """

    def __init__(self, *, width: int, dropout: float = 0.1, activation: str = "relu") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"hourglass activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.act = _ACTIVATIONS[activation]
        if width % 3:
            raise ValueError(f"hourglass width must be 3d, got {width}")
        d = width // 3
        self.down1 = nn.Linear(3 * d, 2 * d)
        self.down2 = nn.Linear(2 * d, d)
        self.up1 = nn.Linear(d, 2 * d)
        self.up2 = nn.Linear(2 * d, 3 * d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, *, use_dropout: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(I1, I2, I3, H~); ``use_dropout=False`` gives the same chain without dropout, in any mode."""
        drop = self.dropout if use_dropout else nn.Identity()
        i1 = drop(self.act(self.down1(h)))  # (B, 3d) -> (B, 2d)
        i2 = drop(self.act(self.down2(i1)))  # (B, 2d) -> (B, d)
        i3 = drop(self.act(self.up1(i2)))  # (B, d) -> (B, 2d)
        refined = self.up2(i3)  # (B, 2d) -> (B, 3d)
        return i1, i2, i3, refined


def mlp(sizes: list[int], *, dropout: float = 0.0, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of the given sizes with an activation (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def task_outputs(task_kind: str, num_targets: int) -> int:
    """Width of the final layer: 1 score for regression, 2 logits per emotion otherwise."""
    return 1 if task_kind == "regression" else 2 * num_targets


def shape_prediction(raw: Tensor, task_kind: str, num_targets: int) -> Tensor:
    """(B, out) -> (B,) scores or (B, K, 2) emotion logits."""
    if task_kind == "regression":
        return raw.squeeze(-1)  # (B, 1) -> (B,)
    return raw.view(raw.shape[0], num_targets, 2)  # (B, 2K) -> (B, K, 2)


class EncoderSettings(Protocol):
    """A model config that holds :class:`ModalityEncoder`'s settings under the encoder's own names."""

    d_model: int
    num_heads: int
    num_layers: int
    ffn_mult: int
    dropout: float
    embed_dropout: float
    conv_kernel: int
    mask_padding: bool


def encoder_settings(cfg: EncoderSettings) -> dict[str, Any]:
    """The keyword arguments of :class:`ModalityEncoder` / :func:`modality_encoders` that ``cfg`` holds."""
    return {
        "d_model": cfg.d_model,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "ffn_mult": cfg.ffn_mult,
        "dropout": cfg.dropout,
        "embed_dropout": cfg.embed_dropout,
        "conv_kernel": cfg.conv_kernel,
        "mask_padding": cfg.mask_padding,
    }


# Config checks. Every model config's ``__post_init__`` checks its own fields with these (and the config loader
# re-runs it after every override); the messages read ``<field>: expected ..., found ...``, which the loader turns
# into a ConfigError naming ``model.<field>``.


def expect(ok: bool, name: str, expected: str, found: Any) -> None:
    """Raise ``ValueError("<name>: expected <expected>, found <found!r>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}: expected {expected}, found {found!r}")


def check_choices(cfg: Any, choices: Mapping[str, tuple[str, ...]]) -> None:
    """Every string field named in ``choices`` (a config's ``CHOICES``) holds one of its allowed values."""
    for name, allowed in choices.items():
        expect(getattr(cfg, name) in allowed, name, " | ".join(allowed), getattr(cfg, name))


def check_heads(d_model: int, num_heads: int) -> None:
    """``num_heads`` divides ``d_model`` (both >= 1)."""
    ok = d_model >= 1 and num_heads >= 1 and d_model % num_heads == 0
    expect(ok, "num_heads", f"a divisor of model.d_model = {d_model}", num_heads)


def check_counts(**counts: int) -> None:
    """Every named count (layers, width multiples) is >= 1."""
    for name, value in counts.items():
        expect(value >= 1, name, "an integer >= 1", value)


def check_dropouts(**rates: float) -> None:
    """Every named dropout rate is in [0, 1)."""
    for name, value in rates.items():
        expect(0.0 <= value < 1.0, name, "a probability in [0, 1)", value)


def check_odd_kernel(name: str, value: int) -> None:
    """A temporal convolution kernel that keeps the sequence length: odd and >= 1."""
    expect(value >= 1 and value % 2 == 1, name, "an odd integer >= 1", value)


def check_encoder_settings(cfg: EncoderSettings) -> None:
    """The :class:`ModalityEncoder` settings a config holds (:class:`EncoderSettings`)."""
    check_heads(cfg.d_model, cfg.num_heads)
    check_counts(num_layers=cfg.num_layers, ffn_mult=cfg.ffn_mult)
    check_dropouts(dropout=cfg.dropout, embed_dropout=cfg.embed_dropout)
    check_odd_kernel("conv_kernel", cfg.conv_kernel)


def modality_encoders(
    *,
    dims: Mapping[Modality, int],
    d_model: int,
    num_heads: int,
    num_layers: int,
    ffn_mult: int,
    dropout: float,
    embed_dropout: float,
    conv_kernel: int,
    mask_padding: bool,
) -> nn.ModuleDict:
    """One :class:`ModalityEncoder` per modality, keyed by modality name."""
    return nn.ModuleDict(
        {
            m: ModalityEncoder(
                input_dim=dims[m],
                d_model=d_model,
                num_heads=num_heads,
                num_layers=num_layers,
                ffn_mult=ffn_mult,
                dropout=dropout,
                embed_dropout=embed_dropout,
                conv_kernel=conv_kernel,
                mask_padding=mask_padding,
            )
            for m in MODALITIES
        }
    )


def encode_last(encoders: nn.ModuleDict, batch: Batch) -> dict[Modality, Tensor]:
    """Z_m (B, d) of every modality: the last real step of its encoder."""
    return {m: encoders[m](batch.features[m], present=batch.present(m), valid=batch.valid[m])[0] for m in MODALITIES}
