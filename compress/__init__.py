"""edge-compress: teacher -> distilled student -> pruned -> ONNX -> int8/int4 -> benchmark report, for encoder
classifiers and decoder-only language models."""

from __future__ import annotations

from pathlib import Path

from compress.recipe import RecipeError, load_recipe

__all__ = ["RecipeError", "load_recipe", "run_pipeline"]


def run_pipeline(recipe, out_dir=None, **kwargs):
    """Run a recipe (a task's recipe model from `load_recipe`, or a path to its YAML file); see
    `compress.pipeline.run_pipeline`."""
    from compress.pipeline import run_pipeline as _run

    if isinstance(recipe, str | Path):
        recipe = load_recipe(recipe)
    return _run(recipe, out_dir, **kwargs)
