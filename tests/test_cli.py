"""`hrlf` end to end on tiny synthetic files, and every user mistake as exit 2 + one `error:` line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from hrlf.cli import main

TINY = ["--set", "model.d_model=16", "--set", "model.num_heads=2", "--set", "model.num_layers=1"]
FAST = ["--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "train.progress=false"]
FAST += ["--set", "eval.rates=[0.0,0.5,1.0]"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, *argv, contains: str):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert contains in lines[0], lines[0]
    assert "Traceback" not in err


def test_train_eval_bench_end_to_end(tiny_mosi, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--data", tiny_mosi, "--out", run, *TINY, *FAST)
    assert code == 0
    assert "{l,a,v}" in out and "Avg." in out and "p=0.5" in out
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "backbone" and results["seed"] == 1111
    assert results["dataset"] == Path(tiny_mosi).stem  # the file's name, not its folder's (a pytest tmp name)

    code, out, _ = run_cli(capsys, "eval", run, "--protocol", "inter")
    assert code == 0 and "{a,v}" in out
    again = json.loads((run / "eval_test_inter.json").read_text())
    assert again["protocol"]["inter"] == results["protocol"]["inter"] and again["dataset"] == results["dataset"]

    # a finished run resumes to the same results without training again
    code, out2, _ = run_cli(capsys, "train", "--data", tiny_mosi, "--out", run, "--resume", *TINY, *FAST)
    assert code == 0 and json.loads((run / "results.json").read_text()) == results
    # ... and with more epochs it trains on from where it stopped
    more = ["--set", "train.epochs=3"]
    assert run_cli(capsys, "train", "--data", tiny_mosi, "--out", run, "--resume", *TINY, *FAST, *more)[0] == 0
    assert json.loads((run / "results.json").read_text())["selection"]["train"]["epochs_run"] == 3

    bench = tmp_path / "bench"
    code, out, err = run_cli(
        capsys,
        "bench",
        "--models",
        "backbone",
        "backbone:mosi",
        "--reference",
        "backbone",
        "--seeds",
        "1",
        "2",
        "--data",
        tiny_mosi,
        "--config-dir",
        Path(__file__).resolve().parents[1] / "configs",
        "--out",
        bench,
        "--jobs",
        "1",  # in this process, in plan order (--jobs auto is tests/engine/test_bench.py's)
        *TINY,
        *FAST,
    )
    assert code == 0
    # no terminal (captured): a line per finished run instead of the bar
    assert "bench 1/4: backbone seed 1 trained" in err and "bench 4/4: backbone:mosi seed 2 trained" in err
    report = (bench / "report.md").read_text()
    assert "Table 1 layout" in report and "±" in report
    assert "| backbone:mosi |" in report and "Paired t-test against `backbone`" in report
    assert (bench / "runs" / "backbone-mosi" / "seed2" / "results.json").is_file()
    assert (bench / "intra_curves.png").stat().st_size > 1000
    rows = (bench / "results.csv").read_text().splitlines()
    assert rows[0] == "model,dataset,seed,protocol,condition,protocol_name,train_protocol,metric,value"
    assert "modality_drop(available=('language',))" in (bench / "results.csv").read_text()
    assert "## Protocols" in report and "msm(" in report
    assert len(rows) > 2 * 2 * (8 + 4) * 8


def test_inspect_and_synth(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "synth", "--preset", "mosi", "--out", tmp_path / "mosi")
    assert code == 0
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "mosi" / "aligned_50.pkl")
    assert code == 0
    assert "1284" in out and "686" in out


def test_user_mistakes_exit_2_with_one_line(tiny_mosi, tmp_path, capsys):
    assert_user_error(capsys, "inspect", tmp_path / "nope.pkl", contains="nope.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle")
    assert_user_error(capsys, "inspect", junk, contains="junk.pkl")
    assert_user_error(
        capsys, "train", "--data", tiny_mosi, "--out", tmp_path / "r", "--set", "train.lrr=1", contains="train.lrr"
    )
    assert_user_error(
        capsys,
        "train",
        "--data",
        tiny_mosi,
        "--out",
        tmp_path / "r",
        "--set",
        "train.epochs=x",
        contains="expected an integer",
    )
    assert_user_error(capsys, "train", "--out", tmp_path / "r", contains="no data file")
    assert_user_error(
        capsys,
        "train",
        "--data",
        tiny_mosi,
        "--out",
        tmp_path / "r",
        "--config",
        tmp_path / "missing.yaml",
        contains="missing.yaml",
    )
    assert_user_error(
        capsys, "train", "--data", tiny_mosi, "--out", tmp_path / "r", "--model", "nosuch", contains="nosuch"
    )
    assert_user_error(capsys, "eval", tmp_path / "not-a-run", contains="not-a-run")
    assert_user_error(capsys, "synth", "--preset", "mosi", contains="--out")
    assert_user_error(capsys, "synth", "--preset", "mosi", "--out", tmp_path / "s", "--seed", "-1", contains="--seed")
    assert_user_error(capsys, "frobnicate", contains="frobnicate")
    for override, message in [
        ("data.nonfinite=foo", "zero | error"),
        ("train.select_metric=foo", "loss | mae | f1"),
        ("train.device=tpu", "train.device"),
        ("missing.ratio_dist=foo", "discrete | uniform"),
        ("model.num_heads=3", "divisor"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs=0", "train.epochs"),
        ("train.lr=.nan", "train.lr"),
        ("eval.rates=[0.5,0.2]", "increasing"),
        ("eval.rates=[0.25]", "0.1 grid"),
        ("train.lr=[1", "cannot read"),
    ]:
        assert_user_error(
            capsys, "train", "--data", tiny_mosi, "--out", tmp_path / "r", "--set", override, contains=message
        )
    assert not (tmp_path / "r").exists()  # refused before any work: nothing left behind
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_user_error(capsys, "train", "--data", tiny_mosi, "--out", a_file, *TINY, *FAST, contains="not a directory")
    assert_user_error(capsys, "synth", "--preset", "mosi", "--out", a_file, contains="not a directory")
    bench = ["bench", "--models", "backbone", "--data", tiny_mosi, "--out", tmp_path / "b"]
    assert_user_error(capsys, *bench, "--reference", "hrlf", contains="--reference")
    assert_user_error(capsys, *bench, "--jobs", "0", contains="--jobs")


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": _Payload(target)}))
    assert_user_error(capsys, "inspect", evil, contains="evil.pkl")
    assert not target.exists()


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("hrlf")
    proc = subprocess.run([str(exe), "inspect", str(tmp_path / "missing.pkl")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_damaged_runs_and_mismatched_data_are_user_errors(tiny_mosi, tiny_iemocap, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", tiny_mosi, "--out", run, *TINY, *FAST)[0] == 0
    # evaluating a MOSI run on IEMOCAP data: refused, naming both tasks
    assert_user_error(capsys, "eval", run, "--data", tiny_iemocap, contains="do not match")
    # the same path now holding other data: resuming or re-benchmarking that run is refused
    moved = tmp_path / "data" / "aligned_50.pkl"
    moved.parent.mkdir()
    moved.write_bytes(Path(tiny_mosi).read_bytes())
    run2 = tmp_path / "run2"
    assert run_cli(capsys, "train", "--data", moved, "--out", run2, *TINY, *FAST)[0] == 0
    from conftest import write_tiny

    write_tiny("mosi", moved.parent, seed=5)
    assert_user_error(capsys, "train", "--data", moved, "--out", run2, "--resume", *TINY, *FAST, contains="sha256")
    # damaged metadata and weights
    (run / "checkpoint.json").write_text("{not json")
    assert_user_error(capsys, "eval", run, contains="checkpoint.json")
    (run2 / "model.safetensors").write_bytes(b"garbage")
    assert_user_error(capsys, "eval", run2, contains="model.safetensors")


def test_an_unavailable_cuda_device_is_refused_before_anything_is_written(tiny_mosi, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    train = ["train", "--data", tiny_mosi, "--out", run, *TINY, *FAST]
    for device in ("cuda", "cuda:0"):
        for resume in ([], ["--resume"]):
            assert_user_error(capsys, *train, *resume, "--set", f"train.device={device}", contains="train.device")
            assert not run.exists()  # nothing left behind that could refuse the next run
    assert run_cli(capsys, *train)[0] == 0  # the same folder, on the CPU
    before = sorted(p.name for p in run.iterdir())
    assert_user_error(capsys, *train, "--resume", "--set", "train.device=cuda", contains="without CUDA")
    assert sorted(p.name for p in run.iterdir()) == before
    # CUDA present, but not the device asked for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert_user_error(capsys, *train, "--set", "train.device=cuda:1", contains="cuda:0..cuda:0")
    bench = ["bench", "--models", "backbone", "--seeds", "1", "--data", tiny_mosi, "--out", tmp_path / "b"]
    bench += ["--config-dir", Path(__file__).resolve().parents[1] / "configs", *TINY, *FAST]
    assert_user_error(capsys, *bench, "--set", "train.device=cuda:3", contains="train.device")
    assert not (tmp_path / "b").exists()


def _corrupt_tensor_bytes(path: Path) -> None:
    """Overwrite every tensor byte of a safetensors file with 0xFF (float NaN), keeping its valid header."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # u64 header length, then the JSON header
    raw[start:] = b"\xff" * (len(raw) - start)
    path.write_bytes(bytes(raw))


