"""The one preprocessing implementation: training, calibration, parity benchmarks and the daemon use it.

Conventions:
    * Frames and images enter as OpenCV arrays: ``uint8``, ``H×W×3``, **BGR**.
    * :class:`PreprocessSpec` (stored in every model manifest) says how a model wants its input:
      size, interpolation, resize mode, channel order, normalisation, layout, whether to crop the
      endoscopic field first.
    * :func:`prepare_pixels` does the geometric part and returns ``uint8`` pixels in the model's
      channel order (what a full-integer TFLite model with ``uint8`` input consumes directly);
      :func:`normalize` turns pixels into the float tensor of the backbone family.

The endoscopic field: a video processor's HDMI output is a black frame holding the lit, round or
octagonal endoscopic image plus on-screen text (patient name, date, settings) and sometimes insets.
:func:`detect_field` finds the largest lit region after a morphological opening that erases thin text
strokes; :class:`FieldDetector` caches that region while the geometry is stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from endoedge.core.errors import DatasetError, ManifestError
from endoedge.core.schema import check_keys, expect_choice, expect_finite, expect_type

INTERPOLATIONS: Mapping[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
RESIZE_MODES = ("stretch", "letterbox", "center_crop")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NHWC", "NCHW")

#: Per-channel (mean, std) in 0–255 pixel units, in **RGB** order, for each backbone family.
#: ``inception``: [-1, 1] (Inception, Xception, EfficientNetV2 without its own rescaling, ViT here);
#: ``caffe``: ImageNet mean subtraction without scaling (Keras ResNet50 v1, VGG; use BGR channel order);
#: ``torch``: ImageNet mean/std after /255; ``unit``: [0, 1]; ``raw``: 0–255 floats (the model
#: normalises inside, e.g. Keras MobileNetV3 and EfficientNetV2 with ``include_preprocessing``).
NORMALIZATIONS: Mapping[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "inception": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "caffe": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "torch": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    # EfficientNet-Lite's (x - 127) / 128 (Google's reference preprocessing for the Lite family).
    "lite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "raw": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input. Stored in the model manifest; backends read it from there only.

    Attributes:
        height: Input height in pixels.
        width: Input width in pixels.
        channel_order: ``RGB`` or ``BGR`` order of the model's input channels.
        normalization: A key of :data:`NORMALIZATIONS` or ``custom`` (then ``mean``/``std`` are used).
        mean: Per-channel mean in 0–255 units, in the model's channel order (filled from the family).
        std: Per-channel std in 0–255 units, in the model's channel order.
        interpolation: A key of :data:`INTERPOLATIONS`.
        resize: ``stretch`` (ignore aspect), ``letterbox`` (pad with black) or ``center_crop``.
        layout: ``NHWC`` or ``NCHW``.
        field_crop: Crop to the detected endoscopic field before resizing.
    """

    height: int
    width: int
    channel_order: str = "RGB"
    normalization: str = "raw"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "area"
    resize: str = "stretch"
    layout: str = "NHWC"
    field_crop: bool = True

    @classmethod
    def for_family(cls, normalization: str, height: int, width: int | None = None, **kwargs: Any) -> PreprocessSpec:
        """Build a spec for a backbone family, filling mean/std in the right channel order.

        Args:
            normalization: A key of :data:`NORMALIZATIONS`.
            height: Input height.
            width: Input width (defaults to ``height``).
            **kwargs: Other :class:`PreprocessSpec` fields.
        """
        if normalization not in NORMALIZATIONS:
            valid = ", ".join(NORMALIZATIONS)
            raise ManifestError(f"unknown normalization {normalization!r} (valid: {valid}, custom)")
        order = kwargs.get("channel_order", "BGR" if normalization == "caffe" else "RGB")
        kwargs["channel_order"] = order
        mean_rgb, std_rgb = NORMALIZATIONS[normalization]
        mean, std = (mean_rgb[::-1], std_rgb[::-1]) if order == "BGR" else (mean_rgb, std_rgb)
        return cls(height=height, width=width or height, normalization=normalization, mean=mean, std=std, **kwargs)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    def input_shape(self, batch: int | None = None) -> tuple[int | None, int, int, int]:
        """The model input shape for ``batch`` images in this spec's layout."""
        if self.layout == "NCHW":
            return (batch, 3, self.height, self.width)
        return (batch, self.height, self.width, 3)

    def to_dict(self) -> dict[str, Any]:
        """Serialise for the manifest."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "preprocess") -> PreprocessSpec:
        """Validate and build a spec from its manifest form.

        Raises:
            ManifestError: Naming the field at fault.
        """
        names = [f.name for f in cls.__dataclass_fields__.values()]
        obj = check_keys(data, allowed=names, required=("height", "width"), where=where, error=ManifestError)
        for dim in ("height", "width"):
            value = expect_type(obj[dim], int, f"{where}.{dim}", ManifestError)
            if not 8 <= value <= 4096:
                raise ManifestError(f"{value} is outside 8..4096", f"{where}.{dim}")
        kwargs: dict[str, Any] = {"height": obj["height"], "width": obj["width"]}
        choices = {
            "channel_order": CHANNEL_ORDERS,
            "normalization": (*NORMALIZATIONS, "custom"),
            "interpolation": tuple(INTERPOLATIONS),
            "resize": RESIZE_MODES,
            "layout": LAYOUTS,
        }
        for key, options in choices.items():
            if key in obj:
                kwargs[key] = expect_choice(obj[key], options, f"{where}.{key}", ManifestError)
        if "field_crop" in obj:
            kwargs["field_crop"] = expect_type(obj["field_crop"], bool, f"{where}.field_crop", ManifestError)
        for key in ("mean", "std"):
            if key in obj:
                values = expect_type(obj[key], list | tuple, f"{where}.{key}", ManifestError)
                if len(values) != 3:
                    raise ManifestError(f"expected 3 values, got {len(values)}", f"{where}.{key}")
                floats = tuple(expect_finite(v, f"{where}.{key}", ManifestError) for v in values)
                if key == "std" and min(floats) <= 0:
                    raise ManifestError("std values must be > 0", f"{where}.{key}")
                kwargs[key] = floats
        spec = cls(**kwargs)
        if spec.normalization != "custom" and ("mean" not in obj or "std" not in obj):
            family = cls.for_family(spec.normalization, spec.height, spec.width, channel_order=spec.channel_order)
            spec = replace(spec, mean=family.mean, std=family.std)
        return spec


# --------------------------------------------------------------------------------------------------
# Endoscopic field detection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldParams:
    """Tuning of :func:`detect_field`.

    Attributes:
        dark_threshold: A pixel is lit when its brightest channel exceeds this (0–255).
        min_area_fraction: The field must cover at least this fraction of the frame.
        text_kernel_fraction: Opening kernel size as a fraction of the frame's short side; strokes of
            on-screen text thinner than this vanish before the search.
        analysis_width: Frames are downscaled to this width for detection (speed).
    """

    dark_threshold: int = 24
    min_area_fraction: float = 0.08
    text_kernel_fraction: float = 0.03
    analysis_width: int = 320


@dataclass(frozen=True)
class FieldROI:
    """A rectangle ``[x0, x1) × [y0, y1)`` in frame pixels, and the shape of the frame it belongs to."""

    x0: int
    y0: int
    x1: int
    y1: int
    frame_height: int
    frame_width: int

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.y1 - self.y0

    def iou(self, other: FieldROI) -> float:
        """Intersection over union with another ROI."""
        ix = max(0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union else 0.0

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``."""
        return (self.x0, self.y0, self.x1, self.y1)


