"""The one generic training loop: any model, any objective, selection on the validation split only.

Reproducibility: everything random in an epoch (shuffling, training masks, dropout) is seeded from
``(seed, stage, epoch)``, so a run resumed from the state saved after epoch k repeats epochs k+1... exactly as an
uninterrupted run would, and two runs with the same seed on the same machine give the same metrics.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from hrlf.config import ConfigError, TrainCfg
from hrlf.data.datamodule import DataModule
from hrlf.engine.checkpoint import load_state, load_weights, save_state, save_weights, write_text
from hrlf.engine.evaluate import predict, score
from hrlf.engine.schedule import apply_step_schedules
from hrlf.engine.system import TrainingSystem, task_loss
from hrlf.types import Batch

log = logging.getLogger(__name__)
#: one line per finished epoch while the progress bar is off (stderr not a terminal: a log file, CI, a cluster
#: job); the CLI prints this logger at the default level, library callers see it at INFO
progress_log = logging.getLogger("hrlf.progress")


class TrainProtocol(Protocol):
    def apply(self, batch: Batch, *, generator: torch.Generator) -> Batch: ...


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def resolve_device(name: str) -> torch.device:
    """The torch device of ``train.device``; a CUDA device this torch build or machine lacks raises.

    Raises:
        ConfigError: ``name`` asks for CUDA without a usable CUDA device, or for a device index that does not exist
            (checked before a run writes anything, so a refused run leaves no folder behind).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is built without CUDA"
                if not torch.backends.cuda.is_built()
                else "no CUDA device is visible"
            )
            raise ConfigError(f"key 'train.device': expected cpu or auto ({why}), found {name!r}")
        index = name.partition(":")[2]
        count = torch.cuda.device_count()
        if index and (not index.isdigit() or int(index) >= count):
            raise ConfigError(
                f"key 'train.device': expected cpu, auto, cuda or cuda:0..cuda:{count - 1} ({count} CUDA "
                f"device{'s' if count != 1 else ''} visible), found {name!r}"
            )
    return torch.device(name)


@dataclass
class FitResult:
    best_epoch: int  # 1-based epoch whose weights were selected
    best_score: float  # validation selection score of that epoch
    valid_metrics: dict[str, float]  # all validation metrics of the selected epoch
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0  # training time of the stage, summed over every session that trained it (resumes)
    epochs_trained: int = 0  # epochs trained by this call (0: a resumed stage that was already finished)


def selection_score(metric: str, valid_loss: float, metrics: dict[str, float]) -> float:
    """Higher is better: the negated loss or MAE, or an F1 (Non0 F1 for regression, mean F1 for emotions)."""
    if metric == "loss":
        return -valid_loss
    if metric == "mae":
        return -metrics["MAE"]
    if metric == "f1":
        return metrics["F1_non0"] if "F1_non0" in metrics else metrics["Mean_F1"]
    raise ValueError(f"unknown select_metric {metric!r}: expected loss | mae | f1")


def validate(
    model: nn.Module, data: DataModule, cfg: TrainCfg, device: torch.device, *, by_video: bool = False
) -> tuple[float, dict[str, float]]:
    """Validation task loss and metrics on the complete validation split."""
    pred, label = predict(model, data, "valid", batch_size=cfg.eval_batch_size, device=device, by_video=by_video)
    loss = float(task_loss(torch.from_numpy(pred), torch.from_numpy(label), data.task))
    return loss, score(pred, label, data.task)


