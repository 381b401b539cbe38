"""What every task's recipe shares: the strict config base, variant names, targets and the prune keys.

Pure pydantic (no torch, no onnxruntime), so reading and checking a recipe stays fast. Each task's own recipe
model and stage configs live in its folder (`compress/tasks/<task>/config.py`) and build on these.

Strict: a recipe that is not what the user meant is refused, never coerced. A boolean is not a number (YAML's
`true` where a count is expected), a number or a word is not a boolean, a number is not a string; a float field
takes an integer (`epochs: 1`) because that changes no meaning.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.errors import RecipeError
from compress.targets import TargetSpec, target_item

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # variant and run names: they become directory names


def _kinds(annotation: Any) -> set[type]:
    """The plain Python types an annotation admits (`int | None` -> {int, NoneType}); `object` for anything else."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if annotation in (bool, int, float, str, type(None)):
        return {annotation}
    return {object}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def strict_value_error(annotation: Any, value: Any) -> str | None:
    """Why `value` is refused for a field of type `annotation` without coercion, or None when it is acceptable.

    Pydantic's lax mode turns `True` into 1, `"yes"` or `1` into True and `3` into `"3"`; YAML 1.1 makes `yes`,
    `no`, `on` and `off` booleans. Each of these would run something the user did not write, so each is refused.
    """
    kinds = _kinds(annotation)
    if object in kinds:
        return None
    if isinstance(value, bool):
        if bool not in kinds:
            expected = "a number" if kinds & {int, float} else "a string"
            return f"expected {expected}, got the boolean {str(value).lower()}"
        return None
    if bool in kinds and not kinds - {bool, type(None)} and value is not None:
        return f"expected true or false, got {_short(value)}"
    if isinstance(value, str) and str not in kinds and kinds & {int, float}:
        return "expected a number, got a string"
    if isinstance(value, int | float) and str in kinds and not kinds & {int, float}:
        return "expected a string, got a number (quote it)"
    if isinstance(value, float) and int in kinds and float not in kinds:
        return "expected an integer"
    return None


