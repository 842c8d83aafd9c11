"""The daemon's configuration: one YAML file validated with pydantic, with errors at ``file:line``.

Unknown keys are rejected everywhere (``extra="forbid"``). A validation error is reported as one line
naming the file, the line of the offending YAML node and the dotted field, e.g.
``edge/configs/egd.yaml:14: tasks[0].smoothing.threshold: Input should be less than or equal to 1``.
Relative paths (bundles, report and state folders) are resolved against the config file's folder.

Every option can also be set on the command line: ``endoedge run`` maps its common flags onto fields
and ``--set a.b.c=value`` (value parsed as YAML) reaches any other field; see :func:`apply_overrides`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from endoedge.core.errors import ConfigError

_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,39}$"
BACKEND_NAMES = ("auto", "tensorrt", "onnxruntime", "tflite", "savedmodel")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    """Where frames come from (see ``endoedge.edge.video.sources``)."""

    uri: str = Field(default="v4l2:///dev/video0", description="v4l2://, file://, images://, gst://, rtsp://")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to open_source (width, fps, ...)")
    loop: bool = False
    as_fast_as_possible: bool = False
    no_signal_after_s: float = Field(default=0.5, gt=0, le=30, description="no frame this long: 'no signal' screen")
    fallback_fps: float = Field(default=30.0, gt=0, le=240, description="frame rate of the no-signal screen")
    fallback_size: tuple[int, int] = Field(default=(1920, 1080), description="width, height before any frame")
    reconnect_initial_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=10.0, gt=0, le=600)


class SinkConfig(_Strict):
    """Where frames go (see ``endoedge.edge.video.sinks``)."""

    uri: str = Field(default="hdmi://", description="hdmi://, window://, file://out.mp4, null://")
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """One model bundle and the runtime that runs it."""

    name: str = Field(pattern=_NAME)
    bundle: str
    backend: str = "auto"
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="backend options (threads, providers...)")
    timeout_s: float = Field(default=2.0, gt=0, le=120, description="an inference longer than this is a hang")
    warmup_runs: int = Field(default=2, ge=0, le=100)
    restart_initial_s: float = Field(default=1.0, gt=0, le=600)
    restart_max_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {value!r} (valid: {', '.join(BACKEND_NAMES)})")
        return value

    @field_validator("options")
    @classmethod
    def _known_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from endoedge.core.errors import EndoedgeError
        from endoedge.edge.backends import check_backend_options

        backend = info.data.get("backend")
        if backend is None:  # the backend itself was invalid; that error is reported instead
            return value
        try:
            check_backend_options(backend, value)
        except EndoedgeError as exc:
            raise ValueError(exc.message) from None
        return value


class SmoothingConfig(_Strict):
    """Temporal smoothing and display hysteresis (see ``endoedge.edge.stages.smoothing``)."""

    method: Literal["hmm", "ema"] = "hmm"
    half_life_s: float = Field(default=0.3, gt=0, le=30)
    switch_per_s: float = Field(default=0.3, gt=0, lt=1)
    threshold: float = Field(default=0.6, ge=0, le=1)
    min_dwell_s: float = Field(default=0.4, ge=0, le=30)
    min_dwell_frames: int = Field(default=2, ge=1, le=1000)
    clear_after_s: float = Field(default=1.0, ge=0, le=60)
    max_gap_s: float = Field(default=2.0, gt=0, le=600)


class CoverageTaskConfig(_Strict):
    """``egd-coverage``: site recognition with exam coverage over the label set's required sites."""

    type: Literal["egd-coverage"]
    name: str = Field(default="coverage", pattern=_NAME)
    model: str
    labelset: str | None = Field(default=None, description="expected label set name; the bundle is refused otherwise")
    required: list[str] | None = Field(default=None, description="site keys (default: the label set's required sites)")
    outside: list[str] = Field(default_factory=list, description="labels meaning 'outside the body'")
    observe_frames: int = Field(default=3, ge=1, le=10000)
    observe_s: float = Field(default=0.5, ge=0, le=600)
    min_inspection_min: float = Field(default=7.0, ge=0, le=240)
    photo_sites: list[str] | None = None
    photo_from_freeze: bool = Field(default=False, description="count the processor's freeze as a photo")
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)


class HemorrhoidTaskConfig(_Strict):
    """``hemorrhoid``: task A (normal/hemorrhoid), then task B (LDRf grade) only when A is positive."""

    type: Literal["hemorrhoid"]
    name: str = Field(default="hemorrhoid", pattern=_NAME)
    model_a: str
    model_b: str | None = None
    smoothing_a: SmoothingConfig = Field(
        default_factory=lambda: SmoothingConfig(method="ema", threshold=0.5, min_dwell_s=0.3)
    )
    smoothing_b: SmoothingConfig = Field(
        default_factory=lambda: SmoothingConfig(method="ema", threshold=0.5, min_dwell_s=0.3)
    )


TaskConfig = Annotated[CoverageTaskConfig | HemorrhoidTaskConfig, Field(discriminator="type")]


