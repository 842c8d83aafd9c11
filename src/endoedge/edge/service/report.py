"""Procedure reports and exam-state checkpoints, always written atomically.

A report is a folder ``<reports>/<exam id>/`` with ``report.json`` and ``coverage.png`` (the coverage
map, timings and blind spots). It is built in a temporary sibling and renamed into place, so a reader
(or the hospital's collector) sees a complete report or none. It carries no video frames unless the
config enables them (the processor's on-screen text holds patient data) and nothing taken from the
frames' pixels.

A checkpoint is one JSON file replaced atomically every few seconds while an exam runs, so after a
crash or power loss the exam continues (or is closed with a report marked ``recovered``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from endoedge.__about__ import __version__
from endoedge.core.fileio import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

REPORT_SCHEMA = 1
CHECKPOINT_NAME = "exam-checkpoint.json"
ENDED_PREFIX = "exam-ended-"


def iso(wall: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC, or ``None``."""
    if wall is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def build_report(
    summary: dict[str, Any],
    models: Sequence[dict[str, Any]] = (),
    stats: dict[str, Any] | None = None,
    recovered: bool = False,
    note: str = "",
    language: str = "en",
) -> dict[str, Any]:
    """The report document from an exam summary (:meth:`ExamSession.summary`) and run figures.

    ``language`` (the overlay's, ``en`` or ``zh``) is recorded so ``coverage.png`` is worded in it.
    """
    return {
        "schema_version": REPORT_SCHEMA,
        "endoedge_version": __version__,
        "language": language,
        "exam": {
            "id": summary.get("exam_id"),
            "started": iso(summary.get("started_wall")),
            "ended": iso(summary.get("ended_wall")),
            "duration_s": summary.get("elapsed_s"),
            "start_reason": summary.get("start_reason", ""),
            "end_reason": summary.get("end_reason", ""),
            "recovered": recovered,
            "note": note,
        },
        "tasks": summary.get("tasks", {}),
        "models": list(models),
        "run": stats or {},
    }


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _check_line(check: dict[str, Any], words: Mapping[str, str]) -> str:
    template = words.get(f"check_{check.get('key')}")
    if template is not None and ("{minutes" not in template or "minutes" in check):
        name = template.format(minutes=check.get("minutes", 0.0))
    else:  # an older report (no key or minutes): its English name
        name = str(check.get("name", ""))
    return f"{name}: {check.get('detail', '')} {'OK' if check.get('passed') else '--'}"


