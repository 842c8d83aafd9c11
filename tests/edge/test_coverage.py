from __future__ import annotations

import re

import numpy as np
import pytest

from endoedge.core.errors import BundleError
from endoedge.core.labels import EGD30, GASTROVISION3, HEMORRHOID, LDRF
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import PreprocessSpec
from endoedge.edge.config import CoverageTaskConfig, HemorrhoidTaskConfig
from endoedge.edge.stages.coverage import CoverageTracker, ExamClock, FreezeDetector
from endoedge.edge.stages.tasks import ExamSession, build_task, overlay_fields

SPEC = PreprocessSpec.for_family("inception", 64)


def manifest(labelset, task):
    return ModelManifest(name=f"m-{labelset.name}", task=task, labelset=labelset, preprocess=SPEC)


def probs(i: int, n: int, p: float = 0.95) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1), dtype=np.float32)
    v[i] = p
    return v


def test_site_is_observed_after_n_confident_frames_and_seconds():
    tracker = CoverageTracker(EGD30, observe_frames=3, observe_s=0.5)
    assert tracker.observe(0.0, 0.0, 4) is None
    assert tracker.observe(0.2, 0.2, 4) is None
    assert tracker.observe(0.4, 0.4, 4) is None  # 3 frames but only 0.4 s
    assert tracker.observe(0.6, 0.6, 4) == 4
    assert tracker.observe(0.8, 0.8, 4) is None  # reported once
    assert tracker.seconds[4] == pytest.approx(0.8)
    assert "egj_line" not in tracker.blind_spots() and len(tracker.blind_spots()) == 29


def test_gaps_are_not_credited_as_dwell_time():
    tracker = CoverageTracker(GASTROVISION3, observe_frames=1, observe_s=0.0, max_step_s=1.0)
    tracker.observe(0.0, 0.0, 0)
    tracker.observe(30.0, 30.0, 0)  # AI was off for 30 s
    assert tracker.seconds[0] == pytest.approx(1.0)
    tracker.pause()
    tracker.observe(31.0, 31.0, 1)
    assert tracker.seconds[0] == pytest.approx(1.0)


def test_quality_checks_and_checkpoint_round_trip():
    tracker = CoverageTracker(GASTROVISION3, observe_frames=1, observe_s=0.0, min_inspection_s=420)
    for k in range(3):
        tracker.observe(float(k), float(k), k)
        tracker.photo(float(k), k)
    checks = {c.name: c for c in tracker.checks(430.0)}
    assert [c.key for c in checks.values()] == ["inspection", "sites", "photos"]
    assert checks["inspection >= 7 min"].line() == "inspection >= 7 min: 7:10 OK"
    assert tracker.summary(430.0)["checks"][0] == {
        "key": "inspection",
        "name": "inspection >= 7 min",
        "passed": True,
        "minutes": 7.0,
        "detail": "7:10",
    }
    assert checks["inspection >= 7 min"].passed and checks["inspection >= 7 min"].detail == "7:10"
    assert checks["sites observed"].passed and checks["landmarks photographed"].passed
    assert not {c.name: c for c in tracker.checks(60.0)}["inspection >= 7 min"].passed
    copy = CoverageTracker(GASTROVISION3)
    copy.restore(tracker.to_dict())
    assert copy.summary(10.0) == tracker.summary(10.0)
    with pytest.raises(ValueError, match="label set 'gastrovision3@1', not egd30@1"):
        CoverageTracker(EGD30).restore(tracker.to_dict())


def test_exam_clock_auto_start_and_end_from_observations():
    clock = ExamClock(start_after_s=1.0, end_after_s=5.0)
    assert clock.observe(10.0, 1000.0, True) is None
    assert clock.observe(11.0, 1001.0, True) == "started"
    assert clock.started_t == 10.0 and clock.started_wall == 1000.0  # back-dated to intubation
    clock.observe(20.0, 1010.0, True)
    assert clock.observe(22.0, 1012.0, False) is None
    assert clock.observe(27.5, 1017.5, False) == "ended"
    assert clock.ended_t == 20.0 and clock.elapsed(99.0) == pytest.approx(10.0)
    # Restore continues the elapsed time.
    fresh = ExamClock()
    fresh.restore({"exam_id": "x", "running": True, "elapsed_s": 300.0, "started_wall": 1.0}, t=5.0)
    assert fresh.elapsed(65.0) == pytest.approx(360.0)


def test_freeze_detector_sees_a_still_field_once_but_not_a_black_one():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    detector = FreezeDetector(min_s=0.4)
    hits = [detector.update(image, t / 10) for t in range(10)]
    assert hits.count(True) == 1 and hits.index(True) == 4
    moving = FreezeDetector(min_s=0.4)
    assert not any(moving.update(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), t / 10) for t in range(10))
    black = FreezeDetector(min_s=0.4)
    assert not any(black.update(np.zeros((64, 64, 3), np.uint8), t / 10) for t in range(10))


