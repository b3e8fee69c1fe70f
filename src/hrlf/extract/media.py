"""Decoding a clip's audio and frames with PyAV (FFmpeg's libraries inside the ``av`` wheel; no ffmpeg binary).

Audio comes out as 16 kHz mono float32, frames as RGB uint8 sampled at a fixed rate, both on one clock that starts
at the earlier of the two streams (containers such as MKV or MPEG-TS, or clips cut by stream copy, do not start
at 0). A file without an audio
(video) stream simply has none, which is how a real missing modality starts; a file that cannot be decoded at
all raises :class:`MediaError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrlf.errors import HrlfError

__all__ = ["AUDIO_EXTENSIONS", "MEDIA_EXTENSIONS", "VIDEO_EXTENSIONS", "Media", "MediaError", "decode"]

SAMPLE_RATE = 16_000
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS


class MediaError(HrlfError, ValueError):
    """A media file cannot be opened or decoded; one line naming the file."""


@dataclass
class Media:
    """A decoded clip.

    Attributes:
        path: the source file.
        audio: (S,) float32 samples at :data:`SAMPLE_RATE`, None without an audio stream.
        frames: (F, H, W, 3) uint8 RGB frames sampled at ``fps``, None without a video stream.
        frame_times: (F,) seconds of each sampled frame.
        duration: seconds covered by the longer of the two streams (> 0).
    """

    path: Path
    audio: np.ndarray | None
    frames: np.ndarray | None
    frame_times: np.ndarray | None
    duration: float


def _start_seconds(stream) -> float:  # type: ignore[no-untyped-def]
    """Presentation time of a stream's first sample (0 when the container does not say)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _origin(container) -> float:  # type: ignore[no-untyped-def]
    """The common time origin of a file: the earliest start of its audio and video streams."""
    starts = [_start_seconds(s) for s in (*container.streams.audio[:1], *container.streams.video[:1])]
    return min(starts) if starts else 0.0


def _decode_audio(container, *, origin: float) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    import av

    if not container.streams.audio:
        return None
    # a stream that starts after the origin is shifted by leading silence, so audio, words and frames share t = 0
    lead = int(round(max(0.0, _start_seconds(container.streams.audio[0]) - origin) * SAMPLE_RATE))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    for frame in container.decode(audio=0):
        chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
    chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
    if not chunks:
        return None
    return np.concatenate([np.zeros(lead, dtype=np.float32), *chunks]).astype(np.float32, copy=False)


def _decode_frames(container, *, fps: float, max_side: int, origin: float) -> tuple[np.ndarray, np.ndarray] | None:  # type: ignore[no-untyped-def]
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    frames: list[np.ndarray] = []
    times: list[float] = []
    next_time = 0.0
    for frame in container.decode(stream):
        t = (float(frame.time) - origin) if frame.time is not None else len(times) / fps
        if t + 1e-6 < next_time:
            continue
        scale = min(1.0, max_side / max(frame.width, frame.height))
        if scale < 1.0:
            frame = frame.reformat(width=int(frame.width * scale) // 2 * 2, height=int(frame.height * scale) // 2 * 2)
        frames.append(frame.to_ndarray(format="rgb24"))
        times.append(t)
        next_time = t + 1.0 / fps
    if not frames:
        return None
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def decode(path: str | Path, *, fps: float = 3.0, max_side: int = 640, video: bool = True) -> Media:
    """Decode a video or audio file.

    Args:
        path: the media file.
        fps: rate at which video frames are sampled.
        max_side: frames larger than this (longest side, pixels) are scaled down.
        video: False skips the frames (audio-only use).
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such media file")
    try:
        with av.open(str(path)) as container:
            origin = _origin(container)
            audio = _decode_audio(container, origin=origin)
        sampled = None
        if video:
            with av.open(str(path)) as container:
                sampled = _decode_frames(container, fps=fps, max_side=max_side, origin=origin)
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises many error classes (FFmpegError, InvalidDataError, ...)
        raise MediaError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from None
    if audio is None and sampled is None:
        raise MediaError(f"{path}: no audio or video stream found")
    frames, times = sampled if sampled is not None else (None, None)
    audio_seconds = 0.0 if audio is None else len(audio) / SAMPLE_RATE
    video_seconds = 0.0 if times is None else float(times[-1]) + 1.0 / fps
    duration = max(audio_seconds, video_seconds)
    if duration <= 0:
        raise MediaError(f"{path}: the streams are empty")
    return Media(path=path, audio=audio, frames=frames, frame_times=times, duration=duration)


def load_image(path: str | Path) -> Media:
    """A still photo as a one-frame clip (vision only)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{path}: cannot read the image")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return Media(path=Path(path), audio=None, frames=rgb[None], frame_times=np.zeros(1), duration=1.0)
