"""The toy task's stages, report, comparison and bundle (see `tests.toy_task`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.document import Section
from benchmarks.report import build_envelope, cell, delta, render_comparison, write_report
from compress.errors import RecipeError
from export.bundle_checks import choose_variant, open_run
from tests.toy_task.config import WordCountRecipe

MODEL = "model.json"


def _lines(path: Path) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


def _predict(model: dict, text: str) -> float:
    return model["slope"] * len(text) + model["intercept"]


def _mae(model: dict, texts: list[str]) -> float:
    return sum(abs(_predict(model, t) - len(t.split())) for t in texts) / len(texts)


def _fit(xs: list[float], ys: list[float]) -> dict:
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / n / var
    return {"slope": slope, "intercept": my - slope * mx}


def _save(out: Path, model: dict) -> None:
    (out / MODEL).write_text(json.dumps(model))


class WordCountTask:
    """Stages of `task: word-count` (see `compress.tasks.Task`)."""

    name = "word-count"
    metric = "mae"
    higher_is_better = False
    recipe_class = WordCountRecipe
    bundle_rules = {"max_mae": 1.0}

    def load_data(self, recipe):
        d = recipe.data
        return {"train": _lines(d.train), "dev": _lines(d.dev)}

    def summary(self, data) -> str:
        return f"{len(data['train'])} train / {len(data['dev'])} dev lines"

    def load_model(self, model_dir: Path):
        return json.loads((Path(model_dir) / MODEL).read_text()), None

    def preflight(self, recipe) -> None:
        if recipe.teacher.slope is not None and recipe.teacher.slope < 0:
            raise RecipeError(f"teacher.slope = {recipe.teacher.slope}: a longer line has no fewer words")

    def teacher(self, ctx, step, out: Path) -> dict:
        c, train = step.config, ctx.data["train"]
        if c.slope is not None:
            model = {"slope": c.slope, "intercept": c.intercept}
        else:
            model = _fit([len(t) for t in train], [len(t.split()) for t in train])
        _save(out, model)
        return {"dev_mae": _mae(model, ctx.data["dev"]), **model}

    def distill(self, ctx, step, out: Path) -> dict:
        teacher, _ = ctx.load("teacher")
        train = ctx.data["train"]
        model = _fit([len(t) for t in train], [_predict(teacher, t) for t in train])  # the teacher's soft targets
        _save(out, model)
        mae = _mae(model, ctx.data["dev"])
        limit = step.config.max_mae
        passed = limit is None or mae <= limit
        return {"dev_mae": mae, "gate": {"passed": passed, "reasons": [] if passed else [f"dev MAE {mae:.3f}"]}}

    def prune(self, ctx, step, out: Path) -> dict:
        source, _ = ctx.load(ctx.recipe.source_of(step.config))
        model = dict(source)
        model["intercept" if step.config.method == "structured" else "slope"] = 0.0
        _save(out, model)
        return {"dev_mae": _mae(model, ctx.data["dev"])}

    def export(self, ctx, step, out: Path) -> dict:
        model, _ = ctx.load(step.name)
        _save(out, {k: round(v, step.config.digits) for k, v in model.items()})
        return {"format": "json"}

    def quantize(self, ctx, step, out: Path) -> dict:
        src = json.loads((ctx.out(step.inputs[0]) / MODEL).read_text())
        q = step.config.step
        model = {k: round(v / q) * q for k, v in src.items()}
        _save(out, model)
        return {"dev_mae": _mae(model, ctx.data["dev"]), "step": q}

    def benchmark(self, ctx, step, out: Path) -> dict:
        dev = ctx.data["dev"]
        variants = []
        for s in step.inputs:
            stage, _, name = s.partition("/")
            if stage not in ("export", "quantize") or not ctx.ok(s):
                continue
            model = json.loads((ctx.out(s) / MODEL).read_text())
            name = f"{name}-export" if stage == "export" else name
            variants.append({"name": name, "artifact": s, "runtime": "json", "mae": _mae(model, dev)})
        results = {
            "environment": {"cpu": {"model": "any", "isa": {}}, "threads": 1, "targets": {"any": {"threads": 1}}},
            "settings": {"protocol": step.config.model_dump()},
            "reference": "teacher-export",
            "variants": variants,
        }
        (out / "results.json").write_text(json.dumps(results))
        return {"variants": len(variants)}

    def write_report(self, run_dir: Path, results: dict, manifest: dict) -> dict:
        report = build_envelope(
            results,
            manifest,
            task=self.name,
            ratios=lambda v, b: {},
            step_summary=lambda s, m: {"dev_mae": m.get("dev_mae")},
        )
        table = Section(
            "Variants", header=["variant", "dev MAE"], rows=[[v["name"], f"{v['mae']:.3f}"] for v in report["variants"]]
        )
        return write_report(report, [Section(f"word-count report: {report['run']}", level=1), table], {}, run_dir)

    def compare_row(self, a: dict, b: dict) -> dict:
        return {"mae": delta(a["mae"], b["mae"])}

    def render_comparison(self, cmp: dict) -> str:
        return render_comparison(cmp, ["dev MAE"], lambda r: [cell(r["mae"], lambda x: f"{x:.3f}")], None)

    def bundle(self, run_dir: Path, target: str, out_dir: Path, variant, *, rule: dict, force: bool) -> dict:
        report, _ = open_run(run_dir, out_dir, force, variant)
        limit = {**self.bundle_rules, **rule}["max_mae"]

        def best(r, t):
            ok = [v for v in r["variants"] if v["mae"] <= limit]
            return min(ok, key=lambda v: v["mae"]), f"lowest dev MAE within {limit}"

        chosen, why, _ = choose_variant(report, run_dir, target, variant, best)
        out_dir.mkdir(parents=True)
        shutil.copy2(Path(run_dir) / chosen["artifact"] / MODEL, out_dir / MODEL)
        meta = {"format": 1, "variant": chosen["name"], "selection": why, "files": [MODEL]}
        (out_dir / "bundle.json").write_text(json.dumps(meta))
        return meta

    def bundle_message(self, meta: dict, out_dir: Path) -> str:
        return f"{out_dir}: {meta['variant']} ({meta['selection']})"
