"""One experiment end to end: data file -> training stages -> selected checkpoint -> test under every protocol.

The test split is evaluated once per run, at the checkpoint selected on the validation split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from hrlf.config import ConfigError, ExperimentCfg, from_dict, to_dict
from hrlf.data.datamodule import DataModule
from hrlf.data.features import DataFileError, FeatureFile, load_features
from hrlf.data.features import dataset_name as file_dataset_name
from hrlf.engine.checkpoint import load_weights, save_weights, sha256_file, write_json, write_text
from hrlf.engine.evaluate import evaluate_protocols
from hrlf.engine.trainer import FitResult, fit, resolve_device, seed_everything_for_build
from hrlf.errors import HrlfError
from hrlf.missing.protocol import ModalityStochasticMissing
from hrlf.registry import ModelSpec, Stage, get_model_spec
from hrlf.types import Modality, TaskSpec

log = logging.getLogger(__name__)


class RunDirError(HrlfError, ValueError):
    """A run directory is missing, incomplete or belongs to a different experiment."""


def package_version() -> str:
    try:
        return metadata.version("hrlf")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def dataset_name(cfg: ExperimentCfg, data: FeatureFile) -> str:
    """``data.name`` when set, else the name the file itself gives (:func:`hrlf.data.features.dataset_name`)."""
    return cfg.data.name or file_dataset_name(data)


def build_stages(cfg: ExperimentCfg, *, dims: dict[Modality, int], task: TaskSpec) -> list[Stage]:
    """Every training stage with freshly built networks (``dims``: the data file's feature widths).

    With a ``text_encoder`` section, each stage's network is built for the encoder's width and then given the
    pretrained encoder (:func:`hrlf.models.text_encoder.attach_text_encoder`) after the network's own seeded
    initialisation; training's randomness is seeded per epoch, so whatever loading the encoder draws changes
    nothing after it (seed 1111 of `make bench-mosi-text-ft` repeated a separate run of it to the last digit).
    """
    spec = get_model_spec(cfg.model_name)
    seed_everything_for_build(cfg.train.seed, cfg.model_name)
    if cfg.text_encoder.active:
        from hrlf.models.text_encoder import dims_for

        dims = dims_for(cfg.text_encoder, dims)
    if spec.stages is not None:
        stages = spec.stages(cfg.model, dims=dims, task=task, missing=cfg.missing.enabled)
    else:
        model = spec.build(cfg.model, dims=dims, task=task)
        protocol = spec.train_protocol(cfg.model) if spec.train_protocol is not None else None
        objective = spec.objective(cfg.model, task=task)
        stages = [Stage(name="train", model=model, objective=objective, missing=cfg.missing.enabled, protocol=protocol)]
    if cfg.text_encoder.active:
        from hrlf.models.text_encoder import attach_text_encoder

        for stage in stages:
            attach_text_encoder(stage.model, cfg.text_encoder)
    return stages


def build_model(cfg: ExperimentCfg, *, dims: dict[Modality, int], task: TaskSpec) -> nn.Module:
    """The inference model (the last stage's model) with freshly initialised weights."""
    return build_stages(cfg, dims=dims, task=task)[-1].model


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None
    return digest.hexdigest()


def fingerprint(data: FeatureFile) -> dict[str, Any]:
    return {
        "path": str(Path(data.path).resolve()),
        "sha256": data.sha256,
        "format": data.format,
        "dims": data.dims,
        "lengths": data.lengths,
        "sizes": {s: len(d) for s, d in data.splits.items()},
        "task": {
            "kind": data.task.kind,
            "label_names": list(data.task.label_names),
            "label_range": list(data.task.label_range),
        },
        "nonfinite": data.nonfinite,
        # clips of the training split with at least one real frame, per modality (0: never seen in training)
        "available": {m: int(v.any(axis=1).sum()) for m, v in data.splits["train"].valid.items()},
    }


#: settings that change what is shown, not what is computed: ignored when a run folder is reused
PRESENTATION_KEYS = {"train": ("progress",)}


def same_config(a: Any, b: Any) -> bool:
    """Two resolved configs describe the same experiment (presentation settings aside)."""

    def strip(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
        for section, keys in PRESENTATION_KEYS.items():
            for key in keys:
                if isinstance(d.get(section), dict):
                    d[section].pop(key, None)
        return d

    return strip(a) == strip(b)


#: keys ``--resume`` may raise on a run folder: more epochs, more patience (the usual reason to resume a finished
#: run). Training continues from the last finished epoch; a stage that trains further restarts the stages after it.
RESUMABLE_KEYS = ("train.epochs", "train.patience")


def config_diff(old: Any, new: Any) -> list[str]:
    """The dotted keys (``section.key``) whose values differ between two resolved configs, presentation aside."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ["(the whole config)"] if old != new else []
    ignored = {f"{section}.{key}" for section, keys in PRESENTATION_KEYS.items() for key in keys}

    def flat(d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section, values in d.items():
            if isinstance(values, dict):
                out.update({f"{section}.{key}": value for key, value in values.items()})
            else:
                out[section] = values
        return out

    a, b = flat(old), flat(new)
    keys = list(a) + [k for k in b if k not in a]
    return [k for k in keys if k not in ignored and a.get(k, "<unset>") != b.get(k, "<unset>")]


def _raised(key: str, old: Any, new: Any) -> bool:
    if not isinstance(old, int) or not isinstance(new, int):
        return False
    if key == "train.patience":  # 0 = never stop early, the most patient setting
        return new == 0 or (old != 0 and new > old)
    return new > old


def has_trained(run_dir: Path) -> bool:
    """``run_dir`` holds at least one finished epoch (a stage's ``state.pt``) or a finished run.

    A folder without one (a run refused or stopped before its first epoch ended) blocks no later run.
    """
    return (run_dir / "results.json").is_file() or any(run_dir.glob("*/state.pt"))


def _with_current_defaults(old: Any) -> Any:
    """A stored config with the keys this version added filled in by their defaults.

    A run written before a setting existed ran with that setting's default behaviour (new settings default to
    what the code did before them), so a key missing from the folder's config.yaml is no difference when the
    new config holds the default. A config this version cannot read stays as stored (and so differs).
    """
    if not isinstance(old, dict):
        return old
    try:
        return to_dict(from_dict(old, source="config.yaml", check=False))
    except ConfigError:  # an unknown model, key or value (from another version, or edited): compare as stored
        return old


def check_run_config(run_dir: Path, resolved: dict[str, Any], *, resume: bool = False) -> list[str]:
    """Refuse a run folder that holds a run of another configuration (no folder, no config or no epoch yet: fine).

    With ``resume``, raising the :data:`RESUMABLE_KEYS` is allowed.

    Returns:
        The keys that differ (only resumable raises when ``resume``; empty for the same configuration).

    Raises:
        RunDirError: naming up to five differing keys with their old and new values.
    """
    path = run_dir / "config.yaml"
    if not path.is_file() or not has_trained(run_dir):
        return []
    try:
        old = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"{path}: unreadable run config (not valid YAML); use another --out") from None
    diff = config_diff(_with_current_defaults(old), resolved)
    if not diff:
        return []

    def value(cfg: Any, key: str) -> Any:
        section, _, name = key.partition(".")
        part = cfg.get(section, "<unset>") if isinstance(cfg, dict) else "<unset>"
        if not name:  # a section that is not a mapping in one of the two configs: keyed bare, as in config_diff
            return "<unset>" if isinstance(part, dict) else part
        return part.get(name, "<unset>") if isinstance(part, dict) else "<unset>"

    raises = all(k in RESUMABLE_KEYS and _raised(k, value(old, k), value(resolved, k)) for k in diff)
    if raises and resume:
        raised = ", ".join(f"{k} {value(old, k)} -> {value(resolved, k)}" for k in diff)
        log.info("%s: resuming with %s", run_dir, raised)
        return diff
    listed = "; ".join(f"{k}: {value(old, k)!r} there, {value(resolved, k)!r} now" for k in diff[:5])
    more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
    hint = (
        "pass --resume to continue it with these values"
        if raises
        else f"use another --out or the same config (--resume may only raise {' and '.join(RESUMABLE_KEYS)})"
    )
    raise RunDirError(f"{run_dir} holds a run with a different configuration ({listed}{more}); {hint}")


def train_missing_protocol(cfg: ExperimentCfg) -> ModalityStochasticMissing:
    m = cfg.missing
    return ModalityStochasticMissing(
        ratio_dist=m.ratio_dist,  # type: ignore[arg-type]
        ratio_step=m.ratio_step,
        subset_prob=m.subset_prob,
        per_modality_ratio=m.per_modality_ratio,
    )


def run_experiment(
    cfg: ExperimentCfg,
    *,
    run_dir: str | Path,
    resume: bool = False,
    protocol: str = "all",
    label: str | None = None,
    lock_owner: str | None = None,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train, select on valid, evaluate test once; write checkpoint, config and ``results.json`` to ``run_dir``.

    ``label`` names the model in results and reports (default: the registry name), e.g. ``hrlf:mosi_wo_hal`` for
    an ablation recipe. ``lock_owner`` names the job this run belongs to (see :func:`run_lock`). ``on_epoch`` gets
    each stage's name and epoch rows (:func:`hrlf.engine.trainer.fit`). Without ``evaluate`` the run stops after
    training and returns only ``{"selection": ...}``: a search trial, whose test split stays unseen; the same call
    with ``evaluate`` later trains nothing more and evaluates test once.
    """
    run_dir = Path(run_dir)
    resolve_device(cfg.train.device)  # before anything is written: a refused device leaves no folder behind
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    with run_lock(run_dir, owner=lock_owner):
        return _run_experiment(
            cfg, run_dir=run_dir, resume=resume, protocol=protocol, label=label, on_epoch=on_epoch, evaluate=evaluate
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


#: a lock held by a process on another machine (nodes sharing a folder) is kept fresh this often...
LOCK_HEARTBEAT_SECONDS = 10.0
#: ...and counts as abandoned (its machine died) when it has not been refreshed for this long
LOCK_STALE_SECONDS = 60.0


@dataclass(frozen=True)
class LockHolder:
    """What ``run_dir/.lock`` says: ``pid [host [owner]]`` (a bare pid, as older versions wrote: this host)."""

    pid: int
    host: str
    owner: str | None

    @classmethod
    def parse(cls, text: str) -> LockHolder:
        fields = text.split()
        return cls(
            pid=int(fields[0]) if fields else 0,
            host=fields[1] if len(fields) > 1 else socket.gethostname(),
            owner=fields[2] if len(fields) > 2 else None,
        )

    def describe(self) -> str:
        return f"pid {self.pid}" if self.host == socket.gethostname() else f"pid {self.pid} on {self.host}"


def _holder_alive(holder: LockHolder, lock: Path, owner: str | None) -> bool:
    """Whether the lock's holder still trains: a live pid on this machine, a fresh heartbeat on another.

    A holder with this call's ``owner`` is an earlier attempt of the same job, which its scheduler (Ray) retries
    only once that attempt is dead, whatever its machine: never alive.
    """
    if owner is not None and holder.owner == owner:
        return False
    if holder.host == socket.gethostname():
        return bool(holder.pid) and holder.pid != os.getpid() and _pid_alive(holder.pid)
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:  # vanished meanwhile: free
        return False
    return age < LOCK_STALE_SECONDS


@contextmanager
def run_lock(run_dir: Path, *, owner: str | None = None) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while a run trains, so two commands (or cluster nodes) never train one folder.

    The lock names this process (pid and host name) and ``owner``, an id of the job that a scheduler may retry
    elsewhere (a Ray task id). A lock whose process is gone is taken over: on this machine when its pid is no
    longer alive, from another machine sharing the folder when it has not been refreshed for
    :data:`LOCK_STALE_SECONDS` (the holder refreshes it every :data:`LOCK_HEARTBEAT_SECONDS`), and at once when it
    belongs to an earlier attempt of the same ``owner``. A folder that this call created and that is still empty
    at the end (the run failed before writing anything) is removed again.
    """
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, under a file, a pseudo file system
        raise RunDirError(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    lock = run_dir / ".lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = LockHolder.parse(lock.read_text())
            except (OSError, ValueError):  # torn or vanished meanwhile: look again
                holder = LockHolder(pid=0, host=socket.gethostname(), owner=None)
            if _holder_alive(holder, lock, owner):
                raise RunDirError(
                    f"{run_dir} is being trained by another process ({holder.describe()}); wait for it or use "
                    "another --out"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(" ".join([str(os.getpid()), socket.gethostname(), *([owner] if owner else [])]))
        break
    stop = threading.Event()

    def heartbeat() -> None:  # tells other machines that this holder is alive
        while not stop.wait(LOCK_HEARTBEAT_SECONDS):
            with suppress(OSError):
                os.utime(lock)

    beat = threading.Thread(target=heartbeat, name=f"lock-{run_dir.name}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        lock.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()


def _run_experiment(
    cfg: ExperimentCfg,
    *,
    run_dir: Path,
    resume: bool,
    protocol: str,
    label: str | None,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    resolved = to_dict(cfg)
    config_path, data_path = run_dir / "config.yaml", run_dir / "data.json"
    changed: list[str] = []
    if config_path.exists() and not has_trained(run_dir):
        log.info("%s holds no finished epoch (an earlier run stopped before one): starting afresh", run_dir)
    elif config_path.exists():
        changed = check_run_config(run_dir, resolved, resume=resume)
        if not resume:
            raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        if data_path.exists():  # the same path may now hold other data: never resume or reuse across files
            recorded = json.loads(data_path.read_text())["sha256"]
            current = file_sha256(cfg.data.path)
            if recorded != current:
                raise RunDirError(
                    f"{run_dir} was trained on data with sha256 {recorded[:12]}..., but {cfg.data.path} now has "
                    f"{current[:12]}...; use another --out"
                )
    if resume and not changed and (run_dir / "results.json").exists():
        log.info("%s is complete; nothing to resume", run_dir)
        return json.loads((run_dir / "results.json").read_text())
    data = load_features(cfg.data.path, nonfinite=cfg.data.nonfinite)
    if cfg.text_encoder.active:
        from hrlf.models.text_encoder import check_tokenizer

        check_tokenizer(cfg.text_encoder, data)
    if data.nonfinite:
        log.warning("non-finite feature values replaced by 0: %s", data.nonfinite)
    dm = DataModule(data, num_workers=cfg.data.num_workers)
    write_text(config_path, yaml.safe_dump(resolved, sort_keys=False))
    write_json(data_path, fingerprint(data))
    spec = get_model_spec(cfg.model_name)
    stages = build_stages(cfg, dims=dm.dims, task=dm.task)
    train_protocol = train_missing_protocol(cfg)
    fits: dict[str, FitResult] = {}
    retrained = False  # an earlier stage trained further: the later ones learnt from its old weights, start over
    for stage in stages:
        if retrained and (run_dir / stage.name / "state.pt").exists():
            log.info("%s: %s starts over (the stage before it trained further)", run_dir, stage.name)
        fits[stage.name] = fit(
            model=stage.model,
            objective=stage.objective,
            data=dm,
            cfg=dataclasses.replace(cfg.train, **stage.train_overrides),
            stage_dir=run_dir / stage.name,
            train_missing=(stage.protocol or train_protocol) if stage.missing else None,
            resume=resume and not retrained,
            stage=stage.name,
            on_epoch=None if on_epoch is None else functools.partial(on_epoch, stage.name),
            by_video=spec.batches_by_video,
        )
        retrained = retrained or fits[stage.name].epochs_trained > 0
    if not evaluate:
        return {"selection": _selection(cfg, fits)}
    final_stage = stages[-1]
    final = final_stage.model
    # what inference needs, nothing else; every weights file's SHA-256 goes into checkpoint.json
    weights_sha256 = {"model.safetensors": save_weights(run_dir / "model.safetensors", final)}
    for stage in stages[:-1]:  # earlier stages (e.g. HRLF's teacher), kept apart from the inference weights
        weights_sha256[f"{stage.name}.safetensors"] = save_weights(run_dir / f"{stage.name}.safetensors", stage.model)
    device = resolve_device(cfg.train.device)
    eval_t0 = time.perf_counter()
    scores, described = evaluate_protocols(
        final,
        dm,
        "test",
        which=protocol,
        mask_seed=cfg.eval.mask_seed,
        rates=cfg.eval.rates,
        batch_size=cfg.train.eval_batch_size,
        device=device,
        by_video=spec.batches_by_video,
    )
    # the same modality subsets on the validation split: a robustness number to choose recipes by without the test
    # split (the checkpoint itself is selected on train.select_metric)
    valid_scores, _ = evaluate_protocols(
        final,
        dm,
        "valid",
        which="inter",
        mask_seed=cfg.eval.mask_seed,
        batch_size=cfg.train.eval_batch_size,
        device=device,
        by_video=spec.batches_by_video,
    )
    selection = _selection(cfg, fits)
    diagnostics = spec.diagnose(stages, dm, device) if spec.diagnose is not None else None
    evaluate_seconds = time.perf_counter() - eval_t0
    results = {
        "model": label or cfg.model_name,
        "dataset": dataset_name(cfg, data),
        "seed": cfg.train.seed,
        "protocol": scores,
        "protocols": {
            "train": (final_stage.protocol or train_protocol).describe() if final_stage.missing else None,
            "eval": described,
        },
        "selection": selection,
        "valid_protocol": {"inter": valid_scores["inter"]},
        # results depend on the thread count as well as the seed (another float path): recorded with them
        "torch_threads": torch.get_num_threads(),
        # what the run cost on this machine (machine- and load-dependent, unlike everything above)
        "resources": run_resources(fits, evaluate_seconds),
    }
    if diagnostics is not None:
        results["diagnostics"] = diagnostics
    meta = {
        "model_name": cfg.model_name,
        "config": resolved,
        "data": fingerprint(data),
        "metrics": {"valid": fits[stages[-1].name].valid_metrics, "test": scores},
        "hrlf_version": package_version(),
        "stages": [s.name for s in stages],
        "protocols": results["protocols"],
        "weights_sha256": weights_sha256,
    }
    write_json(run_dir / "checkpoint.json", meta)
    write_json(run_dir / "results.json", results)
    return results


def peak_rss_mb() -> float | None:
    """The highest resident memory this process has held so far, in MiB (``getrusage``; None where unavailable).

    A worker process of ``hrlf bench --jobs N`` trains one run, so this is that run's peak; runs trained one after
    another in one process (``--jobs 1``) each report the peak of the process up to their end.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def run_resources(fits: dict[str, FitResult], evaluate_seconds: float) -> dict[str, Any]:
    """Wall time of training (every stage, summed over resumes) and of the test/validation evaluation and the
    diagnostics, and the process's peak resident memory: the ``resources`` entry of ``results.json``."""
    train = sum(f.seconds for f in fits.values())
    return {
        "train_seconds": round(train, 2),
        "evaluate_seconds": round(evaluate_seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def _selection(cfg: ExperimentCfg, fits: dict[str, FitResult]) -> dict[str, Any]:
    return {
        name: {
            "metric": cfg.train.select_metric,
            "best_epoch": f.best_epoch,
            "epochs_run": len(f.history),
            "stopped_early": f.stopped_early,
            "seconds": round(f.seconds, 2),
            "valid": f.valid_metrics,
            **_selected_diagnostics(f),
        }
        for name, f in fits.items()
    }


def _selected_diagnostics(fit_result: FitResult) -> dict[str, Any]:
    """The selected epoch's ``diag_*`` entries of the training log (none for models that record none)."""
    if not fit_result.best_epoch:
        return {}
    row = fit_result.history[fit_result.best_epoch - 1]
    found = {k.removeprefix("diag_"): v for k, v in row.items() if k.startswith("diag_")}
    return {"diagnostics": found} if found else {}


def verify_weights(weights: Path, meta: dict[str, Any], meta_path: Path) -> None:
    """Check ``weights`` against the SHA-256 that ``checkpoint.json`` recorded for it.

    Runs saved before hashes were recorded have none: they load with a warning.

    Raises:
        RunDirError: the file's bytes differ from the recorded ones (damaged, truncated or replaced).
    """
    recorded = (meta.get("weights_sha256") or {}).get(weights.name)
    if recorded is None:
        log.warning(
            "%s records no SHA-256 for %s (a run saved by an older hrlf): its integrity is not checked",
            meta_path,
            weights.name,
        )
        return
    try:
        found = sha256_file(weights)
    except OSError as exc:
        raise RunDirError(f"{weights}: cannot read the weights ({exc.strerror or exc})") from None
    if found != recorded:
        raise RunDirError(
            f"{weights}: expected SHA-256 {recorded[:16]}... (recorded in {meta_path.name}), found {found[:16]}...; "
            "the file is damaged or was replaced: restore it or train the run again"
        )


@dataclass
class LoadedRun:
    cfg: ExperimentCfg
    model: nn.Module
    meta: dict[str, Any]
    dims: dict[Modality, int]
    task: TaskSpec

    @property
    def spec(self) -> ModelSpec:
        """The registry entry of the run's model (what it can do, e.g. ``batches_by_video``)."""
        return get_model_spec(self.cfg.model_name)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild a trained run's inference model from ``checkpoint.json`` + ``model.safetensors`` (strict)."""
    run_dir = Path(run_dir)
    meta_path, weights = run_dir / "checkpoint.json", run_dir / "model.safetensors"
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not meta_path.is_file() or not weights.is_file():
        raise RunDirError(f"{run_dir}: not a finished run (expected checkpoint.json and model.safetensors)")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = from_dict(meta["config"], source=str(meta_path))
        dims: dict[Modality, int] = dict(meta["data"]["dims"])
        t = meta["data"]["task"]
        task = TaskSpec(kind=t["kind"], label_names=tuple(t["label_names"]), label_range=tuple(t["label_range"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{meta_path}: unreadable run metadata ({type(exc).__name__}: {exc})") from None
    verify_weights(weights, meta, meta_path)
    model = build_model(cfg, dims=dims, task=task)
    try:
        load_weights(weights, model)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunDirError(f"{weights}: cannot load the weights ({type(exc).__name__}: {exc})") from None
    # training refuses non-finite losses, so non-finite weights mean damage (the one check an unhashed file gets)
    damaged = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if damaged:
        raise RunDirError(
            f"{weights}: expected finite weights, found NaN or infinite values in {len(damaged)} tensors "
            f"(first: {damaged[0]}); the file is damaged: restore it or train the run again"
        )
    model.eval()
    return LoadedRun(cfg=cfg, model=model, meta=meta, dims=dims, task=task)