def test_damaged_weights_are_refused_by_eval_and_predict(tiny_mosi, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", tiny_mosi, "--out", run, *TINY, *FAST)[0] == 0
    weights, meta_path = run / "model.safetensors", run / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    assert set(meta["weights_sha256"]) == {"model.safetensors"}
    assert len(meta["weights_sha256"]["model.safetensors"]) == 64
    original = weights.read_bytes()
    _corrupt_tensor_bytes(weights)
    assert_user_error(capsys, "eval", run, contains="model.safetensors: expected SHA-256")
    assert_user_error(capsys, "predict", run, tiny_mosi, contains="model.safetensors: expected SHA-256")
    # a run saved before hashes were recorded: loads with a warning, but NaN weights are still refused
    del meta["weights_sha256"]
    meta_path.write_text(json.dumps(meta))
    assert_user_error(capsys, "eval", run, contains="NaN or infinite")
    weights.write_bytes(original)
    assert run_cli(capsys, "eval", run, "--protocol", "inter")[0] == 0
    assert "records no SHA-256 for model.safetensors" in caplog.text  # a warning: shown at the default level


def test_predict_never_prints_nan(tiny_mosi, tmp_path, capsys, monkeypatch):
    from hrlf.predict import Predictor

    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", tiny_mosi, "--out", run, *TINY, *FAST)[0] == 0
    row = {"id": "x", "score": float("nan"), "polarity": "neutral", "removed": {"audio": {"change": float("inf")}}}
    monkeypatch.setattr(Predictor, "predict", lambda *_args, **_kwargs: [row])
    code, out, err = run_cli(capsys, "predict", run, "--text", "hello")
    assert code == 0
    printed = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))
    assert printed["score"] is None and printed["polarity"] is None and printed["removed"]["audio"]["change"] is None
    assert "non-finite" in printed["warning"]


