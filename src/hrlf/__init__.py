"""hrlf: robust incomplete multimodal sentiment analysis — HRLF (NeurIPS 2024), its protocols and baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hrlf.registry import list_models

if TYPE_CHECKING:
    from torch import nn

    from hrlf.types import Modality, TaskSpec

__all__ = ["Predictor", "create_model", "list_models", "load_config", "load_run", "run_experiment"]


def create_model(name: str, *, dims: Mapping[Modality, int], task: TaskSpec, **overrides: Any) -> nn.Module:
    """Build a registered model from its config defaults, with keyword overrides of config fields."""
    import dataclasses

    from hrlf.registry import get_model_spec

    spec = get_model_spec(name)
    cfg = dataclasses.replace(spec.config_cls(), **overrides)
    return spec.build(cfg, dims=dims, task=task)


def __getattr__(name: str) -> Any:  # lazy: importing hrlf stays cheap
    if name == "load_config":
        from hrlf.config import load_config

        return load_config
    if name in ("load_run", "run_experiment"):
        from hrlf.engine import run

        return getattr(run, name)
    if name == "Predictor":
        from hrlf.predict import Predictor

        return Predictor
    raise AttributeError(name)
