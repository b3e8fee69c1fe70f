"""Readers for the field's standard feature files (MMSA pickles, CMU-SDK/MulT pickles).

Both formats are ``{"train": D, "valid": D, "test": D}`` pickles; each ``D`` is a dict of numpy arrays. They are
read with the restricted unpickler of :mod:`hrlf.data.safe_pickle` (no code in the file can run), validated, and
converted to :class:`FeatureFile`. The file key ``text`` is the modality ``language``.

Formats (``field_conventions.md`` §2.1, §2.2):
    * ``"mmsa"`` (MOSI, MOSEI, SIMS, SIMSv2; MMSA and its descendants): keys ``text``, ``audio``, ``vision``
      (N, T, D), ``regression_labels`` (N,), ``id`` (N,); optional ``raw_text``, ``text_bert`` (N, 3, T_text),
      ``audio_lengths`` / ``vision_lengths`` (N,) (unaligned files only), ``annotations``,
      ``classification_labels``, ``regression_labels_T/A/V`` (SIMS). Labels are sentiment scores in [-3, 3], or
      in [-1, 1] for SIMS-like files (all labels within [-1, 1] and a ``regression_labels_T`` key).
    * ``"mult"`` (MulT / CMU-SDK; the usual IEMOCAP source): keys ``text``, ``audio``, ``vision``, ``labels``, optional
      ``id``. Labels (N, 1, 1) are sentiment scores in [-3, 3]; labels (N, 4, 2) are IEMOCAP one-hot
      [absent, present] pairs, read as ``argmax(-1)`` -> (N, 4) int64 targets (Neutral, Happy, Sad, Angry).
      Ids of shape (N,) or (N, K) (byte strings are decoded as UTF-8) are joined per row with ``$_$``; without
      ``id`` a sample is called ``<split>_<index>``.

Feature dimensions and sequence lengths always come from the file, never from constants.

Valid (padding) masks, per modality, first rule that applies:
    1. ``<key>_lengths`` exists (MMSA unaligned files pad at the END): ``valid = arange(T) < length``.
    2. language in an MMSA file with ``text_bert`` (N, 3, T_text) whose features are dense (no all-zero frame, as
       BERT hidden states, which are non-zero at [PAD] positions): the BERT attention-mask row
       ``text_bert[:, 1, :]`` (1 = token, 0 = padding). Zero-padded word features (GloVe) fall through to rule 3:
       their [CLS]/[SEP]-shifted token mask does not index the word-aligned frames.
    3. otherwise the mask is inferred: a frame is valid when any of its feature values is non-zero (after the
       non-finite policy is applied). When all the modalities whose masks are inferred share one T (aligned
       files), the union over them is used, so their masks are identical: aligned files share one padding (the
       CMU-SDK aligned files pad at the START), and a single modality may hold an all-zero real frame. A real
       frame that is zero in every inferred modality is indistinguishable from padding and counted as padding.

Non-finite feature values (MOSEI audio holds ``-inf``) follow the ``nonfinite`` policy: ``"zero"`` replaces them
by 0 in place, counts them per ``"<split>/<key>"`` and logs a warning; ``"error"`` raises :class:`DataFileError`.
Every schema problem raises :class:`DataFileError` with one line naming the file, split, key, what was expected
and what was found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrlf.errors import HrlfError
from hrlf.types import IEMOCAP_EMOTIONS, SPLITS, Modality, Split, TaskSpec

logger = logging.getLogger(__name__)

__all__ = ["DataFileError", "FeatureFile", "SplitData", "describe", "load_features"]


class DataFileError(HrlfError, ValueError):
    """A data file is unreadable or does not match its schema; the message is one line for the user."""


@dataclass(frozen=True)
class SplitData:
    """One split of a feature file, with named modalities.

    Attributes:
        features: per modality (N, T_m, D_m) float32 (non-finite values already handled by policy).
        valid: per modality (N, T_m) bool, True = real frame, False = padding.
        labels: regression (N,) float32; emotions (N, K) int64 in {0, 1}.
        ids: N sample ids (MMSA ``video$_$clip``; MulT ids joined with ``$_$``).
        raw_text: N transcripts when the file has them.
        tokens: (N, T_language) int64 token ids (MMSA ``text_bert[:, 0]``) when the file has them.
    """

    features: dict[Modality, np.ndarray]
    valid: dict[Modality, np.ndarray]
    labels: np.ndarray
    ids: list[str]
    raw_text: list[str] | None = None
    tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class FeatureFile:
    """A whole feature file.

    Attributes:
        path: where it was read from.
        format: ``"mmsa"`` or ``"mult"``.
        task: label semantics (regression for MOSI/MOSEI/SIMS, emotions for IEMOCAP).
        splits: ``train``, ``valid``, ``test``.
        sha256: hex digest of the file bytes (the data fingerprint written into checkpoints).
        nonfinite: counts of non-finite feature values found, keyed ``"<split>/<key>"`` (only non-zero counts).
    """

    path: str
    format: str
    task: TaskSpec
    splits: dict[Split, SplitData]
    sha256: str
    nonfinite: dict[str, int] = field(default_factory=dict)

    @property
    def dims(self) -> dict[Modality, int]:
        train = self.splits["train"]
        return {m: int(x.shape[-1]) for m, x in train.features.items()}

    @property
    def lengths(self) -> dict[Modality, int]:
        train = self.splits["train"]
        return {m: int(x.shape[1]) for m, x in train.features.items()}


# The file layout, shared by this reader and the writers (hrlf.data.synth, hrlf.extract.pipeline).
#: file key of each modality (both formats call language ``text``)
FILE_KEYS: dict[Modality, str] = {"language": "text", "audio": "audio", "vision": "vision"}
#: label key of each file format
LABEL_KEYS: dict[str, str] = {"mmsa": "regression_labels", "mult": "labels"}


def lengths_key(modality: Modality) -> str:
    """Key of a modality's real length per clip (unaligned MMSA files and ``hrlf extract``'s; aligned files have
    none)."""
    return f"{FILE_KEYS[modality]}_lengths"


#: accepted values of ``load_features(nonfinite=...)``
NONFINITE_POLICIES: tuple[str, ...] = ("zero", "error")
#: sentiment range of MOSI/MOSEI and of SIMS-like files
SENTIMENT_RANGE: tuple[float, float] = (-3.0, 3.0)
SIMS_RANGE: tuple[float, float] = (-1.0, 1.0)

#: (task, train, valid, test sizes) of the field's standard files: they name the dataset of a file, which carries
#: no name of its own (results say "mosi", never the name of the folder the file happens to sit in)
STANDARD_DATASETS: dict[tuple[str, int, int, int], str] = {
    ("regression", 1284, 229, 686): "mosi",
    ("regression", 16326, 1871, 4659): "mosei",
    ("regression", 1368, 456, 457): "sims",
    ("emotions", 2717, 798, 938): "iemocap",
}

ID_SEPARATOR = "$_$"  # MMSA ids are video$_$clip; the one definition (labels, synth, GCNet use it)
_CHUNK_ELEMENTS = 1 << 24  # elements per step in full-array scans (bounds temporaries on MOSEI-sized files)


@dataclass(frozen=True)
class _Where:
    """Location of a value inside a file, for one-line error messages."""

    source: str
    split: str

    def error(self, key: str, expected: str, found: str) -> DataFileError:
        return DataFileError(f"{self.source}: split '{self.split}' key '{key}': expected {expected}, found {found}")


# ----------------------------------------------------------------------------------------------- public API


def load_features(path: str | os.PathLike[str], *, nonfinite: str = "zero") -> FeatureFile:
    """Read an MMSA or MulT/CMU-SDK feature pickle safely, validate it and convert it.

    Args:
        path: the ``.pkl`` file.
        nonfinite: ``"zero"`` replaces non-finite feature values by 0 (counted and logged); ``"error"`` refuses
            the file.

    Returns:
        The validated file: float32 features, bool valid masks, labels, ids and the SHA-256 of the file bytes.

    Raises:
        ValueError: ``nonfinite`` is not one of :data:`NONFINITE_POLICIES`.
        UnsafePickleError: the pickle names a global other than numpy's (nothing was executed).
        DataFileError: the file is missing, unreadable or does not match the schema.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    # imported here: safe_pickle imports DataFileError from this module
    from hrlf.data.safe_pickle import load_with_sha256

    source = os.fspath(path)
    raw, digest = load_with_sha256(source)
    split_dicts = _check_splits(raw, source)
    del raw
    fmt = _detect_format(split_dicts["train"], source)
    task = _detect_task(split_dicts, fmt, source)

    counts: dict[str, int] = {}
    splits: dict[Split, SplitData] = {}
    reference_dims: dict[Modality, int] | None = None
    for split in SPLITS:
        # the split dict is popped so each raw array is released as soon as it is converted
        data = _read_split(
            split_dicts.pop(split),
            where=_Where(source, split),
            fmt=fmt,
            task=task,
            nonfinite=nonfinite,
            reference_dims=reference_dims,
            counts=counts,
        )
        reference_dims = reference_dims or {m: int(x.shape[2]) for m, x in data.features.items()}
        splits[split] = data

    if counts:
        listed = ", ".join(f"{key} {count}" for key, count in counts.items())
        logger.warning("%s: replaced %d non-finite feature values by 0 (%s)", source, sum(counts.values()), listed)
    result = FeatureFile(path=source, format=fmt, task=task, splits=splits, sha256=digest, nonfinite=counts)
    logger.info(
        "%s: %s file, %s task, N = %s, dims %s",
        source,
        fmt,
        task.kind,
        "/".join(str(len(splits[s])) for s in SPLITS),
        result.dims,
    )
    return result


