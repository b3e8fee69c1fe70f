"""Predictor on hand-made clips (no media package needed) and the predict CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hrlf.cli import main
from hrlf.data.labels import LabelRow
from hrlf.extract.pipeline import EXTRACTOR_DIMS, ClipFeatures, ExtractCfg, _part_path, write_mmsa
from hrlf.predict import PredictError, Predictor


def _clip(sid: str, *, n: int, available: tuple[str, ...], seed: int) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    feats = {
        m: (rng.standard_normal((n, d)).astype(np.float32) if m in available else None)
        for m, d in EXTRACTOR_DIMS.items()
    }
    return ClipFeatures(
        sample_id=sid,
        transcript="words" if "language" in available else "",
        alignment="word" if "language" in available else "none",
        duration=2.0,
        features=feats,
        input_ids=np.arange(n, dtype=np.int64) if "language" in available else np.zeros(0, np.int64),
    )


@pytest.fixture(scope="module")
def extracted_run(tmp_path_factory):
    """A backbone trained for one epoch on a small file in the extractor's format."""
    root = tmp_path_factory.mktemp("extracted")
    parts = root / "f.pkl.parts"
    parts.mkdir()
    rows = []
    everything = ("language", "audio", "vision")
    for i in range(40):
        mode = "train" if i < 24 else "valid" if i < 32 else "test"
        sid = f"v{i // 4}$_${i}"
        rows.append(LabelRow(video_id=f"v{i // 4}", clip_id=str(i), text="x", label=float(i % 7 - 3), mode=mode,
                             sample_id=sid))  # fmt: skip
        avail = everything if i % 5 else ("audio", "vision")
        _clip(sid, n=4 + i % 6, available=avail, seed=i).save(_part_path(parts, sid))
    data = root / "f.pkl"
    write_mmsa(rows, parts=parts, out=data, skipped={}, cfg=ExtractCfg(max_len=12), text_only=False)
    run = root / "run"
    argv = ["train", "--model", "backbone", "--data", str(data), "--out", str(run), "--protocol", "inter",
            "--set", "train.epochs=1", "--set", "model.d_model=8", "--set", "model.num_heads=2",
            "--set", "train.progress=false"]  # fmt: skip
    assert main(argv) == 0
    return run, data


def test_clip_predictions_report_availability_and_removal_changes(extracted_run):
    run, _ = extracted_run
    p = Predictor.from_checkpoint(run)
    clips = [
        _clip("full", n=6, available=("language", "audio", "vision"), seed=1),
        _clip("no-face", n=3, available=("language", "audio"), seed=2),
        _clip("face-only", n=5, available=("vision",), seed=3),
        _clip("nothing", n=0, available=(), seed=4),
    ]
    rows = p._results_per_clip(clips)
    assert [r["id"] for r in rows] == ["full", "no-face", "face-only", "nothing"]
    assert [r["available"] for r in rows] == [["language", "audio", "vision"], ["language", "audio"], ["vision"], []]
    for r in rows:
        assert set(r["removed"]) == set(r["available"])
        for removed in r["removed"].values():
            assert removed["change"] == pytest.approx(removed["score"] - r["score"], abs=2e-4)
    assert "warning" in rows[3] and "warning" not in rows[0]
    # a clip's prediction does not depend on the other clips of its batch (padding is masked)
    alone = [p._results_per_clip([c])[0]["score"] for c in clips]
    assert alone == pytest.approx([r["score"] for r in rows], abs=1e-5)


def test_feature_file_prediction_covers_every_clip_in_file_order(extracted_run):
    run, data = extracted_run
    rows = Predictor.from_checkpoint(run).predict(data)
    assert len(rows) == 40 and [r["split"] for r in rows] == ["train"] * 24 + ["valid"] * 8 + ["test"] * 8
    assert rows[0]["available"] == ["audio", "vision"] and rows[1]["available"] == ["language", "audio", "vision"]


def test_emotion_checkpoints_report_per_emotion_probabilities(tiny_iemocap, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--model", "backbone", "--data", str(tiny_iemocap), "--out", str(run), "--protocol", "inter",
            "--set", "train.epochs=1", "--set", "model.d_model=8", "--set", "model.num_heads=2",
            "--set", "train.progress=false"]  # fmt: skip
    assert main(argv) == 0
    rows = Predictor.from_checkpoint(run).predict(tiny_iemocap)
    assert set(rows[0]["emotions"]) == {"Neutral", "Happy", "Sad", "Angry"}
    assert all(0.0 <= v <= 1.0 for v in rows[0]["emotions"].values())
    assert set(rows[0]["removed"]["language"]) == {"Neutral", "Happy", "Sad", "Angry"}


