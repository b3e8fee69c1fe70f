"""The model registry: the single list of models (CLI choices, docs and parametrized tests read it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MODELS: dict[str, ModelSpec] = {}


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    Attributes:
        name: lowercase registry name, equal to the model's file name.
        config_cls: the model's typed config dataclass (fields = constructor knobs with paper defaults); its
            ``__post_init__`` checks its own values (:mod:`hrlf.models.layers`' checks), and the config loader
            re-runs it after every override.
        build: ``build(cfg, dims=..., task=...) -> nn.Module``.
        objective: ``objective(cfg, task=...)`` -> the training system holding the model's training losses (an
            :class:`hrlf.engine.system.TrainingSystem`).
        stages: optional ``stages(cfg, dims=..., task=..., missing=...) -> list[Stage]`` for multi-stage systems
            (teacher then student); a single stage built from ``build`` and ``objective`` when None.
        train_protocol: optional ``train_protocol(cfg) -> protocol`` for a single-stage model whose paper trains
            with its own missingness (an object with ``apply(batch, *, generator) -> Batch`` and ``describe()``);
            HRLF's Modality Stochastic Missing (the ``missing`` config section) when None.
        diagnose: optional ``diagnose(stages, data, device) -> dict`` run after training (e.g. HRLF's linear
            probes of its codes on the validation split); written to ``results.json`` under ``diagnostics``.
        batches_by_video: every batch holds whole videos (all clips sharing a video id), in training, evaluation
            and prediction, for a model that relates the clips of a video (GCNet's conversation graph).
    """

    name: str
    config_cls: type
    build: Callable[..., Any]
    objective: Callable[..., Any]
    stages: Callable[..., Any] | None = None
    train_protocol: Callable[..., Any] | None = None
    diagnose: Callable[..., Any] | None = None
    batches_by_video: bool = False


@dataclass
class Stage:
    """One training stage of a system; single-stage models have one, called ``train``.

    Attributes:
        name: stage name (also the sub-folder of the run directory holding its state and log).
        model: the module trained in this stage (the last stage's model is the inference model).
        objective: its training system (an :class:`hrlf.engine.system.TrainingSystem`).
        missing: train with the configured training protocol (False = complete data only).
        train_overrides: ``TrainCfg`` fields that differ for this stage (e.g. the teacher's epochs).
        protocol: the stage's own training protocol (``apply(batch, *, generator)``, ``describe()``), used when
            ``missing`` is True; None = the configured Modality Stochastic Missing.
    """

    name: str
    model: Any
    objective: Any
    missing: bool
    train_overrides: dict[str, Any] = field(default_factory=dict)
    protocol: Any = None  # this stage's own training protocol; None = the configured Modality Stochastic Missing


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model; duplicate names raise."""
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.name != spec.name.lower():
        raise ValueError(f"model names are lowercase, got {spec.name!r}")
    _MODELS[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_MODELS)


def _ensure_loaded() -> None:
    # registration happens in hrlf.models.__init__ (explicit imports, no auto-discovery)
    from hrlf import models  # noqa: F401
