"""Recipe validation: every committed recipe loads; bad recipes fail naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from endoedge.core.errors import ConfigError
from endoedge.train.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "train").glob("*.yaml"))

GOOD = """\
name: tiny
task: sites
dataset: data.csv
model:
  name: mobilenetv3s
  input_size: 64
training:
  epochs: 2
"""


def test_committed_recipes_load_and_name_registered_models() -> None:
    from endoedge.train.models import available_models

    assert RECIPES, "no recipes committed under train/"
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.model.name in available_models(), path
        assert recipe.name == path.stem, f"{path}: name should match the file name"


def test_paths_resolve_against_the_recipe_folder(tmp_path: Path) -> None:
    recipe = parse_recipe(GOOD, source=tmp_path / "r.yaml")
    assert recipe.dataset_path == (tmp_path / "data.csv").resolve()
    assert recipe.run_dir() == (tmp_path / "../runs/tiny").resolve()
    assert recipe.training.epochs == 2 and recipe.training.batch_size == 16


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    text = GOOD.replace("  input_size: 64\n", "  input_size: 64\n  widht: 3\n")
    with pytest.raises(ConfigError) as info:
        parse_recipe(text, source="train/x.yaml")
    assert str(info.value) == "train/x.yaml:7: model.widht: unknown key"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:9: epochs: unknown key"):
        parse_recipe(GOOD + "epochs: 3\n", source="x.yaml")


def test_bad_values_are_located() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:7: training: .*valid dictionary"):
        parse_recipe(GOOD.replace("training:\n  epochs: 2\n", "training: 5\n"), source="x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml:8: training.epochs: .*greater than or equal to 1"):
        parse_recipe(GOOD.replace("epochs: 2", "epochs: 0"), source="x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml:2: task: .*not one of"):
        parse_recipe(GOOD.replace("task: sites", "task: polyps"), source="x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml:2: not valid YAML: expected"):
        parse_recipe("name: [unclosed\n", source="x.yaml")


def test_optimizer_choice_lists_got_value() -> None:
    with pytest.raises(ConfigError, match=r"training.optimizer: .*'rmsprop'"):
        parse_recipe(GOOD + "  optimizer: rmsprop\n", source="x.yaml")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_unknown_model_name_lists_valid_names() -> None:
    from endoedge.train.models import build_model

    with pytest.raises(
        ConfigError,
        match=r"unknown model 'resnet9000' \(valid: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, "
        r"mobilenetv3s, irv2",
    ):
        build_model("resnet9000", 3, 64)


def test_unknown_model_option_is_refused() -> None:
    from endoedge.train.models import build_model

    with pytest.raises(ConfigError, match=r"unknown option 'depth' for model 'mobilenetv3s'"):
        build_model("mobilenetv3s", 3, 64, options={"depth": 3})


def test_cli_prints_one_located_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from endoedge.cli import main

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(GOOD.replace("training:\n", "trainnig:\n"))
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err == f"endoedge train: error: {recipe}:7: trainnig: unknown key\n"


def test_check_validates_recipe_and_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from endoedge.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(GOOD)
    assert main(["train", "--config", str(recipe), "--check"]) == 2
    assert "data.csv does not exist" in capsys.readouterr().err
    demo = ROOT / "train" / "gastrovision3-mobilenetv3.yaml"
    if load_recipe(demo).dataset_path.is_file() and (ROOT.parent / "shared" / "data" / "endoscopy").is_dir():
        assert main(["train", "--config", str(demo), "--check"]) == 0
        assert "284" in capsys.readouterr().out
