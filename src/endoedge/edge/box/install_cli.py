"""``endoedge install``: install/uninstall the systemd service; build TensorRT engines on the box.

Usage::

    sudo endoedge install [--bundle B] [--wheel W] [--defer-engine-build] [--dry-run] [--prefix DIR]
    sudo endoedge install uninstall [--purge] [--dry-run] [--prefix DIR]
    endoedge install status [--prefix DIR] [--json]
    endoedge install engine [--config FILE | --bundle B] [--format trt-fp16|trt-int8] [--rebuild] ...

``systemd/install.sh`` and ``systemd/uninstall.sh`` are thin wrappers around the first two. The
``engine`` action is what the installer runs before enabling the service, what the unit's
``ExecStartPre=`` runs at each start (a cache hit takes a second), and what a technician runs after a
failed build.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from endoedge.core.errors import EndoedgeError, MissingDependencyError
from endoedge.edge.box.install import CACHE, CONFIG, Installer, InstallOptions

ENGINE_FORMATS = ("trt-fp16", "trt-int8")


def _root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix",
        "--destdir",
        dest="root",
        type=Path,
        default=Path(os.environ.get("DESTDIR") or "/"),
        help="install into DIR as if it were / (testing, image building); user creation and systemctl are "
        "printed, not run (default: $DESTDIR or /)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print every step, change nothing")


def install_parser(prog: str) -> argparse.ArgumentParser:
    """Options of ``endoedge install``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Install endoedge as a systemd service (idempotent; run again to upgrade). "
        "Other actions: 'uninstall', 'engine', 'status' (see '%(prog)s ACTION --help').",
    )
    _root_arg(parser)
    parser.add_argument("--source", type=Path, help="endoedge source tree (default: the one this file is in)")
    parser.add_argument("--wheel", type=Path, help="install this endoedge wheel instead of the source tree")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="model bundle (folder or .tar) to install and make current "
        "(default: the source tree's export/bundles/gastrovision3-efficientnet-lite0)",
    )
    parser.add_argument("--no-bundle", action="store_true", help="install no bundle (upgrade the program only)")
    parser.add_argument("--python", default="/usr/bin/python3", help="Python the venv is made from (>= 3.10)")
    parser.add_argument("--use-venv", type=Path, help="use this existing environment instead of making one")
    parser.add_argument(
        "--defer-engine-build",
        action="store_true",
        help="do not build the TensorRT engine now; the service builds it at its first start",
    )
    parser.add_argument("--no-start", action="store_true", help="enable the service but do not (re)start it")
    parser.add_argument("--pip-arg", action="append", default=[], help="extra pip install argument (repeatable)")
    parser.add_argument("--constraints", type=Path, help="pip constraints file with pinned versions")
    return parser


def uninstall_parser(prog: str) -> argparse.ArgumentParser:
    """Options of ``endoedge install uninstall``."""
    parser = argparse.ArgumentParser(
        prog=f"{prog} uninstall",
        description="Remove the service and the program; config, bundles, reports and the engine cache stay "
        "unless --purge.",
    )
    _root_arg(parser)
    parser.add_argument("--purge", action="store_true", help="also remove config, bundles, reports, cache and user")
    return parser