def render_report_png(report: dict[str, Any], width: int = 1400, font_path: str | None = None) -> np.ndarray:
    """Draw the coverage map, per-site timings, checks and blind spots as a BGR image.

    Worded in the report's ``language`` (``zh``: Chinese words and site names) and drawn with the
    overlay's fonts, since ``cv2.putText`` cannot draw Chinese.

    Args:
        report: The document from :func:`build_report`.
        width: Image width in pixels.
        font_path: A font to use instead of the bundled subset (the overlay's ``font_path`` option).
    """
    # Imported here: Pillow and the overlay's fonts load only when a report is drawn.
    from endoedge.edge.stages.overlay import REPORT_TEXT, UI_TEXT, FontSet, draw_text

    zh = report.get("language") == "zh"
    words, ui = REPORT_TEXT["zh" if zh else "en"], UI_TEXT["zh" if zh else "en"]
    fonts = FontSet(font_path)
    coverage = [t for t in report.get("tasks", {}).values() if t.get("kind") == "egd-coverage"]
    others = [(name, t) for name, t in report.get("tasks", {}).items() if t.get("kind") != "egd-coverage"]
    sites = coverage[0].get("sites", []) if coverage else []
    rows = max(1, len(sites))
    height = 190 + 26 * rows + 40 * len(others) + 60
    image = np.full((height, width, 3), 255, dtype=np.uint8)

    def put(text: str, x: int, y: int, size: float, colour: tuple[int, int, int]) -> None:
        draw_text(image, (x, y), text, size, colour, fonts)

    def site_name(site: dict[str, Any]) -> str:
        return str((site.get("name_zh") if zh else "") or site.get("name") or site.get("key", ""))

    exam = report.get("exam", {})
    put(words["title"].format(exam=exam.get("id") or "-"), 20, 36, 26, (0, 0, 0))
    line = words["summary"].format(
        duration=_fmt_time(exam.get("duration_s")),
        started=exam.get("started") or "-",
        end=exam.get("end_reason") or "-",
    )
    put(line, 20, 66, 16, (40, 40, 40))
    if exam.get("recovered"):
        put(words["recovered"], 20, 92, 19, (0, 0, 200))
    y = 120
    if coverage and sites:
        cov = coverage[0]
        put("   ".join(_check_line(c, ui) for c in cov.get("checks", [])), 20, y, 16, (0, 0, 0))
        y += 26
        spots = list(cov.get("blind_spots", []))
        # English keeps the keys it always showed; Chinese shows the sites' Chinese names.
        names = {s.get("key"): site_name(s) for s in sites} if zh else {}
        blind = ", ".join(names.get(k, k) for k in spots[:8]) + (" ..." if len(spots) > 8 else "")
        put(words["blind_spots"].format(count=len(spots), spots=blind or words["none"]), 20, y, 16, (0, 0, 160))
        y += 30
        longest = max([s["seconds"] for s in sites] + [1.0])
        for site in sites:
            if site["observed"]:
                colour = (60, 170, 60)
            elif site["required"]:
                colour = (60, 60, 220)
            else:
                colour = (170, 170, 170)
            cv2.rectangle(image, (20, y - 14), (36, y + 2), colour, -1)
            put(site_name(site)[:52], 46, y, 16, (0, 0, 0))
            bar = int(500 * site["seconds"] / longest)
            cv2.rectangle(image, (520, y - 12), (520 + max(bar, 1), y), colour, -1)
            detail = words["site_detail"].format(
                seconds=site["seconds"], seen=_fmt_time(site["observed_at_s"]), photos=site["photos"]
            )
            put(detail, 1040, y, 15, (40, 40, 40))
            y += 26
    for name, task in others:
        text = f"{name}: " + json.dumps({k: v for k, v in task.items() if k != "kind"}, sort_keys=True)[:150]
        put(text, 20, y + 20, 16, (0, 0, 0))
        y += 40
    return image


def write_report(
    directory: str | Path,
    report: dict[str, Any],
    png: bool = True,
    frames: Sequence[tuple[str, np.ndarray]] = (),
    font_path: str | None = None,
) -> Path:
    """Write ``<directory>/<exam id>/`` atomically (replacing an older report of the same exam).

    Args:
        directory: The reports folder.
        report: The document from :func:`build_report`.
        png: Also draw ``coverage.png``.
        frames: ``(name, BGR frame)`` pairs saved as JPEG (only when the config enables frames).
        font_path: Font for ``coverage.png`` instead of the bundled subset (see :func:`render_report_png`).

    Raises:
        OSError: The disk is full or the folder not writable (nothing half-written is left behind).
    """
    exam_id = str(report.get("exam", {}).get("id") or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    safe = "".join(c if c.isalnum() or c in "-_T" else "_" for c in exam_id)[:80]
    target = Path(directory) / safe
    remove_stale_temporaries(target)
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
        if png:
            ok, encoded = cv2.imencode(".png", render_report_png(report, font_path=font_path))
            if not ok:
                raise OSError("PNG encoding failed")
            (tmp / "coverage.png").write_bytes(encoded.tobytes())
        for i, (name, frame) in enumerate(frames):
            ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if ok:
                safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]
                (tmp / f"frame_{i:03d}_{safe_name}.jpg").write_bytes(encoded.tobytes())
    return target


