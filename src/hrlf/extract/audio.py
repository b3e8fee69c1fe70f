"""Audio: openSMILE eGeMAPSv02 low-level descriptors, and the silence test that marks audio as missing.

The ``opensmile`` package ships its native library and the eGeMAPS configurations; no ``SMILExtract`` binary and
no download are needed. Descriptors come every 10 ms (25 per frame).
"""

from __future__ import annotations

import numpy as np

__all__ = ["AudioFeatures", "active_seconds"]


def active_seconds(signal: np.ndarray, sample_rate: int, *, threshold_db: float, frame_seconds: float = 0.02) -> float:
    """Seconds of the signal whose frame RMS reaches ``threshold_db`` dB full scale (pure numpy).

    A clip counts as silent, so audio is missing, when this is below the pipeline's ``min_active_seconds``.
    """
    hop = max(1, int(round(frame_seconds * sample_rate)))
    n = len(signal) // hop
    if n == 0:
        return 0.0
    frames = np.asarray(signal[: n * hop], dtype=np.float64).reshape(n, hop)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    level = 20.0 * np.log10(np.maximum(rms, 1e-10))
    return float(np.count_nonzero(level >= threshold_db) * hop / sample_rate)


class AudioFeatures:
    """openSMILE eGeMAPSv02 LLDs: ``__call__(signal, sr) -> (frames (F, 25) float32, times (F,) seconds)``."""

    name = "opensmile-eGeMAPSv02-LLD"

    def __init__(self) -> None:
        import opensmile

        self._smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
        )
        self.dim = len(self._smile.feature_names)
        self.version = opensmile.__version__

    def __call__(self, signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        frame = self._smile.process_signal(np.asarray(signal, dtype=np.float32), sample_rate)
        values = np.nan_to_num(frame.to_numpy(dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        start = frame.index.get_level_values("start").total_seconds().to_numpy()
        end = frame.index.get_level_values("end").total_seconds().to_numpy()
        return values, (start + end) / 2.0
