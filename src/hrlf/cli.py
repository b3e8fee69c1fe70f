"""``hrlf`` command line: thin over the library (parse -> config -> library call -> print).

User mistakes (bad path, bad file, bad option) and environment problems, every :class:`hrlf.errors.HrlfError`,
exit with code 2 and one line ``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hrlf.errors import HrlfError, Terminated

if TYPE_CHECKING:  # imported where used: `hrlf --help` stays light
    from hrlf.config import ExperimentCfg

log = logging.getLogger("hrlf")


class UsageError(HrlfError):
    """A command-line mistake; printed as one ``error:`` line, exit code 2."""


class _ModelNames(Sequence[str]):
    """The registered model names, looked up on first use: listing them imports torch and every model, which a
    plain ``hrlf --help`` or ``hrlf --version`` never needs."""

    def _names(self) -> list[str]:
        from hrlf.registry import list_models

        return list_models()

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


class _HelpFormatter(argparse.HelpFormatter):
    """Fills ``{models}`` in a help text with the registered models when (and only when) help is printed."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        return text.replace("{models}", ", ".join(_ModelNames())) if text and "{models}" in text else text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise UsageError(f"{self.prog}: {message}")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("hrlf")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "unknown"


def check_out_dir(path: str | Path, *, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be created or written to, before any work and leaving nothing behind.

    Probes by creating the missing folders and a temporary file in the deepest one, then removes what it created.
    """
    import tempfile

    path = Path(path)
    missing: list[Path] = []
    existing = path
    while not existing.exists() and not existing.is_symlink():
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        found = "it is a file" if existing == path else f"{existing} is a file"
        raise UsageError(f"{flag} {path}: expected a folder that can be created, found {found} (not a directory)")
    step = ""
    try:
        for folder in reversed(missing):
            step = f"create {folder}:"
            folder.mkdir()
        step = "write into it:"
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(
            f"{flag} {path}: expected a folder that can be created and written to, found: cannot {step} "
            f"{exc.strerror or exc}"
        ) from None
    finally:
        for folder in missing:  # deepest first: only what this probe created
            with contextlib.suppress(OSError):
                folder.rmdir()


SET_HELP = "config override, repeatable: e.g. --set train.lr=3e-4 --set model.d_model=32 (unknown keys are refused)"
PROTOCOL_HELP = (
    "inter: each of the 7 modality subsets; intra: frames dropped at each rate of eval.rates; all: both (default)"
)


def _jobs(text: str) -> int | None:
    """``--jobs``: a count, or ``auto`` (None: one run per CPU core, decided once the runs are planned)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hrlf", description="Robust incomplete multimodal sentiment analysis (HRLF and baselines).")
    verbose_help = "log at INFO level (data files, resumes, every epoch also while the progress bar shows)"
    p.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # -v also after the subcommand (`hrlf train ... -v`); SUPPRESS keeps a -v given before it
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    s = add("synth", help="write a synthetic benchmark in the real files' exact format")
    s.add_argument(
        "--preset", required=True, choices=["mosi", "mosei", "iemocap"], help="whose file layout, sizes and dims"
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="seed of the generated data (a non-negative integer)")
    s.add_argument("--labels", default=None, help="MOSI label.csv whose label distribution the latent follows")
    s.add_argument("--text-dim", type=int, default=None, choices=[300, 768], help="language dim: GloVe or BERT")

    s = add("inspect", help="summarise a feature file (splits, shapes, labels, non-finite values)")
    s.add_argument("data", help="MMSA or MulT pickle")

    s = add("train", help="train one model (one seed), select on valid, evaluate test once")
    s.add_argument("--config", default=None, help="YAML recipe, e.g. configs/backbone/mosi.yaml")
    s.add_argument("--data", default=None, help="feature file (overrides data.path)")
    s.add_argument(
        "--model", default=None, choices=_ModelNames(), metavar="MODEL", help="overrides model.name: {models}"
    )
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help="overrides train.seed: the training seed (weights, shuffling, dropout and training masks derive from it)",
    )
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its last finished epoch; a finished run continues when "
        "train.epochs or train.patience is raised (no other key may differ)",
    )
    s.add_argument(
        "--protocol",
        default="all",
        choices=["inter", "intra", "all"],
        help="missing-modality protocols on test after training: " + PROTOCOL_HELP,
    )

    s = add("eval", help="evaluate a finished run under the missing-modality protocols")
    s.add_argument("run_dir", help="a finished run directory (from hrlf train or hrlf bench)")
    s.add_argument(
        "--protocol",
        default="all",
        choices=["inter", "intra", "all"],
        help="missing-modality protocols evaluated: " + PROTOCOL_HELP,
    )
    s.add_argument(
        "--data",
        default=None,
        help="feature file (default: the one the run was trained on). Results go to RUN_DIR/eval_SPLIT_PROTOCOL.json; "
        "for a file with other contents to eval_SPLIT_PROTOCOL_<file stem>-<first 8 hex digits of its SHA-256>.json, "
        "so they never replace the run's own",
    )
    s.add_argument(
        "--split",
        default="test",
        choices=["valid", "test"],
        help="split evaluated (default test; valid is the split the checkpoint was selected on)",
    )

    s = add("bench", help="models x seeds -> report.md (paper tables), results.csv, curves")
    s.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL[:RECIPE]",
        help="registered models ({models}); MODEL:RECIPE uses configs/MODEL/RECIPE.yaml "
        "instead of --recipe (e.g. hrlf:mosi_wo_hal for an ablation) and is reported under that name",
    )
    s.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[1111, 1112, 1113, 1114, 1115],
        help="training seeds, one run per model and seed (default: 1111 1112 1113 1114 1115)",
    )
    s.add_argument("--data", required=True, help="feature file")
    s.add_argument("--recipe", default="mosi", help="recipe name: configs/<model>/<recipe>.yaml")
    s.add_argument("--config-dir", default="configs", help="folder of recipes, <model>/<recipe>.yaml (default configs)")
    s.add_argument("--reference", default=None, help="model the paired t-test compares against")
    s.add_argument("--out", required=True, help="benchmark folder (resumable: finished runs are kept)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    s.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        help="runs trained side by side in worker processes, each with an equal share of the torch threads; "
        "default auto: one run per CPU core (at most one per planned run), so on a 2-core machine two one-thread "
        "runs, 1.5x faster than one two-thread run after the other (a run's numbers depend on its thread count, "
        "recorded in results.json; see the README)",
    )
    s.add_argument(
        "--no-progress", action="store_true", help="no progress bar (nor, without a terminal, a line per finished run)"
    )
    _add_engine_options(s, what="every unfinished run is a Ray task of --threads CPUs (docs/scaling.md)")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run in a worker (--jobs > 1 or --engine ray); default: an equal share with --jobs, "
        "1 with --engine ray",
    )
    s.add_argument(
        "--gpus",
        type=float,
        default=0.0,
        help="GPUs per run with --engine ray (e.g. 1, or 0.5 for two runs per GPU); the runs need "
        "--set train.device=cuda (docs/scaling.md)",
    )

    s = add("tune", help="hyper-parameter search with Ray Tune: select on valid (ASHA), test the winner once")
    s.add_argument("--config", required=True, help="YAML recipe the search starts from, e.g. configs/hrlf/mosi.yaml")
    s.add_argument("--space", required=True, help="YAML search space: dotted recipe keys -> distributions")
    s.add_argument("--trials", type=int, default=8, help="trials drawn from the space (default 8)")
    s.add_argument("--data", default=None, help="feature file (overrides data.path)")
    s.add_argument("--out", required=True, help="search folder: trials/trialNNN run folders, search.csv, search.json")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    s.add_argument("--seed", type=int, default=0, help="seed of the trials' draw from the space (default 0)")
    s.add_argument("--threads", type=int, default=1, help="CPUs (torch threads) per trial (default 1)")
    s.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs every trial trains (default 1)")
    s.add_argument(
        "--reduction-factor", type=int, default=2, help="ASHA: 1 in this many trials goes on at each rung (default 2)"
    )
    s.add_argument("--engine", choices=["ray"], default="ray", help="ray (the only engine of a search)")
    s.add_argument("--address", default=None, help=ADDRESS_HELP)

    s = add("extract", help="raw clips (or transcripts only) -> MMSA feature file, offline")
    s.add_argument("--labels", required=True, help="label.csv (MMSA layout, or MOSI's id,text,label,mode)")
    s.add_argument("--media", default=None, help="folder of clips (<video_id>/<clip_id>.mp4); omit for text only")
    s.add_argument(
        "--out",
        required=True,
        help="output .pkl (finished clips are kept in <out>.parts to resume, removed once the file is written)",
    )
    s.add_argument("--workers", type=int, default=1, help="parallel worker processes (one thread each)")
    s.add_argument("--max-len", type=int, default=50, help="common sequence length in tokens")
    s.add_argument("--vision-fps", type=float, default=5.0, help="frames per second sampled for faces")
    s.add_argument(
        "--asr",
        choices=["missing", "always", "never"],
        default="missing",
        help="speech recognition: only for clips without a transcript (default), for all, or never",
    )
    s.add_argument(
        "--text-encoder",
        choices=["minilm", "mpnet"],
        default="minilm",
        help="minilm: 384-d (media extra); mpnet: 768-d BERT-base size (make media-mpnet)",
    )
    s.add_argument(
        "--skip-unknown-modes",
        action="store_true",
        help="leave out label rows whose mode is not train/valid/dev/test (counted in a warning); default: refuse",
    )
    s.add_argument("--keep-parts", action="store_true", help="keep <out>.parts (one file per clip) after success")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine_options(s, what="every clip is a Ray task of one CPU, instead of --workers (docs/scaling.md)")

    s = add(
        "predict",
        help="predict on videos, audio, photos, transcripts or feature files",
        description="Predict on videos, audio, photos, transcripts or feature files: one JSON line per clip.",
        epilog="Exit status: 0 when every input was predicted; 2 when any input could not be used. A media file "
        "that cannot be decoded still gets its row (with 'error') beside the others' predictions, and stderr "
        "names the failed files; other bad input (a missing file, a bad feature file or run) stops before any "
        "output.",
    )
    s.add_argument("run_dir", help="a finished run directory")
    s.add_argument("inputs", nargs="*", help="media files, feature files (.pkl) or folders of them")
    s.add_argument("--text", action="append", default=None, help="a transcript (language only); repeatable")

    s = add(
        "serve",
        help="a web page (and JSON endpoint) for prediction on uploaded clips or typed transcripts",
        description="Serve a page where clips are uploaded or a transcript typed, with the prediction, the "
        "modalities found and each one's effect; POST /api/predict answers with the JSON of `hrlf predict` "
        "(docs/serve.md). Needs the media and serve extras (`make serve`).",
    )
    s.add_argument("run_dir", help="a finished run directory (e.g. runs/model/mosi_text from `make model`)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument(
        "--max-upload-mb", type=float, default=200.0, help="largest request body, all files together (default 200)"
    )
    return p


