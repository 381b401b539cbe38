"""edge-compress: teacher -> distilled student -> pruned -> ONNX -> int8 -> benchmark report."""

from __future__ import annotations

from compress.recipe import Recipe, RecipeError, load_recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "run_pipeline"]


def run_pipeline(recipe, out_dir=None, **kwargs):
    """Run a recipe (a `Recipe` or a path to its YAML file); see `compress.pipeline.run_pipeline`."""
    from compress.pipeline import run_pipeline as _run

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return _run(recipe, out_dir, **kwargs)