def dataset_name(ff: FeatureFile) -> str:
    """The dataset a feature file holds: a standard one recognised by its task and split sizes (MOSI, MOSEI,
    SIMS, IEMOCAP, also as text-only extractions), else the file's own name without its extension."""
    train, valid, test = (len(ff.splits[s]) for s in SPLITS)
    return STANDARD_DATASETS.get((ff.task.kind, train, valid, test), Path(ff.path).stem)


def describe(ff: FeatureFile) -> str:
    """A human-readable summary of a feature file (used by ``hrlf inspect``).

    Args:
        ff: a loaded feature file.

    Returns:
        Several lines: format, task, SHA-256 prefix, then per split N, per modality (T, D) and mean valid length,
        label statistics, and the non-finite counts.
    """
    task = ff.task
    if task.kind == "emotions":
        task_line = f"task: emotions, one binary target per emotion ({', '.join(task.label_names)})"
    else:
        low, high = task.label_range
        task_line = f"task: regression, labels in [{low:g}, {high:g}]"
    lines = [f"file: {ff.path}", f"format: {ff.format}", task_line, f"sha256: {ff.sha256[:16]}..."]
    for split, data in ff.splits.items():
        lines.append(f"{split}: N = {len(data)}")
        for modality, x in data.features.items():
            _, t, d = x.shape
            valid_lengths = data.valid[modality].sum(axis=1)  # (N, T) -> (N,)
            line = f"  {modality:<8} (T, D) = ({t}, {d}), mean valid length {valid_lengths.mean():.1f}"
            empty = int(np.count_nonzero(valid_lengths == 0))
            if empty:
                line += f" ({empty} sample{'s' if empty > 1 else ''} without any valid frame)"
            lines.append(line)
        lines.append("  labels   " + _label_summary(data.labels, task))
    if ff.nonfinite:
        listed = ", ".join(f"{key} {count}" for key, count in ff.nonfinite.items())
        lines.append(f"non-finite feature values replaced by 0: {listed}")
    else:
        lines.append("non-finite feature values: none")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ file structure


