"""The silence rule that marks audio as missing (numpy only)."""

from __future__ import annotations

import numpy as np

from hrlf.extract.audio import active_seconds


def test_silence_and_digital_zero_are_not_active():
    assert active_seconds(np.zeros(16_000, dtype=np.float32), 16_000, threshold_db=-50) == 0.0
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(16_000) * 1e-4).astype(np.float32)  # about -80 dBFS
    assert active_seconds(hiss, 16_000, threshold_db=-50) == 0.0


def test_a_tone_counts_for_its_duration():
    t = np.arange(32_000) / 16_000
    signal = np.where(t < 0.5, 0.3 * np.sin(2 * np.pi * 220 * t), 0.0).astype(np.float32)
    assert abs(active_seconds(signal, 16_000, threshold_db=-50) - 0.5) <= 0.02


def test_short_signal_has_no_active_time():
    assert active_seconds(np.ones(10, dtype=np.float32), 16_000, threshold_db=-50) == 0.0
