from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np

from endoedge.core.labels import GASTROVISION3
from endoedge.edge.service.report import CheckpointStore, build_report, render_report_png, write_report
from endoedge.edge.stages.coverage import CoverageTracker


def summary(exam_id: str = "20261122T090000Z-001") -> dict:
    tracker = CoverageTracker(GASTROVISION3, observe_frames=1, observe_s=0.0)
    tracker.observe(0.0, 0.0, 0)
    tracker.observe(1.0, 1.0, 0)
    tracker.photo(1.0, 0)
    return {
        "exam_id": exam_id,
        "running": False,
        "elapsed_s": 463.2,
        "started_wall": 1795300000.0,
        "ended_wall": 1795300463.2,
        "start_reason": "api",
        "end_reason": "api",
        "tasks": {"coverage": {"kind": "egd-coverage", **tracker.summary(463.2)}},
    }


def test_report_folder_is_complete_and_replaced_atomically(tmp_path):
    report = build_report(summary(), models=[{"model": "sites", "backend": "tflite"}], stats={"fps_in": 30.0})
    folder = write_report(tmp_path, report)
    data = json.loads((folder / "report.json").read_text())
    assert data["exam"]["started"] == "2026-11-21T22:26:40Z" and data["exam"]["duration_s"] == 463.2
    cov = data["tasks"]["coverage"]
    assert cov["blind_spots"] == ["colon_normal_mucosa", "colon_polyp"]
    assert {c["name"]: c["passed"] for c in cov["checks"]}["inspection >= 7 min"] is True
    image = cv2.imread(str(folder / "coverage.png"))
    assert image is not None and image.shape[1] == 1400
    assert not list(folder.glob("frame_*"))  # no video frames unless enabled
    write_report(tmp_path, report)  # same exam again: replaced, not duplicated
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_the_png_shows_blind_spots_in_red_and_seen_sites_in_green():
    image = render_report_png(build_report(summary()))
    red = np.all(image == (60, 60, 220), axis=2).sum()
    green = np.all(image == (60, 170, 60), axis=2).sum()
    assert red > 2 * 16 * 16 and green > 16 * 16
    assert render_report_png({}).shape[1] == 1400  # an empty report still renders


def test_a_full_disk_leaves_no_half_written_report(tmp_path):
    """RLIMIT_FSIZE makes every large write fail with EFBIG, like a full report partition."""
    good = write_report(tmp_path, build_report(summary("old")))
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
from endoedge.edge.service.report import build_report, write_report
sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
from test_report import summary
try:
    write_report({str(tmp_path)!r}, build_report(summary("new")))
except OSError as exc:
    print("OSError", exc.errno)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("OSError 27"), done.stdout + done.stderr  # EFBIG
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # nothing partial, the old one intact
    assert json.loads((good / "report.json").read_text())["exam"]["id"] == "old"


def test_checkpoint_store_round_trip_and_corrupt_file(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.load() is None
    store.save({"clock": {"exam_id": "x", "elapsed_s": 12.5}, "tasks": {}})
    loaded = store.load()
    assert loaded["clock"]["elapsed_s"] == 12.5 and loaded["saved_wall"] > 0
    store.path.write_text('{"clock": ')  # a torn write from an old version or a broken disk
    assert store.load() is None
    assert store.path.with_suffix(".corrupt").exists() and not store.path.exists()
    store.save({"clock": {}, "tasks": {}})
    store.clear()
    store.clear()
    assert not store.path.exists()


def test_checkpoint_clear_for_an_exam_keeps_a_newer_exams_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"clock": {"exam_id": "new"}, "tasks": {}})
    store.clear("old")
    assert store.load()["clock"]["exam_id"] == "new"
    store.clear("new")
    assert store.load() is None


def test_ended_exam_records_survive_until_their_report(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.ended() == []
    first = store.save_ended({"exam_id": "2026-11-22T08:00:00Z/1", "end_reason": "api", "running": False})
    store.save_ended({"exam_id": "second", "end_reason": "no signal", "running": False})
    assert "/" not in first.name and first.parent == tmp_path  # an id never makes a path
    records = store.ended()
    assert [r["summary"]["exam_id"] for _, r in records] == ["2026-11-22T08:00:00Z/1", "second"]
    assert records[0][1]["summary"]["end_reason"] == "api" and records[0][1]["saved_wall"] > 0
    store.clear_ended("2026-11-22T08:00:00Z/1")
    assert [r["summary"]["exam_id"] for _, r in store.ended()] == ["second"]


def test_an_unreadable_ended_record_is_set_aside_with_stale_temporaries_removed(tmp_path):
    store = CheckpointStore(tmp_path)
    torn = store.ended_path("x")
    torn.write_text('{"summary": ')
    stale = tmp_path / f".{store.ended_path('y').name}.123.tmp"
    stale.write_text("{")
    assert store.ended() == []
    assert torn.with_suffix(".corrupt").exists() and not torn.exists() and not stale.exists()
