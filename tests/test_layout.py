"""The structure the README's layout section states, checked: task names only inside task folders, imports only
downward through the layers, no cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compress", "export", "benchmarks")
# not transformers' class names (AutoModelForSeq2SeqLM)
TASK_NAME = re.compile(r"(?<!sequence)classification|causal[-_]lm|seq2seq(?!lm)", re.IGNORECASE)

# Lowest first; a module may import its own layer or a lower one. The first pattern a module matches decides.
LAYERS = [
    # a task folder's entry points (its studies, its teacher publisher) read recipes: top
    ("top", r"compress(\.__main__|\.cli|\.commands|\.pipeline|\.recipe|\.tasks)?$"
     r"|compress\.tasks\.[a-z0-9_]+\.(publish|studies(\..+)?)$"),
    ("tasks", r"compress\.tasks\.[a-z0-9_]+(\..+)?$"),
    ("techniques", r"compress\.(modeling|structured|decoder_structured|masks|training|vocab|int8|weight_only|"
     r"embedding_quant|sensitivity)$"),
    ("measurement", r"benchmarks(\..+)?$"),
    ("runtime", r"export(\..+)?$"),
    ("foundation", r"compress\.[a-z_]+$"),
]  # fmt: skip
ORDER = ["foundation", "runtime", "measurement", "techniques", "tasks", "top"]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            if "bundle_template" in f.parts:  # shipped to devices: imports nothing of this project
                continue
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _layer(module: str) -> str:
    for name, pattern in LAYERS:
        if re.match(pattern, module):
            return name
    raise AssertionError(f"{module}: in no layer")


def _imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def test_no_module_outside_the_task_folders_names_a_task():
    offenders = []
    for module, path in _modules().items():
        if module.startswith("compress.tasks"):  # the task folders (entry points included), the task table
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if TASK_NAME.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_imports_go_down_the_layers_and_make_no_cycle():
    modules = _modules()
    graph = {m: _imports(p, set(modules)) - {m} for m, p in modules.items()}
    upward = [
        f"{m} ({_layer(m)}) imports {d} ({_layer(d)})"
        for m, deps in graph.items()
        for d in deps
        if ORDER.index(_layer(d)) > ORDER.index(_layer(m))
    ]
    assert not upward, "\n".join(upward)
    # A task folder imports no other task's folder.
    crossing = [
        f"{m} imports {d}"
        for m, deps in graph.items()
        for d in deps
        if _layer(m) == _layer(d) == "tasks" and m.split(".")[2] != d.split(".")[2] and d != "compress.tasks"
    ]
    assert not crossing, "\n".join(crossing)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if d.startswith(f"{m}."):
                continue  # a package importing its own submodule (its __init__) is not a cycle
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, m, d]))
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_what_runs_on_a_device_imports_no_torch():
    """The bundle templates and the memory probes' runtimes are imported from their task folders in a fresh
    process under a target's address-space cap (512 MiB for `iot`, which `import torch` alone exceeds): importing
    them must not import the task's stages."""
    import subprocess
    import sys

    modules = [
        "compress.tasks.seq2seq.bundle_template.translate",
        "compress.tasks.seq2seq.anchors",
        "compress.tasks.seq2seq.probe",
        "compress.tasks.causal_lm.bundle_template.generate",
        "compress.tasks.causal_lm.probe",
        "compress.tasks.classification.bundle_template.predict",
        "compress.tasks.classification.probe",
    ]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
