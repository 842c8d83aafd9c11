"""Overlay renderer on synthetic 1080p tower frames built from the real sample images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from endoedge.core.errors import ConfigError
from endoedge.core.labels import BUILTIN_LABELSETS, get_labelset
from endoedge.core.preprocess import FieldROI, full_frame_roi
from endoedge.core.synthetic import TowerLayout, tower_frame
from endoedge.edge.stages.overlay import (
    BUNDLED_FONT,
    BUNDLED_FONT_CHARS,
    GRADE_COLOURS,
    PANELS,
    REPORT_TEXT,
    UI_TEXT,
    Canvas,
    OverlayOptions,
    OverlayRenderer,
    Sprite,
    load_font,
    wrap_text,
)
from endoedge.edge.stages.types import ExamCheck, OverlayState, SiteCell

EGD30 = get_labelset("egd30")


def _renderer(options: dict | None = None) -> OverlayRenderer:
    """A renderer that completes every frame at once (no per-frame build budget), for pixel checks."""
    return OverlayRenderer({"build_budget_ms": 0, **(options or {})})


def _cells(labelset_name: str = "egd30", seen_every: int = 3) -> tuple[SiteCell, ...]:
    labelset = get_labelset(labelset_name)
    return tuple(
        SiteCell(
            key=lb.key,
            name=lb.name,
            name_zh=lb.name_zh,
            region=lb.region,
            view=lb.view,
            required=lb.required and i % 11 != 5,
            observed=i % seen_every == 0,
            seconds=float(i),
        )
        for i, lb in enumerate(labelset.labels)
    )


def _full_state(language: str = "en", label_index: int = 19, confidence: float = 0.87) -> OverlayState:
    label = EGD30.labels[label_index]
    return OverlayState(
        label=label.name,
        label_zh=label.name_zh,
        confidence=confidence,
        coverage=_cells(),
        exam_seconds=192.4,
        exam_checks=(
            ExamCheck("inspection", False, "3:12", 7),
            ExamCheck("sites", False, "10/30"),
            ExamCheck("photos", True, "2/2"),
        ),
        grade="Hemorrhoid 0.93 · LDRf Rf1 0.81",
        grade_zh="内痔 0.93 · LDRf Rf1 中风险 0.81",
        fps_in=30.0,
        infer_ms=11.6,
        language=language,
    )


STATES = {
    "full-en": _full_state("en"),
    "full-zh": _full_state("zh"),
    "no-label": OverlayState(coverage=_cells(), exam_seconds=5.0),
    "ai-off": OverlayState(ai_status="off", message="backend failed to load model.onnx", coverage=_cells()),
    "warming": OverlayState(ai_status="warming", grade="Normal 0.99"),
    "small-set-zh": OverlayState(
        label="Colon polyp", label_zh="结肠息肉", confidence=0.95, coverage=_cells("gastrovision3", 2), language="zh"
    ),
}
LAYOUTS = {
    "octagon-osd": TowerLayout(),
    "round-inset": TowerLayout(shape="round", inset=True),
    "rect-left-field": TowerLayout(field_left=40, shape="rect", osd=False),
    "720p": TowerLayout(width=1280, height=720, field_size=640, field_left=560),
}


@pytest.fixture(scope="module")
def images(sample_images: list[Path]) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sample_images]


def _frame(images: list[np.ndarray], layout: TowerLayout, i: int = 0) -> np.ndarray:
    return tower_frame(images[i % len(images)], layout)


def _inside(roi: FieldROI) -> tuple[slice, slice]:
    return slice(roi.y0, roi.y1), slice(roi.x0, roi.x1)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("state_name", list(STATES))
def test_field_pixels_are_identical_and_osd_is_untouched(images, layout_name, state_name):
    layout, state = LAYOUTS[layout_name], STATES[state_name]
    frame = _frame(images, layout, hash(state_name) % 7)
    original = frame.copy()
    roi = layout.roi()
    renderer = _renderer()
    out = renderer.render(frame, state, roi)
    assert np.array_equal(frame, original), "the input frame was modified"
    assert out.shape == frame.shape and out.dtype == np.uint8
    rows, cols = _inside(roi)
    assert np.array_equal(out[rows, cols], frame[rows, cols]), "a pixel of the endoscopic field changed"
    changed = np.any(out != frame, axis=2)
    assert changed.sum() > 2000, "nothing was drawn"
    # The processor's on-screen text (lit margin pixels) is never covered.
    lit = frame.max(axis=2) > 40
    lit[rows, cols] = False
    assert not (changed & lit).any(), "a panel covers the processor's on-screen text"
    assert renderer.hidden_panels == ()


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_field_is_kept_free_even_without_osd_avoidance(images, layout_name):
    """With lit-pixel avoidance off, only the field rectangle itself keeps panels away."""
    layout = LAYOUTS[layout_name]
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer({"avoid_osd": False})
    out = renderer.render(frame, _full_state(), roi)
    rows, cols = _inside(roi)
    assert np.array_equal(out[rows, cols], frame[rows, cols])
    assert np.any(out != frame)


@pytest.mark.parametrize("avoid_osd", [True, False])
def test_margins_too_narrow_for_panels_leave_the_field_alone(images, avoid_osd):
    layout = TowerLayout(width=1280, height=1080, field_size=960, field_left=160, osd=False)
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer({"avoid_osd": avoid_osd})
    out = renderer.render(frame, _full_state(), roi)
    rows, cols = _inside(roi)
    assert np.array_equal(out[rows, cols], frame[rows, cols])
    assert {"site", "coverage"} <= set(renderer.hidden_panels)


def test_panels_shrink_to_fit_the_narrow_margins_of_an_sxga_processor(images):
    layout = TowerLayout(width=1280, height=1024, field_size=960, field_left=300, shape="round", osd=False)
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer()
    out = renderer.render(frame, _full_state(), roi)
    placed = renderer.layout(frame, _full_state(), roi)
    assert {"site", "coverage"} <= set(placed)
    assert renderer.current_scale < renderer.scale_for(1024)
    assert all(p.x + p.width <= roi.x0 for p in placed.values())
    rows, cols = _inside(roi)
    assert np.array_equal(out[rows, cols], frame[rows, cols])


def test_markers_touch_the_field_only_inside_their_boxes(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer({"field_markers": True})
    out = renderer.render(frame, _full_state(), roi)
    allowed = np.zeros(frame.shape[:2], bool)
    boxes = renderer.marker_rects(roi, frame.shape[0])
    assert len(boxes) == 4
    for x0, y0, x1, y1 in boxes:
        assert roi.x0 <= x0 < x1 <= roi.x1 and roi.y0 <= y0 < y1 <= roi.y1
        allowed[y0:y1, x0:x1] = True
    rows, cols = _inside(roi)
    changed = np.any(out != frame, axis=2)
    inside = np.zeros_like(changed)
    inside[rows, cols] = changed[rows, cols]
    assert inside.any(), "markers were allowed but not drawn"
    assert not (inside & ~allowed).any(), "a marker pixel left its box"
    # Without the option the same state draws nothing on the field.
    plain = _renderer().render(frame, _full_state(), roi)
    assert np.array_equal(plain[rows, cols], frame[rows, cols])


def test_no_room_in_the_margins_hides_panels_instead_of_covering_the_field(images):
    frame = _frame(images, TowerLayout())
    roi = FieldROI(0, 0, frame.shape[1], frame.shape[0], frame.shape[0], frame.shape[1])
    renderer = _renderer()
    out = renderer.render(frame, _full_state(), roi)
    assert np.array_equal(out, frame)
    assert set(renderer.hidden_panels) == {"site", "grade", "exam", "coverage", "status"}


def test_panels_follow_the_on_screen_text_when_it_moves(images):
    layout = TowerLayout(osd=False)
    roi = layout.roi()
    clean = _frame(images, layout)
    renderer = _renderer({"relayout_every": 5})
    state = _full_state()
    first = renderer.layout(clean, state, roi)
    site = first["site"]
    # The processor now shows a menu exactly where the site panel is.
    menu = clean.copy()
    x0, y0, _x1, y1 = site.rect()
    cv2.putText(menu, "MENU", (x0 + 10, (y0 + y1) // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
    for _ in range(6):
        out = renderer.render(menu, state, roi)
    assert renderer.layout(menu, state, roi)["site"] != site
    lit = menu.max(axis=2) > 40
    lit[_inside(roi)] = False
    assert not (np.any(out != menu, axis=2) & lit).any()


def test_unchanged_state_renders_no_new_sprites_and_confidence_changes_are_cheap(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer()
    state = _full_state(confidence=0.80)
    renderer.render(frame, state, roi)
    warm = renderer.cache.renders
    for _ in range(3):
        renderer.render(frame, state, roi)
    assert renderer.cache.renders == warm
    renderer.render(frame, _full_state(confidence=0.81), roi)
    assert renderer.cache.renders == warm + 1  # only the "81%" sprite
    renderer.render(frame, _full_state(confidence=0.80), roi)
    assert renderer.cache.renders == warm + 1


def test_confidence_bar_and_text_reflect_the_value(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer()
    low = renderer.render(frame, _full_state(confidence=0.2), roi)
    high = renderer.render(frame, _full_state(confidence=0.95), roi)
    site = renderer.layout(frame, _full_state(), roi)["site"]
    x0, y0, x1, _y1 = site.rect()
    bar = (slice(y0 + 86, y0 + 96), slice(x0 + 12, x1 - 82))
    green = np.array([90, 200, 90])
    assert (np.all(high[bar] == green, axis=2)).mean() > 0.9
    assert (np.all(low[bar] == green, axis=2)).mean() == 0  # below 80 % the bar is amber
    assert (np.any(low[bar] != high[bar], axis=2)).mean() > 0.5


def test_chinese_labels_render_with_real_glyphs(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer()
    en = renderer.render(frame, _full_state("en"), roi)
    zh = renderer.render(frame, _full_state("zh"), roi)
    site = renderer.layout(frame, _full_state(), roi)["site"]
    x0, y0, x1, _y1 = site.rect()
    assert np.any(en[y0 : y0 + 80, x0:x1] != zh[y0 : y0 + 80, x0:x1])
    # Every Chinese character of the built-in label sets draws a glyph unlike the missing-glyph box.
    font = load_font(32)
    tofu = np.asarray(font.getmask("\U000f0000"))
    for labelset in BUILTIN_LABELSETS.values():
        for label in labelset.labels:
            for ch in label.name_zh.replace(" ", ""):
                mask = np.asarray(font.getmask(ch))
                assert mask.size and mask.max() > 0, f"{ch!r} draws nothing"
                assert mask.shape != tofu.shape or not np.array_equal(mask, tofu), f"{ch!r} draws the missing box"


def test_exam_checks_and_grade_are_worded_in_the_overlay_language(images, monkeypatch):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    drawn: dict[str, list[str]] = {"en": [], "zh": []}
    for language in ("en", "zh"):
        renderer = _renderer()
        original = renderer._text_sprite

        def spy(key, text, *args, _original=original, _drawn=drawn[language], **kwargs):
            _drawn.append(text)
            return _original(key, text, *args, **kwargs)

        monkeypatch.setattr(renderer, "_text_sprite", spy)
        renderer.render(frame, _full_state(language), roi)
    assert "inspection >= 7 min: 3:12 --" in drawn["en"] and "landmarks photographed: 2/2 OK" in drawn["en"]
    assert "观察时间 ≥ 7 分钟: 3:12 --" in drawn["zh"] and "标志部位已拍照: 2/2 OK" in drawn["zh"]
    assert not any("inspection" in text or "observed" in text for text in drawn["zh"])
    # The grade panel shows the Chinese grade names; its risk colour still follows the grade (Rf1).
    renderer = _renderer()
    zh = renderer.render(frame, _full_state("zh"), roi)
    en = renderer.render(frame, _full_state("en"), roi)
    p = renderer.layout(frame, _full_state("zh"), roi)["grade"]
    x0, y0, x1, y1 = p.rect()
    assert np.any(zh[y0:y1, x0:x1] != en[y0:y1, x0:x1])
    stripe = zh[p.y + 16 : p.y + p.height - 16, p.x + 13 : p.x + 16].reshape(-1, 3).astype(int)
    assert (np.abs(stripe - GRADE_COLOURS["Rf1"]).max(axis=1) <= 2).mean() > 0.9


def test_font_subset_covers_label_sets_and_overlay_words():
    covered = set(BUNDLED_FONT_CHARS.read_text(encoding="utf-8").strip("\n"))
    needed = set()
    for labelset in BUILTIN_LABELSETS.values():
        for label in labelset.labels:
            needed |= set(label.name_zh + label.name)
    for table in (UI_TEXT, REPORT_TEXT):  # the report is drawn with the overlay's fonts
        for words in table.values():
            for text in words.values():
                needed |= set(text)
    missing = sorted(needed - covered - {" "})
    assert not missing, f"rebuild the font subset (src/endoedge/edge/stages/fonts/build_subset.py): {missing}"
    fonttools = pytest.importorskip("fontTools.ttLib")
    cmap = fonttools.TTFont(str(BUNDLED_FONT)).getBestCmap()
    assert all(ord(ch) in cmap for ch in covered), "the chars list claims glyphs the font lacks"
    assert BUNDLED_FONT.stat().st_size < 200_000
    licence = (BUNDLED_FONT.parent / "OFL.txt").read_text(encoding="utf-8")
    assert "SIL OPEN FONT LICENSE Version 1.1" in licence and "Adobe" in licence


def test_characters_outside_the_subset_fall_back_to_a_system_font(images):
    renderer = _renderer()
    rare = "龘"  # not in any built-in label set
    assert rare not in BUNDLED_FONT_CHARS.read_text(encoding="utf-8")
    font = renderer.fonts.get(32, rare)
    if Path(font.path) == BUNDLED_FONT:
        pytest.skip("no system CJK font installed (fonts-noto-cjk)")
    assert np.asarray(font.getmask(rare)).max() > 0


def test_no_signal_screen(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    state = OverlayState(signal=False, coverage=_cells(), exam_seconds=61.0)
    out = _renderer().render(frame, state, roi)
    assert out.shape == frame.shape
    rows, cols = _inside(roi)
    # The frame content is gone (no stale image on the monitor) and a big message is centred.
    assert out[rows, cols].mean() < 30
    centre = out[frame.shape[0] // 2 - 80 : frame.shape[0] // 2, frame.shape[1] // 2 - 200 : frame.shape[1] // 2 + 200]
    assert (centre.max(axis=2) > 200).mean() > 0.05


def test_no_signal_on_the_daemons_blank_frame_keeps_coverage_and_timer_visible():
    """The daemon passes a black frame whose ROI is the whole frame; panels go around the message."""
    blank = np.zeros((1080, 1920, 3), np.uint8)
    state = OverlayState(signal=False, coverage=_cells(), exam_seconds=61.0, language="zh")
    renderer = _renderer()
    out = renderer.render(blank, state, full_frame_roi(blank))
    placed = renderer.layout(out, state, full_frame_roi(blank))
    assert {"coverage", "exam"} <= set(placed) and renderer.hidden_panels == ()
    message = renderer._message_box(1920, 1080, 1.0)
    for p in placed.values():
        x0, y0, x1, y1 = p.rect()
        assert x1 <= message.x0 or x0 >= message.x1 or y1 <= message.y0 or y0 >= message.y1


def test_ai_off_banner_is_red(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer()
    state = STATES["ai-off"]
    out = renderer.render(frame, state, roi)
    banner = renderer.layout(frame, state, roi)["banner"]
    x0, y0, x1, y1 = banner.rect()
    patch = out[y0 + 5 : y1 - 5, x0 + 5 : x1 - 5].reshape(-1, 3).astype(int)
    reddish = (patch[:, 2] > 150) & (patch[:, 0] < 80)
    assert reddish.mean() > 0.5
    assert "site" not in renderer.layout(frame, state, roi)


def test_options_are_validated():
    with pytest.raises(ConfigError, match=r"unknown key 'colour'.*valid keys:"):
        OverlayRenderer({"colour": "red"})
    with pytest.raises(ConfigError, match=r"overlay.options.panels: unknown panel 'clock'"):
        OverlayOptions.from_dict({"panels": ["site", "clock"]})
    with pytest.raises(ConfigError, match="overlay.options.side"):
        OverlayOptions.from_dict({"side": "top"})
    with pytest.raises(ConfigError, match="overlay.options.opacity"):
        OverlayOptions.from_dict({"opacity": 2})
    options = OverlayOptions.from_dict({"panels": ["site", "coverage"], "side": "right"})
    assert options.panels == ("site", "coverage") and set(options.panels) <= set(PANELS)


def test_panels_option_limits_what_is_drawn(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer({"panels": ["coverage"]})
    assert set(renderer.layout(frame, _full_state(), roi)) == {"coverage"}


def test_right_side_preference(images):
    layout = TowerLayout(field_left=480, osd=False)
    frame, roi = _frame(images, layout), layout.roi()
    placements = _renderer({"side": "right"}).layout(frame, _full_state(), roi)
    assert placements and all(p.x >= roi.x1 for p in placements.values())


def test_sprite_blit_matches_a_float_reference_and_leaves_transparent_pixels_exact():
    rng = np.random.default_rng(0)
    canvas = Canvas(64, 40)
    canvas.rounded_rect((4, 4, 59, 35), (30, 200, 90), 0.6, radius=6)
    canvas.text((8, 20), "Ab 胃", load_font(20), (240, 240, 240), anchor="lm")
    sprite = canvas.sprite()
    frame = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    out = frame.copy()
    sprite.blit(out, 30, 20)
    alpha = 1 - sprite.inverse_alpha.astype(np.float64) / 255
    region = frame[20:60, 30:94].astype(np.float64)
    expected = region * (1 - alpha) + sprite.premultiplied.astype(np.float64)
    assert np.abs(out[20:60, 30:94].astype(np.float64) - expected).max() <= 1.0
    transparent = alpha[..., 0] == 0
    assert transparent.any()
    assert np.array_equal(out[20:60, 30:94][transparent], frame[20:60, 30:94][transparent])
    outside = np.ones(frame.shape[:2], bool)
    outside[20:60, 30:94] = False
    assert np.array_equal(out[outside], frame[outside])
    # Clipped at the frame edge without error.
    edge = frame.copy()
    sprite.blit(edge, 100, 80)
    sprite.blit(edge, -50, -30)
    assert edge.shape == frame.shape


def test_opaque_sprite_is_copied():
    canvas = Canvas(10, 10)
    canvas.rounded_rect((0, 0, 9, 9), (1, 2, 3), 1.0)
    sprite = canvas.sprite()
    assert isinstance(sprite, Sprite) and sprite.opaque
    frame = np.zeros((20, 20, 3), np.uint8)
    sprite.blit(frame, 5, 5)
    assert (frame[5:15, 5:15] == (1, 2, 3)).all() and frame[:5].max() == 0


def test_wrap_text_fits_width_and_marks_cuts():
    font = load_font(28)
    name = EGD30.labels[19].name
    lines = wrap_text(name, font, 300, max_lines=2)
    assert len(lines) == 2 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 300 for line in lines)
    assert wrap_text("Pylorus", font, 300) == ["Pylorus"]
    zh = wrap_text(EGD30.labels[19].name_zh, font, 120, max_lines=3)
    assert all(font.getlength(line) <= 120 for line in zh) and len(zh) == 3
    assert wrap_text("", font, 100) == []


def test_bad_frame_is_refused():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        _renderer().render(np.zeros((10, 10), np.uint8), OverlayState(), FieldROI(0, 0, 5, 5, 10, 10))


def test_in_place_rendering_draws_on_the_given_frame(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    expected = _renderer().render(frame, _full_state(), roi)
    target = frame.copy()
    result = _renderer().render(target, _full_state(), roi, copy=False)
    assert result is target and np.array_equal(target, expected)


def test_build_budget_spreads_new_sprites_over_frames_and_converges_to_the_full_overlay(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    state = _full_state("zh")
    expected = _renderer().render(frame, state, roi)
    renderer = OverlayRenderer()  # default budget: 1 ms of sprite drawing per frame
    first = renderer.render(frame, state, roi)
    assert not renderer.complete and renderer.deferred > 0
    rows, cols = _inside(roi)
    assert np.array_equal(first[rows, cols], frame[rows, cols])
    frames = 1
    while not renderer.complete and frames < 500:
        out = renderer.render(frame, state, roi)
        frames += 1
    assert renderer.complete and frames > 2
    assert np.array_equal(out, expected)
    built = renderer.cache.renders
    renderer.render(frame, state, roi)
    assert renderer.cache.renders == built and renderer.complete


def test_a_deferred_element_keeps_showing_its_previous_sprite(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = OverlayRenderer({"build_budget_ms": 1e-6})  # one new sprite per frame at most
    state = _full_state()
    for _ in range(300):
        renderer.render(frame, state, roi)
        if renderer.complete:
            break
    assert renderer.complete
    before = renderer.render(frame, state, roi)
    # A new site and a new confidence arrive together: only one of them is drawn this frame.
    changed = _full_state(label_index=3, confidence=0.55)
    after = renderer.render(frame, changed, roi)
    assert renderer.deferred >= 1
    site = renderer.layout(frame, changed, roi)["site"]
    x0, y0, x1, _ = site.rect()
    name_area = (slice(y0 + 6, y0 + 76), slice(x0 + 12, x1 - 12))
    percent_area = (slice(y0 + 78, y0 + 106), slice(x1 - 82, x1 - 12))
    name_changed = np.any(after[name_area] != before[name_area])
    percent_changed = np.any(after[percent_area] != before[percent_area])
    assert name_changed != percent_changed  # one updated now, the other still shows its old sprite
    for _ in range(5):
        settled = renderer.render(frame, changed, roi)
    assert renderer.complete
    assert np.any(settled[name_area] != before[name_area]) and np.any(settled[percent_area] != before[percent_area])


@pytest.mark.parametrize(("grade", "colour"), [("LDRf Rf2 0.77", (40, 40, 210)), ("LDRf Rf0 0.91", (90, 200, 90))])
def test_hemorrhoid_grade_carries_its_risk_colour(images, grade, colour):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer()
    state = OverlayState(grade=f"Hemorrhoid 0.96 · {grade}")
    out = renderer.render(frame, state, roi)
    p = renderer.layout(frame, state, roi)["grade"]
    stripe = out[p.y + 16 : p.y + p.height - 16, p.x + 13 : p.x + 16].reshape(-1, 3)
    assert (np.abs(stripe.astype(int) - colour).max(axis=1) <= 2).mean() > 0.9
    plain = _renderer().render(frame, OverlayState(grade="Normal 0.99"), roi)
    assert not (
        np.abs(plain[p.y + 16 : p.y + p.height - 16, p.x + 13 : p.x + 16].reshape(-1, 3).astype(int) - colour).max(
            axis=1
        )
        <= 2
    ).any()


def test_panels_that_come_and_go_keep_their_slot_without_a_new_layout(images):
    layout = TowerLayout()
    frame, roi = _frame(images, layout), layout.roi()
    renderer = _renderer()
    graded = OverlayState(label="Internal hemorrhoid", confidence=0.9, grade="Hemorrhoid 0.94 · LDRf Rf1 0.80")
    normal = OverlayState(label="Normal", confidence=0.97)
    renderer.render(frame, graded, roi)
    slots = dict(renderer.layout(frame, graded, roi))
    planned = renderer.layouts_planned
    shown_without = renderer.render(frame, normal, roi)
    renderer.render(frame, graded, roi)
    assert renderer.layouts_planned == planned
    assert renderer.layout(frame, graded, roi)["grade"] == slots["grade"]
    renderer.render(frame, OverlayState(ai_status="off", message="backend lost"), roi)  # banner appears
    renderer.render(frame, graded, roi)
    assert renderer.layouts_planned == planned + 1  # only the new banner needed a layout
    # While task A is negative the grade slot shows the untouched input.
    x0, y0, x1, y1 = slots["grade"].rect()
    assert np.array_equal(shown_without[y0:y1, x0:x1], frame[y0:y1, x0:x1])
