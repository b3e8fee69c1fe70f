"""Shared test builders: tiny batches with named modalities, tiny-overfit and resume runs."""

from __future__ import annotations

import dataclasses
import math
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hrlf.config import ExperimentCfg, load_config, model_config_cls
from hrlf.engine.run import run_experiment
from hrlf.engine.system import TrainingSystem
from hrlf.types import MODALITIES, Batch, Modality, TaskSpec

#: the shipped recipes, configs/<model>/<dataset>.yaml
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: overrides that make a recipe's run a tiny 2-epoch one (the bench tests, in worker processes and on a cluster)
SMALL_BENCH = [
    "model.d_model=16",
    "model.num_heads=2",
    "model.num_layers=1",
    "train.epochs=2",
    "train.batch_size=16",
    "train.progress=false",
    "eval.rates=[0.0,0.5,1.0]",
]


def start_interruptible(argv: list[str]) -> subprocess.Popen[str]:
    """A command as a user starts it at a terminal, so that Ctrl-C (SIGINT) reaches it: with SIGINT at its default.

    A test suite run from a background job of a non-interactive shell (``make test &``, ``nohup``, some CI
    runners) inherits SIGINT *ignored*, and Python keeps it ignored in the child, which then never sees the
    test's Ctrl-C: the bench or extraction runs on, as a hang. Session 5's CI-only failure of the cluster Ctrl-C
    test was exactly this.
    """

    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )


DIMS: dict[Modality, int] = {"language": 12, "audio": 5, "vision": 7}
REGRESSION = TaskSpec(kind="regression")
EMOTIONS = TaskSpec(kind="emotions", label_names=("Neutral", "Happy", "Sad", "Angry"))


def make_batch(
    *, batch_size: int = 3, length: int = 7, task: TaskSpec = REGRESSION, seed: int = 0, pre_pad: bool = True
) -> Batch:
    """Random features with varying real lengths (padding at the start when ``pre_pad``, else at the end)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (batch_size,), generator=g)
    steps = torch.arange(length)
    valid_one = (steps >= length - lengths[:, None]) if pre_pad else (steps < lengths[:, None])  # (B, T)
    features = {}
    for m in MODALITIES:
        x = torch.randn(batch_size, length, DIMS[m], generator=g)
        features[m] = x * valid_one.unsqueeze(-1)
    if task.kind == "regression":
        label = torch.empty(batch_size).uniform_(-3, 3, generator=g)
    else:
        label = torch.randint(0, 2, (batch_size, task.num_targets), generator=g)
    return Batch(
        features=features,
        valid={m: valid_one.clone() for m in MODALITIES},
        missing={m: torch.zeros(batch_size, length, dtype=torch.bool) for m in MODALITIES},
        label=label,
        index=torch.arange(batch_size),
        ids=[f"clip{i}" for i in range(batch_size)],
    )


def overfit(
    *,
    model: nn.Module,
    objective: TrainingSystem,
    optimizers: dict[str, torch.optim.Optimizer],
    batch: Batch,
    clean: Batch | None = None,
    steps: int = 300,
    tail: int = 10,
) -> tuple[dict[str, float], dict[str, float]]:
    """Train on one batch for ``steps`` steps (tiny-overfit tests).

    Args:
        model: the model, trained in place.
        objective: its objective; ``training_step`` does one update.
        optimizers: the objective's optimizers for ``model``.
        batch: the (possibly masked) training batch, the same at every step.
        clean: the untouched batch (default: ``batch``).
        steps: number of updates.
        tail: how many final steps are averaged for the returned "last" losses (1 = the last step alone).

    Returns:
        The first step's logged losses and the mean of the last ``tail`` steps' logged losses.

    Raises:
        AssertionError: a logged value of some step is not finite.
    """
    history = [
        objective.training_step(
            model=model, batch=batch, clean=batch if clean is None else clean, optimizers=optimizers
        )
        for _ in range(steps)
    ]
    for i, losses in enumerate(history):
        assert all(math.isfinite(v) for v in losses.values()), f"step {i}: non-finite losses {losses}"
    last = {k: sum(h[k] for h in history[-tail:]) / len(history[-tail:]) for k in history[0]}
    return history[0], last


#: tiny model knobs of the resume tests, set where the model's config has them
TINY_RUN_MODEL = {"d_model": 16, "num_heads": 2, "num_layers": 1}


def tiny_run_cfg(model: str, data_path: Path, *extra: str) -> ExperimentCfg:
    """A 2-epoch experiment of a tiny ``model`` on ``data_path`` (batch 16, no early stopping, rates 0 and 1)."""
    fields = {f.name for f in dataclasses.fields(model_config_cls(model))}
    tiny = [f"model.{k}={v}" for k, v in TINY_RUN_MODEL.items() if k in fields]
    return load_config(
        None,
        [
            f"model.name={model}",
            *tiny,
            f"data.path={data_path}",
            "train.epochs=2",
            "train.batch_size=16",
            "train.patience=0",
            "train.progress=false",
            "eval.rates=[0.0,1.0]",
            *extra,
        ],
    )


def continuous_and_resumed(
    cfg: ExperimentCfg,
    *,
    objective_cls: type[TrainingSystem],
    run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str = "train",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The results of ``cfg`` trained without a break, and trained with a break and ``resume=True``.

    The second run is interrupted (``KeyboardInterrupt``, as a kill would) at the first training step of epoch 2
    of the stage whose objective is an ``objective_cls``, then resumed from the state saved after epoch 1.

    Raises:
        AssertionError: the interruption did not happen right after epoch 1 of ``stage``.
    """
    full = run_experiment(cfg, run_dir=run_dir / "full")
    real_start, real_step = objective_cls.start_epoch, objective_cls.training_step
    current = {"epoch": -1}

    def start_epoch(self: TrainingSystem, epoch: int) -> None:
        current["epoch"] = epoch
        real_start(self, epoch)

    def dying_step(self: TrainingSystem, **kwargs: Any) -> dict[str, float]:
        if current["epoch"] == 1:  # 0-based: the first step of epoch 2
            raise KeyboardInterrupt
        return real_step(self, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(objective_cls, "start_epoch", start_epoch)
        patch.setattr(objective_cls, "training_step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, run_dir=run_dir / "resumed")
    state = torch.load(run_dir / "resumed" / stage / "state.pt", weights_only=True)
    assert state["epoch"] == 1, f"interrupted after epoch {state['epoch']} of {stage}, expected 1"
    assert not (run_dir / "resumed" / "results.json").exists()
    resumed = run_experiment(cfg, run_dir=run_dir / "resumed", resume=True)
    return full, resumed