class ExamConfig(_Strict):
    """When an exam starts and ends (intubation/extubation), besides ``POST /exam/start|end``."""

    auto_start: bool = True
    auto_end: bool = True
    start_after_s: float = Field(default=1.0, ge=0, le=600)
    end_after_s: float = Field(default=15.0, gt=0, le=3600)
    driver: str | None = Field(default=None, description="task whose site decisions drive the exam clock")


class OverlayConfig(_Strict):
    """What the overlay draws; ``options`` go to the renderer unchanged."""

    enabled: bool = True
    language: Literal["en", "zh"] = "en"
    options: dict[str, Any] = Field(default_factory=dict)


class StatusConfig(_Strict):
    """The status HTTP server."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535, description="0 picks a free port")
    token: str | None = Field(default=None, min_length=16)
    token_file: str | None = None
    max_body_bytes: int = Field(default=4096, ge=0, le=1 << 20)
    rate_per_s: float = Field(default=5.0, gt=0, le=10000, description="requests per second per client")
    burst: int = Field(default=20, ge=1, le=100000)

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        if value in ("localhost", ""):
            return "127.0.0.1" if value == "" else value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address (use 127.0.0.1, 0.0.0.0 or an interface address)"
            ) from None
        return value

    @property
    def loopback(self) -> bool:
        """Whether the server listens on the loopback interface only."""
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback

    @model_validator(mode="after")
    def _token_when_exposed(self) -> StatusConfig:
        if self.enabled and not self.loopback and not (self.token or self.token_file):
            raise ValueError(f"binding to {self.host} needs a token or token_file for POST requests")
        return self


class ReportConfig(_Strict):
    """The procedure report written at the end of each exam."""

    dir: str = "reports"
    png: bool = True
    include_frames: bool = Field(default=False, description="save video frames (they carry the processor's OSD!)")
    max_frames: int = Field(default=30, ge=0, le=1000, description="frames kept per exam when include_frames")


class StateConfig(_Strict):
    """Exam-state checkpoints (recovery after a crash or power loss)."""

    dir: str | None = "state"
    checkpoint_every_s: float = Field(default=2.0, gt=0, le=600)
    resume_within_s: float = Field(default=600.0, ge=0, le=86400, description="resume a checkpoint younger than this")


class LoggingConfig(_Strict):
    """Log output (stdout/journal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"


class RunConfig(_Strict):
    """Limits for tests, demos and benchmarks, and how the daemon shares the CPU."""

    max_frames: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    watchdog: bool = Field(default=True, description="send WATCHDOG=1 when systemd asks for it")
    inference_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description="nice increment of the inference threads (and the runtime pools they create) so the "
        "display path gets the CPU first; 0 = same priority",
    )
    ai_pacing: Literal["throughput", "fresh"] = Field(
        default="throughput",
        description="throughput: a model slower than a frame runs back to back on the newest prepared frame "
        "(most inferences per second); fresh: it waits for a frame captured after it finished, so results "
        "reach the screen sooner (about half a frame) at the cost of idle time",
    )
    gil_switch_ms: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="Python's thread switch interval while the daemon runs (default Python: 5 ms, which "
        "lets a busy worker hold the display loop for up to 5 ms)",
    )


class DaemonConfig(_Strict):
    """The whole daemon configuration."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    tasks: list[TaskConfig] = Field(default_factory=list)
    exam: ExamConfig = Field(default_factory=ExamConfig)
    overlay: OverlayConfig = Field(default_factory=OverlayConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _references(self) -> DaemonConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model name {duplicates[0]!r} is used twice")
        task_names = [t.name for t in self.tasks]
        dup_tasks = sorted({n for n in task_names if task_names.count(n) > 1})
        if dup_tasks:
            raise ValueError(f"task name {dup_tasks[0]!r} is used twice (give each task a name)")
        for task in self.tasks:
            refs = [task.model] if isinstance(task, CoverageTaskConfig) else [task.model_a, task.model_b]
            for ref in refs:
                if ref is not None and ref not in names:
                    raise ValueError(f"task {task.name!r} uses model {ref!r}, which is not in models ({names})")
        if self.exam.driver is not None and self.exam.driver not in task_names:
            raise ValueError(f"exam.driver {self.exam.driver!r} is not a task name ({task_names})")
        return self

    def model(self, name: str) -> ModelConfig:
        """The model entry called ``name``."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


# ----------------------------------------------------------------------------------------------------
# Loading with located errors
# ----------------------------------------------------------------------------------------------------


def _check_duplicate_keys(node: yaml.Node, where: str, visited: set[int] | None = None) -> None:
    """PyYAML keeps the last of duplicate keys silently; a config with two ``port:`` lines is an error."""
    # Aliases make the tree a graph: visit each node once, or a "billion laughs" file takes for ever.
    visited = set() if visited is None else visited
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("mapping keys must be plain names", f"{where}:{key_node.start_mark.line + 1}")
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} (first at line {seen[key]})", f"{where}:{key_node.start_mark.line + 1}"
                )
            seen[key] = key_node.start_mark.line + 1
            _check_duplicate_keys(value_node, where, visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, where, visited)