class _Config(BaseModel):
    """A frozen, strict recipe section: unknown keys and coerced values are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_coercion(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is None:
                    continue
                values = value if isinstance(value, list) and typing.get_origin(field.annotation) is list else [value]
                inner = typing.get_args(field.annotation)[0] if values is value else field.annotation
                for v in values:
                    why = strict_value_error(inner, v)
                    if why is not None:
                        raise ValueError(f"{key} = {_short(v)}: {why}")
        return data


def distinct_layers(v: list[int]) -> list[int]:
    """A list of layer indices (a student's kept layers), checked and sorted: a `field_validator` of the
    distill configs."""
    if any(i < 0 for i in v):
        raise ValueError("layer indices must be >= 0")
    if len(set(v)) != len(v):
        raise ValueError("layer indices must be distinct")
    return sorted(v)


class TargetsConfig(_Config):
    """The targets a benchmark measures (presets by name, or specs) and the one whose figures lead the report."""

    DEFAULT_PRIMARY: ClassVar[str] = "mobile"  # the preset that leads when measured

    targets: list[TargetSpec]
    primary_target: str | None = Field(
        default=None, description="whose figures fill the top-level summary; default: the task's preset if measured"
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _presets(cls, v: Any) -> Any:
        return [target_item(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _names(self):
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"targets: names must be unique, got {names}")
        if self.primary_target is not None and self.primary_target not in names:
            raise ValueError(f"primary_target = {self.primary_target!r}: not among targets {names}")
        return self

    @property
    def primary(self) -> str:
        names = [t.name for t in self.targets]
        return self.primary_target or (self.DEFAULT_PRIMARY if self.DEFAULT_PRIMARY in names else names[0])


# Which prune keys apply only to some methods, schedules or importances: setting one elsewhere (to anything but
# its default) is an error rather than a silent no-op. A task's prune config adds its own keys to the table.
PRUNE_APPLIES = {
    "sparsity": ("method", ("unstructured",)),
    "heads": ("method", ("structured",)),
    "ffn": ("method", ("structured",)),
    "nm": ("method", ("n:m",)),
    "scope": ("method", ("unstructured", "structured")),
    "start": ("schedule", ("cubic",)),
    "end": ("schedule", ("cubic",)),
    "every": ("schedule", ("cubic",)),
}


class PruneBase(_Config):
    """The prune keys every task shares: which weights go (unstructured, n:m, or whole structures), when
    (one shot or a cubic schedule) and the distillation fine-tune that follows. A task's prune config adds its
    importances, its structures and its quality gate."""

    APPLIES: ClassVar[dict] = PRUNE_APPLIES

    name: str = Field(default="pruned", pattern=NAME)
    source: str | None = Field(default=None, description="the distill variant to prune; default: the first")
    method: Literal["unstructured", "structured", "n:m"] = "unstructured"
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="unstructured: share of weights zeroed")
    heads: float = Field(default=0.0, ge=0, lt=1, description="structured: share of attention heads removed")
    ffn: float = Field(default=0.0, ge=0, lt=1, description="structured: share of FFN neurons removed per layer")
    nm: tuple[int, int] = Field(default=(2, 4), description="n:m: keep n of every m consecutive weights in a row")
    scope: Literal["global", "layer"] = Field(
        default="global", description="rank across all matrices/layers, or within each (heads only, structured)"
    )
    schedule: Literal["oneshot", "cubic"] = "oneshot"
    start: float = Field(default=0.0, ge=0, le=1, description="cubic: fraction of the fine-tune where pruning starts")
    end: float = Field(default=0.75, ge=0, le=1, description="cubic: fraction where the final targets are reached")
    every: int = Field(default=10, ge=1, le=100_000, description="cubic: optimizer steps between mask updates")
    epochs: float = Field(default=0.5, ge=0, le=50, description="fine-tune epochs with the masks held")
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    temperature: float = Field(default=2.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self):
        for key, (selector, allowed) in self.APPLIES.items():
            value, default = getattr(self, key), type(self).model_fields[key].default
            if getattr(self, selector) not in allowed and value != default:
                raise ValueError(
                    f"prune.{key} applies only to {selector} {' or '.join(map(repr, allowed))}, "
                    f"not {selector} {getattr(self, selector)!r}"
                )
        n, m = self.nm
        if not 1 <= n < m <= 64:
            raise ValueError(f"prune.nm = [{n}, {m}]: need 1 <= n < m <= 64")
        if self.method == "n:m" and self.schedule == "cubic":
            raise ValueError("prune.schedule 'cubic' does not apply to method 'n:m' (its sparsity is fixed at 1-n/m)")
        if self.schedule == "cubic" and self.epochs == 0:
            raise ValueError("prune.schedule 'cubic' prunes during the fine-tune: prune.epochs must be > 0")
        if self.start > self.end:
            raise ValueError(f"prune.start = {self.start} is after prune.end = {self.end}")
        if self.method == "structured" and not self.removes_structures:
            keys = " or ".join(f"prune.{k}" for k in self.STRUCTURES)
            raise ValueError(f"prune.method 'structured' needs {keys} > 0")
        return self

    STRUCTURES: ClassVar[tuple[str, ...]] = ("heads", "ffn")  # the shares a structured cut may remove

    @property
    def removes_structures(self) -> bool:
        return any(getattr(self, k) for k in self.STRUCTURES)

    @property
    def target_sparsity(self) -> float:
        """The share of weights zeroed by an unstructured or n:m method (0 for structured)."""
        if self.method == "n:m":
            return 1 - self.nm[0] / self.nm[1]
        return self.sparsity if self.method == "unstructured" else 0.0


class RecipeBase(_Config):
    """What every task's recipe has: a name, a seed, the task, and variant sections whose names are unique.

    A task's recipe (`compress/tasks/<task>/config.py`) declares `task`, `data`, `teacher`, `distill`, `prune`,
    `export`, `quantize` and `benchmark` with its own section models, and `DATA_FORMATS`.
    """

    DATA_FORMATS: ClassVar[tuple[str, ...]] = ()  # data file name endings the task reads

    name: str = Field(pattern=NAME)
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="numpy and torch take seeds below 2**32")

    @field_validator("distill", "prune", "quantize", mode="before", check_fields=False)
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _names_and_sources(self):
        seen = {"teacher"}
        for section in ("distill", "prune", "quantize"):
            for i, v in enumerate(getattr(self, section)):
                if v.name in seen:
                    raise ValueError(
                        f"{section}.{i}.name = {v.name!r}: variant names must be unique (and not 'teacher')"
                    )
                seen.add(v.name)
        students = [d.name for d in self.distill]
        for i, p in enumerate(self.prune):
            if p.source is not None and p.source not in students:
                raise ValueError(f"prune.{i}.source = {p.source!r}: not a distill variant; choose from {students}")
        models = self.quantize_sources()
        for i, q in enumerate(self.quantize):
            if q.source is not None and q.source not in models:
                raise ValueError(f"quantize.{i}.source = {q.source!r}: not a model variant; choose from {models}")
        return self

    def quantize_sources(self) -> list[str]:
        """The model variants a quantize variant may start from."""
        return [d.name for d in self.distill] + [p.name for p in self.prune]

    def source_of(self, variant) -> str:
        """The model variant a prune or quantize variant starts from (the documented defaults applied)."""
        if variant.source is not None:
            return variant.source
        if any(variant is p for p in self.prune):
            return self.distill[0].name
        return self.default_quantize_source()

    def default_quantize_source(self) -> str:
        return self.prune[0].name if self.prune else self.distill[0].name

    def model_step(self, variant: str) -> str:
        """The id of the step that makes model `variant` (the teacher, a student or a pruned model)."""
        if variant == "teacher":
            return "teacher"
        if variant in {d.name for d in self.distill}:
            return f"distill/{variant}"
        if variant in {p.name for p in self.prune}:
            return f"prune/{variant}"
        raise RecipeError(f"no model variant named {variant!r}")

    def teacher_dirs(self) -> dict[str, Path]:
        """The user's model directories the teacher step reads (key -> directory), hashed into its cache key."""
        return {}

    def resolve_paths(self, resolve) -> RecipeBase:
        """This recipe with its teacher's directories made absolute by `resolve` and checked (a task's hook:
        the data files are resolved by `compress.recipe`)."""
        return self
