"""The recipe: one YAML file parsed into frozen, validated stage configs.

Every user error (unknown key, wrong type, out-of-range value, missing file) becomes a `RecipeError` whose
message is one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compress.config import RecipeBase
from compress.errors import RecipeError
from compress.tasks import DEFAULT_TASK, TASKS, task_for

__all__ = ["AnyRecipe", "RecipeError", "load_recipe", "parse_overrides", "recipe_class"]

AnyRecipe = RecipeBase  # a task's recipe model (`compress/tasks/<task>/config.py`)


def recipe_class(task: Any) -> type[RecipeBase]:
    """The recipe model of a task name."""
    if not isinstance(task, str) or task not in TASKS:
        raise RecipeError(f"task = {task!r}: expected one of {', '.join(TASKS)}")
    return task_for(task).recipe_class


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
            out[key.strip()] = _yaml(raw)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
    return out


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
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
    source: str, err: dict[str, Any], singles: set[str], root: type[BaseModel]
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
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across keys: its message names them
        return f"{source}: {msg}"
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):
        # A check across one section's keys: its message names them (`prune.rounds ...`); the variant's index
        # goes in where the section holds several (`prune.1.rounds ...`).
        section = ".".join(str(p) for p in loc)
        if msg.startswith(f"{loc[0]}."):
            return f"{source}: {msg.replace(f'{loc[0]}.', f'{section}.', 1)}"
        head, model = re.match(r"([A-Za-z_]\w*) = ", msg), _model_at(tuple(err["loc"]), root)
        if head and model is not None and head.group(1) in model.model_fields:  # one key's value, refused
            return f"{source}: {section}.{msg}"
        return f"{source}: {msg}"
    return f"{source}: {key} = {_short(err.get('input'))}: {err['msg']}"


def _short(value: Any, limit: int = 80) -> str:
    """A value as the error shows it: its repr, cut so that one line stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MAX_ALIASES = 100  # YAML aliases resolved per recipe: a few are handy, thousands are a "billion laughs"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, strict: a bound on alias resolutions (nested aliases can expand a 1 KB file into
    gigabytes of structure, and a gigabyte error message), a key repeated in one mapping refused (PyYAML keeps
    the later value silently), and YAML 1.2's booleans only (`true`/`false`: YAML 1.1 also reads `yes`, `no`,
    `on`, `off` and `y` as booleans, so `name: no` or `keep_chars: yes` would not mean what they say)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = key_node.value
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key '{key}' appears twice in one mapping (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name) at line {mark.line + 1}: refused")
        return super().compose_node(parent, index)


_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _yaml(text: str):
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


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
        The frozen recipe of its task (the task's `recipe_class`, `compress.tasks`),
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
        tree = _yaml(text) or {}
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
    root = recipe_class(tree.get("task", DEFAULT_TASK))
    try:
        recipe = root.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(_format_error(str(path), e.errors()[0], singles, root)) from None
    return _resolve_paths(recipe, path.parent)


def _resolve_paths(recipe: AnyRecipe, base: Path) -> AnyRecipe:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    data = {k: resolve(v) if isinstance(v, Path) else v for k, v in recipe.data.model_dump().items()}
    formats = recipe.DATA_FORMATS
    for key in ("train", "dev", "test"):
        p = data[key]
        if p is not None and not p.is_file():
            raise RecipeError(f"data.{key} = {str(p)!r}: file not found")
        if p is not None and not p.name.lower().endswith(formats):
            raise RecipeError(f"data.{key} = {str(p)!r}: unsupported format '{p.suffix}'; use {', '.join(formats)}")
    recipe = recipe.model_copy(update={"data": type(recipe.data)(**data)})
    return recipe.resolve_paths(resolve)
