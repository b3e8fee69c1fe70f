"""Missing-modality protocols: HRLF's training simulation and the two evaluation families.

* :class:`ModalityStochasticMissing` (training, HRLF's MSM, ``hrlf_method.md`` §6.1 and ambiguity #10): fresh
  masks on every call, drawn from an explicit ``torch.Generator``.
* :class:`InterModality` (evaluation, §6.3): whole modalities removed; the six conditions plus the complete one
  are in :data:`INTER_CONDITIONS`.
* :class:`IntraModality` (evaluation, §6.2): a fraction ``rate`` of the frames of every modality removed. Masks
  are a deterministic function of ``(seed, rate, sample id, modality)``, independent of batch size, batch order
  and worker count, and nested across rates.

Every protocol returns a **new** :class:`~hrlf.types.Batch` whose ``missing`` masks are the incoming masks OR-ed
with the protocol's, and whose ``features`` are zero vectors at every missing frame (the HRLF paper's rule). Each
has a ``name`` such as ``"frame_drop(rate=0.3, seed=7)"`` and a JSON-able ``describe()`` for results files. The
conventions are documented in ``docs/protocols.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from hrlf.missing.patterns import PROPER_SUBSETS, frame_mask, modality_mask, ranked_drop, sample_subsets
from hrlf.types import MODALITIES, SHORT, Batch, Modality

__all__ = [
    "INTER_CONDITIONS",
    "INTRA_RATES",
    "MISSING_CONDITIONS",
    "EvalMaskBank",
    "EvalMissing",
    "InterModality",
    "IntraModality",
    "ModalityStochasticMissing",
    "TrainMissing",
    "apply_missing",
    "inter_sweep",
    "intra_sweep",
]

#: inter-modality conditions named by their available modalities ("la" = language + audio); "lav" = complete
INTER_CONDITIONS: dict[str, tuple[Modality, ...]] = {
    "".join(SHORT[m] for m in subset): subset for subset in (*PROPER_SUBSETS, MODALITIES)
}
#: the six conditions with at least one modality missing; the paper's "Avg." is their mean ("lav" excluded)
MISSING_CONDITIONS: tuple[str, ...] = ("l", "a", "v", "la", "lv", "av")
#: the intra-modality evaluation sweep p = 0.0, 0.1, ..., 1.0 (rounded, so names read "rate=0.3")
INTRA_RATES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


@runtime_checkable
class TrainMissing(Protocol):
    """A training-time protocol: random, fresh masks on every call."""

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def apply(self, batch: Batch, *, generator: torch.Generator) -> Batch: ...


@runtime_checkable
class EvalMissing(Protocol):
    """An evaluation-time protocol: masks are a deterministic function of the protocol and the samples."""

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def apply(self, batch: Batch) -> Batch: ...


def apply_missing(batch: Batch, new_missing: dict[Modality, Tensor]) -> Batch:
    """Returns a new batch with ``new_missing`` OR-ed into the masks and features zeroed where missing.

    The input batch and its tensors are left untouched; unchanged tensors (labels, ``valid``) are shared.

    Args:
        batch: the incoming batch (its own ``missing`` masks are kept).
        new_missing: per modality (B, T_m) bool, True = removed; modalities not listed are only re-zeroed.

    Returns:
        The corrupted batch.
    """
    missing: dict[Modality, Tensor] = {}
    features: dict[Modality, Tensor] = {}
    for m, x in batch.features.items():
        old = batch.missing.get(m)
        if old is None:
            old = torch.zeros_like(batch.valid[m])
        mask = (old | new_missing[m].to(old.device)) if m in new_missing else old  # (B, T)
        missing[m] = mask
        features[m] = x.masked_fill(mask[..., None], 0.0)  # (B, T, D): zero vectors at missing frames
    return replace(batch, features=features, missing=missing, valid=dict(batch.valid), ids=list(batch.ids))


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class ModalityStochasticMissing:
    """HRLF's Modality Stochastic Missing (MSM): intra- and inter-modality missingness at once, for training.

    For every sample: draw a frame-drop ratio ``p`` and drop ``floor(p * L)`` frames in each modality
    (:func:`~hrlf.missing.patterns.frame_mask`); then, with probability ``subset_prob``, keep only one of the six
    non-empty proper modality subsets, chosen uniformly (:func:`~hrlf.missing.patterns.sample_subsets`). The
    paper leaves the distributions unspecified; these defaults are ``hrlf_method.md`` §6.1 / ambiguity #10.

    Attributes:
        ratio_dist: ``"discrete"``: ``p`` uniform on {0, step, 2 step, ..., 1}; ``"uniform"``: ``p ~ U[0, 1)``.
        ratio_step: grid step of the discrete distribution (1 / step must be an integer).
        subset_prob: probability that a sample loses whole modalities.
        per_modality_ratio: draw one ``p`` per modality instead of one per sample shared by its modalities.
    """

    ratio_dist: Literal["discrete", "uniform"] = "discrete"
    ratio_step: float = 0.1
    subset_prob: float = 0.5
    per_modality_ratio: bool = False

    def __post_init__(self) -> None:
        if self.ratio_dist not in ("discrete", "uniform"):
            raise ValueError(f"ratio_dist must be 'discrete' or 'uniform', got {self.ratio_dist!r}")
        if not 0.0 < self.ratio_step <= 1.0 or abs(1.0 / self.ratio_step - round(1.0 / self.ratio_step)) > 1e-6:
            raise ValueError(f"ratio_step must divide 1 into an integer number of steps, got {self.ratio_step}")
        if not 0.0 <= self.subset_prob <= 1.0:
            raise ValueError(f"subset_prob must lie in [0, 1], got {self.subset_prob}")

    @property
    def name(self) -> str:
        return (
            f"msm(ratio_dist={self.ratio_dist!r}, ratio_step={self.ratio_step!r}, "
            f"subset_prob={self.subset_prob!r}, per_modality_ratio={self.per_modality_ratio!r})"
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able name and parameters, for results files."""
        return {
            "name": self.name,
            "type": "msm",
            "params": {
                "ratio_dist": self.ratio_dist,
                "ratio_step": self.ratio_step,
                "subset_prob": self.subset_prob,
                "per_modality_ratio": self.per_modality_ratio,
            },
        }

    def sample_ratios(self, batch_size: int, *, generator: torch.Generator) -> Tensor:
        """Frame-drop ratios, (B, 3) float64 on the generator's device (columns in ``MODALITIES`` order).

        Without ``per_modality_ratio`` the three columns are equal.
        """
        device = generator.device
        width = len(MODALITIES) if self.per_modality_ratio else 1
        if self.ratio_dist == "discrete":
            levels = round(1.0 / self.ratio_step)
            steps = torch.randint(levels + 1, (batch_size, width), generator=generator, device=device)  # (B, w)
            ratios = steps.double() / levels  # (B, w); i / levels is the exactly rounded grid value
        else:
            ratios = torch.rand(batch_size, width, generator=generator, device=device, dtype=torch.float64)
        return ratios.expand(batch_size, len(MODALITIES))  # (B, 3)

    def apply(self, batch: Batch, *, generator: torch.Generator) -> Batch:
        """Draws fresh MSM masks for ``batch`` (the generator advances; the input is not modified).

        Args:
            batch: the complete (or already partly missing) training batch.
            generator: the only source of randomness.

        Returns:
            A new batch with the masks OR-ed in and missing frames zeroed.
        """
        size = batch.size
        ratios = self.sample_ratios(size, generator=generator)  # (B, 3)
        new: dict[Modality, Tensor] = {}
        for j, m in enumerate(MODALITIES):
            if m in batch.features:
                new[m] = frame_mask(batch.valid[m], ratios[:, j].to(batch.valid[m].device), generator=generator)
        available = sample_subsets(size, subset_prob=self.subset_prob, generator=generator)  # (B, 3)
        for j, m in enumerate(MODALITIES):
            if m in new:
                absent = ~available[:, j].to(new[m].device)  # (B,)
                new[m] = new[m] | absent[:, None]  # (B, T): whole row, padding included, as in modality_mask
        return apply_missing(batch, new)


