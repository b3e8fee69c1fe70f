"""Pure mask functions for missing-modality simulation.

Every function here is a pure function of its tensor arguments and, where randomness is needed, of an explicit
``torch.Generator``; nothing touches the global RNG. Masks follow ``hrlf.types``: ``valid`` (True = real frame)
and ``missing`` (True = removed by a protocol) are separate (B, T) bool tensors.

Frame dropping is *rank based*: each frame gets a uniform number, and at rate ``r`` the ``floor(r * L)`` valid
frames with the smallest numbers are dropped. Re-using the same uniforms for several rates therefore gives nested
masks (a frame missing at ``r`` is missing at every ``r' > r``) and an exact count per row, unlike the
``u > r`` threshold of MMSA/LNLN whose count is only right in expectation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor

from hrlf.types import MODALITIES, Modality

__all__ = [
    "PROPER_SUBSETS",
    "frame_mask",
    "modality_mask",
    "ranked_drop",
    "sample_subsets",
    "unk_tokens",
]

#: the six non-empty proper subsets of available modalities, in MMIN's / HRLF's order {l}, {a}, {v}, {l,a}, {l,v}, {a,v}
PROPER_SUBSETS: tuple[tuple[Modality, ...], ...] = (
    ("language",),
    ("audio",),
    ("vision",),
    ("language", "audio"),
    ("language", "vision"),
    ("audio", "vision"),
)

# absorbs float error in rate * L (0.3 * 10 = 2.9999999999999996 must drop 3 frames)
_COUNT_EPS = 1e-6


def _check_valid(valid: Tensor) -> None:
    if valid.dtype != torch.bool or valid.dim() != 2:
        raise ValueError(f"valid must be a (B, T) bool tensor, got {tuple(valid.shape)} {valid.dtype}")


def _rates_tensor(rates: Tensor | float, batch_size: int, device: torch.device) -> Tensor:
    """(B,) float64 rates on ``device``; a Python float is broadcast to every row."""
    out = torch.as_tensor(rates, dtype=torch.float64, device=device)
    if out.dim() == 0:
        out = out.expand(batch_size)
    if out.shape != (batch_size,):
        raise ValueError(f"rates must be a float or a ({batch_size},) tensor, got shape {tuple(out.shape)}")
    if bool(((out < 0) | (out > 1) | torch.isnan(out)).any()):
        raise ValueError("missing rates must lie in [0, 1]")
    return out


def ranked_drop(valid: Tensor, rates: Tensor, uniforms: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Drops ``floor(rate * L + offset)`` valid frames per row: those with the smallest uniforms.

    With ``offsets`` uniform on [0, 1) (one per row) the count is rate * L rounded stochastically, so the expected
    fraction dropped is exactly ``rate`` even on short clips (plain flooring would drop nothing from a 4-frame
    clip at rate 0.2); for a fixed offset the count still grows with the rate. Without offsets the count is
    ``floor(rate * L + 1e-6)``.

    ``L`` is the row's number of valid frames; padding is never marked missing. Ties between equal uniforms are
    broken by position (stable sort), so the result is a deterministic function of the inputs. Because only the
    ranks of the uniforms matter, calling this with the same ``uniforms`` and a larger rate marks a superset of
    frames (masks are nested across rates).

    Rates are used in float64. Pass float64 rates (or Python floats via :func:`frame_mask`): a float32 rate such as
    ``0.7`` is ``0.69999998`` and can drop one frame too few on rows longer than about 40 frames.

    Args:
        valid: (B, T) bool, True = real frame.
        rates: (B,) missing rate per row, in [0, 1].
        uniforms: (B, T) float ranking keys, normally uniform on [0, 1); values at padded positions are ignored.
        offsets: (B,) rounding offsets in [0, 1), or None for flooring.

    Returns:
        (B, T) bool missing mask, True = dropped.
    """
    _check_valid(valid)
    if uniforms.shape != valid.shape:
        raise ValueError(f"uniforms must match valid's shape {tuple(valid.shape)}, got {tuple(uniforms.shape)}")
    batch_size, length = valid.shape
    rates = _rates_tensor(rates, batch_size, valid.device)
    # padding gets +inf so it ranks after every valid frame
    keys = uniforms.to(device=valid.device, dtype=torch.float64).masked_fill(~valid, float("inf"))  # (B, T)
    order = torch.argsort(keys, dim=1, stable=True)  # (B, T) positions sorted by key
    positions = torch.arange(length, device=valid.device).expand(batch_size, length)  # (B, T)
    ranks = torch.empty_like(order).scatter_(1, order, positions)  # (B, T) rank of each position in its row
    if offsets is None:
        shift = torch.full_like(rates, _COUNT_EPS)
    else:
        shift = offsets.to(device=valid.device, dtype=torch.float64).clamp(0.0, 1.0 - 1e-12)  # (B,)
    counts = torch.floor(rates * valid.sum(dim=1) + shift).long()  # (B,) frames to drop
    return (ranks < counts[:, None]) & valid  # (B, T)