def test_coverage_task_drives_the_exam_and_fills_the_map():
    config = CoverageTaskConfig(type="egd-coverage", model="m", observe_frames=2, observe_s=0.1)
    task = build_task(config, {"sites": manifest(GASTROVISION3, "sites")})
    session = ExamSession(ExamClock(start_after_s=0.2, end_after_s=1.0), driver=task.name)
    session.add_task(task)
    events = []
    t = 0.0
    for site in (0, 1, 2):
        for _ in range(20):
            events += session.observe(task, "sites", probs(site, 3), t, 1000 + t, 0)
            t += 0.05
    assert [e.kind for e in events] == ["started", "observed", "observed", "observed"]
    assert [e.reason for e in events[1:]] == list(GASTROVISION3.keys)
    view = task.view
    assert view.label == "Colon polyp" and view.confidence > 0.9
    assert all(cell.observed for cell in view.coverage)
    events = session.no_signal(t + 0.1, 1000 + t) + session.no_signal(t + 1.2, 1001 + t)
    assert [e.kind for e in events] == ["ended"]
    summary = events[0].summary["tasks"]["coverage"]
    assert summary["observed"] == 3 and summary["blind_spots"] == []
    fields = overlay_fields([task.view])
    assert fields["label"] == "Colon polyp" and len(fields["coverage"]) == 3


def test_session_checkpoint_resumes_into_a_new_session():
    config = CoverageTaskConfig(type="egd-coverage", model="m", observe_frames=1, observe_s=0.0)
    m = manifest(GASTROVISION3, "sites")
    session = ExamSession(ExamClock(), driver="coverage")
    task = build_task(config, {"sites": m})
    session.add_task(task)
    session.start(0.0, 1000.0)
    for k in range(10):
        session.observe(task, "sites", probs(1, 3), k * 0.1, 1000 + k * 0.1, k)
    saved = session.checkpoint(1.0)
    assert saved is not None and saved["clock"]["running"]
    restarted = ExamSession(ExamClock(), driver="coverage")
    restarted.resume(saved, t=50.0)
    task2 = build_task(config, {"sites": m})
    restarted.add_task(task2)
    assert task2.tracker.observed(1) and restarted.clock.elapsed(50.0) == pytest.approx(1.0)
    assert "resumed" in restarted.clock.start_reason


def test_hemorrhoid_cascade_runs_b_only_while_a_is_positive():
    config = HemorrhoidTaskConfig(type="hemorrhoid", model_a="a", model_b="b")
    task = build_task(config, {"a": manifest(HEMORRHOID, "hemorrhoid"), "b": manifest(LDRF, "ldrf")})
    session = ExamSession(ExamClock(), driver="hemorrhoid")
    session.add_task(task)
    t = 0.0
    for _ in range(20):
        session.observe(task, "a", probs(0, 2), t, t, 0)
        assert not task.wants("b")
        t += 0.05
    assert task.view.grade.startswith("Normal 0.9")
    for _ in range(20):
        session.observe(task, "a", probs(1, 2), t, t, 0)
        if task.wants("b"):
            session.observe(task, "b", probs(2, 3), t, t, 0)
        t += 0.05
    assert task.wants("b")
    assert re.fullmatch(r"Internal hemorrhoid 0\.[89]\d · LDRf Rf2 0\.9\d", task.view.grade)
    assert re.fullmatch(r"内痔 0\.[89]\d · LDRf Rf2 高风险 0\.9\d", task.view.grade_zh)
    assert overlay_fields([task.view])["grade_zh"] == task.view.grade_zh
    session.start(t, t)
    session.observe(task, "a", probs(1, 2), t + 0.1, t, 0)
    session.observe(task, "a", probs(1, 2), t + 0.2, t, 0)
    assert task.summary(1.0)["max_grade"] == "rf2"


def test_a_model_for_another_task_is_refused():
    with pytest.raises(BundleError, match="is a 'ldrf' model; the egd-coverage task \\(sites\\) needs sites"):
        build_task(CoverageTaskConfig(type="egd-coverage", model="m"), {"sites": manifest(LDRF, "ldrf")})
    with pytest.raises(BundleError, match="uses label set gastrovision3@1; the config expects 'egd30'"):
        build_task(
            CoverageTaskConfig(type="egd-coverage", model="m", labelset="egd30"),
            {"sites": manifest(GASTROVISION3, "sites")},
        )
    with pytest.raises(BundleError, match="label 'nowhere' is not in label set"):
        build_task(
            CoverageTaskConfig(type="egd-coverage", model="m", required=["nowhere"]),
            {"sites": manifest(GASTROVISION3, "sites")},
        )
