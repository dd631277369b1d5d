"""Recipes: the schema every option is declared in, and how recipe files are read."""

from finetune.recipe.loading import dump_recipe, load_recipe, validate_dict
from finetune.recipe.schema import Recipe

__all__ = ["Recipe", "dump_recipe", "load_recipe", "validate_dict"]
