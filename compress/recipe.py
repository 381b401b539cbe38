"""The recipe: one YAML file parsed into frozen, validated stage configs.

Every user error (unknown key, wrong type, out-of-range value, missing file) becomes a `RecipeError` whose
message is one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from compress.config import (
    NAME,
    BenchmarkConfig,
    DataConfig,
    DistillConfig,
    ExportConfig,
    PruneConfig,
    QuantizeConfig,
    TeacherConfig,
    _Config,
)
from compress.errors import RecipeError
from compress.lm_config import (
    LMBenchmarkConfig,
    LMDistillConfig,
    LMExportConfig,
    LMQuantizeConfig,
    LMTeacherConfig,
    TextDataConfig,
)

# Re-exported: the configs are part of the recipe's vocabulary.
__all__ = [
    "BenchmarkConfig",
    "DataConfig",
    "DistillConfig",
    "ExportConfig",
    "PruneConfig",
    "QuantizeConfig",
    "AnyRecipe",
    "CausalLMRecipe",
    "Recipe",
    "RecipeError",
    "TeacherConfig",
    "load_recipe",
    "parse_overrides",
]


TASKS = ("classification", "causal-lm")


class _RecipeBase(_Config):
    """What every task's recipe has: a name, a seed, the task, and variant sections whose names are unique."""

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


class Recipe(_RecipeBase):
    """A classification run (`task: classification`, the default): an encoder that labels a text."""

    task: Literal["classification"] = "classification"
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    # distill, prune and quantize each take one mapping or a list of them (variants, each with a unique name).
    distill: list[DistillConfig] = Field(default=[DistillConfig()], min_length=1)
    prune: list[PruneConfig] = Field(default=[PruneConfig()], min_length=0)
    export: ExportConfig = ExportConfig()
    quantize: list[QuantizeConfig] = Field(default=[QuantizeConfig()], min_length=0)
    benchmark: BenchmarkConfig = BenchmarkConfig()

    @model_validator(mode="after")
    def _classifier_gates(self) -> Recipe:
        for i, p in enumerate(self.prune):
            if p.max_perplexity_ratio != PruneConfig.model_fields["max_perplexity_ratio"].default:
                raise ValueError(f"prune.{i}.max_perplexity_ratio is a causal LM's gate; a classifier's is max_drop")
            if p.hidden:
                raise ValueError(f"prune.{i}.hidden: hidden-size pruning is implemented for causal LMs only")
            if p.rounds is not None:
                raise ValueError(
                    f"prune.{i}.rounds: a classifier's cubic schedule tightens its masks every prune.every optimizer "
                    "steps; rounds applies to a causal LM's structured cut"
                )
            if p.importance in ("activation", "wanda"):
                raise ValueError(
                    f"prune.{i}.importance = {p.importance!r}: implemented for causal LMs; use 'magnitude' or 'taylor'"
                )
        return self


class CausalLMRecipe(_RecipeBase):
    """A causal language-model run (`task: causal-lm`): a decoder that continues a text."""

    task: Literal["causal-lm"]
    data: TextDataConfig
    teacher: LMTeacherConfig = LMTeacherConfig()
    distill: list[LMDistillConfig] = Field(default=[LMDistillConfig()], min_length=1)
    prune: list[PruneConfig] = Field(default=[], min_length=0)
    export: LMExportConfig = LMExportConfig()
    quantize: list[LMQuantizeConfig] = Field(default=[LMQuantizeConfig()], min_length=0)
    benchmark: LMBenchmarkConfig = LMBenchmarkConfig()

    @model_validator(mode="after")
    def _decoder_pruning(self) -> CausalLMRecipe:
        for i, p in enumerate(self.prune):
            if p.method != "structured" and p.rounds is not None:
                raise ValueError(
                    f"prune.{i}.rounds applies to method 'structured'; {p.method} masks tighten every prune.every "
                    "optimizer steps"
                )
            if p.method == "structured" and p.every != PruneConfig.model_fields["every"].default:
                raise ValueError(
                    f"prune.{i}.every: a structured cut of a decoder changes its matrices' shapes, so it cuts in "
                    "prune.rounds rounds (default 3), each distilled until the next, not every N optimizer steps"
                )
            if p.method == "structured" and p.importance == "taylor":
                raise ValueError(
                    f"prune.{i}.importance = 'taylor': a decoder's structures are scored by 'activation' or 'magnitude'"
                )
            if p.importance == "activation" and p.method != "structured":
                raise ValueError(f"prune.{i}.importance = 'activation' applies to method 'structured'")
            if p.importance == "wanda" and p.method == "structured":
                raise ValueError(f"prune.{i}.importance = 'wanda' scores single weights: method unstructured or n:m")
            if p.importance == "wanda" and "scope" in p.model_fields_set and p.method != "n:m":
                raise ValueError(f"prune.{i}.scope: wanda ranks the weights of each output row (leave scope out)")
            if p.hidden_weight:
                raise ValueError(f"prune.{i}.hidden_weight: not supported for a causal LM (leave it at 0)")
            if p.max_drop != PruneConfig.model_fields["max_drop"].default:
                raise ValueError(f"prune.{i}.max_drop is the classifier's gate; a causal LM's is max_perplexity_ratio")
            if p.trim_vocab.enabled:
                raise ValueError(f"prune.{i}.trim_vocab: vocabulary trimming is implemented for classifiers only")
            if p.augment.copies:
                raise ValueError(f"prune.{i}.augment: augmented copies are implemented for classifiers only")
        return self

    def quantize_sources(self) -> list[str]:
        # The teacher too: its int4 is what a user would ship without a student (the anchor to beat).
        return ["teacher", *super().quantize_sources()]

    def default_quantize_source(self) -> str:
        # The student, not a pruned copy: unstructured zeros make no decoder faster, int4 of the student does
        # (a structured prune is quantized when a quantize variant names it as its source).
        return self.distill[0].name


