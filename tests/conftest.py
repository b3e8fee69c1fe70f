"""Test-wide settings: one torch thread per process (two cores are shared with xdist workers)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # after the env var: ruff's E402 allows os.environ first

torch.set_num_threads(1)


import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def write_tiny(preset: str, out: Path, *, n: tuple[int, int, int] = (48, 16, 16), seed: int = 0) -> Path:
    """A tiny synthetic feature file in the preset's exact schema."""
    from hrlf.data.synth import PRESETS, write_synth

    cfg = dataclasses.replace(PRESETS[preset], n_train=n[0], n_valid=n[1], n_test=n[2])
    return write_synth(preset, out, seed=seed, cfg=cfg)


@pytest.fixture(scope="session")
def tiny_mosi(tmp_path_factory) -> Path:
    return write_tiny("mosi", tmp_path_factory.mktemp("tiny_mosi"))


@pytest.fixture(scope="session")
def tiny_iemocap(tmp_path_factory) -> Path:
    return write_tiny("iemocap", tmp_path_factory.mktemp("tiny_iemocap"))