def _unwritable_outs(tmp_path: Path) -> list[Path]:
    """Output folders that cannot be created: under a regular file, in /proc, and (not as root) read-only."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    outs = [a_file / "sub" / "out", Path("/proc/hrlf-x")]
    if os.geteuid() != 0:  # root writes into a mode-555 folder anyway
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        outs.append(read_only / "out")
    return outs


def test_an_output_folder_that_cannot_be_created_is_one_error_line(tiny_mosi, tmp_path, capsys):
    labels = tmp_path / "label.csv"
    labels.write_text("id,text,label,mode\nvid_1,a good movie,1.5,train\n")
    configs = Path(__file__).resolve().parents[1] / "configs"
    outs = _unwritable_outs(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for out in outs:
        commands = [
            ["train", "--data", tiny_mosi, "--out", out, *TINY, *FAST],
            ["synth", "--preset", "mosi", "--out", out],
            ["bench", "--models", "backbone", "--seeds", "1", "--data", tiny_mosi, "--out", out]
            + ["--config-dir", configs, *TINY, *FAST],
            ["extract", "--labels", labels, "--out", out / "features.pkl"],
        ]
        for argv in commands:
            assert_user_error(capsys, *argv, contains=f"--out {out}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing left behind


def test_training_prints_a_line_per_epoch_without_a_terminal(tiny_mosi, tmp_path, capsys):
    train = ["train", "--data", tiny_mosi, "--out", tmp_path / "run", *TINY, *FAST]
    code, out, err = run_cli(capsys, *train, "--set", "train.progress=true")  # stderr is captured: no terminal
    assert code == 0
    lines = err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["train epoch 1/2", "train epoch 2/2"], err
    assert "train loss" in lines[0] and "valid loss" in lines[0] and "ETA" in lines[0] and lines[1].endswith("done")
    code, out, err = run_cli(capsys, *train[: -len(FAST)], *FAST, "--out", tmp_path / "quiet")  # progress=false
    assert code == 0 and err == ""


def test_eval_on_other_data_never_replaces_the_runs_own_results(tiny_mosi, tmp_path, capsys):
    from conftest import write_tiny

    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", tiny_mosi, "--out", run, *TINY, *FAST)[0] == 0
    assert run_cli(capsys, "eval", run, "--protocol", "inter")[0] == 0
    own = (run / "eval_test_inter.json").read_text()
    other = write_tiny("mosi", tmp_path / "other data", seed=5)
    code, out, _ = run_cli(capsys, "eval", run, "--protocol", "inter", "--data", other)
    assert code == 0
    written = sorted(p.name for p in run.glob("eval_*.json"))
    assert len(written) == 2 and (run / "eval_test_inter.json").read_text() == own
    (name,) = [n for n in written if n != "eval_test_inter.json"]
    sha = json.loads((run / name).read_text())["data"]["sha256"]
    assert name == f"eval_test_inter_aligned_50-{sha[:8]}.json" and name in out
    # a copy of the training file is the same data: the run's own name
    copy = tmp_path / "copy.pkl"
    copy.write_bytes(Path(tiny_mosi).read_bytes())
    assert run_cli(capsys, "eval", run, "--protocol", "inter", "--data", copy)[0] == 0
    assert sorted(p.name for p in run.glob("eval_*.json")) == written


def test_version_and_help_without_torch():
    code = "import sys\nfrom hrlf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("False"), proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hrlf", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("hrlf "), proc.stdout + proc.stderr


def test_every_error_class_is_an_hrlf_error_with_its_builtin_base():
    """The CLI catches :class:`HrlfError` alone: every error class of the package derives from it, and keeps the
    built-in base (ValueError, RuntimeError) that callers catching those rely on."""
    import importlib
    import re

    from hrlf.errors import HrlfError

    src = Path(__file__).resolve().parents[1] / "src"
    found = {}
    for path in sorted((src / "hrlf").rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for name in re.findall(r"^class (\w+(?:Error|Unavailable))\(", path.read_text(), flags=re.MULTILINE):
            found[name] = getattr(importlib.import_module(module), name)
    assert len(found) >= 14, sorted(found)
    for name, cls in found.items():
        assert issubclass(cls, HrlfError), name
    builtin = {name: cls for name, cls in found.items() if name not in ("HrlfError", "UsageError")}
    assert all(issubclass(cls, ValueError | RuntimeError) for cls in builtin.values()), builtin


def test_a_bug_is_not_a_user_error(monkeypatch):
    import hrlf.cli

    def broken(_args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(hrlf.cli.COMMANDS, "inspect", broken)
    with pytest.raises(ZeroDivisionError):  # its traceback is kept, not turned into one error: line
        main(["inspect", "x.pkl"])


def test_verbose_before_or_after_the_subcommand():
    from hrlf.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["-v", "inspect", "x.pkl"]).verbose and parse(["inspect", "x.pkl", "-v"]).verbose
    assert parse(["train", "--out", "r", "--verbose"]).verbose and not parse(["inspect", "x.pkl"]).verbose


def test_every_option_has_help():
    import argparse

    from hrlf.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.dest}"
        for name, command in sub.choices.items()
        for action in command._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not missing, missing


@pytest.mark.parametrize("start", ["default", "ignored"])
def test_sigterm_becomes_an_interrupt_unless_the_process_was_started_immune_to_it(start):
    """A command turns SIGTERM into a clean stop; one started with SIGTERM ignored (by its parent) stays immune."""
    import signal

    from hrlf.cli import _sigterm_as_interrupt
    from hrlf.errors import Terminated

    before = signal.signal(signal.SIGTERM, signal.SIG_DFL if start == "default" else signal.SIG_IGN)
    try:
        outside = signal.getsignal(signal.SIGTERM)
        with _sigterm_as_interrupt():
            if start == "ignored":
                assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGTERM)  # ignored: nothing happens
            else:
                with pytest.raises(Terminated):
                    os.kill(os.getpid(), signal.SIGTERM)
                    signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary for the handler to run at
        assert signal.getsignal(signal.SIGTERM) is outside
    finally:
        signal.signal(signal.SIGTERM, before)
