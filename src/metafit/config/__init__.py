"""Recipes: the schema of a training run and the YAML files that hold one."""

from metafit.config.files import RecipeError
from metafit.config.recipe import load_recipe
from metafit.config.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe"]