def frame_mask(valid: Tensor, rates: Tensor | float, *, generator: torch.Generator) -> Tensor:
    """Intra-modality frame drop with fresh uniforms from ``generator`` (see :func:`ranked_drop`).

    The uniforms are drawn on the generator's device as float64 and then moved to ``valid``'s device, so a CPU
    generator gives the same masks for CPU and CUDA batches.

    Args:
        valid: (B, T) bool, True = real frame.
        rates: missing rate, one for all rows or a (B,) tensor, in [0, 1].
        generator: the only source of randomness (advanced by B * T draws).

    Returns:
        (B, T) bool missing mask, exactly ``floor(rate * L + 1e-6)`` True per row, never on padding.
    """
    _check_valid(valid)
    uniforms = torch.rand(valid.shape, generator=generator, device=generator.device, dtype=torch.float64)  # (B, T)
    return ranked_drop(valid, _rates_tensor(rates, valid.shape[0], valid.device), uniforms.to(valid.device))


def modality_mask(valid: Mapping[Modality, Tensor], available: Collection[Modality]) -> dict[Modality, Tensor]:
    """Inter-modality drop: whole modalities absent for every sample.

    An absent modality's rows are entirely True, padding included, so ``missing[m].all(dim=1)`` identifies an
    absent modality even on an empty row; an available modality's mask is all False.

    Args:
        valid: per modality (B, T_m) bool (only the shapes and devices are used).
        available: the modalities that are kept; names not in ``hrlf.types.MODALITIES`` raise.

    Returns:
        Per modality of ``valid``, a (B, T_m) bool missing mask.
    """
    unknown = set(available) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
    out: dict[Modality, Tensor] = {}
    for m, v in valid.items():
        _check_valid(v)
        out[m] = torch.full_like(v, m not in available, dtype=torch.bool)
    return out


def sample_subsets(batch_size: int, *, subset_prob: float, generator: torch.Generator) -> Tensor:
    """Per-sample availability patterns for training (the inter-modality half of HRLF's MSM).

    With probability ``subset_prob`` a sample gets one of :data:`PROPER_SUBSETS` uniformly (each with probability
    ``subset_prob / 6``), otherwise all three modalities. The generator is always advanced by the same amount
    (B uniforms, then B integers), whatever the outcome.

    Args:
        batch_size: B.
        subset_prob: probability of replacing the complete pattern by a proper subset, in [0, 1].
        generator: the only source of randomness.

    Returns:
        (B, 3) bool on the generator's device, True = available, columns in ``hrlf.types.MODALITIES`` order.
    """
    if not 0.0 <= subset_prob <= 1.0:
        raise ValueError(f"subset_prob must lie in [0, 1], got {subset_prob}")
    device = generator.device
    table = torch.tensor([[m in s for m in MODALITIES] for s in PROPER_SUBSETS], device=device)  # (6, 3)
    use_subset = torch.rand(batch_size, generator=generator, device=device) < subset_prob  # (B,)
    choice = torch.randint(len(PROPER_SUBSETS), (batch_size,), generator=generator, device=device)  # (B,)
    complete = torch.ones(batch_size, len(MODALITIES), dtype=torch.bool, device=device)  # (B, 3)
    return torch.where(use_subset[:, None], table[choice], complete)  # (B, 3)


def unk_tokens(
    ids: Tensor,
    missing: Tensor,
    *,
    unk_id: int,
    attention_mask: Tensor,
    keep_special: bool = True,
) -> Tensor:
    """Text policy for BERT token inputs (MMSA / TFR-Net / EMT-DLFR / LNLN): dropped tokens become [UNK].

    A token is replaced when it is marked missing and is a real token (``attention_mask`` True); padding keeps its
    id. With ``keep_special``, position 0 ([CLS]) and position ``len - 1`` ([SEP], ``len`` = the row's
    attention-mask sum, right padding assumed) are never replaced, as in the MMSA family. HRLF itself uses GloVe
    vectors, where the policy is zero vectors instead (see ``hrlf.missing.protocol``).

    Args:
        ids: (B, T) long token ids.
        missing: (B, T) bool, True = drop (e.g. from :func:`frame_mask` with ``valid = attention_mask.bool()``).
        unk_id: the tokenizer's [UNK] id (``tokenizer.unk_token_id``); never assume 100.
        attention_mask: (B, T) 0/1 or bool, True/1 = real token.
        keep_special: keep [CLS] and [SEP].

    Returns:
        (B, T) long ids, a new tensor.
    """
    if isinstance(unk_id, bool) or not isinstance(unk_id, int) or unk_id < 0:
        raise ValueError(f"unk_id must be a non-negative int taken from the tokenizer, got {unk_id!r}")
    if ids.dim() != 2 or missing.shape != ids.shape or attention_mask.shape != ids.shape:
        raise ValueError(
            f"ids, missing and attention_mask must share a (B, T) shape, got {tuple(ids.shape)}, "
            f"{tuple(missing.shape)}, {tuple(attention_mask.shape)}"
        )
    real = attention_mask.bool()  # (B, T)
    drop = missing.bool() & real  # (B, T)
    if keep_special and ids.shape[1] > 0:
        lengths = real.sum(dim=1)  # (B,)
        positions = torch.arange(ids.shape[1], device=ids.device)  # (T,)
        special = (positions[None, :] == 0) | (positions[None, :] == (lengths - 1)[:, None])  # (B, T)
        drop = drop & ~special
    return ids.masked_fill(drop, unk_id)
