"""Prediction on new clips with whatever modalities they have: :class:`Predictor` and ``hrlf predict``.

Inputs: a video or audio file or a photo (features from the offline extractors of :mod:`hrlf.extract`; the
media extra), a transcript (``text=``; language only), or a feature file (every clip of every split, as stored).
Each result says which modalities were available and how the prediction moves when each of them is removed
(the model sees the removed modality as missing, exactly as under the evaluation protocols)::

    {"input": "clip.mp4", "score": 1.42, "polarity": "positive", "available": ["language", "audio", "vision"],
     "removed": {"language": {"score": 0.31, "change": -1.11}, ...}, "transcript": "...", "alignment": "word"}

IEMOCAP-style checkpoints (four emotions) report ``emotions`` (probability that each is present) instead of a
score and polarity, and ``change`` per emotion.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrlf.engine.run import LoadedRun, load_run
from hrlf.errors import HrlfError
from hrlf.types import MODALITIES, SPLITS, Batch, Modality

__all__ = ["PredictError", "Predictor", "json_row"]

FEATURE_FILE_EXTENSIONS = (".pkl", ".pickle")


class PredictError(HrlfError, ValueError):
    """An input or checkpoint that cannot be used for prediction; one line for the user."""


def _polarity(score: float) -> str:
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


class Predictor:
    """A trained run's inference model, ready for new clips."""

    def __init__(self, *, run: LoadedRun, run_dir: Path, extract_cfg: Any = None) -> None:
        self.run = run
        self.run_dir = run_dir
        self.model = run.model.eval()
        self.by_video = run.spec.batches_by_video
        # modalities the training split never had (e.g. audio and vision of a text-only file): their encoders
        # never learned from real input, so they are made absent (as in training) and named under "ignored"
        seen = run.meta.get("data", {}).get("available") or {}
        self.unused: list[Modality] = [m for m in MODALITIES if seen.get(m, 1) == 0]
        from hrlf.extract.pipeline import ExtractCfg  # numpy only: no media package is imported here

        self.extract_cfg = extract_cfg or ExtractCfg()
        self._extractor: Any = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, extract_cfg: Any = None) -> Predictor:
        """Load a finished run directory (``checkpoint.json`` + ``model.safetensors``).

        New clips are extracted with the settings the training file was extracted with, when its
        ``<name>.report.json`` is still beside it (``extract_cfg`` overrides), else with the defaults.
        """
        run_dir = Path(path)
        run = load_run(run_dir)
        return cls(run=run, run_dir=run_dir, extract_cfg=extract_cfg or _training_extract_cfg(run))

    # ------------------------------------------------------------------------------------------ the model

    def _scores(self, batch: Batch) -> np.ndarray:
        with torch.no_grad():
            pred = self.model(batch).pred.float()
        if self.run.task.kind == "regression":
            return pred.numpy()
        return torch.softmax(pred, dim=-1)[..., 1].numpy()  # (B, K) P(present)

    def _results(self, batch: Batch) -> list[dict[str, Any]]:
        given = {m: batch.valid[m].any(dim=1) for m in self.unused}  # (B,) per ignored modality
        if self.unused:  # absent, exactly as in the training file (length 0), not "removed"
            valid, features = dict(batch.valid), dict(batch.features)
            for m in self.unused:
                valid[m] = torch.zeros_like(batch.valid[m])
                features[m] = torch.zeros_like(batch.features[m])
            batch = replace(batch, valid=valid, features=features)
        full = self._scores(batch)
        available = {m: batch.present(m).any(dim=1).numpy() for m in MODALITIES}
        without: dict[Modality, np.ndarray] = {}
        for m in MODALITIES:
            if available[m].any():
                missing = dict(batch.missing)
                missing[m] = torch.ones_like(batch.valid[m])
                without[m] = self._scores(replace(batch, missing=missing))
        uses = [m for m in MODALITIES if m not in self.unused]  # what the model reads at all (its training data's)
        out = []
        for i in range(batch.size):
            present = [m for m in MODALITIES if available[m][i]]
            row: dict[str, Any] = {"id": batch.ids[i] if batch.ids else str(i), "available": present, "uses": uses}
            if self.run.task.kind == "regression":
                score = round(float(full[i]), 4)
                row.update(score=score, polarity=_polarity(score))
                row["removed"] = {
                    m: {"score": round(float(without[m][i]), 4), "change": round(float(without[m][i]) - score, 4)}
                    for m in present
                }
            else:
                names = self.run.task.label_names
                row["emotions"] = {n: round(float(p), 4) for n, p in zip(names, full[i], strict=True)}
                row["removed"] = {
                    m: {n: round(float(without[m][i][k] - full[i][k]), 4) for k, n in enumerate(names)} for m in present
                }
            if self.unused:
                row["ignored"] = [m for m in self.unused if bool(given[m][i])]
            if not present:
                row["warning"] = "no modality available: the prediction is the model's prior"
            out.append(row)
        return out

    # ------------------------------------------------------------------------------------------ inputs

    def _check_dims(self) -> None:
        from hrlf.extract.pipeline import extractor_dims, extractor_names

        dims, names = extractor_dims(self.extract_cfg), extractor_names(self.extract_cfg)

        for m in MODALITIES:
            if m == "language" and self.run.cfg.text_encoder.active:
                continue  # the model reads token ids through its own encoder, not these features
            want, have = self.run.dims.get(m), dims[m]
            if want != have:
                raise PredictError(
                    f"{self.run_dir}: the checkpoint expects {m} features of dim {want} "
                    f"(trained on {self.run.meta.get('data', {}).get('path', '?')}), but the extractor "
                    f"'{names[m]}' gives dim {have}; predict on a feature file of the training format, "
                    "or train on features from `hrlf extract`"
                )

    @property
    def extractor(self) -> Any:
        if self._extractor is None:
            from hrlf.extract.pipeline import Extractor

            self._extractor = Extractor(self.extract_cfg)
        return self._extractor

    def _clip_batch(self, clips: Sequence[Any]) -> Batch:
        from hrlf.extract.pipeline import clip_arrays, extractor_dims

        length = max(1, max(c.length for c in clips))
        dims = extractor_dims(self.extract_cfg)
        arrays = [clip_arrays(c, max_len=length, dims=dims) for c in clips]
        t = torch.arange(length)
        features = {m: torch.from_numpy(np.stack([a[m] for a in arrays])) for m in MODALITIES}
        valid = {m: t[None, :] < torch.tensor([int(a[f"{m}_length"]) for a in arrays])[:, None] for m in MODALITIES}
        n = len(clips)
        label = torch.zeros(n) if self.run.task.kind == "regression" else torch.zeros(n, len(self.run.task.label_names))
        return Batch(
            features=features,
            valid=valid,
            missing={m: torch.zeros_like(v) for m, v in valid.items()},
            label=label if self.run.task.kind == "regression" else label.long(),
            index=torch.arange(n),
            ids=[c.sample_id for c in clips],
            tokens=torch.from_numpy(np.stack([a["input_ids"] for a in arrays])),  # (B, T) for a text encoder
        )

    def predict_text(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Language-only predictions for transcripts."""
        if not texts:
            return []
        self._check_dims()
        clips = self.extractor.text_only([f"text:{i}" for i in range(len(texts))], list(texts))
        results = self._results_per_clip(clips)
        for row, text in zip(results, texts, strict=True):
            row.update(input="--text", transcript=text)
        return results

    def _results_per_clip(self, clips: Sequence[Any]) -> list[dict[str, Any]]:
        # one clip per batch when the model reads whole conversations (each clip is its own video then)
        if self.by_video:
            return [r for c in clips for r in self._results(self._clip_batch([c]))]
        return self._results(self._clip_batch(clips))

    def predict_media(self, paths: Sequence[str | Path], *, transcript: str | None = None) -> list[dict[str, Any]]:
        """Predictions for video/audio/image files (extracted on the fly); a file that cannot be read gets a row
        with ``error`` instead of stopping the others."""
        from hrlf.extract import MediaUnavailable
        from hrlf.extract.assets import AssetError

        self._check_dims()
        clips, out = [], []
        for path in paths:
            try:
                clips.append((path, self.extractor.extract(path, sample_id=str(path), transcript=transcript)))
            except (MediaUnavailable, AssetError):
                raise
            except Exception as exc:  # MediaError or an extractor failing on this one file
                out.append({"id": str(path), "input": str(path), "error": " ".join(str(exc).split())})
        if clips:
            out.extend(self.predict_clips([c for _, c in clips], inputs=[str(p) for p, _ in clips]))
        order = {str(p): i for i, p in enumerate(paths)}
        return sorted(out, key=lambda r: order[r["input"]])

    def predict_clips(self, clips: Sequence[Any], *, inputs: Sequence[str]) -> list[dict[str, Any]]:
        """Predictions for clips already extracted (:class:`hrlf.extract.pipeline.ClipFeatures`), one row each,
        ``input`` taken from ``inputs``; the rows of :meth:`predict_media` (``hrlf serve`` uses this too)."""
        self._check_dims()
        results = self._results_per_clip(clips)
        for row, name, clip in zip(results, inputs, clips, strict=True):
            row.update(input=name, transcript=clip.transcript, alignment=clip.alignment)
            row["duration"] = round(clip.duration, 3)
        return results

    def predict_file(self, path: str | Path, *, batch_size: int = 256) -> list[dict[str, Any]]:
        """Predictions for every clip of a feature file (all splits, file order)."""
        from hrlf.data.datamodule import DataModule
        from hrlf.data.features import load_features

        data = load_features(path)
        if self.run.cfg.text_encoder.active:
            from hrlf.models.text_encoder import check_tokenizer

            check_tokenizer(self.run.cfg.text_encoder, data)
        for m in MODALITIES:
            if m == "language" and self.run.cfg.text_encoder.active:
                continue  # token ids, checked above
            if data.dims[m] != self.run.dims.get(m):
                raise PredictError(
                    f"{path}: {m} features have dim {data.dims[m]}, the checkpoint {self.run_dir} expects "
                    f"{self.run.dims.get(m)}"
                )
        module = DataModule(data)
        out: list[dict[str, Any]] = []
        for split in SPLITS:
            rows: list[tuple[int, dict[str, Any]]] = []
            for batch in module.batches(split, batch_size=batch_size, by_video=self.by_video):
                for index, row in zip(batch.index.tolist(), self._results(batch), strict=True):
                    row.update(input=str(path), split=split)
                    rows.append((index, row))
            out.extend(row for _, row in sorted(rows, key=lambda item: item[0]))  # file order, also by video
        return out

    def predict(
        self, inputs: str | Path | Sequence[str | Path] = (), *, text: str | Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Predict on files (media, feature files, folders of them) and/or transcripts; one dict per clip."""
        if isinstance(inputs, str | Path):
            inputs = [inputs]
        out: list[dict[str, Any]] = []
        if text is not None:
            out.extend(self.predict_text([text] if isinstance(text, str) else list(text)))
        media: list[Path] = []
        for path in _expand(inputs):
            if path.suffix.lower() in FEATURE_FILE_EXTENSIONS:
                out.extend(self.predict_file(path))
            else:
                media.append(path)
        if media:
            out.extend(self.predict_media(media))
        return out


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as JSON can hold it: non-finite values become None (JSON has no NaN), with a warning that says so."""
    import json

    try:
        json.dumps(row, allow_nan=False)
    except ValueError:
        from hrlf.engine.checkpoint import json_safe

        safe = json_safe(row)
        if "score" in safe and safe["score"] is None:
            safe["polarity"] = None
        return {**safe, "warning": "non-finite prediction values, printed as null"}
    return row


def _training_extract_cfg(run: LoadedRun) -> Any:
    """The extraction settings of the run's training file, from the report ``hrlf extract`` wrote beside it."""
    import dataclasses

    from hrlf.extract.pipeline import ExtractCfg, recorded_settings

    settings = recorded_settings(str(run.meta.get("data", {}).get("path", "")))
    if settings is None:
        return None
    known = {f.name for f in dataclasses.fields(ExtractCfg)}
    try:
        return ExtractCfg(**{k: v for k, v in settings.items() if k in known})
    except (ValueError, TypeError):
        return None


def _expand(inputs: Sequence[str | Path]) -> Iterator[Path]:
    from hrlf.extract.media import MEDIA_EXTENSIONS
    from hrlf.extract.pipeline import IMAGE_EXTENSIONS

    known = MEDIA_EXTENSIONS + IMAGE_EXTENSIONS + FEATURE_FILE_EXTENSIONS
    for item in inputs:
        path = Path(item)
        if path.is_dir():  # recursive: MMSA's raw layout is <dir>/<video_id>/<clip_id>.mp4
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in known)
            if not files:
                raise PredictError(f"{path}: no media or feature files ({', '.join(known)})")
            yield from files
        elif not path.exists():
            raise PredictError(f"{path}: no such file")
        elif path.suffix.lower() not in known:
            raise PredictError(f"{path}: unknown input type '{path.suffix}'; expected one of {', '.join(known)}")
        else:
            yield path
