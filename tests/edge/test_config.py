from __future__ import annotations

import json
from pathlib import Path

import pytest

from endoedge.core.errors import ConfigError
from endoedge.edge.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
source:
  uri: file://clip.mp4
  loop: true
sink:
  uri: null://
models:
  - name: sites
    bundle: bundles/demo
    backend: tflite
    options: {threads: 2}
tasks:
  - type: egd-coverage
    model: sites
    smoothing:
      method: ema
      threshold: 0.7
status:
  port: 0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(text)
    return path


def test_a_good_config_loads_with_paths_resolved(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.models[0].bundle == str(tmp_path / "bundles" / "demo")
    assert config.report.dir == str(tmp_path / "reports")
    assert config.tasks[0].smoothing.threshold == 0.7
    assert config.status.host == "127.0.0.1" and config.status.loopback


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("    smoothing:\n", "    smoothin:\n"), r"daemon.yaml:14: tasks\[0\].smoothin: unknown key"),
        (
            GOOD.replace("threshold: 0.7", "threshold: 1.7"),
            r"daemon.yaml:16: tasks\[0\].smoothing.threshold: .*less than or equal to 1",
        ),
        (
            GOOD.replace("backend: tflite", "backend: openvino"),
            r"daemon.yaml:9: models\[0\].backend: unknown backend 'openvino'",
        ),
        (
            GOOD.replace("options: {threads: 2}", "options: {thread: 2}"),
            r"daemon.yaml:10: models\[0\].options: unknown option 'thread' for backend 'tflite' \(valid: threads, xnn",
        ),
        (GOOD.replace("    model: sites\n", ""), r"daemon.yaml:12: tasks\[0\].model: missing required field"),
        (
            GOOD.replace("type: egd-coverage", "type: colonoscopy"),
            r"daemon.yaml:12: tasks\[0\]: .*'egd-coverage', 'hemorrhoid'",
        ),
        (
            GOOD.replace("model: sites", "model: nope"),
            r"daemon.yaml: uses model 'nope'|model 'nope', which is not in models",
        ),
        (GOOD + "  host: 0.0.0.0\n", r"daemon.yaml:\d+: status: binding to 0.0.0.0 needs a token"),
        (GOOD + "  port: 9\n", r"daemon.yaml:19: duplicate key 'port' \(first at line 18\)"),
        (GOOD.replace("loop: true", "loop: [true"), r"daemon.yaml:\d+: not valid YAML"),
        ("- just\n- a list\n", r"daemon.yaml: expected a mapping at the top level, got list"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_overrides_reach_any_field_and_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    config = load_config(path, ["status.port=9100", "tasks.0.smoothing.method=hmm", "models.0.options.threads=1"])
    assert config.status.port == 9100 and config.tasks[0].smoothing.method == "hmm"
    assert config.models[0].options == {"threads": 1}
    with pytest.raises(ConfigError, match="status.port: .*less than or equal to 65535"):
        load_config(path, ["status.port=70000"])
    with pytest.raises(ConfigError, match="--set status.port: expected KEY=VALUE"):
        apply_overrides({}, ["status.port"])
    with pytest.raises(ConfigError, match="--set models.5: '5' is not an index of a 1-item list"):
        apply_overrides({"models": [{}]}, ["models.5=x"])


def test_a_token_allows_binding_elsewhere(tmp_path):
    config = load_config(write(tmp_path, GOOD + "  host: 0.0.0.0\n  token: 0123456789abcdef0123\n"))
    assert not config.status.loopback


@pytest.mark.parametrize("path", sorted((ROOT / "edge" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_example_configs_are_valid(path):
    config = load_config(path)
    assert config.tasks and config.models


def test_check_config_command(tmp_path, capsys):
    from endoedge.cli import main

    assert main(["check-config", str(ROOT / "edge" / "configs" / "egd-coverage.yaml")]) == 0
    assert capsys.readouterr().out.strip().endswith("ok: " + str(ROOT / "edge" / "configs" / "egd-coverage.yaml"))
    bad = write(tmp_path, GOOD.replace("uri: null://", "uri: vga://"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sink.uri: unknown scheme in 'vga://'" in err
    bad = write(tmp_path, GOOD.replace("  loop: true", "  loop: true\n  options: {fsp: 30}"))
    assert main(["check-config", str(bad)]) == 2
    assert "source: unknown option 'fsp'" in capsys.readouterr().err


def test_check_config_with_bundles_verifies_them(tmp_path, tiny_bundle, capsys):
    from endoedge.cli import main

    config = write(tmp_path, GOOD.replace("bundles/demo", str(tiny_bundle)))
    assert main(["check-config", str(config), "--bundles"]) == 0
    assert "tiny-gastrovision3 (sites; " in capsys.readouterr().out
    hemo = write(
        tmp_path,
        f"models:\n  - name: sites\n    bundle: {tiny_bundle}\ntasks:\n  - type: hemorrhoid\n    model_a: sites\n",
    )
    assert main(["check-config", str(hemo), "--bundles"]) == 2
    assert "is a 'sites' model; the hemorrhoid task (a) needs hemorrhoid" in capsys.readouterr().err


@pytest.fixture
def keep_logging():
    """``endoedge run`` installs its own log handler; put pytest's back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_run_command_line_builds_the_config(tmp_path, tiny_bundle, monkeypatch, capsys, keep_logging):
    from endoedge.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["run", "file://clip.mp4", "--bundle", str(tiny_bundle), "--sink", "null://", "--backend", "tflite"]
    args += ["--as-fast-as-possible", "--max-frames", "10", "--status-port", "0", "--set", "exam.end_after_s=3"]
    assert main([*args, "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["source"]["uri"] == f"file://{tmp_path / 'clip.mp4'}" and config["source"]["as_fast_as_possible"]
    assert config["models"] == [
        {**config["models"][0], "name": "main", "bundle": str(tiny_bundle), "backend": "tflite"}
    ]
    assert config["tasks"][0]["type"] == "egd-coverage"  # from the bundle's manifest task 'sites'
    assert config["run"]["max_frames"] == 10 and config["exam"]["end_after_s"] == 3
    assert config["report"]["dir"] == str(tmp_path / "reports")
    assert main(["run", "file://x.mp4", "--bundle-b", "b"]) == 2
    assert "--bundle-b needs --bundle" in capsys.readouterr().err
    assert main(["run", "file://x.mp4"]) == 2
    assert "no model: give --bundle or a --config" in capsys.readouterr().err
    # A file that does not exist is a user error at start (one line, exit 2), not a traceback.
    assert main(args) == 2
    assert "no such video file" in capsys.readouterr().err
