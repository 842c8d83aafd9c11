"""Fuzzing of the daemon configuration (``endoedge.edge.config``): YAML files and ``--set`` overrides.

Same contract as the core fuzzers: accepted, or refused with one printable line naming the file (and
line where there is one). Accepted configs must be valid ``DaemonConfig`` objects that survive a dump
and reload unchanged.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from _fuzzing import (
    HOSTILE_TOKENS,
    Tally,
    check_outcome,
    dump,
    json_values,
    mutated_document,
    mutated_text,
    run_property,
)
from hypothesis import given
from hypothesis import strategies as st

config_module = pytest.importorskip("endoedge.edge.config", reason="the daemon config module is not built yet")

# 10^4 cases take tens of minutes on a loaded 2-core machine: above the suite-wide 900 s timeout.
PROFILES = [pytest.param("default"), pytest.param("slow", marks=[pytest.mark.slow, pytest.mark.timeout(7200)])]


def _full_config() -> dict[str, Any]:
    data: dict[str, Any] = config_module.example_config().model_dump(mode="json")
    return data


SOURCE_URIS = [
    "file://clip.mp4",
    "file://clip.mp4?fps=abc",
    "file://clip.mp4?loop=maybe&fps=1e999",
    "v4l2:///dev/video0?width=-1&fourcc=H264",
    "v4l2:///dev/video0?fps=nan",
    "images://frames?size=10x&fps=0",
    "gst://",
    "gst://videotestsrc ! appsink",
    "rtsp://10.0.0.5/s?latency=99999999999999999999&transport=quic",
    "bogus://x",
    "no-scheme",
    "file://",
    "file://a%00b.mp4",
]
SINK_URIS = ["null://", "hdmi://", "window://", "file://out.mp4", "file://out.avi?fps=-3", "bogus://", "hdmi://?x=1"]
SOURCE_OPTION_KEYS = ["fps", "loop", "width", "height", "fourcc", "size", "latency", "backend", "nope"]


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Valid configs: the full example, a hemorrhoid pair, or a sparse file of a few sections."""
    full = _full_config()
    kind = draw(st.sampled_from(["full", "sparse", "hemorrhoid"]))
    if kind == "hemorrhoid":
        full["models"] = [
            {"name": "a", "bundle": "bundles/a", "backend": draw(st.sampled_from(["auto", "tflite", "onnxruntime"]))},
            {"name": "b", "bundle": "bundles/b"},
        ]
        full["tasks"] = [{"type": "hemorrhoid", "model_a": "a", "model_b": "b"}]
        full["exam"]["driver"] = None
    if kind == "sparse":
        keys = draw(st.lists(st.sampled_from(sorted(full)), max_size=4, unique=True))
        full = {k: full[k] for k in keys}
        if "tasks" in full and "models" not in full:
            full.pop("tasks")
    if "source" in full and draw(st.booleans()):
        full["source"]["uri"] = draw(st.sampled_from(SOURCE_URIS))
        full["source"]["options"] = draw(st.dictionaries(st.sampled_from(SOURCE_OPTION_KEYS), json_values, max_size=3))
    if "sink" in full and draw(st.booleans()):
        full["sink"]["uri"] = draw(st.sampled_from(SINK_URIS))
    if "overlay" in full and draw(st.booleans()):
        full["overlay"]["options"] = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=3))
    if "status" in full and draw(st.booleans()):
        full["status"]["host"] = draw(st.sampled_from(["0.0.0.0", "::1", "localhost", "192.168.1.20"]))
        full["status"]["token"] = draw(st.sampled_from([None, "x" * 16, "short"]))
    return full


_override_keys = st.lists(
    st.sampled_from(
        ["status", "port", "host", "models", "0", "1", "9", "name", "tasks", "source", "uri", "smoothing", "x"]
    ),
    min_size=1,
    max_size=4,
).map(".".join)
_override_values = st.text(alphabet=string.printable, max_size=20) | st.sampled_from(HOSTILE_TOKENS[:14])


@pytest.mark.parametrize("profile", PROFILES)
def test_config_files_accept_or_reject_in_one_line(profile: str, tmp_path: Path) -> None:
    from endoedge.edge.service.check_config_cli import check_config

    tally = Tally()
    checked = Tally()

    @given(
        doc=mutated_document(config_documents()),
        byte_edits=st.booleans(),
        overrides=st.lists(st.tuples(_override_keys, _override_values).map("=".join), max_size=2),
        data=st.data(),
    )
    def prop(doc: Any, byte_edits: bool, overrides: list[str], data: st.DataObject) -> None:
        text = dump(doc, as_json=False)
        raw = data.draw(mutated_text(text)) if byte_edits else text.encode("utf-8")
        path = tmp_path / "daemon.yaml"
        path.write_bytes(raw)
        config = check_outcome(lambda: config_module.load_config(path, overrides), tally, place_hint=None)
        if config is not None:
            # What `endoedge check-config` adds: URI schemes and options, overlay options.
            check_outcome(lambda: check_config(config, str(path)), checked, place_hint=None)
            again = tmp_path / "again.yaml"
            again.write_text(yaml.safe_dump(config.model_dump(mode="json")))
            reloaded = config_module.load_config(again).model_dump(mode="json")
            assert json.dumps(reloaded, sort_keys=True) == json.dumps(config.model_dump(mode="json"), sort_keys=True)

    run_property(prop, profile, default_cases=120)
    print(tally.summary("daemon config files"))
    print(checked.summary("check-config on accepted configs"))
    assert tally.accepted > 0 and tally.rejected > 0


# Regressions: each of these escaped as ValueError, RecursionError or TypeError, or hung, before the fix.
@pytest.mark.parametrize(
    ("text", "overrides"),
    [
        ("status:\n  port: " + "9" * 5000 + "\n", []),
        ("source: " + "[" * 3000 + "]" * 3000 + "\n", []),
        ("? [a, b]\n: 1\n", []),
        ("status:\n  ? {a: 1}\n  : 1\n", []),
        ("", ["status.port=" + "9" * 5000]),
        ("", ["status=" + "[" * 5000]),
    ],
)
def test_config_parser_limits_become_config_errors(tmp_path: Path, text: str, overrides: list[str]) -> None:
    path = tmp_path / "daemon.yaml"
    path.write_text(text)
    with pytest.raises(config_module.ConfigError) as info:
        config_module.load_config(path, overrides)
    assert str(info.value).isprintable() and info.value.where


def test_config_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    import time

    from _fuzzing import BILLION_LAUGHS

    path = tmp_path / "daemon.yaml"
    path.write_text(BILLION_LAUGHS + "source: {uri: *i}\n")
    start = time.monotonic()
    with pytest.raises(config_module.ConfigError, match="source.uri"):
        config_module.load_config(path)
    assert time.monotonic() - start < 10, "aliases must not be walked once per reference"
