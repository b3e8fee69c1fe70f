"""Reader for ``label.csv`` files: the MMSA-FET layout and the MOSI ``id,text,label,mode`` variant.

Two layouts are accepted (``field_conventions.md`` §2.3); the header decides which one a file uses:

* **MMSA-FET**: ``video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode``. ``video_id``,
  ``clip_id`` and ``text`` stay strings (a clip id ``"0001"`` is not an int); empty unimodal labels mean
  "absent". ``label_T/A/V`` and ``annotation`` are optional columns.
* **MOSI variant** (``../shared/data/mosi/label.csv``): ``id, text, label, mode`` with
  ``id = <video_id>_<clip_index>``, split on the **last** underscore because YouTube ids contain ``_``.

In both layouts ``mode`` is ``train`` / ``valid`` / ``test`` (any case) with ``dev`` accepted as an alias of
``valid``. Any other mode (a typo, an empty cell) is an error naming the line, unless the caller asks to skip such
rows (``skip_unknown_modes=True``, ``hrlf extract --skip-unknown-modes``): then they are left out, counted and a
warning names the count per mode (MMSA-FET leaves them out silently). Labels (``label`` and the unimodal
``label_T/A/V``) must be finite sentiment scores in [-3, 3], the range the feature-file reader enforces
(:data:`hrlf.data.features.SENTIMENT_RANGE`; SIMS scores in [-1, 1] lie within it), so a label file that passes
here never yields a feature file that is refused later. Every problem raises :class:`LabelFileError` with a
one-line message naming the file, the line, the column, what was expected and what was found.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hrlf.data.features import ID_SEPARATOR, SENTIMENT_RANGE
from hrlf.errors import HrlfError
from hrlf.types import Modality, Split

logger = logging.getLogger(__name__)

#: environment variable that points at the MOSI label file
MOSI_LABELS_ENV = "HRLF_MOSI_LABELS"
#: where the MOSI label file lies relative to the folder that holds ``shared/``
MOSI_LABELS_RELPATH = Path("shared") / "data" / "mosi" / "label.csv"

_MODES: dict[str, Split] = {"train": "train", "valid": "valid", "dev": "valid", "test": "test"}
_EXPECTED_MODES = "train, valid (or dev) or test"
_FET_REQUIRED = ("video_id", "clip_id", "text", "label", "mode")
_FET_UNIMODAL: dict[str, Modality] = {"label_T": "language", "label_A": "audio", "label_V": "vision"}
_MOSI_REQUIRED = ("id", "text", "label", "mode")


class _Records(Protocol):
    """What the parser needs from ``csv.reader``: records and the current line number."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


class LabelFileError(HrlfError, ValueError):
    """A label file is missing or does not match its layout; the message is one line for the user."""


@dataclass(frozen=True)
class LabelRow:
    """One clip of a label file.

    Attributes:
        video_id: source video id (a string, may contain ``_``).
        clip_id: clip id within the video (a string, leading zeros kept).
        text: transcript of the clip.
        label: multimodal regression label (sentiment intensity, finite).
        mode: split the clip belongs to (``dev`` already mapped to ``valid``).
        sample_id: ``video_id + "$_$" + clip_id``, the id used in MMSA pickles.
        label_language: unimodal language label (MMSA-FET ``label_T``); None when absent.
        label_audio: unimodal audio label (``label_A``); None when absent.
        label_vision: unimodal vision label (``label_V``); None when absent.
        annotation: annotation string (e.g. ``"Positive"``); None when the layout has none.
    """

    video_id: str
    clip_id: str
    text: str
    label: float
    mode: Split
    sample_id: str
    label_language: float | None = None
    label_audio: float | None = None
    label_vision: float | None = None
    annotation: str | None = None


