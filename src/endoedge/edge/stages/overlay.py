"""The overlay renderer: current site, coverage map, exam timer, hemorrhoid grade, AI status, no signal.

Pure: a BGR frame, an :class:`~endoedge.edge.stages.types.OverlayState` and the endoscopic field's ROI in, a
new BGR frame out; no I/O, and everything it shows comes from the state (the exam clock included). The
only use of time is the per-frame drawing budget: an element whose new text has not been drawn yet
keeps its previous look for a frame or two (``build_budget_ms=0`` makes every frame complete, as
:func:`render_overlay` does for reports and stills).

Rules:
    * Panels are drawn only in the black margins around the endoscopic field, never on it, and they
      step around the processor's own on-screen text (lit pixels in the margins) so patient data and
      settings stay readable. Pixels inside the field's rectangle stay identical to the input unless
      :attr:`OverlayOptions.field_markers` allows small corner markers there.
    * Speed: the added video delay budget at 1080p is a few milliseconds, so every panel is rendered
      once into a cached premultiplied-alpha sprite when its text changes (Pillow for the text, which
      also draws Chinese: ``cv2.putText`` cannot) and only alpha-blitted afterwards. Values that
      change often (confidence, fps, timers) have their own small sprites so a change re-renders a
      few characters, not a panel; the coverage map is composed from cached per-cell sprites; and
      new sprites are drawn within a time budget per frame so a burst of new text never delays video.
    * Chinese text uses the bundled subset of Noto Sans CJK SC (SIL OFL 1.1, ``fonts/``), which covers
      the built-in label sets and the overlay's own words; other characters fall back to a system
      Noto CJK font when one is installed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from endoedge.core.errors import ConfigError
from endoedge.core.preprocess import FieldROI
from endoedge.edge.stages.types import EXAM_CHECK_NAMES, OverlayState, SiteCell

log = logging.getLogger(__name__)

FONT_DIR = Path(__file__).resolve().parent / "fonts"
#: The bundled font subset and the list of characters it covers (written by ``fonts/build_subset.py``).
BUNDLED_FONT = FONT_DIR / "NotoSansCJKsc-Bold-subset.otf"
BUNDLED_FONT_CHARS = FONT_DIR / "NotoSansCJKsc-Bold-subset.chars.txt"
#: System fonts tried for characters outside the subset (Debian fonts-noto-cjk; index 2 is SC).
SYSTEM_CJK_FONTS: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),
)

#: The overlay's own words, per language. The font subset is built to cover every string here.
UI_TEXT: Mapping[str, Mapping[str, str]] = {
    "en": {
        "coverage": "Coverage",
        "exam": "Exam",
        "ai_off": "AI OFF",
        "ai_warming": "AI starting",
        "no_signal": "NO SIGNAL",
        "no_signal_hint": "check the video processor and the capture cable",
        "no_site": "no confident site",
        "seen": "seen",
        "required": "required",
        "optional": "optional",
        "grade": "Hemorrhoid",
        **{f"check_{key}": name for key, name in EXAM_CHECK_NAMES.items()},
    },
    "zh": {
        "coverage": "部位覆盖",
        "exam": "检查时间",
        "ai_off": "AI 已关闭",
        "ai_warming": "AI 启动中",
        "no_signal": "无信号",
        "no_signal_hint": "请检查内镜主机和采集线缆",
        "no_site": "未识别部位",
        "seen": "已观察",
        "required": "必检",
        "optional": "可选",
        "grade": "痔疮",
        "check_inspection": "观察时间 ≥ {minutes:g} 分钟",
        "check_sites": "已观察部位",
        "check_photos": "标志部位已拍照",
    },
}
#: The procedure report's words (``coverage.png``), per language. The report is drawn with the overlay's
#: fonts (:func:`draw_text`), so the font subset is built to cover these too.
REPORT_TEXT: Mapping[str, Mapping[str, str]] = {
    "en": {
        "title": "endoedge procedure report  exam {exam}",
        "summary": "duration {duration}   started {started}   end: {end}",
        "recovered": "RECOVERED AFTER A DAEMON CRASH",
        "blind_spots": "blind spots ({count}): {spots}",
        "none": "none",
        "site_detail": "{seconds:.1f} s  seen at {seen}  photos {photos}",
    },
    "zh": {
        "title": "endoedge 内镜检查报告  编号 {exam}",
        "summary": "时长 {duration}   开始 {started}   结束原因: {end}",
        "recovered": "守护进程崩溃后恢复的报告",
        "blind_spots": "未观察部位 ({count}): {spots}",
        "none": "无",
        "site_detail": "{seconds:.1f} 秒  观察于 {seen}  照片 {photos}",
    },
}
PANELS = ("banner", "site", "grade", "exam", "coverage", "status")
#: Smallest size factor panels are shrunk to when the margins are narrow (smaller text is unreadable).
MIN_FIT = 0.6

# Colours (BGR).
WHITE = (240, 240, 240)
GREY = (150, 150, 150)
DIM = (90, 90, 90)
GREEN = (90, 200, 90)
AMBER = (0, 170, 240)
RED = (40, 40, 210)
PANEL_BG = (24, 24, 24)


@dataclass(frozen=True)
class OverlayOptions:
    """How the overlay looks. Built from the daemon config's ``overlay.options`` with :meth:`from_dict`.

    Attributes:
        panels: Panels to draw, from :data:`PANELS`.
        side: Preferred margin: ``auto`` (the wider one), ``left`` or ``right``.
        scale: Size factor; ``0`` scales with the frame height (1.0 at 1080 lines).
        panel_width: Panel width in pixels at scale 1.
        gap: Space kept from the field, the frame edge, other panels and on-screen text (scale 1).
        avoid_osd: Keep panels off lit pixels in the margins (the processor's on-screen text).
        osd_threshold: Channel value above which a margin pixel counts as lit.
        opacity: Panel background opacity 0–1.
        coverage_columns: Columns of the coverage grid (label sets of up to 8 labels are listed by name).
        field_markers: Allow small corner markers on the field's rectangle showing the AI status
            (the only drawing permitted on the field).
        font_path: A font to use instead of the bundled subset (e.g. a full CJK font for custom labels).
        relayout_every: Frames between checks that the panels still avoid the on-screen text.
        build_budget_ms: Time per frame for drawing new sprites; past it, elements keep their previous
            sprite for a frame or two (``0``: draw everything at once, e.g. for stills and reports).
    """

    panels: tuple[str, ...] = PANELS
    side: str = "auto"
    scale: float = 0.0
    panel_width: int = 340
    gap: int = 14
    avoid_osd: bool = True
    osd_threshold: int = 40
    opacity: float = 0.82
    coverage_columns: int = 6
    field_markers: bool = False
    font_path: str | None = None
    relayout_every: int = 30
    build_budget_ms: float = 0.5

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "overlay.options") -> OverlayOptions:
        """Validate options given as a mapping (unknown keys and bad values name the field).

        Raises:
            ConfigError: Unknown key (valid ones listed) or a bad value.
        """
        data = dict(data or {})
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(k for k in data if k not in names)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(names))})", where)
        if "panels" in data:
            panels = data["panels"]
            if isinstance(panels, str) or not isinstance(panels, Iterable):
                raise ConfigError(f"expected a list of panels, got {panels!r}", f"{where}.panels")
            data["panels"] = tuple(panels)
        try:
            options = cls(**data)
        except TypeError as exc:
            raise ConfigError(str(exc), where) from None
        options.validate(where)
        return options

    def validate(self, where: str = "overlay.options") -> None:
        """Check value ranges.

        Raises:
            ConfigError: Naming the field.
        """
        for panel in self.panels:
            if panel not in PANELS:
                raise ConfigError(f"unknown panel {panel!r} (valid: {', '.join(PANELS)})", f"{where}.panels")
        if self.side not in ("auto", "left", "right"):
            raise ConfigError(f"must be auto, left or right, got {self.side!r}", f"{where}.side")
        checks: list[tuple[str, bool]] = [
            ("scale", 0 <= self.scale <= 8),
            ("panel_width", 80 <= self.panel_width <= 2000),
            ("gap", 0 <= self.gap <= 200),
            ("osd_threshold", 0 <= self.osd_threshold <= 255),
            ("opacity", 0 <= self.opacity <= 1),
            ("coverage_columns", 1 <= self.coverage_columns <= 30),
            ("relayout_every", self.relayout_every >= 1),
            ("build_budget_ms", 0 <= self.build_budget_ms <= 1000),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"{getattr(self, name)!r} is out of range", f"{where}.{name}")
        if self.font_path is not None and not Path(self.font_path).is_file():
            raise ConfigError("font file not found", self.font_path)


# ---------------------------------------------------------------------------------------------------------
# Sprites: premultiplied BGR + inverse alpha, blitted with two saturating OpenCV operations


@dataclass(frozen=True)
class Sprite:
    """A cached, premultiplied-alpha image ready to blend onto a frame.

    Attributes:
        premultiplied: ``uint8`` BGR colour already multiplied by alpha.
        inverse_alpha: ``uint8`` ``255 - alpha`` repeated over 3 channels.
        opaque: Every pixel has alpha 255 (blitting is a copy).
    """

    premultiplied: np.ndarray
    inverse_alpha: np.ndarray
    opaque: bool

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.premultiplied.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.premultiplied.shape[1])

    def blit(self, frame: np.ndarray, x: int, y: int) -> None:
        """Blend onto ``frame`` in place with the top-left corner at ``(x, y)`` (clipped to the frame)."""
        h, w = self.height, self.width
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, frame.shape[1]), min(y + h, frame.shape[0])
        if x1 <= x0 or y1 <= y0:
            return
        region = frame[y0:y1, x0:x1]
        sx, sy = x0 - x, y0 - y
        premultiplied = self.premultiplied[sy : sy + (y1 - y0), sx : sx + (x1 - x0)]
        if self.opaque:
            region[...] = premultiplied
            return
        inverse = self.inverse_alpha[sy : sy + (y1 - y0), sx : sx + (x1 - x0)]
        # region * (255 - a) / 255 + premultiplied, rounded and saturated by OpenCV: a pixel with
        # alpha 0 is left exactly as it was.
        cv2.multiply(region, inverse, dst=region, scale=1.0 / 255.0)
        cv2.add(region, premultiplied, dst=region)


class Canvas:
    """A small RGBA drawing surface for building sprites (Pillow, composited in C).

    Every shape is drawn as a mask covering only its own bounding box and alpha-composited onto the
    canvas, so a sprite of a hundred small shapes (the coverage map) builds in a few milliseconds.
    Colours are given in BGR like the rest of the daemon.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = int(width), int(height)
        self.image = Image.new("RGBA", (self.width, self.height), (0, 0, 0, 0))

    def _local_mask(
        self, box: tuple[float, float, float, float]
    ) -> tuple[Image.Image, ImageDraw.ImageDraw, int, int] | None:
        """An empty mask covering ``box`` (clipped to the canvas) and its offset; ``None`` when outside."""
        left = max(0, math.floor(box[0]) - 1)
        top = max(0, math.floor(box[1]) - 1)
        right = min(self.width, math.ceil(box[2]) + 2)
        bottom = min(self.height, math.ceil(box[3]) + 2)
        if right <= left or bottom <= top:
            return None
        image = Image.new("L", (right - left, bottom - top), 0)
        return image, ImageDraw.Draw(image), left, top

    def _paint(self, mask: Image.Image, left: int, top: int, color: tuple[int, int, int], opacity: float) -> None:
        if opacity < 1.0:
            mask = mask.point(_opacity_table(round(opacity * 255)))
        layer = Image.new("RGBA", mask.size, (color[2], color[1], color[0], 0))
        layer.putalpha(mask)
        self.image.alpha_composite(layer, dest=(left, top))

    def rounded_rect(
        self,
        box: tuple[float, float, float, float],
        color: tuple[int, int, int],
        opacity: float = 1.0,
        radius: float = 0,
        outline: int = 0,
    ) -> None:
        """Fill (or outline with ``outline`` pixels) a rounded rectangle ``(x0, y0, x1, y1)``."""
        local = self._local_mask(box)
        if local is None:
            return
        image, draw, left, top = local
        shifted = (box[0] - left, box[1] - top, box[2] - left, box[3] - top)
        if outline:
            draw.rounded_rectangle(shifted, radius=radius, outline=255, width=outline)
        else:
            draw.rounded_rectangle(shifted, radius=radius, fill=255)
        self._paint(image, left, top, color, opacity)

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        font: ImageFont.FreeTypeFont,
        color: tuple[int, int, int],
        anchor: str = "la",
    ) -> None:
        """Draw one line of text (Pillow anchor, e.g. ``la`` left-ascender, ``mm`` centre)."""
        if not text:
            return
        bbox = font.getbbox(text, anchor=anchor)
        local = self._local_mask((xy[0] + bbox[0], xy[1] + bbox[1], xy[0] + bbox[2], xy[1] + bbox[3]))
        if local is None:
            return
        image, draw, left, top = local
        draw.text((xy[0] - left, xy[1] - top), text, font=font, fill=255, anchor=anchor)
        self._paint(image, left, top, color, 1.0)

    def sprite(self) -> Sprite:
        """Freeze into a :class:`Sprite` (premultiplied BGR + inverse alpha)."""
        rgba = np.asarray(self.image)
        alpha = np.ascontiguousarray(rgba[..., 3])
        alpha3 = cv2.merge([alpha, alpha, alpha])
        premultiplied = cv2.multiply(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR), alpha3, scale=1.0 / 255.0)
        inverse = cv2.bitwise_not(alpha3)
        return Sprite(premultiplied, inverse, bool(cv2.countNonZero(inverse.reshape(-1)) == 0))


