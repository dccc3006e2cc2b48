"""The ``recipes`` and ``data`` verbs: the shipped recipes, and a recipe's dataset."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from metafit.cli.options import add_json_option, add_recipe_arguments, add_verb
from metafit.config.recipe import RecipeError, list_recipes, load_recipe
from metafit.config.schema import recipe_to_yaml

__all__ = ["add_data_parser", "add_recipes_parser"]


def _cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise RecipeError("`metafit recipes show` needs a recipe name")
        recipe = load_recipe(args.name, args.overrides)
        if args.json:
            _emit({"action": "show", "name": recipe.name,
                   "recipe": recipe.applicable_dump(mode="json")})
        else:
            sys.stdout.write(recipe_to_yaml(recipe))
        return 0
    if args.action == "keys":
        from metafit.config.keys import key_rows, keys_markdown

        if args.json:
            _emit({"action": "keys", "keys": [
                dict(zip(("key", "type", "default", "description", "recipes"), row,
                         strict=True))
                for row in key_rows()]})
        else:
            sys.stdout.write(keys_markdown())
        return 0
    if args.action == "recommend":
        return _recommend(args)
    if args.action not in (None, "list"):
        raise RecipeError(f"unknown action '{args.action}': use `recipes`, `recipes show NAME`, "
                          "`recipes keys` or `recipes recommend [TASK]`")
    described = [(name, load_recipe(name).description) for name in list_recipes()]
    if args.json:
        _emit({"action": "list", "recipes": [{"name": n, "description": d}
                                             for n, d in described]})
        return 0
    width = max(len(n) for n, _ in described)
    for name, description in described:
        sys.stdout.write(f"{name:<{width}}  {description}\n")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    """``recipes recommend [TASK]``: the recommended recipe of each kind of task (or of
    ``TASK``), its commands and the evidence (:mod:`metafit.config.recommend`)."""
    from metafit.config.recommend import recommendations

    found = recommendations()
    if args.name is not None and args.name not in found:
        raise RecipeError(f"no recommendation for '{args.name}'; tasks: {', '.join(found)}")
    chosen = [r for task, r in found.items() if args.name in (None, task)]
    if args.json:
        _emit({"action": "recommend", "recommendations": [
            {"task": r.task, "description": r.description, "recommended": r.recommended,
             "commands": r.commands(), "evidence": r.evidence,
             "budget_minutes": r.budget_minutes,
             "candidates": {name: c.commands() for name, c in r.candidates.items()}}
            for r in chosen]})
        return 0
    for r in chosen:
        budget = "" if r.budget_minutes is None else f" (a {r.budget_minutes:g}-minute budget)"
        lines = [f"{r.task}: {r.description}", f"  recommended: {r.recommended}{budget}",
                 *(f"    {command}" for command in r.commands()),
                 f"  evidence: {r.evidence}",
                 f"  candidates: {', '.join(r.candidates)}"]
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _emit(payload: dict[str, Any]) -> None:
    from metafit.cli.results import emit

    emit("recipes", payload)


def _cmd_data(args: argparse.Namespace) -> int:
    from metafit.data.splits import data_report, describe_dataset

    recipe = load_recipe(args.recipe, args.overrides)
    if args.json:
        from metafit.cli.results import emit

        summaries, warnings = data_report(recipe)
        emit("data", {"recipe": recipe.name, "dataset": recipe.dataset,
                      "data_root": recipe.data_root, "splits": summaries,
                      "warnings": warnings})
        return 0
    for line in describe_dataset(recipe):
        sys.stdout.write(line + "\n")
    return 0


def add_recipes_parser(sub: Any) -> None:
    """Add ``recipes`` to the subparsers ``sub``."""
    p = add_verb(sub, "recipes", "list the shipped recipes, show one resolved, list every "
                 "recipe key, or say which recipe to use for a kind of task", _cmd_recipes)
    p.add_argument("action", nargs="?", choices=["list", "show", "keys", "recommend"],
                   help="list (default) | show NAME | keys (every key: type, default, "
                   "meaning) | recommend [TASK] (the recipe recommended for characters, ...)")
    p.add_argument("name", nargs="?", help="recipe name (with show); task (with recommend)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (with show)")
    add_json_option(p, "the list, the recipe or the keys")


def add_data_parser(sub: Any) -> None:
    """Add ``data`` to the subparsers ``sub``."""
    p = add_verb(sub, "data", "load a recipe's dataset, describe its splits, warn when one is "
                 "too small", _cmd_data)
    add_recipe_arguments(p, "recipe name or YAML path",
                         "key=value overrides, e.g. data_root=DIR")
    add_json_option(p, "each split's classes and examples, and the warnings")