def _check_splits(raw: object, source: str) -> dict[Split, dict[str, Any]]:
    expected = ", ".join(f"'{s}'" for s in SPLITS)
    if not isinstance(raw, dict):
        raise DataFileError(f"{source}: expected a dict with the splits {expected}, found {type(raw).__name__}")
    split_dicts: dict[Split, dict[str, Any]] = {}
    for split in SPLITS:
        if split not in raw:
            found = sorted(str(k) for k in raw)
            raise DataFileError(f"{source}: split '{split}': expected the splits {expected}, found keys {found}")
        data = raw[split]
        if not isinstance(data, dict):
            raise DataFileError(f"{source}: split '{split}': expected a dict of arrays, found {type(data).__name__}")
        split_dicts[split] = data
    return split_dicts


def _detect_format(train: Mapping[str, Any], source: str) -> str:
    if "regression_labels" in train:
        return "mmsa"
    if "labels" in train:
        return "mult"
    raise _Where(source, "train").error(
        "regression_labels",
        "'regression_labels' (MMSA file) or 'labels' (MulT/CMU-SDK file)",
        f"keys {sorted(str(k) for k in train)}",
    )


def _detect_task(split_dicts: Mapping[Split, Mapping[str, Any]], fmt: str, source: str) -> TaskSpec:
    if fmt == "mmsa":
        sims_like = "regression_labels_T" in split_dicts["train"] and all(
            _all_within(data.get("regression_labels"), SIMS_RANGE) for data in split_dicts.values()
        )
        return TaskSpec(kind="regression", label_range=SIMS_RANGE if sims_like else SENTIMENT_RANGE)
    labels = split_dicts["train"].get("labels")
    if isinstance(labels, np.ndarray) and labels.ndim == 3 and labels.shape[1:] == (len(IEMOCAP_EMOTIONS), 2):
        return TaskSpec(kind="emotions", label_names=IEMOCAP_EMOTIONS)
    if isinstance(labels, np.ndarray) and labels.ndim == 3 and labels.shape[1:] != (1, 1):
        raise _Where(source, "train").error(
            "labels", "(N, 1, 1) sentiment scores or (N, 4, 2) IEMOCAP emotion pairs", f"shape {labels.shape}"
        )
    # malformed or missing labels are reported by the per-split validation
    return TaskSpec(kind="regression", label_range=SENTIMENT_RANGE)


