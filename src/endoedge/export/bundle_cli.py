"""``endoedge bundle``: verify a bundle; install or roll back bundles in the box's store.

``verify`` needs no TensorFlow (it runs on a Jetson); ``install``/``rollback``/``list`` are thin
wrappers over :mod:`endoedge.edge.box.bundle_store`, imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence
from typing import Any

from endoedge.core.errors import BundleError, EndoedgeError

DEFAULT_STORE = "/var/lib/endoedge/bundles"


def _store_module() -> Any:
    try:
        return importlib.import_module("endoedge.edge.box.bundle_store")
    except ModuleNotFoundError as exc:
        if exc.name == "endoedge.edge.box.bundle_store":
            raise EndoedgeError("bundle install/rollback is not built yet (endoedge.edge.box.bundle_store)") from None
        raise


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog=prog, description="Verify, install or roll back model bundles.")
    sub = parser.add_subparsers(dest="action", required=True)
    verify = sub.add_parser("verify", help="check sha256 of every file, the manifest, and load each artifact")
    verify.add_argument("path", help="bundle folder, its manifest.json, or a .tar")
    verify.add_argument("--no-load", action="store_true", help="only check checksums and the manifest")
    verify.add_argument("--json", action="store_true", help="print the rows as JSON")
    install = sub.add_parser("install", help="install a bundle into the store and make it current")
    install.add_argument("path", help="bundle folder or .tar")
    install.add_argument("--store", default=DEFAULT_STORE, help=f"bundle store folder (default {DEFAULT_STORE})")
    install.add_argument("--no-activate", action="store_true", help="copy it in without switching current")
    rollback = sub.add_parser("rollback", help="switch current back to the previous bundle")
    rollback.add_argument("--store", default=DEFAULT_STORE, help=f"bundle store folder (default {DEFAULT_STORE})")
    listing = sub.add_parser("list", help="list installed bundles")
    listing.add_argument("--store", default=DEFAULT_STORE, help=f"bundle store folder (default {DEFAULT_STORE})")
    return parser


def main(argv: Sequence[str], prog: str = "endoedge bundle") -> int:
    """Run ``endoedge bundle``."""
    args = build_parser(prog).parse_args(list(argv))
    if args.action == "verify":
        from endoedge.export.verify import format_table, verify_bundle

        bundle, rows = verify_bundle(args.path, load=not args.no_load)
        if args.json:
            print(json.dumps([row.__dict__ for row in rows], indent=2))
        else:
            print(f"bundle {bundle.manifest.name} ({bundle.manifest.labelset.tag}, {bundle.path})")
            print(format_table(rows))
        bad = [row for row in rows if not row.ok]
        if bad:
            raise BundleError(f"{len(bad)} problem(s); first: {bad[0].problem}", args.path)
        return 0
    store = _store_module()
    if args.action == "install":
        target = store.install_bundle(args.path, args.store, activate=not args.no_activate)
        print(f"installed {target}" + ("" if args.no_activate else " (current)"))
    elif args.action == "rollback":
        print(f"current is now {store.rollback(args.store)}")
    else:
        for item in store.list_bundles(args.store):
            flags = "current" if item.current else "previous" if item.previous else ""
            print(f"{item.version}  {item.name}  {flags}")
    return 0
