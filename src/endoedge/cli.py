"""The ``endoedge`` command.

Each subcommand is owned by its stage: the table below maps it to a module with a
``main(argv, prog) -> int`` function, imported only when that subcommand runs, so ``endoedge run`` on a
Jetson never imports TensorFlow. Every subcommand is a thin wrapper around plain Python functions that
can be called directly. Errors of endoedge (:class:`~endoedge.core.errors.EndoedgeError`) are printed as
one line and give exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from endoedge.__about__ import __version__
from endoedge.core.errors import EndoedgeError, MissingDependencyError, one_line

#: subcommand → (module with ``main(argv, prog)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "datasets": ("endoedge.core.datasets_cli", "import, split, inspect datasets; make a demo clip"),
    "train": ("endoedge.train.cli", "train a model from a recipe (train/*.yaml)"),
    "evaluate": ("endoedge.train.evaluate_cli", "evaluate models: per-class metrics, CIs, P values, Grad-CAM"),
    "export": ("endoedge.export.cli", "export a trained model to a verified bundle (TFLite, ONNX, TensorRT)"),
    "bundle": ("endoedge.export.bundle_cli", "verify, install or roll back bundles"),
    "bench": ("endoedge.bench.cli", "parity and latency benchmarks"),
    "run": ("endoedge.edge.service.run_cli", "run the edge daemon: capture -> AI -> overlay -> display"),
    "check-config": ("endoedge.edge.service.check_config_cli", "validate a daemon config file"),
    "demo": ("endoedge.edge.service.demo", "run the daemon on the bundled sample clip and default bundle"),
    "install": ("endoedge.edge.box.install_cli", "install endoedge as a systemd service (Jetson)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS) + 2
    lines = ["usage: endoedge [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'endoedge COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``endoedge`` console script.

    Args:
        argv: Arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"endoedge {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"endoedge: error: unknown command {name!r} (valid: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("endoedge"):
                raise MissingDependencyError(
                    f"'endoedge {name}' needs the Python module {exc.name!r}; install the extra that provides it "
                    f"(pip install 'endoedge[train]' for train/export, 'endoedge[edge]' for run)"
                ) from None
            raise
        return int(module.main(rest, prog=f"endoedge {name}") or 0)
    except EndoedgeError as exc:
        print(f"endoedge {name}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"endoedge {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