# ----------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class InterModality:
    """Inter-modality evaluation: only ``available`` modalities are kept; the others are zeroed entirely.

    Deterministic (no randomness). ``available`` is stored in ``MODALITIES`` order, so ``("audio", "language")``
    and ``("language", "audio")`` are the same condition with the same name.

    Attributes:
        available: the modalities that are kept.
    """

    available: tuple[Modality, ...]

    def __post_init__(self) -> None:
        given = tuple(self.available)
        unknown = [m for m in given if m not in MODALITIES]
        if unknown or len(set(given)) != len(given):
            raise ValueError(f"available must be distinct names from {MODALITIES}, got {given}")
        object.__setattr__(self, "available", tuple(m for m in MODALITIES if m in given))

    @classmethod
    def from_condition(cls, condition: str) -> InterModality:
        """Builds the protocol from a condition key of :data:`INTER_CONDITIONS` (e.g. ``"la"``)."""
        if condition not in INTER_CONDITIONS:
            raise KeyError(f"unknown condition {condition!r}; known: {', '.join(INTER_CONDITIONS)}")
        return cls(available=INTER_CONDITIONS[condition])

    @property
    def condition(self) -> str:
        """Short condition key: the available modalities' letters (``"la"``; ``""`` if none)."""
        return "".join(SHORT[m] for m in self.available)

    @property
    def name(self) -> str:
        return f"modality_drop(available={self.available!r})"

    def describe(self) -> dict[str, Any]:
        """JSON-able name and parameters, for results files."""
        return {
            "name": self.name,
            "type": "modality_drop",
            "params": {"available": _jsonable(self.available), "condition": self.condition},
        }

    def apply(self, batch: Batch) -> Batch:
        """Removes the absent modalities.

        Args:
            batch: the batch to corrupt.

        Returns:
            A new batch with absent modalities fully missing and zeroed.
        """
        return apply_missing(batch, modality_mask(batch.valid, self.available))


