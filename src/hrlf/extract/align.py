"""Putting the three extracted streams on one time axis (pure numpy, no media packages needed).

The unit of the common axis is the text-encoder token: each token gets a time interval and the audio and vision
frames falling inside it are averaged, as the field's word-aligned files do with CMU-SDK word intervals.

Intervals (:func:`token_intervals`):
    * ``"word"`` — when speech recognition gave word timings, a token takes the interval of the word it belongs
      to (sub-word pieces of one word share it);
    * ``"uniform"`` — otherwise (a transcript from the label file has no timings), the transcript's words split
      the clip's duration into equal consecutive intervals in reading order (pieces of a word share its
      interval; when the transcript was truncated, the kept words cover only the leading part of the clip);
    * special tokens (``[CLS]``, ``[SEP]``, which summarise the sentence) take the whole clip in both modes.

A clip without any token (no speech, no transcript) is cut into :func:`uniform_intervals` of about one word's
duration, so its audio and vision still form a sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Word", "pool_frames", "token_intervals", "uniform_intervals"]


@dataclass(frozen=True)
class Word:
    """A recognised word with its start and end time in seconds."""

    text: str
    start: float
    end: float


def token_intervals(
    word_index: Sequence[int | None],
    *,
    duration: float,
    words: Sequence[Word] | None = None,
    n_words: int | None = None,
) -> np.ndarray:
    """(T, 2) start/end seconds of each token.

    Args:
        word_index: per token, the index of the word it comes from, None for a special token (the tokenizer's
            ``word_ids()``).
        duration: clip duration in seconds (> 0).
        words: word timings from speech recognition; None selects uniform intervals. When given, every index in
            ``word_index`` must point into it.
        n_words: uniform mode: how many words the whole transcript has (default: as many as the tokens reach).
            With a truncated transcript the kept words then cover only the leading part of the clip.
    """
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    n = len(word_index)
    out = np.zeros((n, 2), dtype=np.float64)
    out[:, 1] = duration  # special tokens: the whole clip
    real = {t: k for t, k in enumerate(word_index) if k is not None}  # token -> index of its word
    if not real:
        return out
    if words is not None:
        for t, k in real.items():
            w = words[k]
            start = min(max(w.start, 0.0), duration)
            out[t] = (start, min(max(w.end, start), duration))
        return out
    # uniform: the transcript's words split the clip into equal consecutive spans in reading order; the pieces
    # of one word share its span
    reached = max(real.values()) + 1
    total = max(n_words or reached, reached)
    for t, k in real.items():
        out[t] = (duration * k / total, duration * (k + 1) / total)
    return out


def uniform_intervals(duration: float, *, unit_seconds: float, max_units: int) -> np.ndarray:
    """(T, 2) equal intervals of about ``unit_seconds`` covering ``[0, duration]``; 1 <= T <= max_units."""
    if duration <= 0 or unit_seconds <= 0 or max_units < 1:
        raise ValueError(
            f"need duration, unit_seconds > 0 and max_units >= 1, got {duration}, {unit_seconds}, {max_units}"
        )
    n = int(min(max_units, max(1, round(duration / unit_seconds))))
    edges = np.linspace(0.0, duration, n + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def pool_frames(frames: np.ndarray, times: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """Average the frames whose time lies in each interval; an interval holding no frame takes the nearest frame.

    Args:
        frames: (F, D) features, F >= 1.
        times: (F,) non-decreasing frame times in seconds.
        intervals: (T, 2) start/end seconds; a frame at time t belongs to [start, end) (to [start, end] when the
            interval is empty, so a zero-length word still picks up a frame exactly at its time).

    Returns:
        (T, D) float32.
    """
    frames = np.asarray(frames, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if frames.ndim != 2 or times.shape != (frames.shape[0],) or frames.shape[0] == 0:
        raise ValueError(f"need frames (F, D) with F >= 1 and times (F,), got {frames.shape} and {times.shape}")
    if np.any(np.diff(times) < 0):
        raise ValueError("frame times must be non-decreasing")
    starts, ends = intervals[:, 0], intervals[:, 1]
    lo = np.searchsorted(times, starts, side="left")
    hi = np.where(ends > starts, np.searchsorted(times, ends, side="left"), np.searchsorted(times, ends, "right"))
    cumsum = np.concatenate([np.zeros((1, frames.shape[1])), np.cumsum(frames, axis=0)])  # (F + 1, D)
    count = (hi - lo)[:, None]
    pooled = (cumsum[hi] - cumsum[lo]) / np.maximum(count, 1)
    empty = count[:, 0] == 0
    if empty.any():
        mid = (starts[empty] + ends[empty]) / 2
        right = np.clip(np.searchsorted(times, mid), 0, len(times) - 1)
        left = np.clip(right - 1, 0, len(times) - 1)
        nearest = np.where(np.abs(times[left] - mid) <= np.abs(times[right] - mid), left, right)
        pooled[empty] = frames[nearest]
    return pooled.astype(np.float32)