def _parse_label(value: str, *, path: Path, line: int, column: str) -> float:
    """Parse one label cell: a finite sentiment score within :data:`SENTIMENT_RANGE`, else raise."""
    try:
        number = float(value.strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise LabelFileError(f"{path}: line {line}, column '{column}': expected a finite number, found {value!r}")
    low, high = SENTIMENT_RANGE
    if not low <= number <= high:
        raise LabelFileError(
            f"{path}: line {line}, column '{column}': expected a sentiment score in [{low:g}, {high:g}] "
            f"(as feature files require), found {value.strip()!r}"
        )
    return number


def _detect_layout(header: list[str], path: Path) -> str:
    """Return ``"fet"`` or ``"mosi"`` from the header row, or raise naming the missing columns."""
    names = set(header)
    required: tuple[str, ...]
    if "video_id" in names or "clip_id" in names:
        layout, required = "fet", _FET_REQUIRED
    elif "id" in names:
        layout, required = "mosi", _MOSI_REQUIRED
    else:
        raise LabelFileError(
            f"{path}: line 1 (header): expected columns {', '.join(_FET_REQUIRED)} (MMSA-FET layout) "
            f"or {', '.join(_MOSI_REQUIRED)} (MOSI layout), found {', '.join(header) or 'no columns'}"
        )
    missing = [c for c in required if c not in names]
    if missing:
        raise LabelFileError(
            f"{path}: line 1 (header): missing required column '{missing[0]}' of the "
            f"{'MMSA-FET' if layout == 'fet' else 'MOSI'} layout (expected {', '.join(required)}), "
            f"found {', '.join(header)}"
        )
    return layout


def read_label_csv(path: str | os.PathLike[str], *, skip_unknown_modes: bool = False) -> list[LabelRow]:
    """Read a ``label.csv`` in the MMSA-FET layout or the MOSI ``id,text,label,mode`` variant.

    Args:
        path: the csv file (UTF-8, header row, comma-separated; a BOM is tolerated).
        skip_unknown_modes: leave out rows whose mode is not train / valid / dev / test (with a warning that
            counts them) instead of refusing the file.

    Returns:
        One :class:`LabelRow` per clip whose mode is train / valid / dev / test, in file order.

    Raises:
        LabelFileError: the file is missing, empty, not UTF-8 or not well-formed CSV, a required column is
            missing, a row has the wrong number of fields, an id is empty or cannot be split, a label is not a
            finite number in [-3, 3], or a mode is unknown (without ``skip_unknown_modes``; with it, when no
            row is left).
    """
    file = Path(path)
    if not file.is_file():
        raise LabelFileError(f"{file}: label file not found (expected an existing csv file)")
    raw = file.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        found = exc.object[exc.start : exc.end]
        raise LabelFileError(f"{file}: line {line}: expected UTF-8 text, found undecodable byte(s) {found!r}") from None
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    try:
        return _parse_rows(reader, file, skip_unknown_modes=skip_unknown_modes)
    except csv.Error as exc:
        raise LabelFileError(f"{file}: line {reader.line_num}: expected well-formed CSV, found {exc}") from None


def _parse_rows(reader: _Records, file: Path, *, skip_unknown_modes: bool) -> list[LabelRow]:
    """Turn the csv records of one label file into rows (see :func:`read_label_csv`)."""
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise LabelFileError(f"{file}: line 1: expected a header row, found an empty file") from None
    layout = _detect_layout(header, file)
    column = {name: i for i, name in enumerate(header)}
    rows: list[LabelRow] = []
    skipped: Counter[str] = Counter()
    for record in reader:
        line = reader.line_num
        if not record or all(not cell.strip() for cell in record):
            continue  # blank lines carry no clip
        if len(record) != len(header):
            raise LabelFileError(
                f"{file}: line {line}: expected {len(header)} fields (as in the header), found {len(record)}"
            )
        mode_text = record[column["mode"]].strip()
        mode = _MODES.get(mode_text.lower())
        if mode is None:
            if not skip_unknown_modes:
                raise LabelFileError(
                    f"{file}: line {line}, column 'mode': expected {_EXPECTED_MODES}, found {mode_text!r} "
                    "(to leave such rows out: hrlf extract --skip-unknown-modes)"
                )
            skipped[mode_text] += 1
            continue
        if layout == "fet":
            video_id, clip_id = record[column["video_id"]], record[column["clip_id"]]
            if not video_id or not clip_id:
                empty = "video_id" if not video_id else "clip_id"
                raise LabelFileError(f"{file}: line {line}, column '{empty}': expected a non-empty id, found ''")
        else:
            full_id = record[column["id"]].strip()
            video_id, sep, clip_id = full_id.rpartition("_")
            if not sep or not video_id or not clip_id:
                raise LabelFileError(
                    f"{file}: line {line}, column 'id': expected '<video_id>_<clip_index>', found {full_id!r}"
                )
        label = _parse_label(record[column["label"]], path=file, line=line, column="label")
        unimodal: dict[Modality, float] = {
            modality: _parse_label(record[column[name]], path=file, line=line, column=name)
            for name, modality in _FET_UNIMODAL.items()
            if name in column and record[column[name]].strip()  # empty unimodal label = absent
        }
        annotation = record[column["annotation"]] if "annotation" in column else None
        rows.append(
            LabelRow(
                video_id=video_id,
                clip_id=clip_id,
                text=record[column["text"]],
                label=label,
                mode=mode,
                sample_id=video_id + ID_SEPARATOR + clip_id,
                label_language=unimodal.get("language"),
                label_audio=unimodal.get("audio"),
                label_vision=unimodal.get("vision"),
                annotation=annotation,
            )
        )
    if not rows and not skipped:
        raise LabelFileError(f"{file}: line 2: expected at least one data row after the header, found none")
    if skipped:
        counts = ", ".join(f"{mode!r}: {n}" for mode, n in sorted(skipped.items()))
        if not rows:
            raise LabelFileError(
                f"{file}: expected rows whose column 'mode' is {_EXPECTED_MODES}, found none "
                f"(all {sum(skipped.values())} rows have other modes: {counts})"
            )
        logger.warning(
            "%s: left out %d rows whose mode is not %s (%s)", file, sum(skipped.values()), _EXPECTED_MODES, counts
        )
    return rows


def _candidate_roots() -> list[Path]:
    """Folders to search for ``shared/``: the working directory, this file's folder, and all their parents."""
    roots: list[Path] = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if folder not in roots:
                roots.append(folder)
    return roots


def find_mosi_label_csv() -> Path | None:
    """The MOSI label file as :func:`default_mosi_label_csv` finds it, or None when there is none.

    Raises:
        LabelFileError: ``$HRLF_MOSI_LABELS`` is set to a missing file (a stated path that is wrong is an error).
    """
    env = os.environ.get(MOSI_LABELS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise LabelFileError(f"{path}: label file not found (set by ${MOSI_LABELS_ENV}; expected an existing csv)")
        return path
    for root in _candidate_roots():
        candidate = root / MOSI_LABELS_RELPATH
        if candidate.is_file():
            return candidate
    return None


def default_mosi_label_csv() -> Path:
    """Locate the MOSI label file.

    ``$HRLF_MOSI_LABELS`` wins when set; otherwise ``shared/data/mosi/label.csv`` is looked for in the working
    directory, this file's folder and each of their parents (the project runs with ``shared/`` beside the
    repository, i.e. at ``<repo root>/../shared``).

    Returns:
        The path of an existing file.

    Raises:
        LabelFileError: the variable points at a missing file, or no ``shared/`` folder holds the file.
    """
    found = find_mosi_label_csv()
    if found is not None:
        return found
    raise LabelFileError(
        f"MOSI label file not found: no {MOSI_LABELS_RELPATH} above {Path.cwd()} or {Path(__file__).parent}; "
        f"set ${MOSI_LABELS_ENV}=/path/to/label.csv or pass the path explicitly (label_csv=...)"
    )
