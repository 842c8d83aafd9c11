"""``endoedge check-config FILE``: validate a daemon config without starting anything.

Checks the YAML (unknown keys, types, ranges, references between models and tasks, with ``file:line``),
the source and sink URI schemes, the overlay options and, with ``--bundles``, that every bundle opens,
its checksums match and its model fits its task.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from endoedge.core.errors import ConfigError
from endoedge.edge.config import CoverageTaskConfig, DaemonConfig, load_config


def check_config(config: DaemonConfig, where: str, bundles: bool = False) -> list[str]:
    """Checks beyond the schema; returns summary lines.

    Raises:
        ConfigError: Unknown URI scheme, bad overlay option; with ``bundles``, a refused bundle.
        BundleError, ManifestError, ChecksumError: With ``bundles``, a bundle that would be refused.
    """
    from endoedge.edge.stages.overlay import OverlayOptions
    from endoedge.edge.video.sinks import SINKS
    from endoedge.edge.video.sources import SOURCES, coerce_options, split_uri

    sections: tuple[tuple[str, str, dict[str, Any], Mapping[str, Any]], ...] = (
        ("source", config.source.uri, config.source.options, SOURCES),
        ("sink", config.sink.uri, config.sink.options, SINKS),
    )
    for section, uri, options, registry in sections:
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme not in registry:
            valid = ", ".join(f"{s}://" for s in registry)
            raise ConfigError(f"{section}.uri: unknown scheme in {uri!r} (valid: {valid})", where)
        kind = registry[scheme]
        _, _, query = split_uri(uri, parse_query=kind.parse_query)
        given = {**query, **options}
        if section == "source" and scheme in ("file", "images"):
            given.setdefault("loop", config.source.loop)
            given.setdefault("as_fast_as_possible", config.source.as_fast_as_possible)
        coerce_options(kind.options, given, f"{where}: {section}")
    OverlayOptions.from_dict(config.overlay.options, where=f"{where}: overlay.options")
    lines = [
        f"source {config.source.uri} -> sink {config.sink.uri}",
        f"status http://{config.status.host}:{config.status.port} "
        f"(POST token {'not required' if config.status.loopback else 'required'})",
    ]
    for task in config.tasks:
        models = [task.model] if isinstance(task, CoverageTaskConfig) else [task.model_a, task.model_b]
        lines.append(f"task {task.name} ({task.type}): models {', '.join(m for m in models if m)}")
    if bundles:
        from endoedge.core.bundle import open_bundle
        from endoedge.edge.stages.tasks import check_manifest

        for task in config.tasks:
            roles = (
                {"sites": task.model}
                if isinstance(task, CoverageTaskConfig)
                else {"a": task.model_a, **({"b": task.model_b} if task.model_b else {})}
            )
            for role, name in roles.items():
                model = config.model(name)
                bundle = open_bundle(model.bundle)
                labelset = task.labelset if isinstance(task, CoverageTaskConfig) else None
                check_manifest(task.type, role, bundle.manifest, labelset)
                formats = ", ".join(a.format for a in bundle.manifest.artifacts)
                lines.append(f"bundle {model.bundle}: {bundle.manifest.name} ({bundle.manifest.task}; {formats}) ok")
    return lines


def main(argv: Sequence[str], prog: str = "endoedge check-config") -> int:
    """Validate a config file; exit 0 when valid, 2 with a located one-line error otherwise."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Validate a daemon config file (schema with file:line errors, URIs, options; "
        "with --bundles also open, verify and task-check every bundle) without starting anything.",
    )
    parser.add_argument("config", type=Path, help="daemon config YAML")
    parser.add_argument("--bundles", action="store_true", help="also open and verify every bundle")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(list(argv))
    config = load_config(args.config, args.overrides)
    for line in check_config(config, str(args.config), bundles=args.bundles):
        print(f"  {line}")
    print(f"ok: {args.config}")
    return 0