def _all_within(values: object, bounds: tuple[float, float]) -> bool:
    if not isinstance(values, np.ndarray) or not _is_numeric(values.dtype) or values.size == 0:
        return False
    return bool(np.all((values >= bounds[0]) & (values <= bounds[1])))


# ------------------------------------------------------------------------------------------------ one split


def _read_split(
    data: dict[str, Any],
    *,
    where: _Where,
    fmt: str,
    task: TaskSpec,
    nonfinite: str,
    reference_dims: Mapping[Modality, int] | None,
    counts: dict[str, int],
) -> SplitData:
    required = (*FILE_KEYS.values(), LABEL_KEYS[fmt]) + (("id",) if fmt == "mmsa" else ())
    for key in required:
        if key not in data:
            name = "an MMSA" if fmt == "mmsa" else "a MulT/CMU-SDK"
            raise where.error(key, f"the key in {name} file", f"only keys {sorted(str(k) for k in data)}")

    label_key = LABEL_KEYS[fmt]
    labels = _read_labels(data.pop(label_key), where=where, key=label_key, task=task)
    n = int(labels.shape[0])

    features: dict[Modality, np.ndarray] = {}
    valid: dict[Modality, np.ndarray] = {}
    inferred: list[Modality] = []
    for modality, key in FILE_KEYS.items():
        x = _read_features(data.pop(key), where=where, key=key, n=n, reference_dims=reference_dims, modality=modality)
        count = _apply_nonfinite(x, policy=nonfinite, where=where, key=key)
        if count:
            counts[f"{where.split}/{key}"] = count
        features[modality] = x
        length_key = lengths_key(modality)
        if length_key in data:
            lengths = _read_lengths(data.pop(length_key), where=where, key=length_key, n=n, t=x.shape[1])
            valid[modality] = np.arange(x.shape[1])[None, :] < lengths[:, None]  # (N, 1) vs (1, T) -> (N, T)
        elif modality == "language" and fmt == "mmsa" and "text_bert" in data and _nonzero_frames(x).all():
            # dense token features (BERT hidden states are non-zero at [PAD] too): padding from the attention mask
            valid[modality] = _read_attention_mask(data["text_bert"], where=where, n=n, t=x.shape[1])
        else:
            if modality == "language" and "text_bert" in data:
                # zero-padded word features (GloVe): the zero frames are the padding; text_bert is still checked
                _read_attention_mask(data["text_bert"], where=where, n=n, t=x.shape[1])
            valid[modality] = _nonzero_frames(x)
            inferred.append(modality)

    if len(inferred) > 1 and len({features[m].shape[1] for m in inferred}) == 1:
        shared = np.logical_or.reduce([valid[m] for m in inferred])  # k x (N, T) -> (N, T)
        for modality in inferred:
            valid[modality] = shared.copy()

    # the token ids, for a model that runs its own text encoder; files whose text_bert does not fit the language
    # axis (or holds no usable ids) read as before, without ids, and such a model refuses them by name
    text_bert = data.pop("text_bert", None) if fmt == "mmsa" else None
    tokens = _token_ids(text_bert, n=n, t=features["language"].shape[1])
    ids = _read_ids(data.get("id"), where=where, n=n)
    raw_text = _read_strings(data["raw_text"], where=where, key="raw_text", n=n) if "raw_text" in data else None
    return SplitData(features=features, valid=valid, labels=labels, ids=ids, raw_text=raw_text, tokens=tokens)


