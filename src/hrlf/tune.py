"""Hyper-parameter search over recipe fields with Ray Tune: ``hrlf tune`` (docs/scaling.md).

A search space file maps dotted recipe keys to distributions::

    train.lr: {loguniform: [1.0e-4, 1.0e-2]}
    model.dropout: {uniform: [0.0, 0.3]}
    model.lambda_hmi: {choice: [0.1, 0.5, 1.0]}
    model.num_layers: {randint: [1, 3]}     # both ends included

The trials' settings are drawn up front from ``seed`` (the same command draws the same trials) and checked like
``--set`` overrides before anything trains. Every trial is an ordinary run folder, ``OUT/trials/trialNNN``, trained
by a Ray Tune trial of ``threads`` CPUs; each epoch's validation selection score (``train.select_metric``, higher
is better) is reported to an ASHA scheduler, which stops trials that trail the others at its rungs.

Selection uses the validation split only: the winner is the finished trial with the best selection score at its
selected epoch (the last stage's, for teacher-student models). The test split is never evaluated for a trial;
once the search is over, the winner's run folder is completed by the usual run (which trains nothing more) and
its test split is evaluated once, exactly as ``hrlf train`` with the winner's settings would. The search log,
``OUT/search.csv`` and ``OUT/search.json``, lies beside the trials; Ray Tune's own files are in ``OUT/ray``.

ASHA decides on results as they arrive, so which trials it stops can differ between two runs of one command on a
busy cluster; each trial's numbers (and so the winner among the same finished trials) do not.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hrlf.config import ConfigError, ExperimentCfg, load_config, to_dict
from hrlf.engine.bench import PlannedRun
from hrlf.engine.checkpoint import load_state, write_json, write_text
from hrlf.engine.ray_engine import enter_folder, ray_session, run_bench_ray
from hrlf.engine.run import build_stages, check_run_config, run_experiment
from hrlf.errors import HrlfError

log = logging.getLogger(__name__)

#: the distributions a space file may name, with what their two numbers (or list) mean
DISTRIBUTIONS = {
    "uniform": "[low, high]",
    "loguniform": "[low, high], both > 0",
    "randint": "[low, high], integers, both included",
    "choice": "[value, ...]",
}
#: keys a search may not vary: what the data is, where it runs, and the seed (picking a seed is fitting noise)
FIXED_KEYS = ("data.", "train.seed", "train.device", "train.progress")


class TuneError(HrlfError, ValueError):
    """A search space, trial count or search folder that cannot be used; nothing was trained."""


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted recipe key, e.g. train.lr
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # [low, high] or the choices

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "uniform":
            return float(rng.uniform(self.values[0], self.values[1]))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.values[0]), math.log(self.values[1]))))
        if self.kind == "randint":
            return int(rng.integers(self.values[0], self.values[1] + 1))
        return self.values[int(rng.integers(len(self.values)))]


def load_space(path: str | Path) -> list[Dimension]:
    """The dimensions of a space file, checked (key names against the recipe are checked by :func:`plan_trials`).

    Raises:
        TuneError: unreadable file, a fixed key, an unknown distribution or bad bounds; naming the key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TuneError(f"--space {path}: cannot read the search space ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise TuneError(f"--space {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict) or not raw:
        raise TuneError(
            f"--space {path}: expected a mapping of dotted recipe keys to distributions, e.g. "
            "'train.lr: {loguniform: [1.0e-4, 1.0e-2]}'"
        )
    space = []
    for key, spec in raw.items():
        where = f"--space {path}: key {key!r}"
        if not isinstance(key, str) or key.count(".") != 1:
            raise TuneError(f"{where}: expected a dotted recipe key such as train.lr or model.dropout")
        if key.startswith(FIXED_KEYS) or key in FIXED_KEYS:
            raise TuneError(
                f"{where}: cannot be searched (data, seed and device stay fixed; seeds belong to hrlf bench)"
            )
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            known = "; ".join(f"{k}: {v}" for k, v in DISTRIBUTIONS.items())
            raise TuneError(f"{where}: expected one distribution ({known}), found {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise TuneError(f"{where}: {kind} expects a list {DISTRIBUTIONS[kind]}, found {values!r}")
        if kind != "choice":
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            integral = kind != "randint" or all(isinstance(v, int) for v in values)
            if len(values) != 2 or not numeric or not integral or not values[0] <= values[1]:
                raise TuneError(f"{where}: {kind} expects {DISTRIBUTIONS[kind]} with low <= high, found {values!r}")
            if kind == "loguniform" and values[0] <= 0:
                raise TuneError(f"{where}: loguniform expects low > 0, found {values!r}")
        space.append(Dimension(key=key, kind=kind, values=tuple(values)))
    return space


@dataclass(frozen=True)
class Trial:
    name: str  # trialNNN, also its folder name
    params: dict[str, Any]  # the searched keys' values
    cfg: ExperimentCfg
    run_dir: Path


def _setting(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: floats keep every digit, strings are quoted


def plan_trials(
    recipe: str | Path | None,
    space: Sequence[Dimension],
    *,
    trials: int,
    seed: int,
    data: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
) -> list[Trial]:
    """Draw ``trials`` settings from ``space`` with ``seed`` and resolve each trial's config, before any training.

    Raises:
        TuneError: fewer than one trial.
        ConfigError: a drawn value the recipe refuses (unknown key, wrong type, out of range), naming the trial.
        RunDirError: a trial folder left by a search with other settings.
    """
    if trials < 1:
        raise TuneError(f"--trials must be >= 1, got {trials}")
    rng = np.random.default_rng(seed)
    planned = []
    for index in range(trials):
        params = {d.key: d.sample(rng) for d in space}
        name = f"trial{index:03d}"
        settings = [_setting(k, v) for k, v in params.items()]
        try:
            cfg = load_config(recipe, [*overrides, f"data.path={data}", *settings])
        except ConfigError as exc:
            raise ConfigError(f"search space, {name} ({', '.join(settings)}): {exc}") from None
        run_dir = Path(out) / "trials" / name
        check_run_config(run_dir, to_dict(cfg), resume=True)
        planned.append(Trial(name=name, params=params, cfg=cfg, run_dir=run_dir))
    return planned


def _trial(config: dict[str, Any], *, trials: list[Trial], threads: int, cwd: str, search: str) -> None:
    """One Ray Tune trial: train (never test) the trial's run folder, each epoch's validation score reported."""
    import torch
    from ray import tune

    trial = trials[config["trial"]]
    enter_folder(cwd)
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(trial.cfg, train=dataclasses.replace(trial.cfg.train, progress=False))

    def report(stage: str, row: dict[str, float]) -> None:
        tune.report({"valid_score": row["score"], "valid_loss": row["valid_loss"], "stage": stage})

    # retries of this trial within this search (its worker died) share the lock owner and take its lock over
    run_experiment(
        cfg, run_dir=trial.run_dir, resume=True, lock_owner=f"{search}-{trial.name}", on_epoch=report, evaluate=False
    )


def _stage_epochs(cfg: ExperimentCfg, dims: Any, task: Any) -> list[tuple[str, int]]:
    return [
        (s.name, s.train_overrides.get("epochs", cfg.train.epochs)) for s in build_stages(cfg, dims=dims, task=task)
    ]


def _outcome(trial: Trial, stages: list[tuple[str, int]]) -> dict[str, Any]:
    """What a trial's folder shows: finished (every stage trained to its end or stopped by patience) or not, the
    epochs it trained and, when finished, its selection score and validation metrics at the selected epoch."""
    epochs, last = 0, None
    for name, _ in stages:
        path = trial.run_dir / name / "state.pt"
        last = load_state(path) if path.is_file() else None
        epochs += int(last["epoch"]) if last else 0
    name, planned = stages[-1]
    patience = trial.cfg.train.patience
    finished = last is not None and (
        int(last["epoch"]) >= planned or bool(patience and int(last["bad_epochs"]) >= patience)
    )
    found: dict[str, Any] = {"trial": trial.name, "finished": finished, "epochs": epochs}
    if finished and last is not None:
        found.update(valid_score=float(last["best_score"]), valid=dict(last["best_metrics"]))
    return found


def run_tune(
    recipe: str | Path | None,
    *,
    space_path: str | Path,
    trials: int,
    data: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    threads: int = 1,
    address: str | None = None,
    seed: int = 0,
    grace_period: int = 1,
    reduction_factor: int = 2,
) -> dict[str, Any]:
    """Search, pick the winner on validation, evaluate its test split once; returns what ``search.json`` holds.

    Raises:
        TuneError: a bad space, trial count or scheduler setting, or no trial finished.
        RayUnavailable: Ray (the hrlf[ray] extra) is not installed, or the cluster cannot be reached.
    """
    from hrlf.data.datamodule import DataModule
    from hrlf.data.features import load_features

    out = Path(out)
    if (out / "search.json").exists():
        raise TuneError(f"--out {out} holds a finished search ({out / 'search.json'}); use another --out")
    if grace_period < 1 or reduction_factor < 2:
        raise TuneError(
            f"expected --grace-period >= 1 and --reduction-factor >= 2, got {grace_period}, {reduction_factor}"
        )
    space = load_space(space_path)
    planned = plan_trials(recipe, space, trials=trials, seed=seed, data=data, out=out, overrides=overrides)
    base = planned[0].cfg
    features = load_features(base.data.path, nonfinite=base.data.nonfinite)
    dm = DataModule(features)
    stages = {t.name: _stage_epochs(t.cfg, dm.dims, dm.task) for t in planned}
    max_t = max(sum(e for _, e in s) for s in stages.values())
    scheduler_settings = {"name": "ASHA", "grace_period": grace_period, "reduction_factor": reduction_factor}
    scheduler_settings["max_t"] = max_t
    log.info("tune: %d trials of %s, ASHA over %d epochs", len(planned), base.model_name, max_t)
    with ray_session(address):
        errors = _search(planned, out=out, threads=threads, max_t=max_t, scheduler=scheduler_settings)
        outcomes = [_outcome(t, stages[t.name]) for t in planned]
        finished = [o for o in outcomes if o["finished"]]
        if not finished:
            first = next(iter(errors.values()), "none finished")
            raise TuneError(f"no trial of the search finished (first error: {first}); see {out / 'ray'}")
        best = max(finished, key=lambda o: o["valid_score"])  # ties: the first trial drawn
        winner = next(t for t in planned if t.name == best["trial"])
        # the winner's folder holds its trained stages: the ordinary run trains nothing more and tests once
        (results,) = run_bench_ray(
            [PlannedRun(label=base.model_name, cfg=winner.cfg, run_dir=winner.run_dir)],
            threads=threads,
            address=address,
        )
    rows = []
    for trial, outcome in zip(planned, outcomes, strict=True):
        status = "finished" if outcome["finished"] else ("failed" if trial.name in errors else "stopped")
        rows.append({**outcome, "status": status, "params": trial.params, "error": errors.get(trial.name)})
    summary = {
        "recipe": str(recipe) if recipe else None,
        "model": base.model_name,
        "data": str(data),
        "space": {d.key: {d.kind: list(d.values)} for d in space},
        "space_seed": seed,
        "select_metric": base.train.select_metric,
        "selected_on": "valid",
        "scheduler": scheduler_settings,
        "threads": threads,
        "trials": rows,
        "winner": {
            "trial": winner.name,
            "params": winner.params,
            "valid_score": best["valid_score"],
            "run_dir": str(winner.run_dir),
            "test": results["protocol"],
        },
    }
    write_json(out / "search.json", summary)
    write_text(out / "search.csv", search_csv(rows, winner=winner.name, keys=[d.key for d in space]))
    return {**summary, "results": results}


def _search(
    planned: list[Trial], *, out: Path, threads: int, max_t: int, scheduler: Mapping[str, Any]
) -> dict[str, str]:
    """Run the trials under ASHA; returns the failed trials' errors by trial name."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(
        tune.with_parameters(_trial, trials=planned, threads=threads, cwd=os.getcwd(), search=uuid.uuid4().hex[:12]),
        {"cpu": threads},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(planned))))},  # one trial per drawn setting
        tune_config=tune.TuneConfig(
            metric="valid_score",
            mode="max",
            scheduler=ASHAScheduler(
                time_attr="training_iteration",  # one report per epoch, over all stages
                max_t=max_t,
                grace_period=scheduler["grace_period"],
                reduction_factor=scheduler["reduction_factor"],
            ),
        ),
        run_config=tune.RunConfig(
            name="search",
            storage_path=str((out / "ray").resolve()),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),  # a dead worker: the trial resumes from its folder
        ),
    )
    # Ctrl-C must stop the command (a rerun continues the trials), not end the search early and crown a winner
    # among the trials that happened to finish: Tune's own SIGINT handler, which does the latter, stays off
    saved = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        grid = tuner.fit()
    finally:
        if saved is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER")
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved
    errors = {}
    for result in grid:
        if result.error is not None:
            name = planned[result.config["trial"]].name
            errors[name] = " ".join(f"{type(result.error).__name__}: {result.error}".split())[:300]
    return errors


def search_csv(rows: Sequence[dict[str, Any]], *, winner: str, keys: Sequence[str]) -> str:
    """One line per trial: its settings, status, epochs trained and validation results (never test)."""
    metrics: list[str] = []
    for row in rows:
        metrics.extend(k for k in row.get("valid", {}) if k not in metrics)
    fields = ["trial", "winner", "status", "epochs", *keys, "valid_score", *[f"valid_{m}" for m in metrics]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        line = {"trial": row["trial"], "winner": row["trial"] == winner, "status": row["status"]}
        line.update(epochs=row["epochs"], valid_score=row.get("valid_score", ""), **row["params"])
        line.update({f"valid_{m}": v for m, v in row.get("valid", {}).items()})
        writer.writerow(line)
    return buf.getvalue()