AnyRecipe = Recipe | CausalLMRecipe


def recipe_class(task: Any) -> type[_RecipeBase]:
    """The recipe model of a task name."""
    match task:
        case "classification":
            return Recipe
        case "causal-lm":
            return CausalLMRecipe
    raise RecipeError(f"task = {task!r}: expected one of {', '.join(TASKS)}")


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


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] = Recipe) -> type[BaseModel] | None:
    import typing

    model: type[BaseModel] | None = root
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


def _format_error(
    source: str, err: dict[str, Any], singles: set[str] = frozenset(), root: type[BaseModel] = Recipe
) -> str:
    loc = tuple(err["loc"])
    if len(loc) > 1 and loc[0] in singles and loc[1] == 0:  # written as one mapping: no index in the message
        loc = loc[:1] + loc[2:]
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1], root)
        valid = ", ".join(parent.model_fields) if parent else "?"
        return f"{source}: unknown key '{key}'; valid keys here: {valid}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    if not loc:  # a check across keys: its message names them
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    return f"{source}: {key} = {_short(err.get('input'))}: {err['msg']}"


def _short(value: Any, limit: int = 80) -> str:
    """A value as the error shows it: its repr, cut so that one line stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MAX_ALIASES = 100  # YAML aliases resolved per recipe: a few are handy, thousands are a "billion laughs"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a bound on alias resolutions: nested aliases can expand a 1 KB file into
    gigabytes of structure (and a gigabyte error message)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name) at line {mark.line + 1}: refused")
        return super().compose_node(parent, index)


def _nested_size(value: Any, limit: int = 100_000) -> int:
    """Nodes in a parsed recipe, counted up to `limit` (aliases share nodes: the count is what a walk visits)."""
    count, stack = 0, [value]
    while stack and count < limit:
        v = stack.pop()
        count += 1
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return count


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> AnyRecipe:
    """Read, override and validate a recipe; resolve its data paths and check that they exist.

    Args:
        path: the YAML recipe file.
        overrides: dotted keys to values, applied before validation (the CLI's `--set`).

    Returns:
        The frozen recipe of its task (`Recipe` for classification, `CausalLMRecipe` for `task: causal-lm`),
        with paths made absolute.

    Raises:
        RecipeError: on any problem with the file, a key, a value or a data path.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM (Excel, Notepad) is not part of the YAML
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        tree = yaml.load(text, Loader=_BoundedLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise RecipeError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: expected a mapping of sections at the top level, got {type(tree).__name__}")
    if _nested_size(tree) >= 100_000:
        raise RecipeError(f"{path}: the recipe expands to more than 100,000 values; refused")
    singles = {s for s in ("distill", "prune", "quantize") if isinstance(tree.get(s), dict) or s not in tree}
    for section in singles & set(tree):
        tree[section] = [tree[section]]
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    root = recipe_class(tree.get("task", "classification"))
    try:
        recipe = root.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(_format_error(str(path), e.errors()[0], singles, root)) from None
    return _resolve_paths(recipe, path.parent)


_DATA_FORMATS = {
    "classification": (".tsv", ".csv", ".jsonl"),
    "causal-lm": (".txt", ".jsonl", ".txt.gz", ".jsonl.gz"),
}


def _resolve_paths(recipe: AnyRecipe, base: Path) -> AnyRecipe:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    data = {k: resolve(v) if isinstance(v, Path) else v for k, v in recipe.data.model_dump().items()}
    formats = _DATA_FORMATS[recipe.task]
    for key in ("train", "dev", "test"):
        p = data[key]
        if p is not None and not p.is_file():
            raise RecipeError(f"data.{key} = {str(p)!r}: file not found")
        if p is not None and not p.name.lower().endswith(formats):
            raise RecipeError(f"data.{key} = {str(p)!r}: unsupported format '{p.suffix}'; use {', '.join(formats)}")
    data_config = type(recipe.data)(**data)
    if recipe.task == "causal-lm":
        teacher = recipe.teacher
        for key in ("path", "base"):
            value = getattr(teacher, key)
            if value is not None:
                tp = resolve(value)
                if not (tp / "config.json").is_file():
                    raise RecipeError(
                        f"teacher.{key} = {str(tp)!r}: not a Hugging Face model directory (no config.json)"
                    )
                teacher = teacher.model_copy(update={key: tp})
        return recipe.model_copy(update={"data": data_config, "teacher": teacher})
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
    return recipe.model_copy(update={"data": data_config, "teacher": teacher})
