"""``hrlf extract --engine ray`` on a local cluster equals local extraction byte for byte, and resumes."""

from __future__ import annotations

import csv
import json

import pytest

from hrlf.cli import main
from ray_cluster import local_cluster, needs_ray

pytestmark = [pytest.mark.extract, pytest.mark.ray, needs_ray]

ROWS = [
    ("talk", "1", 2.0, "train"), ("talk", "2", -2.0, "train"), ("screen", "1", -1.0, "train"),
    ("quiet", "1", 0.4, "train"), ("radio", "1", 1.6, "valid"), ("talk", "2", -2.0, "valid"),
    ("talk", "1", 2.0, "test"), ("broken", "1", 0.0, "test"),
]  # fmt: skip


@pytest.fixture(scope="module")
def ray_cluster():
    with local_cluster() as cluster:
        yield cluster


def test_cluster_extraction_equals_local_extraction_and_resumes(media_dir, ray_cluster, tmp_path, capsys):
    labels = tmp_path / "label.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"])
        for video, clip, label, mode in ROWS:
            w.writerow([video, clip, "", label, label, label, label, "", mode])
    argv = ["extract", "--labels", str(labels), "--media", str(media_dir), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "local.pkl"), "--workers", "2"]) == 0
    # --keep-parts: the parts folder stays after success, standing in for the one an interrupted run leaves
    cluster = [*argv, "--out", str(tmp_path / "ray.pkl"), "--engine", "ray", "--address", ray_cluster.address]
    cluster.append("--keep-parts")
    assert main(cluster) == 0
    assert "clips per node" in capsys.readouterr().out
    assert (tmp_path / "ray.pkl").read_bytes() == (tmp_path / "local.pkl").read_bytes()
    report = json.loads((tmp_path / "ray.report.json").read_text())
    assert report["engine"] == "ray" and len(report["nodes"]) == 2  # both workers extracted clips
    assert sum(report["nodes"].values()) == 6  # the distinct clips, the broken one included (it is skipped)
    assert [s["id"] for s in report["skipped"]] == ["broken$_$1"]

    # interrupted: two parts are lost; the rerun on the cluster extracts only those and writes the same bytes
    parts = sorted((tmp_path / "ray.pkl.parts").glob("*.npz"))
    assert len(parts) >= 4
    kept = {p: p.stat().st_mtime_ns for p in parts[2:]}
    for p in parts[:2]:
        p.unlink()
    (tmp_path / "ray.pkl").unlink()
    assert main(cluster) == 0
    assert (tmp_path / "ray.pkl").read_bytes() == (tmp_path / "local.pkl").read_bytes()
    assert {p: p.stat().st_mtime_ns for p in parts[2:]} == kept
    rerun = json.loads((tmp_path / "ray.report.json").read_text())
    assert sum(rerun["nodes"].values()) == 2 + 1  # the two lost parts, and the broken clip tried again
