"""The model registry: the single list of models (CLI choices, docs and parametrized tests read it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hrlf.data.datamodule import DataModule
    from hrlf.engine.system import TrainingSystem
    from hrlf.types import Batch, Modality, TaskSpec

# ------------------------------------------------------------------- what a registered model provides


class BuildNetwork(Protocol):
    """``build(cfg, dims=..., task=...)``: the network (what ``model.safetensors`` holds), freshly initialised."""

    def __call__(self, cfg: Any, /, *, dims: Mapping[Modality, int], task: TaskSpec) -> nn.Module: ...


class BuildSystem(Protocol):
    """``objective(cfg, task=...)``: the training system holding the model's losses."""

    def __call__(self, cfg: Any, /, *, task: TaskSpec) -> TrainingSystem: ...


class BuildStages(Protocol):
    """``stages(cfg, dims=..., task=..., missing=...)``: every stage of a multi-stage system, in order."""

    def __call__(self, cfg: Any, /, *, dims: Mapping[Modality, int], task: TaskSpec, missing: bool) -> list[Stage]: ...


class TrainingProtocol(Protocol):
    """A training-time missingness: fresh masks per batch from the given generator, and a JSON description."""

    def apply(self, batch: Batch, *, generator: torch.Generator) -> Batch: ...

    def describe(self) -> dict[str, Any]: ...


class BuildProtocol(Protocol):
    """``train_protocol(cfg)``: the model's own training-time missingness."""

    def __call__(self, cfg: Any, /) -> TrainingProtocol: ...


class Diagnose(Protocol):
    """``diagnose(stages, data, device)``: named numbers computed after training, for ``results.json``."""

    def __call__(self, stages: list[Stage], data: DataModule, device: torch.device, /) -> dict[str, Any]: ...


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
    build: BuildNetwork
    objective: BuildSystem
    stages: BuildStages | None = None
    train_protocol: BuildProtocol | None = None
    diagnose: Diagnose | None = None
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
    model: nn.Module
    objective: TrainingSystem
    missing: bool
    train_overrides: dict[str, Any] = field(default_factory=dict)
    protocol: TrainingProtocol | None = None  # None = the configured Modality Stochastic Missing


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
