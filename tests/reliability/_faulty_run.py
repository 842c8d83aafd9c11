"""Run the real ``endoedge`` CLI with every backend wrapped so a test can make it misbehave.

The daemon, its registry and the real backend (LiteRT here) are untouched: ``load_backend`` is wrapped so
each backend it returns first reads a control file (path in ``ENDOEDGE_TEST_BACKEND_CONTROL``) on every
call and then does what it says:

``ok`` run normally · ``raise`` raise RuntimeError · ``hang`` block for 60 s (past any budget) · ``nan``
return NaN · ``shape`` return the wrong shape · ``range`` return values outside [0, 1] · ``slow`` sleep
0.2 s first · ``loadfail`` make loading the backend fail (a restart then fails until the file says
otherwise).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import endoedge.edge.service.daemon as daemon_module
from endoedge.core.errors import EndoedgeError

CONTROL = Path(os.environ["ENDOEDGE_TEST_BACKEND_CONTROL"])
_real_load_backend = daemon_module.load_backend


def behaviour() -> str:
    try:
        return CONTROL.read_text().strip()
    except OSError:
        return "ok"


class FaultyBackend:
    """A real backend whose calls can be made to fail from outside the process."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.format = inner.format
        self.manifest = inner.manifest

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        action = behaviour()
        classes = self.manifest.num_classes
        if action == "raise":
            raise RuntimeError("injected backend failure")
        if action == "hang":
            time.sleep(60.0)
        elif action == "nan":
            return np.full((len(pixels), classes), np.nan, np.float32)
        elif action == "shape":
            return np.zeros((len(pixels), classes + 2), np.float32)
        elif action == "range":
            return np.full((len(pixels), classes), 5.0, np.float32)
        elif action == "slow":
            time.sleep(0.2)
        result: np.ndarray = self.inner.infer(pixels)
        return result

    def close(self) -> None:
        self.inner.close()


def faulty_load_backend(model: Any) -> Any:
    if behaviour() == "loadfail":
        raise EndoedgeError("injected load failure", model.bundle)
    return FaultyBackend(_real_load_backend(model))


daemon_module.load_backend = faulty_load_backend

if __name__ == "__main__":
    from endoedge.cli import main

    sys.exit(main(sys.argv[1:]))
