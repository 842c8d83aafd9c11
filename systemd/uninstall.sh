#!/bin/sh
# Remove the endoedge service and program. Config, bundles, reports and the engine cache stay unless
# --purge. A thin wrapper around `endoedge install uninstall`:
#   sudo systemd/uninstall.sh [--purge] [--dry-run] [--prefix DIR]
# Works from the source tree (systemd/uninstall.sh) and from the installed copy (/opt/endoedge/uninstall.sh).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-/usr/bin/python3}
if [ -f "$here/../src/endoedge/edge/box/install.py" ]; then
  # From the source tree: needs nothing but the system Python.
  PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m endoedge.cli install uninstall "$@"
fi
# Installed copy: run from the venv (the uninstaller only needs the standard library, and the files it
# deletes stay readable to this process until it exits).
exec "$here/venv/bin/python" -m endoedge.cli install uninstall "$@"