def engine_parser(prog: str) -> argparse.ArgumentParser:
    """Options of ``endoedge install engine``."""
    parser = argparse.ArgumentParser(
        prog=f"{prog} engine",
        description="Build (or find in the cache) the TensorRT engine of each TensorRT-capable model: those of "
        "the daemon config (backend auto or tensorrt), or of one --bundle.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help=f"daemon config (default {CONFIG} when --bundle is not given)")
    source.add_argument("--bundle", type=Path, help="build for this bundle instead of the config's models")
    parser.add_argument("--format", choices=ENGINE_FORMATS, help="engine format (default: int8 if the bundle has it)")
    parser.add_argument(
        "--cache", type=Path, help=f"engine cache folder (default: the model's engine_cache or {CACHE})"
    )
    parser.add_argument("--workspace-mib", type=int, help="builder workspace limit in MiB (default 1024)")
    parser.add_argument("--dla-core", type=int, help="build for this DLA core (Orin AGX/NX) with GPU fallback")
    parser.add_argument("--max-batch", type=int, help="largest batch of the optimisation profile (default 1)")
    parser.add_argument("--rebuild", action="store_true", help="build even when a valid engine is cached")
    parser.add_argument(
        "--skip-without-tensorrt",
        action="store_true",
        help="exit successfully when TensorRT is not installed (the service then uses ONNX Runtime or LiteRT)",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="resolve the config's absolute paths under DIR")
    return parser


def main(argv: Sequence[str], prog: str = "endoedge install") -> int:
    """Entry point of ``endoedge install``."""
    args = list(argv)
    if args and args[0] == "engine":
        return engine_main(args[1:], prog)
    if args and args[0] == "status":
        return status_main(args[1:], prog)
    if args and args[0] == "uninstall":
        opts = uninstall_parser(prog).parse_args(args[1:])
        _require_root_for_real_install(opts.root, opts.dry_run)
        Installer(InstallOptions(root=opts.root, dry_run=opts.dry_run)).uninstall(purge=opts.purge)
        return 0
    opts = install_parser(prog).parse_args(args)
    _require_root_for_real_install(opts.root, opts.dry_run)
    options = InstallOptions(
        root=opts.root,
        source=opts.source,
        wheel=opts.wheel,
        bundle=opts.bundle,
        no_bundle=opts.no_bundle,
        python=opts.python,
        use_venv=opts.use_venv,
        defer_engine_build=opts.defer_engine_build,
        dry_run=opts.dry_run,
        start=not opts.no_start,
        pip_args=list(opts.pip_arg),
        constraints=opts.constraints,
    )
    Installer(options).install()
    return 0


def _require_root_for_real_install(root: Path, dry_run: bool) -> None:
    if root.resolve() == Path("/") and not dry_run and os.geteuid() != 0:
        raise EndoedgeError("changing / needs root: run it with sudo (or use --dry-run/--prefix)")


def _under(root: Path, path: str | Path) -> Path:
    p = Path(path)
    return root / p.relative_to("/") if p.is_absolute() and root != Path("/") else p


def engine_targets(opts: argparse.Namespace) -> list[tuple[str, Path, str | None, dict[str, Any]]]:
    """``(model name, bundle path, format or None, backend options)`` for each model to build."""
    if opts.bundle is not None:
        return [(opts.bundle.name, opts.bundle, opts.format, {})]
    from endoedge.edge.config import load_config

    config_file = opts.config or _under(opts.root, CONFIG)
    config = load_config(config_file)
    targets = []
    for model in config.models:
        if model.backend not in ("auto", "tensorrt"):
            continue
        fmt = opts.format or (model.format if model.format in ENGINE_FORMATS else None)
        targets.append((model.name, _under(opts.root, model.bundle), fmt, dict(model.options)))
    return targets


def engine_main(argv: Sequence[str], prog: str) -> int:
    """``endoedge install engine``: build or confirm the engines, logging progress to stdout (the journal)."""
    opts = engine_parser(prog).parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    from endoedge.edge.box.trt_engine import import_tensorrt

    try:
        trt = import_tensorrt()
    except MissingDependencyError as exc:
        if opts.skip_without_tensorrt:
            print(f"TensorRT is not available here, no engine to build ({exc.message.split(';')[0]})")
            return 0
        raise
    from endoedge.core.bundle import open_bundle
    from endoedge.core.errors import BundleError
    from endoedge.edge.backends import choose_format
    from endoedge.edge.box.trt_engine import BuildOptions, ensure_engine

    targets = engine_targets(opts)
    if not targets:
        print("no model uses the tensorrt or auto backend: nothing to build")
        return 0
    for name, bundle_path, fmt, options in targets:
        # Checksums: the ONNX is verified before a build, a cached engine against its sidecar; skipping
        # the whole-bundle hash keeps every service start (ExecStartPre) fast.
        bundle = open_bundle(bundle_path, verify=False)
        try:
            chosen = fmt or choose_format("tensorrt", bundle.manifest)
        except BundleError as exc:
            if opts.bundle is None and opts.format is None:
                print(f"{name}: skipped, TensorRT cannot run this bundle ({exc.message})")
                continue
            raise
        build = BuildOptions(
            workspace_mib=int(opts.workspace_mib or options.get("workspace_mib") or 1024),
            dla_core=opts.dla_core if opts.dla_core is not None else options.get("dla_core"),
            max_batch=int(opts.max_batch or options.get("max_batch") or 1),
            opt_batch=int(opts.max_batch or options.get("max_batch") or 1),
            optimization_level=options.get("optimization_level"),
        )
        cache = opts.cache or _under(opts.root, options.get("engine_cache") or CACHE)
        engine = ensure_engine(bundle, chosen, cache_dir=cache, options=build, trt=trt, rebuild=opts.rebuild)
        how = f"built in {engine.build_seconds:.1f} s" if engine.built else "cached, valid for this GPU"
        print(f"{name}: {chosen} engine {engine.path} ({how})")
    return 0


def status_parser(prog: str) -> argparse.ArgumentParser:
    """Options of ``endoedge install status``."""
    parser = argparse.ArgumentParser(
        prog=f"{prog} status",
        description="One screen for the technician: platform, service, config, bundles, engines, reports.",
    )
    parser.add_argument("--prefix", dest="root", type=Path, default=Path(os.environ.get("DESTDIR") or "/"))
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    return parser


def collect_status(root: Path) -> dict[str, Any]:
    """What is installed where, and in which state (reads files; asks systemctl only on the real root)."""
    import json
    import shutil
    import subprocess

    from endoedge.edge.box.bundle_store import history, list_bundles
    from endoedge.edge.box.install import BUNDLES, CACHE, CONFIG, REPORTS, UNIT, detect_platform

    info: dict[str, Any] = {}
    platform = detect_platform(root, sys.executable)
    info["platform"] = {"model": platform.model, "l4t": platform.l4t, "jetpack": platform.jetpack,
                        "tensorrt": platform.tensorrt, "python": platform.python}  # fmt: skip
    service: dict[str, Any] = {"unit": (root / UNIT.relative_to("/")).is_file()}
    if root.resolve() == Path("/") and shutil.which("systemctl"):
        for query in ("is-enabled", "is-active"):
            done = subprocess.run(["systemctl", query, "endoedge"], capture_output=True, text=True)
            service[query] = done.stdout.strip() or done.stderr.strip()
    info["service"] = service
    config_file = root / CONFIG.relative_to("/")
    config: dict[str, Any] = {"file": str(CONFIG), "present": config_file.is_file(),
                              "new_default_waiting": config_file.with_name("config.yaml.new").is_file()}  # fmt: skip
    if config_file.is_file():
        try:
            from endoedge.edge.config import load_config

            load_config(config_file)
            config["valid"] = True
        except EndoedgeError as exc:
            config["valid"] = False
            config["error"] = exc.message if exc.where is None else f"{exc.where}: {exc.message}"
        except ImportError as exc:  # pydantic missing: not the edge extra
            config["valid"] = None
            config["error"] = str(exc)
    info["config"] = config
    store = root / BUNDLES.relative_to("/")
    info["bundles"] = [
        {"version": b.version, "name": b.name, "current": b.current, "previous": b.previous}
        for b in list_bundles(store)
    ]
    changes = history(store)
    info["last_bundle_change"] = changes[-1] if changes else None
    engines = []
    for sidecar in sorted((root / CACHE.relative_to("/")).glob("*.json")):
        try:
            data = json.loads(sidecar.read_text())
            key = data["key"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        engine = sidecar.with_suffix(".engine")
        engines.append({"file": engine.name, "present": engine.is_file(), "model": key.get("model"),
                        "precision": key.get("precision"), "tensorrt": key.get("tensorrt_version"),
                        "gpu": key.get("gpu_name"), "sm_count": key.get("sm_count"), "built": data.get("built"),
                        "build_seconds": data.get("build_seconds")})  # fmt: skip
    info["engines"] = engines
    reports = root / REPORTS.relative_to("/")
    folders = [p for p in reports.iterdir() if p.is_dir() and not p.name.startswith(".")] if reports.is_dir() else []
    info["reports"] = {"count": len(folders), "latest": max((p.name for p in folders), default=None)}
    return info


def status_main(argv: Sequence[str], prog: str) -> int:
    """``endoedge install status``."""
    import json

    opts = status_parser(prog).parse_args(list(argv))
    info = collect_status(opts.root)
    if opts.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    p, service, config = info["platform"], info["service"], info["config"]
    print(
        f"platform: {p['model'] or '-'}  L4T {p['l4t'] or '-'}  {p['jetpack'] or ''}  TensorRT {p['tensorrt'] or '-'}"
    )
    state = " ".join(f"{k}={v}" for k, v in service.items() if k != "unit")
    print(f"service:  {'installed' if service['unit'] else 'not installed'} {state}".rstrip())
    valid = {True: "valid", False: f"INVALID: {config.get('error')}", None: "not checked"}.get(config.get("valid"))
    extra = "; a new default is waiting in config.yaml.new" if config["new_default_waiting"] else ""
    print(f"config:   {config['file']} {valid if config['present'] else 'missing'}{extra}")
    if not info["bundles"]:
        print("bundles:  none installed")
    for bundle in info["bundles"]:
        tag = "current " if bundle["current"] else "previous" if bundle["previous"] else "        "
        print(f"bundle:   {tag} {bundle['version']} ({bundle['name']})")
    for engine in info["engines"]:
        print(f"engine:   {engine['model']} {engine['precision']} TensorRT {engine['tensorrt']} {engine['gpu']} "
              f"({engine['sm_count']} SMs) built {engine['built']} in {engine['build_seconds']} s")  # fmt: skip
    reports = info["reports"]
    print(f"reports:  {reports['count']} (latest {reports['latest'] or '-'})")
    return 0