def _node_at(root: yaml.Node | None, loc: Sequence[int | str]) -> tuple[yaml.Node | None, bool]:
    """The YAML node at a pydantic error location (deepest existing node), and whether it was a key."""
    node = root
    is_key = False
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    node, is_key = value_node, False
                    break
            else:
                # Discriminator tags (e.g. 'egd-coverage') appear in loc but not in the document.
                continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
    return node, is_key


def _key_node(root: yaml.Node | None, loc: Sequence[int | str]) -> yaml.Node | None:
    """For an unknown key: the key node itself (so the line is the key's line)."""
    parent, _ = _node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key_node, _value in parent.value:
            if key_node.value == str(loc[-1]):
                return key_node
    return parent


def _field_path(loc: Iterable[int | str], tags: Iterable[str] = ("egd-coverage", "hemorrhoid")) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in tags:
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _message(error: Any) -> str:
    msg = str(error.get("msg", "invalid"))
    msg = re.sub(r"^Value error, ", "", msg)
    if error.get("type") == "extra_forbidden":
        return "unknown key"
    if error.get("type") == "missing":
        return "missing required field"
    return msg


def config_from_dict(data: Any, where: str = "config", root: yaml.Node | None = None) -> DaemonConfig:
    """Validate a decoded config; the first error becomes a one-line :class:`ConfigError`.

    Args:
        data: The decoded YAML (a mapping).
        where: File name for messages.
        root: The composed YAML tree, to give line numbers.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", where)
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first.get("loc", ()))
        node = _key_node(root, loc) if first.get("type") == "extra_forbidden" else _node_at(root, loc)[0]
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{_field_path(loc)}: {_message(first)}{extra}", f"{where}{line}") from None


def parse_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text into (data, node tree), refusing duplicate keys; errors name ``where:line``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _check_duplicate_keys(root, where)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML: {exc.problem or exc}", f"{where}{line}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {' '.join(str(exc).split())}", where) from None
    except (ValueError, RecursionError) as exc:  # integers beyond 4300 digits; nesting too deep
        raise ConfigError(f"not valid YAML: {str(exc).split(';')[0]}", where) from None
    return data, root


def load_config_data(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """Read a config file into raw data (not yet validated) and its YAML tree."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", file) from None
    except UnicodeDecodeError:
        raise ConfigError("config is not UTF-8 text", file) from None
    data, root = parse_yaml(text, str(file))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", file)
    return data, root


def resolve_paths(config: DaemonConfig, base: Path) -> DaemonConfig:
    """Make relative bundle/report/state/token paths absolute against ``base`` (the config's folder)."""

    def fix(value: str) -> str:
        return value if Path(value).is_absolute() else str((base / value).resolve())

    config.source.uri = resolve_uri(config.source.uri, base)
    config.sink.uri = resolve_uri(config.sink.uri, base)

    for model in config.models:
        model.bundle = fix(model.bundle)
    config.report.dir = fix(config.report.dir)
    if config.state.dir is not None:
        config.state.dir = fix(config.state.dir)
    if config.status.token_file is not None:
        config.status.token_file = fix(config.status.token_file)
    return config


def resolve_uri(uri: str, base: Path) -> str:
    """Make the path of a relative ``file://`` or ``images://`` URI absolute against ``base``."""
    for scheme in ("file://", "images://"):
        if uri.startswith(scheme):
            target, sep, query = uri[len(scheme) :].partition("?")
            if target and not Path(target).is_absolute():
                return f"{scheme}{(base / target).resolve()}{sep}{query}"
    return uri


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DaemonConfig:
    """Load, override (``a.b=value``) and validate a config file, resolving relative paths.

    Raises:
        ConfigError: ``file:line: field: problem`` (or ``--set a.b: problem`` for an override).
    """
    file = Path(path)
    data, root = load_config_data(file)
    if overrides:
        apply_overrides(data, overrides)
    config = config_from_dict(data, str(file), root)
    return resolve_paths(config, file.resolve().parent)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` overrides (value parsed as YAML; list items by index) in place.

    Raises:
        ConfigError: Malformed override, or a path through a non-container.
    """
    for item in overrides:
        where = f"--set {item.split('=', 1)[0]}"
        if "=" not in item:
            raise ConfigError("expected KEY=VALUE (e.g. status.port=9000)", where)
        path, raw = item.split("=", 1)
        parts = [p for p in path.strip().split(".") if p]
        if not parts:
            raise ConfigError("empty key", where)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or beyond its limits): a string
            value = raw
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) > len(node):
                    raise ConfigError(f"{part!r} is not an index of a {len(node)}-item list", where)
                index = int(part)
                if index == len(node):
                    node.append({})
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if parts[i + 1].isdigit() else {})
            else:
                raise ConfigError(f"cannot set {part!r} inside a {type(node).__name__}", where)
    return data


def example_config() -> DaemonConfig:
    """A valid config for documentation: one coverage model, loopback status, default paths."""
    return DaemonConfig.model_validate(
        {
            "models": [{"name": "sites", "bundle": "/var/lib/endoedge/bundles/current"}],
            "tasks": [{"type": "egd-coverage", "model": "sites"}],
        }
    )
