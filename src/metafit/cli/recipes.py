"""The ``recipes`` and ``data`` verbs: the shipped recipes, and a recipe's dataset."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from metafit.cli.options import add_recipe_arguments, add_verb
from metafit.config.recipe import RecipeError, list_recipes, load_recipe
from metafit.config.schema import recipe_to_yaml

__all__ = ["add_data_parser", "add_recipes_parser"]


def _cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise RecipeError("`metafit recipes show` needs a recipe name")
        recipe = load_recipe(args.name, args.overrides)
        sys.stdout.write(recipe_to_yaml(recipe))
        return 0
    if args.action == "keys":
        from metafit.config.keys import keys_markdown

        sys.stdout.write(keys_markdown())
        return 0
    if args.action not in (None, "list"):
        raise RecipeError(f"unknown action '{args.action}': use `recipes`, `recipes show NAME` "
                          "or `recipes keys`")
    width = max(len(n) for n in list_recipes())
    for name in list_recipes():
        recipe = load_recipe(name)
        sys.stdout.write(f"{name:<{width}}  {recipe.description}\n")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from metafit.data.splits import describe_dataset

    recipe = load_recipe(args.recipe, args.overrides)
    for line in describe_dataset(recipe):
        sys.stdout.write(line + "\n")
    return 0


def add_recipes_parser(sub: Any) -> None:
    """Add ``recipes`` to the subparsers ``sub``."""
    p = add_verb(sub, "recipes", "list the shipped recipes, show one resolved, or list every "
                 "recipe key", _cmd_recipes)
    p.add_argument("action", nargs="?", choices=["list", "show", "keys"],
                   help="list (default) | show NAME | keys (every key: type, default, meaning)")
    p.add_argument("name", nargs="?", help="recipe name (with show)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (with show)")


def add_data_parser(sub: Any) -> None:
    """Add ``data`` to the subparsers ``sub``."""
    p = add_verb(sub, "data", "load a recipe's dataset and describe its splits", _cmd_data)
    add_recipe_arguments(p, "recipe name or YAML path",
                         "key=value overrides, e.g. data_root=DIR")