def test_checkpoint_with_other_feature_dims_is_refused_naming_both(tiny_mosi, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "backbone", "--data", str(tiny_mosi), "--out", str(run), "--protocol", "inter",
            "--set", "train.epochs=1", "--set", "model.d_model=8", "--set", "model.num_heads=2",
            "--set", "train.progress=false"]  # fmt: skip
    assert main(argv) == 0
    with pytest.raises(PredictError, match=r"language features of dim \d+ .*gives dim 384"):
        Predictor.from_checkpoint(run).predict(text="good")
    capsys.readouterr()
    assert main(["predict", str(run), "--text", "good"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "384" in err[0]


def test_predict_cli_user_mistakes(extracted_run, tmp_path, capsys):
    run, data = extracted_run
    cases = [
        (["predict", str(tmp_path / "nope"), str(data)], "does not exist"),
        (["predict", str(run)], "at least one input"),
        (["predict", str(run), str(tmp_path / "missing.mp4")], "no such file"),
        (["predict", str(run), str(data.with_suffix(".txt"))], "no such file"),
    ]
    (tmp_path / "notes.txt").write_text("x")
    cases.append((["predict", str(run), str(tmp_path / "notes.txt")], "unknown input type"))
    (tmp_path / "empty").mkdir()
    cases.append((["predict", str(run), str(tmp_path / "empty")], "no media or feature files"))
    for argv, expected in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (argv, err)


def test_predict_cli_prints_one_json_line_per_clip(extracted_run, capsys):
    run, data = extracted_run
    capsys.readouterr()
    assert main(["predict", str(run), str(data)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 40 and {"score", "polarity", "available", "removed"} <= set(json.loads(lines[0]))


def test_modalities_absent_from_all_training_clips_are_ignored(tmp_path):
    """A text-only checkpoint: audio and vision of a new clip are named as ignored, not fed to untrained encoders."""
    parts = tmp_path / "t.pkl.parts"
    parts.mkdir()
    rows = []
    for i in range(24):
        mode = "train" if i < 12 else "valid" if i < 18 else "test"
        sid = f"t{i}$_$0"
        rows.append(LabelRow(video_id=f"t{i}", clip_id="0", text="x", label=float(i % 5 - 2), mode=mode,
                             sample_id=sid))  # fmt: skip
        _clip(sid, n=5, available=("language",), seed=i).save(_part_path(parts, sid))
    data = tmp_path / "t.pkl"
    write_mmsa(rows, parts=parts, out=data, skipped={}, cfg=ExtractCfg(max_len=8), text_only=True)
    run = tmp_path / "run"
    argv = ["train", "--model", "backbone", "--data", str(data), "--out", str(run), "--protocol", "inter",
            "--set", "train.epochs=1", "--set", "model.d_model=8", "--set", "model.num_heads=2",
            "--set", "missing.enabled=false", "--set", "train.progress=false"]  # fmt: skip
    assert main(argv) == 0
    p = Predictor.from_checkpoint(run)
    assert p.unused == ["audio", "vision"]
    full = _clip("new", n=6, available=("language", "audio", "vision"), seed=99)
    text_only = _clip("new", n=6, available=("language",), seed=99)
    row, ref = p._results_per_clip([full])[0], p._results_per_clip([text_only])[0]
    assert row["available"] == ["language"] and row["ignored"] == ["audio", "vision"]
    assert row["score"] == ref["score"] and set(row["removed"]) == {"language"}


class _FakeExtractor:
    """Stands in for the media extractors: ``good*`` files give a clip, every other file cannot be decoded."""

    def extract(self, path, *, sample_id="", transcript=None):  # noqa: ARG002 - Extractor.extract's signature
        from hrlf.extract.media import MediaError

        if not str(path).rsplit("/", 1)[-1].startswith("good"):
            raise MediaError(f"{path}: cannot decode (InvalidDataError: Invalid data found when processing input)")
        return _clip(sample_id, n=4, available=("language", "audio", "vision"), seed=7)

    def text_only(self, sample_ids, _transcripts):
        return [_clip(sid, n=3, available=("language",), seed=8) for sid in sample_ids]


def test_predict_exits_2_when_any_input_fails_and_keeps_every_row(extracted_run, tmp_path, capsys, monkeypatch):
    run, _ = extracted_run
    monkeypatch.setattr(Predictor, "extractor", property(lambda _self: _FakeExtractor()))
    for name in ("good.mp4", "bad.mp4", "empty.mp4", "noise.wav"):
        (tmp_path / name).write_bytes(b"" if name == "empty.mp4" else b"x" * 100)
    capsys.readouterr()
    # every input failed
    assert main(["predict", str(run), str(tmp_path / "bad.mp4"), str(tmp_path / "empty.mp4")]) == 2
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["input"] for r in rows] == [str(tmp_path / "bad.mp4"), str(tmp_path / "empty.mp4")]
    assert all("cannot decode" in r["error"] for r in rows)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 of 2 inputs could not be used"), lines
    assert "bad.mp4: cannot decode" in lines[0] and "empty.mp4" in lines[0] and "Traceback" not in err
    # one of three failed: the others' predictions are printed, the exit status still says it
    argv = ["predict", str(run), str(tmp_path / "good.mp4"), str(tmp_path / "noise.wav"), "--text", "fine"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [("error" in r) for r in rows] == [False, False, True] and "score" in rows[1]
    assert err.strip().startswith("error: 1 of 3 inputs could not be used") and "noise.wav" in err
    # nothing failed: exit 0, and --help says what the exit status means
    assert main(["predict", str(run), str(tmp_path / "good.mp4")]) == 0
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "Exit status: 0 when every input was predicted; 2 when any input" in " ".join(
        capsys.readouterr().out.split()
    )


def test_a_text_only_report_gives_its_settings_and_the_defaults_for_media(tmp_path):
    """hrlf extract's text-only report leaves the media settings out; predict still transcribes new videos."""
    from types import SimpleNamespace

    from hrlf.predict import _training_extract_cfg

    (tmp_path / "t.report.json").write_text(json.dumps({"settings": {"max_len": 20, "text_encoder": "minilm"}}))
    cfg = _training_extract_cfg(SimpleNamespace(meta={"data": {"path": str(tmp_path / "t.pkl")}}))
    assert cfg == ExtractCfg(max_len=20)
    assert cfg.asr and cfg.vision_fps == ExtractCfg().vision_fps