def _is_numeric(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.bool_) or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))


def _check_array(value: object, *, where: _Where, key: str, ndim: int, layout: str) -> np.ndarray:
    """``value`` as a numeric ndarray of ``ndim`` dimensions, or a DataFileError."""
    expected = f"a {ndim}-D array {layout}"
    if not isinstance(value, np.ndarray):
        raise where.error(key, expected, type(value).__name__)
    if value.ndim != ndim:
        raise where.error(key, expected, f"shape {value.shape}")
    if not _is_numeric(value.dtype):
        raise where.error(key, "a numeric array (bool, integer or float)", f"dtype {value.dtype}")
    return value


def _check_count(found: int, *, n: int, where: _Where, key: str) -> None:
    if found != n:
        raise where.error(key, f"N = {n} samples (as in the labels)", f"{found}")


def _read_labels(value: object, *, where: _Where, key: str, task: TaskSpec) -> np.ndarray:
    if task.kind == "emotions":
        layout = f"(N, {len(task.label_names)}, 2)"
        raw = _check_array(value, where=where, key=key, ndim=3, layout=layout)
        if raw.shape[1:] != (len(task.label_names), 2):
            raise where.error(key, f"IEMOCAP emotion pairs {layout}", f"shape {raw.shape}")
    elif key == "labels":  # MulT sentiment scores
        raw = _check_array(value, where=where, key=key, ndim=3, layout="(N, 1, 1)")
        if raw.shape[1:] != (1, 1):
            raise where.error(key, "sentiment scores (N, 1, 1)", f"shape {raw.shape}")
    else:
        raw = _check_array(value, where=where, key=key, ndim=1, layout="(N,)")
    if raw.shape[0] == 0:
        raise where.error(key, "at least one sample", "N = 0 (empty split)")

    if task.kind == "emotions":
        binary = (raw == 0) | (raw == 1)
        one_hot = binary.all(axis=-1) & (raw.sum(axis=-1) == 1)  # (N, K, 2) -> (N, K)
        bad = int(np.count_nonzero(~one_hot))
        if bad:
            raise where.error(key, "one-hot [absent, present] pairs of 0/1 values", f"{bad} pairs that are not")
        return raw.argmax(axis=-1).astype(np.int64)  # (N, K, 2) -> (N, K)

    scores = raw.reshape(raw.shape[0]).astype(np.float32)  # (N,) or (N, 1, 1) -> (N,)
    finite = np.isfinite(scores)
    if not finite.all():
        raise where.error(key, "finite sentiment scores", f"{int(np.count_nonzero(~finite))} non-finite values")
    low, high = task.label_range
    if scores.min() < low or scores.max() > high:
        found = f"min {scores.min():g}, max {scores.max():g}"
        raise where.error(key, f"sentiment scores in [{low:g}, {high:g}]", found)
    return scores


