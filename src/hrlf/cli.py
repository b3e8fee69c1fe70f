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
    from hrlf.engine.bench import BenchError
    from hrlf.engine.run import RunDirError
    from hrlf.extract import MediaUnavailable
    from hrlf.extract.assets import AssetError
    from hrlf.extract.media import MediaError
    from hrlf.extract.pipeline import ExtractError
    from hrlf.predict import PredictError

    return (
        UsageError,
        ConfigError,
        DataFileError,
        LabelFileError,
        RunDirError,
        BenchError,
        ExtractError,
        MediaError,
        MediaUnavailable,
        AssetError,
        PredictError,
    )


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
    s.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained side by side in worker processes, each with an equal share of the torch threads "
        "(2 on a 2-core machine: 1.5x faster; a run's numbers depend on its thread count, see the README)",
    )
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("extract", help="raw clips (or transcripts only) -> MMSA feature file, offline")
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
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser(
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
    import time

    from tqdm import tqdm

    from hrlf.engine.bench import plan_bench, run_bench
    from hrlf.engine.checkpoint import write_json, write_text
    from hrlf.registry import list_models
    from hrlf.report import absent_modalities, bench_report, plot_intra, results_csv

    out = Path(args.out)
    if args.reference and args.reference not in args.models:
        raise UsageError(f"--reference {args.reference} is not among --models {' '.join(args.models)}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
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
    reused = sum(run.done for run in plan)
    started = time.perf_counter()
    with tqdm(total=len(plan), desc="bench", unit="run", disable=True if args.no_progress else None) as bar:

        def done(run, results):  # type: ignore[no-untyped-def]
            bar.set_postfix_str(f"{run.label} seed {run.cfg.train.seed}")
            bar.update(1)

        runs = run_bench(plan, jobs=args.jobs, on_done=done)
    wall = time.perf_counter() - started
    figure = "intra_curves.png"
    plot_intra(runs, out / figure)
    write_text(out / "results.csv", results_csv(runs))
    write_json(out / "runs.json", runs)
    write_json(
        out / "timing.json",
        {"runs": len(plan), "trained": len(plan) - reused, "reused": reused, "jobs": args.jobs, "wall_seconds": wall},
    )
    absent = absent_modalities([run.run_dir for run in plan])  # e.g. audio and vision of a text-only file
    report = bench_report(runs, reference=args.reference, figure=figure, absent=absent)
    write_text(out / "report.md", report)
    print(report)
    print(f"wrote {out / 'report.md'}, {out / 'results.csv'}, {out / figure}")
    print(f"trained {len(plan) - reused} runs in {wall / 60:.1f} min with --jobs {args.jobs}; reused {reused}")


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
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; expected a .pkl file path")
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
    if report["real_time_factor"] is not None:
        print(f"  real-time factor {report['real_time_factor']} over {report['media_seconds']} s of media")
    log.info("%s", json.dumps(report["seconds"]))


def cmd_predict(args: argparse.Namespace) -> None:
    import json

    from hrlf.predict import PredictError, Predictor

    if not args.inputs and not args.text:
        raise UsageError("predict: give at least one input file/folder or --text")
    predictor = Predictor.from_checkpoint(args.run_dir)
    rows = predictor.predict(args.inputs, text=args.text)
    for row in rows:
        print(json.dumps(row))
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


COMMANDS = {
    "synth": cmd_synth,
    "inspect": cmd_inspect,
    "train": cmd_train,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "extract": cmd_extract,
    "predict": cmd_predict,
}


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
        command = getattr(locals().get("args"), "command", None)
        hint = {
            "extract": "finished clips are kept in <out>.parts; rerun the same command to continue",
            "predict": "nothing was written",
            "bench": "finished runs are kept; rerun the same command to continue",
        }.get(command or "", "the run directory keeps the last finished epoch; use --resume")
        print(f"error: interrupted ({hint})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
