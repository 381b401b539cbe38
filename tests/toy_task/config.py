"""The toy task's recipe: a word-count regression from line lengths (see `tests.toy_task`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from compress.config import NAME, PruneBase, RecipeBase, _Config


class LinesConfig(_Config):
    """Text files of one example per line."""

    train: Path
    dev: Path
    test: Path | None = None


class FitConfig(_Config):
    """The teacher: a least-squares line, or a line given as it is."""

    slope: float | None = Field(default=None, description="a given teacher: no fitting")
    intercept: float = 0.0


class StudentConfig(_Config):
    name: str = Field(default="student", pattern=NAME)
    max_mae: float | None = Field(default=1.0, ge=0, description="quality gate: dev mean absolute error")


class ToyPruneConfig(PruneBase):
    """Zero the coefficient of the smaller magnitude (structured: the intercept goes)."""


class ToyExportConfig(_Config):
    digits: int = Field(default=6, ge=1, le=17)


class ToyQuantizeConfig(_Config):
    name: str = Field(default="rounded", pattern=NAME)
    source: str | None = None
    step: float = Field(default=0.01, gt=0, le=1, description="the grid the coefficients are rounded to")


class ToyBenchmarkConfig(_Config):
    repeats: int = Field(default=3, ge=1, le=100)


class WordCountRecipe(RecipeBase):
    DATA_FORMATS: ClassVar[tuple[str, ...]] = (".txt",)

    task: Literal["word-count"]
    data: LinesConfig
    teacher: FitConfig = FitConfig()
    distill: list[StudentConfig] = Field(default=[StudentConfig()], min_length=1)
    prune: list[ToyPruneConfig] = Field(default=[], min_length=0)
    export: ToyExportConfig = ToyExportConfig()
    quantize: list[ToyQuantizeConfig] = Field(default=[ToyQuantizeConfig()], min_length=0)
    benchmark: ToyBenchmarkConfig = ToyBenchmarkConfig()
