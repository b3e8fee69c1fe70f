"""Tests of the label.csv reader (both layouts, every error) and of the MOSI label-file lookup."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import pytest

from hrlf.data import labels
from hrlf.data.labels import LabelFileError, LabelRow, default_mosi_label_csv, read_label_csv

MOSI_SHA256 = "74c52aba8884cca3f77962310c41f31d3d6250c4e4b50fd77fd4efe4eb75a521"  # shared/data/mosi/SOURCE.md


def real_mosi_label_csv() -> Path | None:
    """The shared MOSI label file when it can be found and is the documented version, else None."""
    try:
        path = default_mosi_label_csv()
    except LabelFileError:
        return None
    return path if hashlib.sha256(path.read_bytes()).hexdigest() == MOSI_SHA256 else None


REAL_MOSI = real_mosi_label_csv()

FET_HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_fet_layout_keeps_strings_and_maps_modes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv_file = write(
        tmp_path / "label.csv",
        FET_HEADER
        + "a_b_c,0001,hello there,1.5,,0.5,,Positive,train\n"
        + 'vid2,0002,"a, quoted text",-0.6,-1,-0.2,0.3,Negative,valid\n'
        + "vid2,0003,dev row,0,,,,Neutral,dev\n"
        + "vid3,7,test row,2.25,,,,Positive,test\n"
        + "vid3,8,unused row,1,,,,Positive,extra\n"
        + "vid3,9,no mode,1,,,,Positive,\n",
    )
    with caplog.at_level(logging.WARNING, logger="hrlf.data.labels"):
        rows = read_label_csv(csv_file, skip_unknown_modes=True)
    assert [r.mode for r in rows] == ["train", "valid", "valid", "test"]
    first = rows[0]
    assert first == LabelRow(
        video_id="a_b_c",
        clip_id="0001",
        text="hello there",
        label=1.5,
        mode="train",
        sample_id="a_b_c$_$0001",
        label_language=None,
        label_audio=0.5,
        label_vision=None,
        annotation="Positive",
    )
    assert rows[1].text == "a, quoted text"
    assert (rows[1].label_language, rows[1].label_audio, rows[1].label_vision) == (-1.0, -0.2, 0.3)
    assert rows[2].label == 0.0 and rows[2].label_audio is None
    assert "left out 2 rows" in caplog.text and "'': 1, 'extra': 1" in caplog.text
    assert all(record.levelno == logging.WARNING for record in caplog.records)  # shown at the default level


def test_mosi_layout_splits_on_last_underscore(tmp_path: Path) -> None:
    csv_file = write(
        tmp_path / "label.csv",
        "id,text,label,mode\n5W7Z1C_fDaE_12,so good,2.0,train\n-_x_3,meh,-0.4,dev\nabc_1,bad,-3,test\n",
    )
    rows = read_label_csv(csv_file)
    assert [(r.video_id, r.clip_id, r.sample_id) for r in rows] == [
        ("5W7Z1C_fDaE", "12", "5W7Z1C_fDaE$_$12"),
        ("-_x", "3", "-_x$_$3"),
        ("abc", "1", "abc$_$1"),
    ]
    assert [r.mode for r in rows] == ["train", "valid", "test"]
    assert rows[2].label == -3.0 and rows[0].annotation is None and rows[0].label_language is None


def test_bom_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    csv_file = tmp_path / "label.csv"
    csv_file.write_bytes("\ufeffid,text,label,mode\nv_1,a,1,train\n\nv_2,b,-1,test\n".encode())
    assert [r.clip_id for r in read_label_csv(csv_file)] == ["1", "2"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", ["line 1", "empty file"]),
        ("id,text,label,mode\n", ["line 2", "at least one data row", "found none"]),
        ("foo,bar\n1,2\n", ["line 1", "expected columns", "found foo, bar"]),
        ("id,text,label\nv_1,a,1\n", ["line 1", "missing required column 'mode'", "MOSI"]),
        (FET_HEADER.replace(",label,", ",score,") + "v,1,a,1,,,,x,train\n", ["missing required column 'label'"]),
        ("id,text,label,mode\nv_1,a,abc,train\n", ["line 2", "column 'label'", "finite number", "'abc'"]),
        ("id,text,label,mode\nv_1,a,1,train\nv_2,b,nan,test\n", ["line 3", "column 'label'", "'nan'"]),
        ("id,text,label,mode\nv_1,a,inf,train\n", ["line 2", "column 'label'", "'inf'"]),
        ("id,text,label,mode\nv_1,a,,train\n", ["line 2", "column 'label'", "''"]),
        (FET_HEADER + "v,1,a,1,x,,,P,train\n", ["line 2", "column 'label_T'", "'x'"]),
        ("id,text,label,mode\nnounderscore,a,1,train\n", ["line 2", "column 'id'", "'nounderscore'"]),
        ("id,text,label,mode\nv_1,a,1\n", ["line 2", "expected 4 fields", "found 3"]),
        (FET_HEADER + ",1,a,1,,,,P,train\n", ["line 2", "column 'video_id'"]),
        # labels outside the range the feature-file reader accepts (issue 12, item 4)
        ("id,text,label,mode\nv_1,a,1,train\nv_2,b,7.5,test\n", ["line 3", "column 'label'", "[-3, 3]", "'7.5'"]),
        ("id,text,label,mode\nv_1,a,-3.01,train\n", ["line 2", "column 'label'", "[-3, 3]", "'-3.01'"]),
        (FET_HEADER + "v,1,a,1,,4,,P,train\n", ["line 2", "column 'label_A'", "[-3, 3]", "'4'"]),
        # unknown modes are refused by default (issue 12, item 5)
        (
            "id,text,label,mode\nv_1,a,1,train\nv_2,b,1,foo\n",
            ["line 3", "column 'mode'", "train, valid (or dev) or test", "'foo'", "--skip-unknown-modes"],
        ),
        ("id,text,label,mode\nv_1,a,1,\n", ["line 2", "column 'mode'", "found ''"]),
        (FET_HEADER + "v,1,a,1,,,,P,tset\n", ["line 2", "column 'mode'", "'tset'"]),
    ],
)
def test_label_file_errors_are_one_line_and_precise(tmp_path: Path, content: str, expected: list[str]) -> None:
    csv_file = write(tmp_path / "bad.csv", content)
    with pytest.raises(LabelFileError) as info:
        read_label_csv(csv_file)
    message = str(info.value)
    assert "\n" not in message
    assert str(csv_file) in message
    for part in expected:
        assert part in message


def test_labels_at_the_ends_of_the_range_are_kept(tmp_path: Path) -> None:
    csv_file = write(tmp_path / "label.csv", "id,text,label,mode\nv_1,a,-3,train\nv_2,b,3.0,TEST\n")
    assert [(r.label, r.mode) for r in read_label_csv(csv_file)] == [(-3.0, "train"), (3.0, "test")]


def test_skipping_unknown_modes_that_leaves_no_row_names_the_modes_found(tmp_path: Path) -> None:
    csv_file = write(tmp_path / "label.csv", "id,text,label,mode\nv_1,a,1,foo\nv_2,b,1,\nv_3,c,1,foo\n")
    with pytest.raises(LabelFileError) as info:
        read_label_csv(csv_file, skip_unknown_modes=True)
    message = str(info.value)
    assert str(csv_file) in message and "found none" in message and "'': 1, 'foo': 2" in message


def test_undecodable_and_malformed_files_name_the_line(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,text,label,mode\nv_1,caf\xe9,1,train\n")
    with pytest.raises(LabelFileError, match=r"latin\.csv: line 2: expected UTF-8 text, found undecodable"):
        read_label_csv(latin)
    broken = write(tmp_path / "broken.csv", 'id,text,label,mode\nv_1,"unclosed"x,1,train\n')
    with pytest.raises(LabelFileError, match=r"broken\.csv: line 2: expected well-formed CSV"):
        read_label_csv(broken)


def test_missing_file_is_a_label_file_error(tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="label file not found"):
        read_label_csv(tmp_path / "nope.csv")
    assert issubclass(LabelFileError, ValueError)


@pytest.mark.skipif(REAL_MOSI is None, reason="shared MOSI label.csv not present")
def test_real_mosi_label_file_parses_into_the_standard_split() -> None:
    assert REAL_MOSI is not None
    rows = read_label_csv(REAL_MOSI)
    assert Counter(r.mode for r in rows) == {"train": 1281, "valid": 229, "test": 685}
    assert len({r.sample_id for r in rows}) == len(rows)
    assert all(-3.0 <= r.label <= 3.0 for r in rows)
    assert sum("_" in r.video_id for r in rows) == 419
    assert rows[0].sample_id == "03bSnISJMiM$_$1" and rows[0].text == "anyhow it was really good"


def test_default_mosi_label_csv_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write(tmp_path / "mine.csv", "id,text,label,mode\nv_1,a,1,train\n")
    monkeypatch.setenv("HRLF_MOSI_LABELS", str(target))
    assert default_mosi_label_csv() == target
    monkeypatch.setenv("HRLF_MOSI_LABELS", str(tmp_path / "missing.csv"))
    with pytest.raises(LabelFileError, match="HRLF_MOSI_LABELS"):
        default_mosi_label_csv()


def test_default_mosi_label_csv_walks_up_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HRLF_MOSI_LABELS", raising=False)
    target = tmp_path / "shared" / "data" / "mosi" / "label.csv"
    target.parent.mkdir(parents=True)
    write(target, "id,text,label,mode\nv_1,a,1,train\n")
    repo = tmp_path / "repo" / "sub"
    repo.mkdir(parents=True)
    monkeypatch.chdir(repo)
    assert default_mosi_label_csv() == target


def test_default_mosi_label_csv_says_how_to_pass_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRLF_MOSI_LABELS", raising=False)
    monkeypatch.setattr(labels, "_candidate_roots", lambda: [tmp_path])
    with pytest.raises(LabelFileError) as info:
        default_mosi_label_csv()
    assert "HRLF_MOSI_LABELS" in str(info.value) and "label_csv" in str(info.value)
