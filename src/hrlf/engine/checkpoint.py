"""Safetensors weights + JSON metadata, and the resumable training state, all written atomically (:mod:`hrlf.io`).

A run directory holds:
    ``model.safetensors``   the selected weights (strict load)
    ``checkpoint.json``     resolved config, data fingerprint, metrics, package version, model name and the
                            SHA-256 of every weights file (``weights_sha256``), checked when the run is loaded
    ``<stage>/state.pt``    the resumable state after the last finished epoch (read with ``weights_only=True``)
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hrlf.io import atomic_write  # its home; still importable from here, where it was first


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or Infinity: written as null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 16 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(path: str | Path, module: nn.Module) -> str:
    """Write ``module``'s state as safetensors (atomically); returns the SHA-256 of the written file."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    written: dict[str, str] = {}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp))
        written["sha256"] = sha256_file(tmp)  # of the bytes moved into place, not re-read later

    atomic_write(path, write)
    return written["sha256"]


def load_weights(path: str | Path, module: nn.Module) -> None:
    """Strict load: missing or unexpected keys raise."""
    module.load_state_dict(load_file(str(path)), strict=True)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