ADDRESS_HELP = "Ray cluster: auto (the one `ray start` runs on this machine) or HOST:PORT of its head; default: a "
ADDRESS_HELP += "private Ray on this machine for this command"


def _add_engine_options(s: argparse.ArgumentParser, *, what: str) -> None:
    s.add_argument(
        "--engine", choices=["local", "ray"], default="local", help=f"local processes (default) or ray: {what}"
    )
    s.add_argument("--address", default=None, help=ADDRESS_HELP + " (with --engine ray)")


def _check_engine(args: argparse.Namespace) -> None:
    """``--address`` only with ``--engine ray``, and as auto or HOST:PORT; Ray itself installed."""
    if args.engine != "ray":
        if args.address is not None:
            raise UsageError("--address needs --engine ray")
        return
    if args.address not in (None, "auto"):
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--address: expected auto or HOST:PORT (e.g. 10.0.0.1:6379), got {args.address!r}")
    from hrlf.engine.ray_engine import import_ray

    import_ray()


def cmd_synth(args: argparse.Namespace) -> None:
    from hrlf.data.synth import write_synth

    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    check_out_dir(args.out)
    cfg = None
    if args.text_dim is not None:
        import dataclasses

        from hrlf.data.synth import PRESETS

        cfg = dataclasses.replace(PRESETS[args.preset], text_dim=args.text_dim)
    path = write_synth(args.preset, args.out, seed=args.seed, cfg=cfg, label_csv=args.labels)
    print(f"wrote {path}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from hrlf.data.features import describe, load_features

    print(describe(load_features(args.data)))


def _experiment_cfg(args: argparse.Namespace) -> ExperimentCfg:
    from hrlf.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "model", None):
        overrides.insert(0, f"model.name={args.model}")
    if getattr(args, "data", None):
        overrides.append(f"data.path={args.data}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    if not cfg.data.path:
        raise UsageError("no data file: pass --data PATH or set data.path in the recipe")
    return cfg


def cmd_train(args: argparse.Namespace) -> None:
    from hrlf.engine.run import run_experiment
    from hrlf.report import run_summary

    cfg = _experiment_cfg(args)
    check_out_dir(args.out)
    results = run_experiment(cfg, run_dir=args.out, resume=args.resume, protocol=args.protocol)
    print(run_summary(results))
    print(f"\nrun directory: {args.out}")


def cmd_eval(args: argparse.Namespace) -> None:
    import re

    from hrlf.data.datamodule import DataModule
    from hrlf.data.features import DataFileError, load_features
    from hrlf.engine.checkpoint import write_json
    from hrlf.engine.evaluate import evaluate_protocols
    from hrlf.engine.run import dataset_name, load_run
    from hrlf.report import run_summary

    run = load_run(args.run_dir)
    data = load_features(args.data or run.cfg.data.path, nonfinite=run.cfg.data.nonfinite)
    if data.dims != run.dims:
        raise DataFileError(f"{data.path}: feature dims {data.dims} do not match the run's {run.dims}")
    if (data.task.kind, data.task.label_names) != (run.task.kind, run.task.label_names):
        raise DataFileError(
            f"{data.path}: task {data.task.kind} {list(data.task.label_names)} does not match the run's "
            f"{run.task.kind} {list(run.task.label_names)}"
        )
    name = f"eval_{args.split}_{args.protocol}"
    if data.sha256 != run.meta["data"]["sha256"]:  # other data: its own results file, named after it
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data.path).stem)[:40]
        name += f"_{stem}-{data.sha256[:8]}"
        if not args.data:
            log.warning("%s differs from the file the run was trained on (sha256)", data.path)
    scores, described = evaluate_protocols(
        run.model,
        DataModule(data),
        args.split,
        which=args.protocol,
        mask_seed=run.cfg.eval.mask_seed,
        rates=run.cfg.eval.rates,
        batch_size=run.cfg.train.eval_batch_size,
        by_video=run.spec.batches_by_video,
    )
    results = {
        "model": run.cfg.model_name,
        "dataset": dataset_name(run.cfg, data),
        "seed": run.cfg.train.seed,
        "split": args.split,
        "data": {"path": str(Path(data.path).resolve()), "sha256": data.sha256},
        "protocol": scores,
        "protocols": {"train": (run.meta.get("protocols") or {}).get("train"), "eval": described},
    }
    out = Path(args.run_dir) / f"{name}.json"
    write_json(out, results)
    print(run_summary(results))
    print(f"\nwrote {out}")