def fit(
    *,
    model: nn.Module,
    objective: TrainingSystem,
    data: DataModule,
    cfg: TrainCfg,
    stage_dir: Path,
    train_missing: TrainProtocol | None = None,
    resume: bool = False,
    stage: str = "main",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    by_video: bool = False,
) -> FitResult:
    """Train ``model`` with ``objective``; keep the weights of the best validation epoch in ``stage_dir``.

    Writes ``stage_dir/best.safetensors`` (selected weights), ``stage_dir/state.pt`` (resumable state after each
    finished epoch) and ``stage_dir/log.csv`` (one row per epoch). On return the model holds the selected weights.

    ``on_epoch`` gets every epoch's log row plus ``score`` (its validation selection score, higher is better), once
    its state is saved; a resumed stage first replays the rows of the epochs it restored, so a caller sees the
    whole history in order (a hyper-parameter search's early stopping). ``by_video`` packs whole videos into
    every batch (the model's ``ModelSpec.batches_by_video``).
    """
    device = resolve_device(cfg.device)
    stage_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(derive_seed(cfg.seed, stage, "init"))  # objective networks built lazily get fixed weights
    model.to(device)
    objective.to(device)
    objective.setup(model)
    optimizers = objective.optimizers(model, cfg)
    schedulers = objective.schedulers(optimizers)
    objective.prepare(data, cfg=cfg, device=device)  # e.g. a frozen teacher's outputs, computed once
    state_path = stage_dir / "state.pt"
    best_path = stage_dir / "best.safetensors"
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_metrics, bad_epochs, start_epoch = -math.inf, 0, {}, 0, 0
    earlier_seconds = 0.0  # training time of the sessions before a resume (saved with every epoch's state)
    if resume and state_path.exists():
        state = load_state(state_path)
        model.load_state_dict(state["model"], strict=True)
        objective.load_state_dict(state["objective"], strict=True)
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        history = list(state["history"])
        best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
        best_metrics, bad_epochs = dict(state["best_metrics"]), int(state["bad_epochs"])
        start_epoch = int(state["epoch"])
        earlier_seconds = float(state.get("seconds", 0.0))  # states saved before this was recorded: unknown, 0
        log.info("resuming %s at epoch %d of %d", stage, start_epoch + 1, cfg.epochs)
        if on_epoch is not None:
            for row in history:
                on_epoch({**row, "score": selection_score(cfg.select_metric, row["valid_loss"], _valid_of(row))})
    stopped_early = bool(cfg.patience and bad_epochs >= cfg.patience)
    if resume and stopped_early and start_epoch < cfg.epochs:
        log.info(
            "%s stopped early at epoch %d (train.patience %d); raise train.patience to train further",
            stage,
            start_epoch,
            cfg.patience,
        )
    steps = data.num_batches("train", batch_size=cfg.batch_size)
    epochs_trained, seconds = 0, earlier_seconds
    t0 = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if stopped_early:
            break
        epoch_t0 = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, stage, "dropout", epoch))
        mask_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, stage, "masks", epoch))
        model.train()
        objective.train()
        objective.start_epoch(epoch)
        sums: dict[str, float] = {}
        n_seen = 0
        bar = tqdm(
            data.batches(
                "train",
                batch_size=cfg.batch_size,
                shuffle_seed=derive_seed(cfg.seed, stage, "order", epoch),
                bucket=cfg.length_bucket,
                by_video=by_video,
            ),
            total=steps,
            desc=f"{stage} {epoch + 1}/{cfg.epochs}",
            disable=None if cfg.progress else True,  # None: shown on a terminal, silent in logs and pipes
            leave=False,
            dynamic_ncols=True,
        )
        for i, clean in enumerate(bar):
            apply_step_schedules(optimizers, step=epoch * steps + i, total=cfg.epochs * steps)
            clean = clean.to(device)
            batch = train_missing.apply(clean, generator=mask_gen) if train_missing is not None else clean
            losses = objective.training_step(
                model=model, batch=batch, clean=clean, optimizers=optimizers, grad_clip=cfg.grad_clip
            )
            if not math.isfinite(losses["loss"]):
                raise FloatingPointError(f"{stage} epoch {epoch + 1}: non-finite training loss {losses}")
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v * clean.size
            n_seen += clean.size
            bar.set_postfix(loss=f"{sums['loss'] / n_seen:.4f}")
        bar.close()
        diagnostics = {f"diag_{k}": v for k, v in objective.end_epoch().items()}
        valid_loss, valid_metrics = validate(model, data, cfg, device, by_video=by_video)
        current = selection_score(cfg.select_metric, valid_loss, valid_metrics)
        for sched in schedulers.values():
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(valid_loss)
            else:
                sched.step()
        row = {"epoch": epoch + 1, **{f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()}}
        row.update(valid_loss=valid_loss, **{f"valid_{k}": v for k, v in valid_metrics.items()})
        row.update(diagnostics)
        history.append(row)
        if current > best_score:
            best_score, best_epoch, best_metrics, bad_epochs = current, epoch + 1, valid_metrics, 0
            save_weights(best_path, model)
        else:
            bad_epochs += 1
        stopped_early = bool(cfg.patience and bad_epochs >= cfg.patience)
        epochs_trained += 1
        seconds = earlier_seconds + time.perf_counter() - t0  # up to this epoch's end, as saved in its state
        _write_log(stage_dir / "log.csv", history)  # before the state: a kill between the two loses no row
        save_state(
            state_path,
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "objective": objective.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
                "history": history,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "best_metrics": best_metrics,
                "bad_epochs": bad_epochs,
                "seconds": seconds,
            },
        )
        if on_epoch is not None:
            on_epoch({**row, "score": current})
        now = time.perf_counter()
        line = epoch_line(
            stage=stage,
            epoch=epoch + 1,
            epochs=cfg.epochs,
            row=row,
            select_metric=cfg.select_metric,
            best=best_epoch == epoch + 1,
            seconds=now - epoch_t0,
            eta=None if stopped_early else (now - t0) / epochs_trained * (cfg.epochs - epoch - 1),
        )
        # the bar shows progress on a terminal; without one (disable resolved to True) a line per epoch does
        (progress_log if cfg.progress and bar.disable else log).info("%s", line)
    if not best_path.exists():
        raise RuntimeError(f"{stage}: no epoch finished, nothing to select (epochs={cfg.epochs})")
    load_weights(best_path, model)
    return FitResult(
        best_epoch=best_epoch,
        best_score=best_score,
        valid_metrics=best_metrics,
        history=history,
        stopped_early=stopped_early,
        seconds=seconds,
        epochs_trained=epochs_trained,
    )