def _read_features(
    value: object,
    *,
    where: _Where,
    key: str,
    n: int,
    reference_dims: Mapping[Modality, int] | None,
    modality: Modality,
) -> np.ndarray:
    """The (N, T, D) features as a writable float32 array, copied only when the dtype or flags require it."""
    raw = _check_array(value, where=where, key=key, ndim=3, layout="(N, T, D)")
    _check_count(raw.shape[0], n=n, where=where, key=key)
    if raw.shape[1] == 0 or raw.shape[2] == 0:
        raise where.error(key, "a 3-D array (N, T, D) with T >= 1 and D >= 1", f"shape {raw.shape}")
    if reference_dims is not None and raw.shape[2] != reference_dims[modality]:
        raise where.error(
            key, f"feature dim D = {reference_dims[modality]} (as in split 'train')", f"D = {raw.shape[2]}"
        )
    x = raw.astype(np.float32, copy=False)
    if not x.flags.writeable:  # e.g. protocol-5 buffers backed by bytes; the policy below works in place
        x = x.copy()
    return x


def _row_chunks(x: np.ndarray) -> range:
    """Start indices of row blocks holding about ``_CHUNK_ELEMENTS`` elements each."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, x[0].size))
    return range(0, x.shape[0], rows)


def _apply_nonfinite(x: np.ndarray, *, policy: str, where: _Where, key: str) -> int:
    """Count non-finite values of ``x``; zero them in place (``"zero"``) or refuse the file (``"error"``)."""
    step = _row_chunks(x).step
    total = 0
    for start in _row_chunks(x):
        block = x[start : start + step]  # a view: writes go to x
        bad = ~np.isfinite(block)
        count = int(np.count_nonzero(bad))
        if count and policy == "zero":
            block[bad] = 0.0
        total += count
    if total and policy == "error":
        raise where.error(key, "finite feature values (nonfinite='error')", f"{total} non-finite values (nan/inf)")
    return total


def _nonzero_frames(x: np.ndarray) -> np.ndarray:
    """(N, T, D) -> (N, T) bool: frames with any non-zero value."""
    step = _row_chunks(x).step
    out = np.empty(x.shape[:2], dtype=bool)
    for start in _row_chunks(x):
        out[start : start + step] = np.any(x[start : start + step] != 0, axis=-1)  # (n, T, D) -> (n, T)
    return out


def _read_lengths(value: object, *, where: _Where, key: str, n: int, t: int) -> np.ndarray:
    raw = value if isinstance(value, np.ndarray) else _as_array(value)
    lengths = _check_array(raw, where=where, key=key, ndim=1, layout="(N,)")
    _check_count(lengths.shape[0], n=n, where=where, key=key)
    if np.issubdtype(lengths.dtype, np.floating) and not (
        np.all(np.isfinite(lengths)) and np.array_equal(np.floor(lengths), lengths)
    ):
        raise where.error(key, "integer lengths", f"dtype {lengths.dtype} with fractional or non-finite values")
    if lengths.min() < 0 or lengths.max() > t:
        raise where.error(key, f"lengths in [0, T = {t}]", f"min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths.astype(np.int64, copy=False)


def _as_array(value: object) -> object:
    """Lists of numbers (some writers store lengths as lists) become arrays; anything else is returned as is."""
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except ValueError:
            return value
    return value


def _read_attention_mask(value: object, *, where: _Where, n: int, t: int) -> np.ndarray:
    layout = f"(N, 3, T) = ({n}, 3, {t}) [input ids; attention mask; token types]"
    text_bert = _check_array(value, where=where, key="text_bert", ndim=3, layout=layout)
    if text_bert.shape != (n, 3, t):
        raise where.error("text_bert", f"shape {layout}", f"shape {text_bert.shape}")
    mask = text_bert[:, 1, :]  # (N, 3, T) -> (N, T)
    if not np.all((mask == 0) | (mask == 1)):
        raise where.error("text_bert", "an attention mask (row 1) of 0/1 values", f"values {np.unique(mask)[:5]}")
    return mask != 0


def _token_ids(text_bert: object, *, n: int, t: int) -> np.ndarray | None:
    """(N, T) int64 input ids from ``text_bert`` (N, 3, T) row 0, or None when it is absent or unusable (another
    shape than the language features', non-integer or negative ids)."""
    if not (isinstance(text_bert, np.ndarray) and text_bert.shape == (n, 3, t) and _is_numeric(text_bert.dtype)):
        return None
    ids = text_bert[:, 0, :]  # (N, 3, T) -> (N, T)
    if np.issubdtype(ids.dtype, np.floating) and not np.all(np.isfinite(ids) & (ids == np.round(ids))):
        return None
    if ids.size and ids.min() < 0:
        return None
    return np.ascontiguousarray(ids, dtype=np.int64)


def _to_text(value: object, *, where: _Where, key: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise where.error(key, "UTF-8 byte strings", f"undecodable bytes {value[:20]!r} ({error.reason})") from None
    return str(value)


def _read_strings(value: object, *, where: _Where, key: str, n: int) -> list[str]:
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise where.error(key, "a 1-D array (N,) of strings", f"shape {value.shape}")
    if not isinstance(value, (np.ndarray, list, tuple)):
        raise where.error(key, "a 1-D array (N,) of strings", type(value).__name__)
    _check_count(len(value), n=n, where=where, key=key)
    return [_to_text(item, where=where, key=key) for item in value]


def _read_ids(value: object, *, where: _Where, n: int) -> list[str]:
    if value is None:
        return [f"{where.split}_{i}" for i in range(n)]
    if isinstance(value, np.ndarray):
        if value.ndim not in (1, 2):
            raise where.error("id", "ids of shape (N,) or (N, K)", f"shape {value.shape}")
    elif not isinstance(value, (list, tuple)):
        raise where.error("id", "ids of shape (N,) or (N, K)", type(value).__name__)
    _check_count(len(value), n=n, where=where, key="id")
    ids: list[str] = []
    for row in value:
        if isinstance(row, (np.ndarray, list, tuple)):
            ids.append(ID_SEPARATOR.join(_to_text(part, where=where, key="id") for part in row))
        else:
            ids.append(_to_text(row, where=where, key="id"))
    return ids


def _label_summary(labels: np.ndarray, task: TaskSpec) -> str:
    if task.kind == "emotions":
        positives = labels.sum(axis=0)  # (N, K) -> (K,)
        listed = ", ".join(f"{name} {int(p)}" for name, p in zip(task.label_names, positives, strict=True))
        return f"positives per emotion (of {labels.shape[0]}): {listed}"
    scores = labels.astype(np.float64)
    return (
        f"mean {scores.mean():.3f}, std {scores.std():.3f}, min {scores.min():.3f}, max {scores.max():.3f}, "
        f"zero {np.mean(scores == 0):.1%}, positive {np.mean(scores > 0):.1%}"
    )
