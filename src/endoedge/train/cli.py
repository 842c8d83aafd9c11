"""``endoedge train``: train a recipe into a run folder (resumes an unfinished run)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str], prog: str = "endoedge train") -> int:
    """CLI entry: parse arguments, validate the recipe, train."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a model from a recipe (train/*.yaml). An unfinished run folder is resumed "
        "from its last completed epoch; a finished one is kept unless --overwrite.",
    )
    parser.add_argument("--config", "-c", required=True, help="recipe YAML (train/<name>.yaml)")
    parser.add_argument("--runs-dir", help="where run folders go (default: the recipe's output.runs_dir)")
    parser.add_argument("--epochs", type=int, help="override training.epochs (smoke runs)")
    parser.add_argument("--overwrite", action="store_true", help="retrain over a finished run")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the held-out evaluation at the end")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate the recipe, its pretrained weights (downloading them if needed) and its dataset",
    )
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    args = parser.parse_args(list(argv))

    from endoedge.train.recipe import load_recipe

    recipe = load_recipe(args.config)
    if args.check:
        from endoedge.core.datasets import dataset_stats, load_dataset
        from endoedge.core.errors import ConfigError
        from endoedge.train.models import get_spec
        from endoedge.train.pretrained import resolve_weights

        get_spec(recipe.model.name)
        weights = resolve_weights(recipe.model.name, recipe.weights_source)
        if weights is not None:
            print(f"pretrained weights: {weights.path} (sha256 {weights.provenance['sha256']})")
        if not recipe.dataset_path.is_file():
            raise ConfigError(f"dataset manifest {recipe.dataset_path} does not exist", f"{args.config}: dataset")
        print(dataset_stats(load_dataset(recipe.dataset_path, labelset=recipe.labelset)))
        print(f"recipe {args.config}: ok (run folder {recipe.run_dir(args.runs_dir)})")
        return 0

    from endoedge.train.trainer import train

    train(
        recipe,
        runs_dir=args.runs_dir,
        overwrite=args.overwrite,
        epochs=args.epochs,
        evaluate=not args.no_evaluate,
        verbose=2 if args.quiet else "auto",
    )
    return 0