class EvalMaskBank:
    """Cache of per-sample evaluation uniforms, shared by the rates of an intra-modality sweep.

    Each (seed, modality, sample id) owns a stream of uniforms from a ``torch.Generator`` seeded with a stable
    BLAKE2b hash of those three values (never Python's salted ``hash()``), so the uniforms do not depend on the
    batch a sample lands in, on the process, or on the worker. A CPU generator's stream is prefix-stable (the
    first ``n`` draws of a long draw equal a short draw), so a sample padded to different lengths sees the same
    uniforms on its real frames; a row is stored at the longest length requested so far.

    Memory: one float64 per (sample, modality, frame) ever requested, e.g. about 5 MB for the MOSI test split;
    call :meth:`clear` to release it. ``modality`` names a stream: a modality, or a further stream of one
    (``language#count``).
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[int, str, str], Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        """Forgets every cached row."""
        self._rows.clear()

    @staticmethod
    def stream_seed(*, seed: int, modality: str, sample_id: str) -> int:
        """The 63-bit generator seed of one (seed, modality, sample id) stream."""
        digest = hashlib.blake2b(f"hrlf-eval-mask|{seed}|{modality}|{sample_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    def row(self, *, seed: int, modality: str, sample_id: str, length: int) -> Tensor:
        """(length,) float64 CPU uniforms in [0, 1) for one sample and modality."""
        key = (seed, modality, sample_id)
        cached = self._rows.get(key)
        if cached is None or cached.shape[0] < length:
            stream = self.stream_seed(seed=seed, modality=modality, sample_id=sample_id)
            generator = torch.Generator().manual_seed(stream)
            cached = torch.rand(length, generator=generator, dtype=torch.float64)
            self._rows[key] = cached
        return cached[:length]

    def uniforms(self, *, seed: int, modality: str, sample_ids: Sequence[str], length: int) -> Tensor:
        """(B, length) float64 CPU uniforms, one row per sample id."""
        if not sample_ids:
            return torch.empty(0, length, dtype=torch.float64)
        rows = [self.row(seed=seed, modality=modality, sample_id=s, length=length) for s in sample_ids]
        return torch.stack(rows)  # (B, length)


def _sample_keys(batch: Batch) -> list[str]:
    """Stable per-sample keys: the data file's ids, or ``index:<i>`` when the batch carries no ids."""
    if batch.ids:
        if len(batch.ids) != batch.size:
            raise ValueError(f"batch has {len(batch.ids)} ids for {batch.size} samples")
        return [f"id:{s}" for s in batch.ids]
    return [f"index:{int(i)}" for i in batch.index.tolist()]


