"""The types the pure stages share: the overlay state, exam quality checks and coverage-map cells.

Computed by the stages (:mod:`~endoedge.edge.stages.tasks`, :mod:`~endoedge.edge.stages.coverage`) and
drawn by :mod:`~endoedge.edge.stages.overlay`; the daemon only passes them along.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: English names of the exam quality checks, for reports, logs and the English overlay. The overlay
#: takes other languages' names from its own word table (``overlay.UI_TEXT``, keys ``check_<key>``).
EXAM_CHECK_NAMES = {
    "inspection": "inspection >= {minutes:g} min",
    "sites": "sites observed",
    "photos": "landmarks photographed",
}


@dataclass(frozen=True)
class ExamCheck:
    """One exam quality check (in the spirit of the ESGE upper-GI measures).

    Kept structured rather than as a sentence so the overlay can word it in its own language.

    Attributes:
        key: ``inspection``, ``sites`` or ``photos`` (a key of :data:`EXAM_CHECK_NAMES`).
        passed: Whether the exam meets it (so far).
        detail: The measured value, e.g. ``"3:12"`` or ``"10/30"``.
        minutes: The inspection-time threshold (``inspection`` only).
    """

    key: str
    passed: bool
    detail: str
    minutes: float = 0.0

    @property
    def name(self) -> str:
        """English name, e.g. ``"inspection >= 7 min"``."""
        return EXAM_CHECK_NAMES[self.key].format(minutes=self.minutes)

    def line(self, template: str | None = None) -> str:
        """Short overlay line, e.g. ``"inspection >= 7 min: 3:12 --"``.

        Args:
            template: The check's name in another language (``{minutes}`` is filled in).
        """
        name = (template or EXAM_CHECK_NAMES[self.key]).format(minutes=self.minutes)
        return f"{name}: {self.detail} {'OK' if self.passed else '--'}"


@dataclass(frozen=True)
class SiteCell:
    """One label's cell in the overlay's coverage map."""

    key: str
    name: str
    name_zh: str
    region: str
    view: str
    required: bool
    observed: bool
    seconds: float = 0.0


@dataclass(frozen=True)
class OverlayState:
    """Everything the overlay renderer draws, computed by the daemon's pure stages.

    Attributes:
        label: Display name of the current (smoothed) class, or ``None`` when nothing is confident.
        label_zh: Chinese name of it ("" when none).
        confidence: Smoothed probability of ``label``.
        coverage: One cell per label of a coverage task (empty when no coverage task runs).
        exam_seconds: Exam timer (``None`` when no exam is running).
        exam_checks: Exam quality checks, worded by the overlay in its language.
        grade: Hemorrhoid task text (e.g. ``"Hemorrhoid 0.93 · LDRf Rf1 0.81"``) or ``None``.
        grade_zh: The same with the labels' Chinese names ("" when none).
        ai_status: ``ok``, ``off`` (backend failed or absent: banner) or ``warming``.
        signal: False when the source has no signal (the "no signal" screen).
        message: Extra banner text (reason of AI off, etc.).
        fps_in: Source frame rate, for the status corner.
        infer_ms: Latest inference time.
        language: ``en`` or ``zh``.
    """

    label: str | None = None
    label_zh: str = ""
    confidence: float = 0.0
    coverage: tuple[SiteCell, ...] = ()
    exam_seconds: float | None = None
    exam_checks: tuple[ExamCheck, ...] = ()
    grade: str | None = None
    grade_zh: str = ""
    ai_status: str = "ok"
    signal: bool = True
    message: str = ""
    fps_in: float = 0.0
    infer_ms: float = 0.0
    language: str = "en"
    extra: dict[str, str] = field(default_factory=dict)
