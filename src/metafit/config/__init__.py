"""Recipes: the schema of a training run and the YAML files that hold one."""

from metafit.config.files import RecipeError
from metafit.config.recipe import Recipe, load_recipe

__all__ = ["Recipe", "RecipeError", "load_recipe"]
