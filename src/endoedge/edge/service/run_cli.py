"""``endoedge run``: the edge daemon from a config file, the command line, or both.

Examples::

    endoedge run --config /etc/endoedge/config.yaml
    endoedge run file://clip.mp4 --bundle export/bundles/gastrovision3-efficientnet-lite0 --sink window://
    endoedge run file://clip.mp4 --bundle B --sink null:// --as-fast-as-possible --max-frames 300
    endoedge run --config egd.yaml --set status.port=9000 --set tasks.0.smoothing.method=ema

Command-line options override the config file; ``--set a.b.c=value`` reaches every other field.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from endoedge.core.errors import ConfigError, EndoedgeError
from endoedge.edge.config import (
    BACKEND_NAMES,
    DaemonConfig,
    apply_overrides,
    config_from_dict,
    load_config_data,
    resolve_paths,
    resolve_uri,
)

# Plain logging attributes; anything else passed through ``extra=`` is printed as a field.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."`` lines (the journal keeps its own timestamp too)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record on one line."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        msg = " ".join(record.getMessage().split())
        fields = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}", f"msg={json.dumps(msg)}"]
        for key, value in vars(record).items():
            if key not in _RESERVED:
                fields.append(f"{key}={json.dumps(value, default=str)}")
        if record.exc_info:
            fields.append(f"exc={json.dumps(self.formatException(record.exc_info))}")
        return " ".join(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as JSON."""
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        return json.dumps(data, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Send logs to stdout (systemd puts them in the journal) in logfmt or JSON."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``endoedge run`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run the edge daemon: capture -> AI -> smoothing -> coverage -> overlay -> display.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1] if __doc__ else None,
    )
    p.add_argument("source", nargs="?", help="source URI (v4l2://, file://, images://, gst://, rtsp://)")
    p.add_argument("--config", "-c", type=Path, help="daemon config YAML (see edge/configs/)")
    p.add_argument("--bundle", help="model bundle (replaces the first model's bundle, or creates one model)")
    p.add_argument("--bundle-b", help="second bundle of the hemorrhoid task (LDRf grade)")
    p.add_argument("--task", choices=("egd-coverage", "hemorrhoid"), help="task when no config gives one")
    p.add_argument("--sink", help="sink URI (hdmi://, window://, file://out.mp4, null://)")
    p.add_argument("--backend", choices=BACKEND_NAMES, help="backend of every model")
    p.add_argument("--format", dest="fmt", help="artifact format of every model (e.g. tflite-int8)")
    p.add_argument("--threads", type=int, help="CPU threads of every model's runtime")
    p.add_argument("--loop", action="store_true", default=None, help="replay a file source forever")
    p.add_argument(
        "--as-fast-as-possible", action="store_true", default=None, help="do not pace a file source (benchmarks)"
    )
    p.add_argument("--max-frames", type=int, help="stop after this many displayed frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--status-host", help="status server address (default 127.0.0.1)")
    p.add_argument("--status-port", type=int, help="status server port (0: any free port)")
    p.add_argument("--no-status", action="store_true", help="do not start the status server")
    p.add_argument("--report-dir", help="folder for procedure reports")
    p.add_argument("--state-dir", help="folder for exam checkpoints")
    p.add_argument("--no-state", action="store_true", help="do not checkpoint exam state")
    p.add_argument("--language", choices=("en", "zh"), help="overlay language")
    p.add_argument("--no-overlay", action="store_true", help="pass frames through without overlay")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("logfmt", "json"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")
    return p


def _task_for_bundle(bundle: str) -> str:
    """The task that fits a bundle's manifest (``egd-coverage`` when it cannot be read: refused later)."""
    from endoedge.core.manifest import ModelManifest

    try:
        task = ModelManifest.load(bundle).task
    except EndoedgeError:
        return "egd-coverage"
    return "hemorrhoid" if task == "hemorrhoid" else "egd-coverage"


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    """Merge the config file (if any) and the command-line options into one validated config.

    Raises:
        ConfigError: Invalid file, option or combination.
    """
    where = "command line"
    data: dict[str, Any] = {}
    root = None
    if args.config is not None:
        data, root = load_config_data(args.config)
        where = str(args.config)
    cwd = Path.cwd()

    def absolute(path: str) -> str:
        return str((cwd / path).resolve()) if not Path(path).is_absolute() else path

    sets: list[str] = []
    # URIs and paths given on the command line are relative to the current folder, not the config's.
    if args.source:
        data.setdefault("source", {})["uri"] = resolve_uri(args.source, cwd)
    if args.sink:
        data.setdefault("sink", {})["uri"] = resolve_uri(args.sink, cwd)
    if args.bundle:
        models = data.setdefault("models", [])
        if models:
            models[0]["bundle"] = absolute(args.bundle)
        else:
            models.append({"name": "main", "bundle": absolute(args.bundle)})
        if args.bundle_b:
            if len(models) > 1:
                models[1]["bundle"] = absolute(args.bundle_b)
            else:
                models.append({"name": "grade", "bundle": absolute(args.bundle_b)})
        if not data.get("tasks"):
            kind = args.task or _task_for_bundle(models[0]["bundle"])
            if kind == "hemorrhoid":
                task: dict[str, Any] = {"type": "hemorrhoid", "model_a": models[0]["name"]}
                if len(models) > 1:
                    task["model_b"] = models[1]["name"]
            else:
                task = {"type": "egd-coverage", "model": models[0]["name"]}
            data["tasks"] = [task]
    elif args.bundle_b:
        raise ConfigError("--bundle-b needs --bundle (task A's model)", "command line")
    for model in data.get("models", []) if isinstance(data.get("models"), list) else []:
        if not isinstance(model, dict):
            continue
        if args.backend:
            model["backend"] = args.backend
        if args.fmt:
            model["format"] = args.fmt
        if args.threads:
            model.setdefault("options", {})["threads"] = args.threads
    mapping = {
        "source.loop": args.loop,
        "source.as_fast_as_possible": args.as_fast_as_possible,
        "run.max_frames": args.max_frames,
        "run.duration_s": args.duration,
        "status.host": args.status_host,
        "status.port": args.status_port,
        "status.enabled": False if args.no_status else None,
        "report.dir": absolute(args.report_dir) if args.report_dir else None,
        "state.dir": absolute(args.state_dir) if args.state_dir else None,
        "overlay.language": args.language,
        "overlay.enabled": False if args.no_overlay else None,
        "logging.level": args.log_level,
        "logging.format": args.log_format,
    }
    sets = [f"{key}={json.dumps(value)}" for key, value in mapping.items() if value is not None]
    apply_overrides(data, [*sets, *args.overrides])
    if args.no_state:
        data.setdefault("state", {})["dir"] = None
    if not data.get("models") and not data.get("tasks"):
        raise ConfigError("no model: give --bundle or a --config with models and tasks", "command line")
    config = config_from_dict(data, where, root)
    base = args.config.resolve().parent if args.config is not None else cwd
    return resolve_paths(config, base)


def main(argv: Sequence[str], prog: str = "endoedge run") -> int:
    """Run the daemon until the source ends, a limit is reached, or SIGTERM/SIGINT."""
    args = build_parser(prog).parse_args(list(argv))
    config = config_from_args(args)
    if args.print_config:
        print(config.model_dump_json(indent=2))
        return 0
    setup_logging(config.logging.level, config.logging.format)
    from endoedge.edge.service.daemon import Daemon

    daemon = Daemon(config)
    return daemon.run()