def _valid_of(row: dict[str, float]) -> dict[str, float]:
    """The validation metrics of a log row, under their metric names."""
    return {k.removeprefix("valid_"): v for k, v in row.items() if k.startswith("valid_") and k != "valid_loss"}


def format_duration(seconds: float) -> str:
    """``42.0 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def epoch_line(
    *,
    stage: str,
    epoch: int,
    epochs: int,
    row: dict[str, float],
    select_metric: str,
    best: bool,
    seconds: float,
    eta: float | None,
) -> str:
    """One finished epoch in one line: stage, epoch, training losses, validation metric, time and ETA.

    ``eta`` is the time the remaining epochs take at this session's mean epoch time (an upper bound: early
    stopping may end sooner); None when training stops here.
    """
    terms = [
        f"{k.removeprefix('train_')} {v:.4f}" for k, v in row.items() if k.startswith("train_") and k != "train_loss"
    ]
    train = f"train loss {row.get('train_loss', float('nan')):.4f}"
    if len(terms) > 1:  # a lone term is the loss itself
        train += f" ({', '.join(terms)})"
    valid = f"valid loss {row['valid_loss']:.4f}"
    key = {"mae": "valid_MAE", "f1": "valid_F1_non0" if "valid_F1_non0" in row else "valid_Mean_F1"}.get(select_metric)
    if key is not None and key in row:
        valid += f", {key.removeprefix('valid_')} {row[key]:.4f}"
    if best:
        valid += " (best)"
    if eta is None:
        end = "stopping early" if epoch < epochs else "done"
    else:
        end = f"ETA {format_duration(eta)}" if epoch < epochs else "done"
    return f"{stage} epoch {epoch}/{epochs}: {train} | {valid} | {format_duration(seconds)}, {end}"


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def seed_everything_for_build(seed: int, what: str) -> None:
    """Seed the global torch RNG right before building a model, so its initial weights depend on ``seed`` only."""
    torch.manual_seed(derive_seed(seed, what, "weights"))
