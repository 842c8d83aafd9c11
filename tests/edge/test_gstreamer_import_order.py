"""Regression: loading GStreamer before TensorFlow/matplotlib must not crash the process.

Importing matplotlib's C extensions after GStreamer's GstApp/GstVideo typelibs crashed the interpreter
(SIGSEGV/SIGABRT) with the pinned wheels; ``endoedge.edge.video.gst.load_gst`` preloads matplotlib first.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from _helpers import GST_SKIP_REASON
from endoedge.edge.video.gst import gst_available


@pytest.mark.skipif(not gst_available(), reason=GST_SKIP_REASON)
def test_gstreamer_then_matplotlib_and_tensorflow_does_not_crash() -> None:
    pytest.importorskip("matplotlib")
    code = (
        "from endoedge.edge.video.gst import load_gst; load_gst()\n"
        "import matplotlib.pyplot\n"
        "try:\n    import tensorflow\nexcept ImportError:\n    pass\n"
        "print('alive')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip().endswith("alive")