def cmd_bench(args: argparse.Namespace) -> None:
    import time

    from tqdm import tqdm

    from hrlf.engine.bench import auto_jobs, plan_bench, run_bench
    from hrlf.engine.checkpoint import write_json, write_text
    from hrlf.engine.trainer import format_duration
    from hrlf.registry import list_models
    from hrlf.report import absent_modalities, bench_report, plot_intra, results_csv

    out = Path(args.out)
    if args.reference and args.reference not in args.models:
        raise UsageError(f"--reference {args.reference} is not among --models {' '.join(args.models)}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    _check_engine(args)
    if args.gpus < 0 or (args.gpus and args.engine != "ray"):
        raise UsageError(f"--gpus needs --engine ray and a number >= 0, got {args.gpus:g} with --engine {args.engine}")
    check_out_dir(out)
    entries = []
    for entry in args.models:
        model, _, recipe_name = entry.partition(":")
        if model not in list_models():
            raise UsageError(f"--models: unknown model {model!r} (known: {', '.join(list_models())})")
        recipe = Path(args.config_dir) / model / f"{recipe_name or args.recipe}.yaml"
        if not recipe.is_file():
            raise UsageError(f"no recipe for {entry!r}: expected {recipe}")
        entries.append((entry, recipe))
    plan = plan_bench(entries, seeds=args.seeds, data=args.data, out=out, overrides=args.overrides)
    jobs = auto_jobs(len(plan)) if args.jobs is None else args.jobs  # from every planned run, finished or not
    if args.threads is not None and args.engine == "local" and jobs == 1:
        raise UsageError(
            "--threads needs --jobs > 1 or --engine ray (with --jobs 1, or one run, runs use OMP_NUM_THREADS threads)"
        )
    if args.gpus:
        on_cpu = sorted({run.label for run in plan if run.cfg.train.device == "cpu"})
        if on_cpu:
            raise UsageError(
                f"--gpus {args.gpus:g}: the runs of {', '.join(on_cpu)} train on train.device=cpu; add "
                "--set train.device=cuda (or auto)"
            )
    started = time.perf_counter()
    progress = logging.getLogger("hrlf.progress")
    reused_dirs = {run.run_dir for run in plan if run.done}
    reused = len(reused_dirs)
    count = {"finished": 0, "trained": 0}
    with tqdm(total=len(plan), desc="bench", unit="run", disable=True if args.no_progress else None) as bar:

        def done(run, _results):  # type: ignore[no-untyped-def]
            bar.set_postfix_str(f"{run.label} seed {run.cfg.train.seed}")
            bar.update(1)
            was_reused = run.run_dir in reused_dirs
            count["finished"] += 1
            count["trained"] += 0 if was_reused else 1
            if bar.disable and not args.no_progress:  # no terminal: one line per run instead of the bar
                spent, left = time.perf_counter() - started, len(plan) - reused - count["trained"]
                eta = f", ETA {format_duration(spent / count['trained'] * left)}" if count["trained"] and left else ""
                progress.info(
                    "bench %d/%d: %s seed %d %s (%s so far%s)",
                    count["finished"],
                    len(plan),
                    run.label,
                    run.cfg.train.seed,
                    "reused" if was_reused else "trained",
                    format_duration(spent),
                    eta,
                )

        if args.engine == "ray":
            from hrlf.engine.ray_engine import run_bench_ray

            runs = run_bench_ray(plan, threads=args.threads or 1, gpus=args.gpus, address=args.address, on_done=done)
        else:
            runs = run_bench(plan, jobs=jobs, threads=args.threads, on_done=done)
    wall = time.perf_counter() - started
    figure = "intra_curves.png"
    plot_intra(runs, out / figure)
    write_text(out / "results.csv", results_csv(runs))
    write_json(out / "runs.json", runs)
    write_json(
        out / "timing.json",
        {
            "runs": len(plan),
            "trained": len(plan) - reused,
            "reused": reused,
            "jobs": jobs,
            "jobs_auto": args.jobs is None,
            "engine": args.engine,
            "threads": args.threads,
            "wall_seconds": wall,
        },
    )
    absent = absent_modalities([run.run_dir for run in plan])  # e.g. audio and vision of a text-only file
    report = bench_report(runs, reference=args.reference, figure=figure, absent=absent)
    write_text(out / "report.md", report)
    print(report)
    print(f"wrote {out / 'report.md'}, {out / 'results.csv'}, {out / figure}")
    how = "--engine ray" if args.engine == "ray" else f"--jobs {jobs}{' (auto)' if args.jobs is None else ''}"
    print(f"trained {len(plan) - reused} runs in {wall / 60:.1f} min with {how}; reused {reused}")


def cmd_tune(args: argparse.Namespace) -> None:
    from hrlf.report import run_summary
    from hrlf.tune import run_tune

    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    _check_engine(args)
    if not Path(args.config).is_file():
        raise UsageError(f"--config {args.config}: no such recipe file")
    data = args.data
    if data is None:
        from hrlf.config import load_config

        data = load_config(args.config, list(args.overrides)).data.path
        if not data:
            raise UsageError("no data file: pass --data PATH or set data.path in the recipe")
    check_out_dir(args.out)
    summary = run_tune(
        args.config,
        space_path=args.space,
        trials=args.trials,
        data=data,
        out=args.out,
        overrides=args.overrides,
        threads=args.threads,
        address=args.address,
        seed=args.seed,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
    )
    metric = summary["select_metric"]
    print(f"{len(summary['trials'])} trials, selected on valid ({metric}; score higher is better):")
    for row in summary["trials"]:
        score = f"{row['valid_score']:.4f}" if "valid_score" in row else "-"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        mark = "  <- winner" if row["trial"] == summary["winner"]["trial"] else ""
        print(f"  {row['trial']} {row['status']:8} {row['epochs']:3d} epochs  valid {score}  {params}{mark}")
    print(f"\nwinner {summary['winner']['trial']}, its test split evaluated once:\n")
    print(run_summary(summary["results"]))
    out = Path(args.out)
    print(f"\nwrote {out / 'search.csv'}, {out / 'search.json'}; winner's run folder {summary['winner']['run_dir']}")


def cmd_extract(args: argparse.Namespace) -> None:
    import json

    from tqdm import tqdm

    from hrlf.data.labels import read_label_csv
    from hrlf.extract.pipeline import ExtractCfg, run_extraction

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not 3 <= args.max_len <= 512:
        raise UsageError(
            f"--max-len must be in [3, 512] ([CLS], tokens, [SEP]; the text encoder's limit), got {args.max_len}"
        )
    if args.vision_fps <= 0:
        raise UsageError(f"--vision-fps must be > 0, got {args.vision_fps}")
    if args.engine == "ray" and args.workers != 1:
        raise UsageError("--workers is for --engine local; with --engine ray every clip is a task of one CPU")
    _check_engine(args)
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; expected a .pkl file path")
    check_out_dir(out.parent)
    cfg = ExtractCfg(
        max_len=args.max_len,
        vision_fps=args.vision_fps,
        asr=args.asr != "never",
        prefer_asr=args.asr == "always",
        text_encoder=args.text_encoder,
    )
    rows = read_label_csv(args.labels, skip_unknown_modes=args.skip_unknown_modes)

    def progress(total: int, initial: int):  # type: ignore[no-untyped-def]
        return tqdm(
            total=total, initial=initial, desc="extract", unit="clip", disable=args.no_progress, file=sys.stderr
        )

    report = run_extraction(
        rows,
        out=out,
        media_dir=Path(args.media) if args.media else None,
        cfg=cfg,
        workers=args.workers,
        progress=progress,
        source=args.labels,
        keep_parts=args.keep_parts,
        engine=args.engine,
        address=args.address,
    )
    clips = report["clips"]
    print(f"wrote {out}: " + ", ".join(f"{s} {n}" for s, n in clips.items()) + f" clips ({report['mode']})")
    for split, counts in report["available"].items():
        print(f"  {split}: available " + ", ".join(f"{m} {n}/{clips[split]}" for m, n in counts.items()))
    if any(report["truncated"].values()):
        cut = ", ".join(f"{split} {n}" for split, n in report["truncated"].items())
        print(f"  transcripts cut at --max-len {args.max_len} tokens: {cut}")
    if report["skipped"]:
        print(f"  skipped {len(report['skipped'])} clips (listed in {out.with_name(out.stem + '.report.json')}):")
        for item in report["skipped"][:10]:
            print(f"    {item['id']}: {item['reason']}")
    if report.get("nodes"):
        print("  clips per node: " + ", ".join(f"{node} {n}" for node, n in report["nodes"].items()))
    if report["real_time_factor"] is not None:
        print(f"  real-time factor {report['real_time_factor']} over {report['media_seconds']} s of media")
    log.info("%s", json.dumps(report["seconds"]))


def cmd_predict(args: argparse.Namespace) -> None:
    import json

    from hrlf.predict import PredictError, Predictor, json_row

    if not args.inputs and not args.text:
        raise UsageError("predict: give at least one input file/folder or --text")
    predictor = Predictor.from_checkpoint(args.run_dir)
    rows = predictor.predict(args.inputs, text=args.text)
    for row in rows:
        print(json.dumps(json_row(row), allow_nan=False))
    failed = [row for row in rows if "error" in row]
    if failed:  # the rows are out (the others' predictions stay usable), but the exit status must say it
        sys.stdout.flush()
        listed = "; ".join(row["error"] for row in failed[:3]) + (
            f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        )
        raise PredictError(
            f"{len(failed)} of {len(rows)} inputs could not be used (expected decodable media; their rows carry "
            f"'error'): {listed}"
        )


def cmd_serve(args: argparse.Namespace) -> None:
    from hrlf.serve.app import ServeCfg, serve

    serve(args.run_dir, ServeCfg(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb))


@contextlib.contextmanager
def _logging(*, verbose: bool) -> Iterator[None]:
    """Warnings (with -v every INFO line) on stderr, and the per-epoch progress lines always, as plain text.

    The progress logger's settings are restored afterwards (``main`` may be called more than once in a process).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    progress = logging.getLogger("hrlf.progress")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = progress.level, progress.propagate
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False  # printed once, also with -v
    try:
        yield
    finally:
        progress.removeHandler(handler)
        progress.setLevel(saved[0])
        progress.propagate = saved[1]


COMMANDS = {
    "synth": cmd_synth,
    "inspect": cmd_inspect,
    "train": cmd_train,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "tune": cmd_tune,
    "extract": cmd_extract,
    "predict": cmd_predict,
    "serve": cmd_serve,
}


def _on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001 (the signal module's signature)
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:  # started immune to SIGTERM (as Ctrl-C is for `cmd &`)
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with _logging(verbose=args.verbose), _sigterm_as_interrupt():
            COMMANDS[args.command](args)
    except HrlfError as exc:  # a user mistake or environment problem: one line, no traceback (hrlf.errors)
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        command = getattr(locals().get("args"), "command", None)
        hint = {
            "extract": "finished clips are kept in <out>.parts; rerun the same command to continue",
            "predict": "nothing was written",
            "serve": "the server stopped",
            "bench": "finished runs are kept; rerun the same command to continue",
            "tune": "trials keep their last finished epoch; rerun the same command to continue",
        }.get(command or "", "the run directory keeps the last finished epoch; use --resume")
        if isinstance(exc, Terminated):
            print(f"error: terminated by SIGTERM ({hint})", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"error: interrupted ({hint})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