@lru_cache(maxsize=16)
def _opacity_table(level: int) -> list[int]:
    """Pillow ``point`` table scaling a mask by ``level / 255``."""
    return [round(v * level / 255) for v in range(256)]


class SpriteCache:
    """A small LRU of sprites keyed by what they show."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Sprite] = OrderedDict()
        self.renders = 0

    def peek(self, key: Hashable) -> Sprite | None:
        """The cached sprite for ``key`` (marked recently used), or ``None``."""
        sprite = self._items.get(key)
        if sprite is not None:
            self._items.move_to_end(key)
        return sprite

    def get(self, key: Hashable, build: Callable[[], Sprite]) -> Sprite:
        """Return the cached sprite for ``key``, building it on a miss."""
        sprite = self._items.get(key)
        if sprite is not None:
            self._items.move_to_end(key)
            return sprite
        sprite = build()
        self.renders += 1
        self._items[key] = sprite
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return sprite

    def __len__(self) -> int:
        return len(self._items)


def compose(base: Sprite, parts: Sequence[tuple[Sprite, int, int]]) -> Sprite:
    """A new sprite: ``parts`` (sprite, x, y) laid over ``base`` with the premultiplied "over" operator."""
    premultiplied = base.premultiplied.copy()
    inverse = base.inverse_alpha.copy()
    height, width = premultiplied.shape[:2]
    for sprite, x, y in parts:
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + sprite.width, width), min(y + sprite.height, height)
        if x1 <= x0 or y1 <= y0:
            continue
        src = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
        p_region, i_region = premultiplied[y0:y1, x0:x1], inverse[y0:y1, x0:x1]
        cv2.multiply(p_region, sprite.inverse_alpha[src], dst=p_region, scale=1.0 / 255.0)
        cv2.add(p_region, sprite.premultiplied[src], dst=p_region)
        cv2.multiply(i_region, sprite.inverse_alpha[src], dst=i_region, scale=1.0 / 255.0)
    return Sprite(premultiplied, inverse, bool((inverse == 0).all()))


# ---------------------------------------------------------------------------------------------------------
# Fonts


@lru_cache(maxsize=1)
def bundled_font_chars() -> frozenset[str]:
    """Characters the bundled font subset covers (empty when the subset is missing)."""
    try:
        return frozenset(BUNDLED_FONT_CHARS.read_text(encoding="utf-8").replace("\n", ""))
    except OSError:
        return frozenset()


def _system_cjk_font() -> tuple[str, int] | None:
    for path, index in SYSTEM_CJK_FONTS:
        if Path(path).is_file():
            return path, index
    return None


@lru_cache(maxsize=64)
def load_font(size: int, path: str | None = None, index: int = 0) -> ImageFont.FreeTypeFont:
    """Load a TrueType/OpenType font at ``size`` pixels (the bundled subset by default)."""
    return ImageFont.truetype(str(path or BUNDLED_FONT), size=size, index=index)


class FontSet:
    """Picks a font that can draw a given text: the configured one, the bundled subset or a system CJK font."""

    def __init__(self, font_path: str | None = None) -> None:
        self.font_path = font_path
        self._warned: set[str] = set()

    def get(self, size: float, text: str = "") -> ImageFont.FreeTypeFont:
        """A font of ``size`` pixels able to draw ``text``."""
        pixels = max(6, round(size))
        if self.font_path:
            return load_font(pixels, self.font_path)
        covered = bundled_font_chars()
        missing = {ch for ch in text if ch not in covered and not ch.isspace()}
        if covered and not missing:
            return load_font(pixels)
        fallback = _system_cjk_font()
        key = "".join(sorted(missing))[:20]
        if fallback is not None:
            return load_font(pixels, fallback[0], fallback[1])
        if key not in self._warned:
            self._warned.add(key)
            log.warning("no installed font draws %r; set overlay.options.font_path to a CJK font", key)
        if not covered:
            raise FileNotFoundError(f"the bundled overlay font is missing: {BUNDLED_FONT}")
        return load_font(pixels)


def draw_text(
    image: np.ndarray,
    xy: tuple[float, float],
    text: str,
    size: float,
    color: tuple[int, int, int],
    fonts: FontSet | None = None,
    anchor: str = "ls",
) -> int:
    """Draw one line of text onto a BGR image in place, with the overlay's fonts (Chinese included).

    For still images such as the procedure report, where ``cv2.putText`` cannot draw Chinese.

    Args:
        image: ``uint8`` BGR image, changed in place.
        xy: Anchor point (default ``ls``: left end of the baseline, as ``cv2.putText``'s origin).
        text: One line.
        size: Font size in pixels.
        color: BGR colour.
        fonts: The font choice (default: the bundled subset, falling back to a system CJK font).
        anchor: Pillow text anchor.

    Returns:
        The text's advance width in pixels (0 for empty text).
    """
    if not text:
        return 0
    font = (fonts or FontSet()).get(size, text)
    box = font.getbbox(text, anchor=anchor)
    left, top = math.floor(box[0]), math.floor(box[1])
    right, bottom = math.ceil(box[2]), math.ceil(box[3])
    canvas = Canvas(right - left + 2, bottom - top + 2)
    canvas.text((1 - left, 1 - top), text, font, color, anchor=anchor)
    canvas.sprite().blit(image, round(xy[0]) + left - 1, round(xy[1]) + top - 1)
    return round(font.getlength(text))


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: float, max_lines: int = 2) -> list[str]:
    """Break ``text`` into at most ``max_lines`` lines no wider than ``width`` (an ellipsis marks a cut).

    Words are kept whole when possible; text without spaces (Chinese) breaks between characters.
    """
    if not text:
        return []
    tokens: list[str] = text.split(" ") if " " in text else list(text)
    joiner = " " if " " in text else ""
    lines: list[str] = []
    current = ""
    for token in tokens:
        candidate = f"{current}{joiner}{token}" if current else token
        if font.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = token
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + "…"
    fitted = []
    for line in lines:
        while font.getlength(line) > width and len(line) > 1:
            line = line[:-2] + "…"
        fitted.append(line)
    return fitted


# ---------------------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class Placement:
    """Where a panel goes: top-left corner and size in frame pixels."""

    x: int
    y: int
    width: int
    height: int

    def rect(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)


_GRID = 4  # layout grid in pixels: occupancy is sampled and positions are searched at this step
_SNAP = 16  # the field rectangle is enlarged to multiples of this before laying out


def snap_outward(roi: FieldROI, step: int) -> FieldROI:
    """Enlarge ``roi`` to multiples of ``step`` pixels (clipped to the frame)."""
    return FieldROI(
        roi.x0 // step * step,
        roi.y0 // step * step,
        min(roi.frame_width, -(-roi.x1 // step) * step),
        min(roi.frame_height, -(-roi.y1 // step) * step),
        roi.frame_height,
        roi.frame_width,
    )


def _channel_max(image: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over the 3 channels (``ndarray.max(axis=2)`` is many times slower)."""
    return np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2])