@dataclass(frozen=True)
class IntraModality:
    """Intra-modality evaluation: ``floor(rate * L)`` frames removed in every modality of every sample.

    Per sample and modality the uniforms come from :class:`EvalMaskBank` (a function of ``seed``, modality and
    sample id), then :func:`~hrlf.missing.patterns.ranked_drop` removes the frames with the smallest uniforms. So
    masks are identical whatever the batch size, order or number of workers, and nested across rates. Protocols
    built by :func:`intra_sweep` share one bank, so the uniforms are drawn once for the whole sweep.

    Attributes:
        rate: fraction of each modality's valid frames removed, in [0, 1].
        seed: mask seed (part of the stream hash; not a global seed).
        bank: uniform cache; excluded from equality, ``repr`` and ``describe``.
    """

    rate: float
    seed: int = 0
    bank: EvalMaskBank = field(default_factory=EvalMaskBank, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, (int, float)) and not isinstance(self.rate, bool) and 0.0 <= self.rate <= 1.0):
            raise ValueError(f"rate must be a number in [0, 1], got {self.rate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        object.__setattr__(self, "rate", float(self.rate))

    @property
    def name(self) -> str:
        return f"frame_drop(rate={self.rate!r}, seed={self.seed!r})"

    def describe(self) -> dict[str, Any]:
        """JSON-able name and parameters, for results files."""
        return {"name": self.name, "type": "frame_drop", "params": {"rate": self.rate, "seed": self.seed}}

    def masks(self, batch: Batch) -> dict[Modality, Tensor]:
        """The protocol's own (B, T_m) bool missing masks for ``batch`` (without the incoming ones)."""
        keys = _sample_keys(batch)
        out: dict[Modality, Tensor] = {}
        for m, valid in batch.valid.items():
            if m not in batch.features:
                continue
            uniforms = self.bank.uniforms(seed=self.seed, modality=m, sample_ids=keys, length=valid.shape[1])
            # one more draw per sample and modality, from its own stream: the stochastic rounding offset that makes
            # the expected dropped fraction exactly the rate on short clips (fixed per sample: masks stay nested)
            offsets = self.bank.uniforms(seed=self.seed, modality=f"{m}#count", sample_ids=keys, length=1)[:, 0]
            rates = torch.full((valid.shape[0],), self.rate, dtype=torch.float64, device=valid.device)  # (B,)
            out[m] = ranked_drop(valid, rates, uniforms.to(valid.device), offsets.to(valid.device))
        return out

    def apply(self, batch: Batch) -> Batch:
        """Removes frames at ``rate`` in every modality.

        Args:
            batch: the batch to corrupt (needs ``ids``, or ``index`` as a fallback key).

        Returns:
            A new batch with the masks OR-ed in and missing frames zeroed.
        """
        return apply_missing(batch, self.masks(batch))


def intra_sweep(
    *, seed: int = 0, rates: Iterable[float] = INTRA_RATES, bank: EvalMaskBank | None = None
) -> tuple[IntraModality, ...]:
    """The intra-modality sweep as protocols sharing one :class:`EvalMaskBank`.

    Args:
        seed: mask seed.
        rates: the rates, by default :data:`INTRA_RATES`.
        bank: the cache to share (a new one by default).

    Returns:
        One :class:`IntraModality` per rate, in order.
    """
    shared = EvalMaskBank() if bank is None else bank
    return tuple(IntraModality(rate=r, seed=seed, bank=shared) for r in rates)


def inter_sweep(conditions: Iterable[str] = tuple(INTER_CONDITIONS)) -> dict[str, InterModality]:
    """The inter-modality conditions as protocols, keyed by condition (``"l"``, ..., ``"lav"``).

    Args:
        conditions: keys of :data:`INTER_CONDITIONS`, by default all seven.

    Returns:
        ``{condition: InterModality}`` in the given order.
    """
    return {c: InterModality.from_condition(c) for c in conditions}
