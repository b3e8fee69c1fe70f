"""``hrlf`` command line: thin over the library (parse -> config -> library call -> print).

User mistakes (bad path, bad file, bad option) exit with code 2 and one line ``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("hrlf")


class UsageError(Exception):
    """A command-line mistake; printed as one ``error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise UsageError(f"{self.prog}: {message}")


def _user_errors() -> tuple[type[BaseException], ...]:
    from hrlf.config import ConfigError
    from hrlf.data.features import DataFileError
    from hrlf.data.labels import LabelFileError
    from hrlf.engine.run import RunDirError

    return (UsageError, ConfigError, DataFileError, LabelFileError, RunDirError)


def build_parser() -> argparse.ArgumentParser:
    from hrlf.registry import list_models

    p = _Parser(prog="hrlf", description="Robust incomplete multimodal sentiment analysis (HRLF and baselines).")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("synth", help="write a synthetic benchmark in the real files' exact format")
    s.add_argument("--preset", required=True, choices=["mosi", "mosei", "iemocap"])
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--labels", default=None, help="MOSI label.csv whose label distribution the latent follows")
    s.add_argument("--text-dim", type=int, default=None, choices=[300, 768], help="language dim: GloVe or BERT")

    s = sub.add_parser("inspect", help="summarise a feature file (splits, shapes, labels, non-finite values)")
    s.add_argument("data", help="MMSA or MulT pickle")

    s = sub.add_parser("train", help="train one model (one seed), select on valid, evaluate test once")
    s.add_argument("--config", default=None, help="YAML recipe, e.g. configs/backbone/mosi.yaml")
    s.add_argument("--data", default=None, help="feature file (overrides data.path)")
    s.add_argument("--model", default=None, choices=list_models(), help="overrides model.name")
    s.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    s.add_argument("--protocol", default="all", choices=["inter", "intra", "all"])

    s = sub.add_parser("eval", help="evaluate a finished run under the missing-modality protocols")
    s.add_argument("run_dir")
    s.add_argument("--protocol", default="all", choices=["inter", "intra", "all"])
    s.add_argument("--data", default=None, help="feature file (default: the one the run was trained on)")
    s.add_argument("--split", default="test", choices=["valid", "test"])

    s = sub.add_parser("bench", help="models x seeds -> report.md (paper tables), results.csv, curves")
    s.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL[:RECIPE]",
        help=f"registered models ({', '.join(list_models())}); MODEL:RECIPE uses configs/MODEL/RECIPE.yaml "
        "instead of --recipe (e.g. hrlf:mosi_wo_hal for an ablation) and is reported under that name",
    )
    s.add_argument("--seeds", nargs="+", type=int, default=[1111, 1112, 1113, 1114, 1115])
    s.add_argument("--data", required=True, help="feature file")
    s.add_argument("--recipe", default="mosi", help="recipe name: configs/<model>/<recipe>.yaml")
    s.add_argument("--config-dir", default="configs")
    s.add_argument("--reference", default=None, help="model the paired t-test compares against")
    s.add_argument("--out", required=True, help="benchmark folder (resumable: finished runs are kept)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def cmd_synth(args: argparse.Namespace) -> None:
    from hrlf.data.synth import write_synth

    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
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


def _experiment_cfg(args: argparse.Namespace):  # noqa: ANN202 - returns ExperimentCfg
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
    results = run_experiment(cfg, run_dir=args.out, resume=args.resume, protocol=args.protocol)
    print(run_summary(results))
    print(f"\nrun directory: {args.out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from hrlf.data.datamodule import DataModule
    from hrlf.data.features import DataFileError, load_features
    from hrlf.engine.checkpoint import write_json
    from hrlf.engine.evaluate import evaluate_protocols
    from hrlf.engine.run import load_run
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
    if data.sha256 != run.meta["data"]["sha256"]:
        log.warning("%s differs from the file the run was trained on (sha256)", data.path)
    scores, described = evaluate_protocols(
        run.model,
        DataModule(data),
        args.split,
        which=args.protocol,
        mask_seed=run.cfg.eval.mask_seed,
        rates=run.cfg.eval.rates,
        batch_size=run.cfg.train.eval_batch_size,
    )
    results = {
        "model": run.cfg.model_name,
        "dataset": run.cfg.data.name or Path(data.path).resolve().parent.name,
        "seed": run.cfg.train.seed,
        "split": args.split,
        "protocol": scores,
        "protocols": {"train": (run.meta.get("protocols") or {}).get("train"), "eval": described},
    }
    out = Path(args.run_dir) / f"eval_{args.split}_{args.protocol}.json"
    write_json(out, results)
    print(run_summary(results))
    print(f"\nwrote {out}")


def cmd_bench(args: argparse.Namespace) -> None:
    from hrlf.config import load_config
    from hrlf.engine.checkpoint import write_json, write_text
    from hrlf.engine.run import run_experiment
    from hrlf.registry import list_models
    from hrlf.report import bench_report, plot_intra, results_csv

    out = Path(args.out)
    if args.reference and args.reference not in args.models:
        raise UsageError(f"--reference {args.reference} is not among --models {' '.join(args.models)}")
    entries = []
    for entry in args.models:
        model, _, recipe_name = entry.partition(":")
        if model not in list_models():
            raise UsageError(f"--models: unknown model {model!r} (known: {', '.join(list_models())})")
        recipe = Path(args.config_dir) / model / f"{recipe_name or args.recipe}.yaml"
        if not recipe.is_file():
            raise UsageError(f"no recipe for {entry!r}: expected {recipe}")
        entries.append((entry, recipe))
    runs = []
    for entry, recipe in entries:
        for seed in args.seeds:
            cfg = load_config(recipe, [*args.overrides, f"data.path={args.data}", f"train.seed={seed}"])
            run_dir = out / "runs" / entry.replace(":", "-") / f"seed{seed}"
            log.info("bench: %s seed %d", entry, seed)
            # finished runs are reused only when their config and data fingerprint match (checked by the run)
            runs.append(run_experiment(cfg, run_dir=run_dir, resume=True, label=entry))
    figure = "intra_curves.png"
    plot_intra(runs, out / figure)
    write_text(out / "results.csv", results_csv(runs))
    write_json(out / "runs.json", runs)
    report = bench_report(runs, reference=args.reference, figure=figure)
    write_text(out / "report.md", report)
    print(report)
    print(f"wrote {out / 'report.md'}, {out / 'results.csv'}, {out / figure}")


COMMANDS = {"synth": cmd_synth, "inspect": cmd_inspect, "train": cmd_train, "eval": cmd_eval, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    user_errors = _user_errors()
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        COMMANDS[args.command](args)
    except user_errors as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (the run directory keeps the last finished epoch; use --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