def _blocked_grid(frame: np.ndarray, roi: FieldROI, options: OverlayOptions, gap: int) -> np.ndarray:
    """Grid cells (``_GRID`` px) where no panel pixel may go: the field, the frame edge, lit margin pixels."""
    height, width = frame.shape[:2]
    gh, gw = math.ceil(height / _GRID), math.ceil(width / _GRID)
    blocked = np.zeros((gh, gw), bool)
    if options.avoid_osd:
        # Area averaging keeps thin text strokes visible at grid resolution (a 2-px stroke of 235
        # still averages far above the threshold) and is much faster than a strided max.
        small = cv2.resize(frame, (gw, gh), interpolation=cv2.INTER_AREA)
        blocked = _channel_max(small) > options.osd_threshold // 2
        pad = max(1, math.ceil(gap / _GRID))
        blocked = cv2.dilate(blocked.astype(np.uint8), np.ones((2 * pad + 1, 2 * pad + 1), np.uint8)) > 0
    g = math.ceil(gap / _GRID)
    fx0, fy0 = max(0, roi.x0 // _GRID - g), max(0, roi.y0 // _GRID - g)
    fx1, fy1 = math.ceil(roi.x1 / _GRID) + g, math.ceil(roi.y1 / _GRID) + g
    blocked[fy0:fy1, fx0:fx1] = True
    edge = max(1, g)
    blocked[:edge, :] = True
    blocked[-edge:, :] = True
    blocked[:, :edge] = True
    blocked[:, -edge:] = True
    return blocked


def _free_positions(blocked: np.ndarray, cells_w: int, cells_h: int) -> np.ndarray:
    """Boolean map of top-left grid cells where a ``cells_w × cells_h`` box touches no blocked cell."""
    gh, gw = blocked.shape
    if cells_w > gw or cells_h > gh:
        return np.zeros((0, 0), bool)
    integral = cv2.integral(blocked.astype(np.uint8), sdepth=cv2.CV_32S)
    sums = (
        integral[cells_h:, cells_w:]
        - integral[:-cells_h, cells_w:]
        - integral[cells_h:, :-cells_w]
        + integral[:-cells_h, :-cells_w]
    )
    return np.asarray(sums == 0)


def plan_layout(
    frame: np.ndarray,
    roi: FieldROI,
    sizes: Sequence[tuple[str, int, int]],
    options: OverlayOptions,
    gap: int,
) -> dict[str, Placement]:
    """Place panels in the margins around the field, off on-screen text, without overlaps.

    Panels are placed in order: each goes to the highest free spot (``status`` to the lowest) on the
    preferred side, as close to the field as possible. A panel that fits nowhere is left out.

    Args:
        frame: The input frame (its lit margin pixels are avoided).
        roi: The endoscopic field.
        sizes: ``(panel, width, height)`` in placement order.
        options: Overlay options.
        gap: Spacing in pixels.

    Returns:
        Panel name -> placement.
    """
    blocked = _blocked_grid(frame, roi, options, gap)
    width = frame.shape[1]
    left_margin, right_margin = roi.x0, width - roi.x1
    side = options.side
    if side == "auto":
        side = "left" if left_margin >= right_margin else "right"
    placements: dict[str, Placement] = {}
    pad = math.ceil(gap / _GRID)
    for name, panel_w, panel_h in sizes:
        cw, ch = math.ceil(panel_w / _GRID), math.ceil(panel_h / _GRID)
        free = _free_positions(blocked, cw, ch)
        if free.size == 0 or not free.any():
            continue
        ys, xs = np.nonzero(free)
        right_edge = xs + cw
        fx0, fx1 = roi.x0 // _GRID, math.ceil(roi.x1 / _GRID)
        on_left = right_edge <= fx0
        on_right = xs >= fx1
        distance = np.where(on_left, fx0 - right_edge, np.where(on_right, xs - fx1, 0))
        preferred = on_left if side == "left" else on_right
        vertical = -ys if name == "status" else ys
        cost = (~preferred).astype(np.int64) * 10**9 + vertical.astype(np.int64) * 10**4 + distance
        best = int(np.argmin(cost))
        gx, gy = int(xs[best]), int(ys[best])
        placements[name] = Placement(gx * _GRID, gy * _GRID, panel_w, panel_h)
        blocked[max(0, gy - pad) : gy + ch + pad, max(0, gx - pad) : gx + cw + pad] = True
    return placements


# ---------------------------------------------------------------------------------------------------------
# The renderer


#: LDRf risk grades and their accent colours on the hemorrhoid panel (low, intermediate, high risk).
GRADE_COLOURS: Mapping[str, tuple[int, int, int]] = {"Rf0": GREEN, "Rf1": AMBER, "Rf2": RED}


def grade_colour(text: str) -> tuple[int, int, int] | None:
    """The accent colour of the highest LDRf grade named in a hemorrhoid line, or ``None``."""
    found = [grade for grade in GRADE_COLOURS if grade in text.replace(" ", "")]
    return GRADE_COLOURS[max(found)] if found else None


def _format_clock(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class OverlayRenderer:
    """Draws an :class:`OverlayState` into the margins of a frame.

    Args:
        options: :class:`OverlayOptions`, a mapping of them (validated), or ``None`` for defaults.

    Example::

        renderer = OverlayRenderer({"side": "left"})
        shown = renderer.render(frame.image, state, roi)
    """

    def __init__(self, options: OverlayOptions | Mapping[str, Any] | None = None) -> None:
        if isinstance(options, OverlayOptions):
            options.validate()
            self.options = options
        else:
            self.options = OverlayOptions.from_dict(options)
        self.fonts = FontSet(self.options.font_path)
        self.cache = SpriteCache()
        self._layout_key: tuple[Any, ...] | None = None
        self._layout: dict[str, Placement] = {}
        self._frames_since_layout = 0
        self.hidden_panels: tuple[str, ...] = ()
        self.layouts_planned = 0
        self.deferred = 0
        self.current_scale = 1.0
        self._reserved: dict[str, int] = {}
        self._reserved_scale = 0.0
        self._spent = 0.0
        self._shown: dict[Hashable, Sprite] = {}

    # -- geometry ------------------------------------------------------------------------------------------

    def scale_for(self, frame_height: int) -> float:
        """The size factor for a frame height."""
        return self.options.scale or frame_height / 1080.0

    def _panel_sizes(self, state: OverlayState, s: float) -> list[tuple[str, int, int]]:
        w = round(self.options.panel_width * s)
        heights = {
            "banner": 66 * s,
            "site": 112 * s,
            "grade": 76 * s,
            "exam": (48 + 26 * max(1, min(4, len(state.exam_checks)))) * s,
            "coverage": self._coverage_height(len(state.coverage), w, s),
            "status": 30 * s,
        }
        # A panel keeps its slot (at the largest size it has had) once it has been shown, so panels
        # that come and go (the AI banner, the grade while task A flips) neither move the others nor
        # cost a new layout.
        if self._reserved_scale != s:
            self._reserved = {}
            self._reserved_scale = s
        for panel in PANELS:
            if panel in self.options.panels and self._panel_active(panel, state):
                self._reserved[panel] = max(self._reserved.get(panel, 0), round(heights[panel]))
        return [(p, w, self._reserved[p]) for p in PANELS if p in self._reserved]

    def _coverage_height(self, n: int, width: int, s: float) -> float:
        if n == 0:
            return 0
        if n <= 8:
            return 44 * s + n * 30 * s + 10 * s
        cols = self.options.coverage_columns
        cell = (width - 20 * s) / cols
        return 44 * s + math.ceil(n / cols) * cell + 34 * s

    def _panel_active(self, panel: str, state: OverlayState) -> bool:
        if panel == "banner":
            return state.ai_status != "ok" or bool(state.message)
        if panel == "site":
            return state.signal and state.ai_status == "ok"
        if panel == "grade":
            return state.grade is not None
        if panel == "exam":
            return state.exam_seconds is not None or bool(state.exam_checks)
        if panel == "coverage":
            return bool(state.coverage)
        return True

    def layout(self, frame: np.ndarray, state: OverlayState, roi: FieldROI) -> dict[str, Placement]:
        """Panel placements for this frame (cached while the field, the panel set and the OSD stay put)."""
        s = self.scale_for(frame.shape[0])
        if not state.signal:
            roi = self._message_box(frame.shape[1], frame.shape[0], s)
        # Field detection may wobble by a pixel or two: snapping the field outward keeps the layout
        # (and its cost) stable and only ever enlarges the area kept free.
        roi = snap_outward(roi, _SNAP)
        s = self._fit_scale(frame.shape[1], roi, s)
        self.current_scale = s
        sizes = self._panel_sizes(state, s)
        key = (frame.shape, roi.as_tuple(), tuple(sizes))
        self._frames_since_layout += 1
        stale = key != self._layout_key
        if not stale and self.options.avoid_osd and self._frames_since_layout >= self.options.relayout_every:
            self._frames_since_layout = 0
            stale = self._overlaps_osd(frame)
        if stale:
            gap = round(self.options.gap * s)
            self._layout = plan_layout(frame, roi, sizes, self.options, gap)
            self._layout_key = key
            self._frames_since_layout = 0
            self.layouts_planned += 1
            self.hidden_panels = tuple(name for name, _, _ in sizes if name not in self._layout)
            if self.hidden_panels:
                log.info("overlay panels without room in the margins: %s", ", ".join(self.hidden_panels))
        return self._layout

    def _fit_scale(self, frame_width: int, roi: FieldROI, s: float) -> float:
        """Shrink the panels (down to :data:`MIN_FIT` of their size) when the widest side margin is
        narrower than a panel, as on SXGA (1280×1024) processors whose field nearly fills the frame."""
        widest = max(roi.x0, frame_width - roi.x1)
        # Room left on the layout grid once the gaps to the field and the frame edge are kept.
        gap_cells = math.ceil(self.options.gap * s / _GRID)
        available = (widest // _GRID - 2 * gap_cells - 1) * _GRID
        if self.options.panel_width * s <= available:
            return s
        fitted = available / self.options.panel_width
        return fitted if fitted >= MIN_FIT * s else s

    def _overlaps_osd(self, frame: np.ndarray) -> bool:
        """True when on-screen text now shows where a panel is (the processor moved or added text)."""
        threshold = self.options.osd_threshold
        for placement in self._layout.values():
            x0, y0, x1, y1 = placement.rect()
            if (_channel_max(frame[y0:y1:_GRID, x0:x1:_GRID]) > threshold).any():
                return True
        return False

    @staticmethod
    def _message_box(width: int, height: int, s: float) -> FieldROI:
        """The centre area holding the no-signal message."""
        half_w, top, bottom = round(380 * s), round(100 * s), round(70 * s)
        cx, cy = width // 2, height // 2
        return FieldROI(
            max(0, cx - half_w), max(0, cy - top), min(width, cx + half_w), min(height, cy + bottom), height, width
        )

    def marker_rects(self, roi: FieldROI, frame_height: int) -> list[tuple[int, int, int, int]]:
        """Rectangles on the field the corner markers may touch (empty unless ``field_markers``)."""
        if not self.options.field_markers:
            return []
        s = self.scale_for(frame_height)
        arm = max(4, round(28 * s))
        x0, y0, x1, y1 = roi.as_tuple()
        return [
            (x0, y0, x0 + arm, y0 + arm),
            (x1 - arm, y0, x1, y0 + arm),
            (x0, y1 - arm, x0 + arm, y1),
            (x1 - arm, y1 - arm, x1, y1),
        ]

    # -- rendering -----------------------------------------------------------------------------------------

    def render(self, frame: np.ndarray, state: OverlayState, field_roi: FieldROI, copy: bool = True) -> np.ndarray:
        """Draw ``state`` around the field.

        Sprites missing from the cache are built within :attr:`OverlayOptions.build_budget_ms` per call;
        past the budget a panel element shows its previous sprite (or nothing yet) and is completed on
        the next frames, so a burst of new text never delays the video.

        Args:
            frame: ``uint8`` BGR frame.
            state: What to show.
            field_roi: The endoscopic field (pixels inside its rectangle are not touched, except by
                corner markers when the options allow them).
            copy: Draw on a copy (default) or on ``frame`` itself when the caller owns it.

        Returns:
            The frame with the overlay.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a uint8 HxWx3 BGR frame, got {frame.dtype} {frame.shape}")
        self._spent = 0.0
        self.deferred = 0
        zh = state.language == "zh"
        text = UI_TEXT["zh" if zh else "en"]
        if not state.signal:
            # The daemon passes a blank frame whose "field" is the whole frame: the message goes in the
            # centre and the panels around it.
            out = np.full_like(frame, 8)
            self._draw_no_signal(out, self.scale_for(frame.shape[0]), text)
            layout = self.layout(out, state, field_roi)
        else:
            layout = self.layout(frame, state, field_roi)
            out = frame.copy() if copy else frame
        s = self.current_scale
        for name, placement in layout.items():
            if self._panel_active(name, state):
                draw = getattr(self, f"_draw_{name}")
                draw(out, placement, state, s, text)
        if self.options.field_markers and state.signal:
            self._draw_markers(out, state, field_roi)
        return out

    @property
    def complete(self) -> bool:
        """True when the last :meth:`render` drew every element (no build was deferred)."""
        return self.deferred == 0

    # -- sprite supply under the per-frame build budget ------------------------------------------------------

    def _obtain(self, slot: Hashable | None, key: Hashable, build: Callable[[], Sprite]) -> Sprite | None:
        """The sprite for ``key``; built now if the frame's budget allows, else the slot's last sprite.

        Args:
            slot: What on screen the sprite fills (its previous sprite stands in while a new one waits);
                ``None`` for parts that have no stand-in.
            key: What the sprite shows.
            build: Draws it.
        """
        sprite = self.cache.peek(key)
        if sprite is None:
            budget = self.options.build_budget_ms / 1000.0
            if budget > 0 and self._spent >= budget:
                self.deferred += 1
                return self._shown.get(slot) if slot is not None else None
            started = time.perf_counter()
            sprite = self.cache.get(key, build)
            self._spent += time.perf_counter() - started
        if slot is not None:
            self._shown[slot] = sprite
        return sprite

    @staticmethod
    def _blit(sprite: Sprite | None, out: np.ndarray, x: int, y: int) -> None:
        if sprite is not None:
            sprite.blit(out, x, y)

    # Each _draw_* blits cached sprites; the sprite keys hold exactly what the sprite shows.

    def _panel_background(self, placement: Placement, s: float) -> Sprite | None:
        key = ("bg", placement.width, placement.height, round(s, 3))

        def build() -> Sprite:
            canvas = Canvas(placement.width, placement.height)
            canvas.rounded_rect(
                (0, 0, placement.width - 1, placement.height - 1), PANEL_BG, self.options.opacity, radius=10 * s
            )
            return canvas.sprite()

        return self._obtain(key, key, build)

    def _text_sprite(
        self,
        slot: Hashable | None,
        text: str,
        size: float,
        color: tuple[int, int, int],
        width: int,
        height: int,
        anchor: str = "lm",
    ) -> Sprite | None:
        """One line of text, transparent background, vertically centred in ``height``."""
        key = ("text", text, round(size, 2), color, width, height, anchor)

        def build() -> Sprite:
            canvas = Canvas(width, height)
            font = self.fonts.get(round(size), text)
            x = {"l": 0, "m": width / 2, "r": width - 1}[anchor[0]]
            canvas.text((x, height / 2), text, font, color, anchor=anchor)
            return canvas.sprite()

        return self._obtain(slot, key, build)

    def _draw_banner(
        self, out: np.ndarray, p: Placement, state: OverlayState, s: float, text: Mapping[str, str]
    ) -> None:
        if state.ai_status == "off":
            title, color = text["ai_off"], RED
        elif state.ai_status == "warming":
            title, color = text["ai_warming"], AMBER
        else:
            title, color = "", AMBER
        line = " · ".join(part for part in (title, state.message) if part)
        key = ("banner", line, color, p.width, p.height)

        def build() -> Sprite:
            canvas = Canvas(p.width, p.height)
            canvas.rounded_rect((0, 0, p.width - 1, p.height - 1), color, 0.92, radius=10 * s)
            font = self.fonts.get(round(22 * s), line)
            lines = wrap_text(line, font, p.width - 24 * s, max_lines=2)
            line_h = (p.height - 8 * s) / max(1, len(lines))
            for i, text_line in enumerate(lines):
                canvas.text((12 * s, 4 * s + line_h * (i + 0.5)), text_line, font, WHITE, anchor="lm")
            return canvas.sprite()

        self._blit(self._obtain("banner", key, build), out, p.x, p.y)

    def _draw_site(self, out: np.ndarray, p: Placement, state: OverlayState, s: float, text: Mapping[str, str]) -> None:
        self._blit(self._panel_background(p, s), out, p.x, p.y)
        name = (state.label_zh if state.language == "zh" and state.label_zh else state.label) or ""
        confident = bool(name)
        shown = name if confident else text["no_site"]
        pad = round(12 * s)
        self._blit(self._site_name_sprite(shown, confident, p.width, s), out, p.x + pad, p.y + round(6 * s))
        if not confident:
            return
        percent = round(100 * min(1.0, max(0.0, state.confidence)))
        bar_y = p.y + round(86 * s)
        bar_h = max(2, round(10 * s))
        label_w = round(70 * s)
        bar_x0, bar_x1 = p.x + pad, p.x + p.width - pad - label_w
        filled = bar_x0 + round((bar_x1 - bar_x0) * percent / 100)
        color = GREEN if percent >= 80 else AMBER
        cv2.rectangle(out, (bar_x0, bar_y), (bar_x1 - 1, bar_y + bar_h - 1), DIM, thickness=-1)
        if filled > bar_x0:
            cv2.rectangle(out, (bar_x0, bar_y), (filled - 1, bar_y + bar_h - 1), color, thickness=-1)
        percent_sprite = self._text_sprite(
            ("site", "percent"), f"{percent}%", 22 * s, WHITE, label_w, round(28 * s), anchor="rm"
        )
        self._blit(percent_sprite, out, p.x + p.width - pad - label_w, bar_y + bar_h // 2 - round(14 * s))

    def _site_name_sprite(self, shown: str, confident: bool, panel_width: int, s: float) -> Sprite | None:
        pad = round(12 * s)
        name_h = round(70 * s)
        key = ("site-name", shown, confident, panel_width, name_h)

        def build() -> Sprite:
            canvas = Canvas(panel_width - 2 * pad, name_h)
            font = self.fonts.get(round(28 * s), shown)
            lines = wrap_text(shown, font, panel_width - 2 * pad, max_lines=2)
            line_h = name_h / 2
            if len(lines) == 1:
                canvas.text((0, name_h / 2), lines[0], font, WHITE if confident else GREY, anchor="lm")
            else:
                for i, line in enumerate(lines):
                    canvas.text((0, line_h * (i + 0.5)), line, font, WHITE, anchor="lm")
            return canvas.sprite()

        return self._obtain(("site", "name"), key, build)

    def _draw_grade(
        self, out: np.ndarray, p: Placement, state: OverlayState, s: float, text: Mapping[str, str]
    ) -> None:
        self._blit(self._panel_background(p, s), out, p.x, p.y)
        pad = round(12 * s)
        grade = (state.grade_zh if state.language == "zh" and state.grade_zh else state.grade) or ""
        key = ("grade", grade, p.width, p.height)
        accent = grade_colour(state.grade or "")  # the colour follows the grade key (Rf0/Rf1/Rf2)

        def build() -> Sprite:
            canvas = Canvas(p.width - 2 * pad, p.height - 2 * pad)
            stripe = round(6 * s) if accent is not None else 0
            if accent is not None:
                canvas.rounded_rect((0, 0, stripe - 1, p.height - 2 * pad - 1), accent, 1.0, radius=2 * s)
            font = self.fonts.get(round(24 * s), grade)
            indent = stripe + (round(8 * s) if stripe else 0)
            lines = wrap_text(grade, font, p.width - 2 * pad - indent, max_lines=2)
            line_h = (p.height - 2 * pad) / 2
            for i, line in enumerate(lines):
                canvas.text((indent, line_h * (i + 0.5)), line, font, WHITE, anchor="lm")
            return canvas.sprite()

        self._blit(self._obtain("grade", key, build), out, p.x + pad, p.y + pad)

    def _draw_exam(self, out: np.ndarray, p: Placement, state: OverlayState, s: float, text: Mapping[str, str]) -> None:
        self._blit(self._panel_background(p, s), out, p.x, p.y)
        pad = round(12 * s)
        inner_w = p.width - 2 * pad
        title_h = round(40 * s)
        title = self._text_sprite(("exam", "title"), text["exam"], 24 * s, GREY, inner_w // 2, title_h)
        self._blit(title, out, p.x + pad, p.y + round(4 * s))
        if state.exam_seconds is not None:
            clock = _format_clock(state.exam_seconds)
            sprite = self._text_sprite(("exam", "clock"), clock, 30 * s, WHITE, inner_w // 2, title_h, anchor="rm")
            self._blit(sprite, out, p.x + pad + inner_w - inner_w // 2, p.y + round(4 * s))
        line_h = round(26 * s)
        for i, check in enumerate(state.exam_checks[:4]):
            line = check.line(text.get(f"check_{check.key}"))
            color = GREEN if check.passed else WHITE
            sprite = self._text_sprite(("exam", "check", i), line, 19 * s, color, inner_w, line_h)
            self._blit(sprite, out, p.x + pad, p.y + round(44 * s) + i * line_h)

    def _draw_coverage(
        self, out: np.ndarray, p: Placement, state: OverlayState, s: float, text: Mapping[str, str]
    ) -> None:
        zh = state.language == "zh"
        cells = tuple((c.key, c.name, c.name_zh, c.required, c.observed) for c in state.coverage)
        key = ("coverage", cells, zh, p.width, p.height)
        sprite = self.cache.peek(key)
        if sprite is None:
            parts = self._coverage_parts(p, state.coverage, zh, s, text)
            background = self._panel_background(p, s)
            if parts is not None and background is not None:
                sprite = self._obtain("coverage", key, lambda: compose(background, parts))
            else:
                sprite = self._shown.get("coverage")
        else:
            self._shown["coverage"] = sprite
        self._blit(sprite, out, p.x, p.y)
        # The current site's frame is a separate small sprite so a site change never rebuilds the map.
        current = next((i for i, c in enumerate(state.coverage) if state.label and c.name == state.label), None)
        if current is not None and sprite is not None:
            x0, y0, x1, y1 = self._cell_rect(current, len(state.coverage), p.width, s)
            o = round(3 * s)
            w, h = x1 - x0 + 2 * o, y1 - y0 + 2 * o

            def build() -> Sprite:
                canvas = Canvas(w, h)
                canvas.rounded_rect((0, 0, w - 1, h - 1), WHITE, 1.0, radius=5 * s, outline=max(2, round(3 * s)))
                return canvas.sprite()

            self._blit(self._obtain(None, ("current-cell", w, h), build), out, p.x + x0 - o, p.y + y0 - o)

    def _cell_rect(self, index: int, count: int, panel_width: int, s: float) -> tuple[int, int, int, int]:
        """Pixel box of a cell's marker inside the coverage panel."""
        pad, top = 10 * s, 44 * s
        if count <= 8:
            y = top + index * 30 * s
            return (round(pad), round(y + 4 * s), round(pad + 22 * s), round(y + 26 * s))
        cols = self.options.coverage_columns
        cell = (panel_width - 2 * pad) / cols
        row, col = divmod(index, cols)
        x0, y0 = pad + col * cell, top + row * cell
        return (round(x0 + 2 * s), round(y0 + 2 * s), round(x0 + cell - 3 * s), round(y0 + cell - 3 * s))

    def _coverage_parts(
        self, p: Placement, coverage: Sequence[SiteCell], zh: bool, s: float, text: Mapping[str, str]
    ) -> list[tuple[Sprite, int, int]] | None:
        """The map's cached parts (title, one sprite per cell state, names, legend), or ``None`` while
        some are still waiting for build budget. A newly observed site needs two new parts."""
        pad = 10 * s
        parts: list[tuple[Sprite | None, int, int]] = []
        required = [c for c in coverage if c.required]
        seen = sum(c.observed for c in required)
        title = f"{text['coverage']}  {seen}/{len(required)}"
        title_sprite = self._text_sprite(None, title, 24 * s, WHITE, p.width - round(2 * pad), round(40 * s))
        parts.append((title_sprite, round(pad), 2))
        count = len(coverage)
        for i, cell in enumerate(coverage):
            x0, y0, x1, y1 = self._cell_rect(i, count, p.width, s)
            parts.append((self._cell_sprite(i, cell, x1 - x0, y1 - y0, s), x0, y0))
            if count <= 8:
                name = cell.name_zh if zh and cell.name_zh else cell.name
                color = WHITE if cell.observed else (GREY if cell.required else DIM)
                width = p.width - round(pad * 2 + 32 * s)
                font = self.fonts.get(round(20 * s), name)
                fitted = wrap_text(name, font, width, max_lines=1)
                line = self._text_sprite(None, fitted[0] if fitted else "", 20 * s, color, width, round(26 * s))
                parts.append((line, round(pad + 32 * s), y0 - round(2 * s)))
        if count > 8:
            cols = self.options.coverage_columns
            cell_size = (p.width - 2 * pad) / cols
            legend_y = round(44 * s + math.ceil(count / cols) * cell_size + 4 * s)
            legend = f"■ {text['seen']}   □ {text['required']}   ┆ {text['optional']}"
            legend_sprite = self._text_sprite(None, legend, 17 * s, GREY, p.width - round(2 * pad), round(26 * s))
            parts.append((legend_sprite, round(pad), legend_y))
        ready = [(sprite, x, y) for sprite, x, y in parts if sprite is not None]
        return ready if len(ready) == len(parts) else None

    def _cell_sprite(self, index: int, cell: SiteCell, w: int, h: int, s: float) -> Sprite | None:
        key = ("cell", index, cell.observed, cell.required, w, h)

        def build() -> Sprite:
            canvas = Canvas(w, h)
            box = (0.0, 0.0, w - 1.0, h - 1.0)
            radius = 4 * s
            if cell.observed:
                canvas.rounded_rect(box, GREEN, 1.0, radius=radius)
            elif cell.required:
                canvas.rounded_rect(box, (60, 60, 60), 0.9, radius=radius)
                canvas.rounded_rect(box, (110, 110, 200), 1.0, radius=radius, outline=max(1, round(2 * s)))
            else:
                canvas.rounded_rect(box, DIM, 1.0, radius=radius, outline=max(1, round(1 * s)))
            if w > 30 * s:  # grid cells carry their index; list rows show the name beside the box
                color = (20, 20, 20) if cell.observed else (WHITE if cell.required else GREY)
                font = self.fonts.get(round(h * 0.45), "0123456789")
                canvas.text((w / 2, h / 2), str(index), font, color, anchor="mm")
            return canvas.sprite()

        return self._obtain(None, key, build)

    def _draw_status(
        self, out: np.ndarray, p: Placement, state: OverlayState, s: float, text: Mapping[str, str]
    ) -> None:
        line = (
            f"{state.fps_in:.0f} fps · AI {state.infer_ms:.0f} ms"
            if state.ai_status == "ok"
            else f"{state.fps_in:.0f} fps"
        )
        self._blit(self._text_sprite("status", line, 18 * s, GREY, p.width, p.height, anchor="rm"), out, p.x, p.y)

    def _draw_markers(self, out: np.ndarray, state: OverlayState, roi: FieldROI) -> None:
        color = {"ok": GREEN if state.label else GREY, "warming": AMBER}.get(state.ai_status, RED)
        t = max(2, round(4 * self.scale_for(out.shape[0])))
        for x0, y0, x1, y1 in self.marker_rects(roi, out.shape[0]):
            # An L in each corner of the field rectangle, drawn with slices so no pixel leaves its box.
            rows = slice(y0, y0 + t) if y0 == roi.y0 else slice(y1 - t, y1)
            cols = slice(x0, x0 + t) if x0 == roi.x0 else slice(x1 - t, x1)
            out[rows, x0:x1] = color
            out[y0:y1, cols] = color

    def _draw_no_signal(self, out: np.ndarray, s: float, text: Mapping[str, str]) -> None:
        height, width = out.shape[:2]
        box = self._message_box(width, height, s)
        title, hint = text["no_signal"], text["no_signal_hint"]
        key = ("no-signal", title, hint, box.width, box.height)

        def build() -> Sprite:
            canvas = Canvas(box.width, box.height)
            cx, cy = box.width / 2, box.height / 2
            canvas.text((cx, cy - 30 * s), title, self.fonts.get(round(72 * s), title), WHITE, "mm")
            canvas.text((cx, cy + 40 * s), hint, self.fonts.get(round(26 * s), hint), GREY, "mm")
            return canvas.sprite()

        self._blit(self._obtain("no-signal", key, build), out, box.x0, box.y0)


def render_overlay(
    frame: np.ndarray, state: OverlayState, field_roi: FieldROI, options: Mapping[str, Any] | None = None
) -> np.ndarray:
    """One-off convenience: a complete render with a fresh :class:`OverlayRenderer` (reports, stills)."""
    return OverlayRenderer({"build_budget_ms": 0, **(options or {})}).render(frame, state, field_roi)