def full_frame_roi(frame: np.ndarray) -> FieldROI:
    """The ROI covering the whole frame."""
    h, w = frame.shape[:2]
    return FieldROI(0, 0, w, h, h, w)


def _lit_mask_small(frame: np.ndarray, params: FieldParams) -> tuple[np.ndarray, float]:
    """Lit-pixel mask at analysis resolution, with text strokes opened away; returns (mask, scale)."""
    h, w = frame.shape[:2]
    scale = min(1.0, params.analysis_width / float(w))
    small = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    brightest = small.max(axis=2) if small.ndim == 3 else small
    lit = (brightest > params.dark_threshold).astype(np.uint8) * 255
    k = max(3, round(min(small.shape[:2]) * params.text_kernel_fraction) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    # Opening removes thin OSD text strokes; closing then fills the dark lumen's small gaps.
    lit = cv2.morphologyEx(lit, cv2.MORPH_OPEN, kernel)
    return cv2.morphologyEx(lit, cv2.MORPH_CLOSE, kernel), scale


def field_mask(frame: np.ndarray, params: FieldParams = FieldParams()) -> np.ndarray:
    """Return a ``uint8`` mask (255 = lit) of the frame's endoscopic field candidates, text removed."""
    h, w = frame.shape[:2]
    lit, _ = _lit_mask_small(frame, params)
    return cv2.resize(lit, (w, h), interpolation=cv2.INTER_NEAREST)


def detect_field(frame: np.ndarray, params: FieldParams = FieldParams()) -> FieldROI | None:
    """Find the lit endoscopic field in a full capture frame.

    Args:
        frame: ``uint8`` BGR (or grayscale) frame.
        params: Detection tuning.

    Returns:
        The bounding box of the largest lit region, or ``None`` when no region is large enough
        (a dark or no-signal frame, the scope outside the body in a dark room...).
    """
    if frame.ndim not in (2, 3) or frame.size == 0:
        return None
    h, w = frame.shape[:2]
    lit, scale = _lit_mask_small(frame, params)
    count, _, stats, _ = cv2.connectedComponentsWithStats(lit, connectivity=8)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = 1 + int(np.argmax(areas))
    if areas[best - 1] < params.min_area_fraction * lit.shape[0] * lit.shape[1]:
        return None
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    inv = 1.0 / scale
    x0 = max(0, int(np.floor(x * inv)))
    y0 = max(0, int(np.floor(y * inv)))
    x1 = min(w, int(np.ceil((x + bw) * inv)))
    y1 = min(h, int(np.ceil((y + bh) * inv)))
    return FieldROI(x0, y0, x1, y1, h, w)


@dataclass
class FieldDetector:
    """Detects the endoscopic field and caches it while the tower's geometry is stable.

    Detection runs on the first frame, every ``redetect_every`` frames, and whenever the frame size
    changes. A new detection only replaces the cached ROI when it differs noticeably (IoU below
    ``stable_iou``), so the crop does not jitter with the image content. Dark frames keep the last
    good ROI.

    Attributes:
        params: Detection tuning.
        redetect_every: Frames between re-detections.
        stable_iou: IoU above which a new detection counts as the same geometry.
    """

    params: FieldParams = field(default_factory=FieldParams)
    redetect_every: int = 30
    stable_iou: float = 0.9
    roi: FieldROI | None = None
    _since: int = 0
    detections: int = 0

    def __call__(self, frame: np.ndarray) -> FieldROI:
        """Return the ROI for this frame (the whole frame when nothing was ever detected)."""
        h, w = frame.shape[:2]
        shape_changed = self.roi is None or (self.roi.frame_height, self.roi.frame_width) != (h, w)
        if shape_changed or self._since >= self.redetect_every:
            self._since = 0
            self.detections += 1
            found = detect_field(frame, self.params)
            if found is not None and (shape_changed or self.roi is None or found.iou(self.roi) < self.stable_iou):
                self.roi = found
            elif found is None and shape_changed:
                self.roi = None
        self._since += 1
        return self.roi if self.roi is not None else full_frame_roi(frame)


# --------------------------------------------------------------------------------------------------
# Geometry and normalisation
# --------------------------------------------------------------------------------------------------


def _resize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    interp = INTERPOLATIONS[spec.interpolation]
    h, w = image.shape[:2]
    if spec.resize == "stretch":
        return cv2.resize(image, (spec.width, spec.height), interpolation=interp)
    if spec.resize == "center_crop":
        scale = max(spec.width / w, spec.height / h)
        resized = cv2.resize(
            image, (max(spec.width, round(w * scale)), max(spec.height, round(h * scale))), interpolation=interp
        )
        top = (resized.shape[0] - spec.height) // 2
        left = (resized.shape[1] - spec.width) // 2
        return resized[top : top + spec.height, left : left + spec.width]
    scale = min(spec.width / w, spec.height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    canvas = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
    top, left = (spec.height - nh) // 2, (spec.width - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return canvas


def prepare_pixels(frame: np.ndarray, spec: PreprocessSpec, roi: FieldROI | None = None) -> np.ndarray:
    """Crop (to ``roi`` or the detected field), resize and reorder channels.

    Args:
        frame: ``uint8`` BGR frame (``H×W×3``); grayscale and BGRA frames are converted.
        spec: The model's preprocessing spec.
        roi: The field to crop to; when ``None`` and ``spec.field_crop`` is set, it is detected here.

    Returns:
        ``uint8`` array ``spec.height × spec.width × 3`` in ``spec.channel_order``.
    """
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    elif frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 frame, got shape {frame.shape}")
    if spec.field_crop:
        if roi is None:
            roi = detect_field(frame)
        if roi is not None:
            frame = frame[roi.y0 : roi.y1, roi.x0 : roi.x1]
    pixels = _resize(frame, spec)
    if spec.channel_order == "RGB":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(pixels)


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn ``uint8`` pixels (``H×W×3`` or ``N×H×W×3``, model channel order) into the model's float input.

    Returns:
        ``float32`` array; a batch axis is added for a single image; ``NCHW`` when the spec says so.
    """
    batch = pixels[None] if pixels.ndim == 3 else pixels
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    out = (batch.astype(np.float32) - mean) * inv_std
    if spec.layout == "NCHW":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocess(frame: np.ndarray, spec: PreprocessSpec, roi: FieldROI | None = None) -> np.ndarray:
    """:func:`prepare_pixels` then :func:`normalize`: one frame to a ``1×…`` float32 model input."""
    return normalize(prepare_pixels(frame, spec, roi), spec)


def preprocess_batch(frames: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess several frames (each with its own field detection) into one float32 batch."""
    return normalize(np.stack([prepare_pixels(f, spec) for f in frames]), spec)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8`` BGR.

    Raises:
        DatasetError: The file is missing or cannot be decoded; the message names it.
    """
    file = Path(path)
    try:
        data = np.fromfile(file, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"cannot read image: {exc.strerror or exc}", file) from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DatasetError("not a decodable image (corrupt or unsupported format)", file)
    return image


def load_pixels(paths: Iterable[str | Path], spec: PreprocessSpec) -> np.ndarray:
    """Read and prepare images into a ``uint8`` ``N×H×W×3`` batch (model channel order)."""
    return np.stack([prepare_pixels(read_image(p), spec) for p in paths])