def remove_stale_temporaries(target: Path) -> int:
    """Remove what a writer killed mid-write left beside ``target`` (``.name.*.tmp``, ``.name.*.partial``).

    The atomic writers never expose a partial file under the real name, but a SIGKILL or power loss
    between creating the temporary and renaming it leaves the temporary behind; without this, each
    such crash would leave one more hidden file on the box.

    Returns:
        How many were removed.
    """
    removed = 0
    if not target.parent.is_dir():
        return 0
    for stale in target.parent.glob(f".{target.name}.*"):
        if stale.name.endswith((".tmp", ".partial")):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()
            removed += 1
    return removed


class CheckpointStore:
    """The exam-state checkpoint file of a state folder."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_NAME

    def save(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint atomically (adds the wall time).

        Raises:
            OSError: Disk full or not writable (the previous checkpoint stays intact).
        """
        atomic_write_json(self.path, {**state, "saved_wall": time.time(), "endoedge_version": __version__})

    def load(self) -> dict[str, Any] | None:
        """The checkpoint, or ``None`` when there is none; an unreadable one is set aside as ``.corrupt``."""
        remove_stale_temporaries(self.path)  # load() runs at start-up: a killed writer's temporaries go
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("clock"), dict):
                raise ValueError("not a checkpoint")
            return data
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            corrupt = self.path.with_suffix(".corrupt")
            log.error("exam checkpoint unreadable, set aside path=%s reason=%s", corrupt, exc)
            with contextlib.suppress(OSError):
                self.path.replace(corrupt)
            return None

    def clear(self, exam_id: str | None = None) -> None:
        """Remove the checkpoint (after the exam's report is on disk, or once its end is durable).

        Args:
            exam_id: Only remove it when it is this exam's (a newer exam's checkpoint stays).
        """
        if exam_id is not None:
            data = self._read(self.path)
            if data is not None and data.get("clock", {}).get("exam_id") != exam_id:
                return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- ended exams whose report is not written yet ------------------------------------------------
    # An exam's end is made durable at once, in its own file, before the report is written: a crash in
    # between must neither resume the exam nor lose its end time and reason, and a new exam started
    # right away must not overwrite it.
    def ended_path(self, exam_id: str) -> Path:
        """The file holding the summary of an ended exam until its report is on disk."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in exam_id)[:80] or "exam"
        return self.directory / f"{ENDED_PREFIX}{safe}.json"

    def save_ended(self, summary: dict[str, Any]) -> Path:
        """Record an ended exam's summary atomically (adds the wall time).

        Raises:
            OSError: Disk full or not writable.
        """
        path = self.ended_path(str(summary.get("exam_id") or "exam"))
        atomic_write_json(path, {"summary": summary, "saved_wall": time.time(), "endoedge_version": __version__})
        return path

    def ended(self) -> list[tuple[Path, dict[str, Any]]]:
        """Ended exams still waiting for their report, oldest first; unreadable ones are set aside."""
        if not self.directory.is_dir():
            return []
        for stale in self.directory.glob(f".{ENDED_PREFIX}*"):  # a writer killed mid-write
            if stale.name.endswith((".tmp", ".partial")):
                with contextlib.suppress(OSError):
                    stale.unlink()
        found = []
        for path in sorted(self.directory.glob(f"{ENDED_PREFIX}*.json")):
            data = self._read(path)
            if data is None or not isinstance(data.get("summary"), dict):
                log.error("ended-exam record unreadable, set aside path=%s", path.with_suffix(".corrupt"))
                with contextlib.suppress(OSError):
                    path.replace(path.with_suffix(".corrupt"))
                continue
            found.append((path, data))
        found.sort(key=lambda item: float(item[1].get("saved_wall", 0.0) or 0.0))
        return found

    def clear_ended(self, exam_id: str) -> None:
        """Remove an ended exam's record (its report is on disk)."""
        with contextlib.suppress(FileNotFoundError):
            self.ended_path(exam_id).unlink()

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None
