"""Train a seq2seq teacher with the pipeline's teacher stage and publish it as a Hugging Face directory with a card.

    python -m compress.tasks.seq2seq.publish configs/s2s-teacher.yaml models/ding-bart   (make teacher-s2s)

The recipe's `teacher` section must train (no `teacher.path`). The recipe runs through the pipeline in its run
directory (`--run`, default `runs/<name>`: a run already there is reused stage by stage, as `run` does), so the
teacher is trained, gated and measured as every default teacher is. The published directory gets the weights as
float16 safetensors (the card gives the chrF of the float32 weights, from the run, and of the stored ones,
measured again, on held-out, dev and test: what the rounding costs is measured), the tokenizer, `training.json`
(the recipe, the corpus's checksums, versions, the commit, the teacher step's wall time and loss curve) and
`README.md`, the model card. It is written beside the destination and moved in place only when complete.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from compress.errors import RecipeError
from compress.manifest import atomic_dir, library_versions
from compress.publish import code_commit, corpus_files, machine_line, repo_relative
from compress.recipe import load_recipe, parse_overrides


def _scores(model, tokenizer, data, data_config) -> dict:
    """chrF and BLEU of plain greedy outputs on each split there is."""
    from compress.tasks.seq2seq.model import greedy_outputs, quality
    from compress.tasks.seq2seq.runtime import texts

    out = {}
    for key in ("holdout", "dev", "test"):
        split = getattr(data, key)
        if split is None or not len(split):
            continue
        sources = [data_config.source_prefix + s for s in split.sources]
        ids = greedy_outputs(model, tokenizer, sources, data_config.max_target_length, data_config.max_source_length)
        out[key] = quality(texts(tokenizer, ids), split.targets)
    return out


def publish(recipe_path: Path, out: Path, run_dir: Path | None = None, overrides: dict | None = None,
            log=print) -> dict:  # fmt: skip
    """Run the recipe (its teacher at least), then write `out` (a model directory with card); returns the record."""
    from compress.pipeline import run_pipeline
    from compress.tasks.seq2seq.data import load_pair_data
    from compress.tasks.seq2seq.model import load_seq2seq

    recipe = load_recipe(recipe_path, overrides)
    if recipe.task != "seq2seq":
        raise RecipeError(f"{recipe_path}: task = {recipe.task!r}; this publishes a teacher of task: seq2seq")
    if recipe.teacher.path is not None:
        raise RecipeError(
            f"{recipe_path}: teacher.path is set; publish trains a teacher from `teacher.architecture` (and its card "
            "says so): leave teacher.path out"
        )
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    report = run_pipeline(recipe, run_dir, log=log)
    step = json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher"]
    teacher_dir = run_dir / step["output"]
    data = load_pair_data(recipe.data, seed=recipe.seed)
    model, tokenizer = load_seq2seq(teacher_dir, "the trained teacher")
    # the float32 teacher's scores are the run's own (the teacher step's held-out figure, the benchmark's PyTorch
    # teacher on dev and test: plain greedy, as _scores decodes)
    m, row = step["metrics"], next(v for v in report["variants"] if v["name"] == "teacher-torch")
    float32 = {"holdout": {"chrf": m["holdout_chrf_torch"], "bleu": m["holdout_bleu_torch"]}} | {
        split: {"chrf": row[f"{split}_chrf"], "bleu": row[f"{split}_bleu"]}
        for split in ("dev", "test")
        if row.get(f"{split}_chrf") is not None
    }
    record = {
        "recipe": json.loads(recipe.model_dump_json()),
        "recipe_file": str(recipe_path),
        "run_dir": str(run_dir),
        "corpus": corpus_files(recipe.data),
        "corpus_dir": repo_relative(Path(recipe.data.train).parent),
        "commit": code_commit(),
        "versions": library_versions(),
        "machine": machine_line(),
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "teacher_step": {k: step.get(k) for k in ("started", "ended", "wall_s", "peak_rss_bytes")},
        "metrics": step["metrics"],
        "loss_curve": step["metrics"].get("loss_curve", []),
        "chrf_float32": float32,
    }
    with atomic_dir(out) as tmp:
        model.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        stored, _ = load_seq2seq(tmp, "the published teacher")  # what a user loads: float16 -> float32
        log("    scoring the stored (float16) teacher")
        record["chrf_stored"] = _scores(stored.float().eval(), tokenizer, data, recipe.data)
        (tmp / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(record, out.name))
    return record


def _cell(scores: dict, split: str, key: str) -> str:
    value = (scores.get(split) or {}).get(key)
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def model_card(record: dict, name: str) -> str:
    m, t = record["metrics"], record["recipe"]["teacher"]
    arch, f32, f16 = t["architecture"], record["chrf_float32"], record["chrf_stored"]
    rows = "\n".join(
        f"| {label} | {_cell(f32, split, 'chrf')} | {_cell(f16, split, 'chrf')} | {_cell(f32, split, 'bleu')} | "
        f"{_cell(f16, split, 'bleu')} |"
        for split, label in (("holdout", "held-out (train sources never trained on)"), ("dev", "dev"), ("test", "test"))
    )
    curve = record["loss_curve"]
    every = max(1, len(curve) // 12)
    loss_rows = "\n".join(f"| {c['epoch']:g} | {c['step']:,} | {c['loss']:.3f} |" for c in curve[::every]) or (
        "| | | not recorded by the run that trained it |"
    )
    where = record["corpus_dir"]
    corpus = "\n".join(f"- `{c['file']}`: sha256 `{c['sha256']}`" for c in record["corpus"].values())
    wall = record["teacher_step"].get("wall_s") or 0
    family = {"t5": "T5", "bart": "BART"}.get(arch["family"], arch["family"])
    return f"""---
library_name: transformers
license: gpl-2.0
tags: [translation, seq2seq, edge-compress]
---
# {name}

A {m['params']:,}-parameter {family}-style encoder-decoder ({arch['encoder_layers']} encoder and
{arch['decoder_layers']} decoder layers, width {arch['d_model']}, {arch['heads']} heads, FFN {arch['ffn']},
{t['tokenizer']['vocab_size']:,}-token tokenizer trained on both sides of the same pairs), trained from scratch by
edge-compress's teacher stage on the pairs in `{where}` ({where}/README.md: source, licence and split). Weights
are stored as float16 safetensors. Plain greedy decoding (no forced tokens, no repetition rules), as the
project's ONNX loop decodes.

## Quality (chrF and BLEU of greedy outputs, sacrebleu; each pair scored against its own reference)

| split | chrF float32 | chrF float16 (stored) | BLEU float32 | BLEU float16 |
|---|---:|---:|---:|---:|
{rows}

## Training

- Recipe: `{record['recipe_file']}` (the whole recipe is in `training.json`); seed {record['recipe']['seed']}.
- {m.get('train_steps', 0):,} optimizer steps of {t['batch_size']} pairs ({t['epochs']:g} epochs), learning rate
  {t['learning_rate']:g} (warm-up {t['warmup_ratio']:g}, linear decay), label smoothing {t['label_smoothing']:g};
  final training loss {m.get('train_loss', float('nan')):.3f}.
- Wall time of the teacher step: {wall / 60:.1f} minutes on {record['machine']}.
- Code: commit {record['commit']}; {', '.join(f'{k} {v}' for k, v in sorted(record['versions'].items()))}.

Training loss (with label smoothing) along the way:

| epoch | step | loss |
|---:|---:|---:|
{loss_rows}

## Corpus

{corpus}

How the corpus is rebuilt byte for byte: `{where}/README.md`.

## Licence

The weights are derived from the corpus (GPL-2+ where it is the Ding dictionary); its licence files are in
`{where}`.

## Reproduce

    python -m compress.tasks.seq2seq.publish {record['recipe_file']} models/{name}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("out", type=Path, help="the model directory to write (replaced only when complete)")
    ap.add_argument("--run", type=Path, default=None, help="the run directory (default runs/<recipe name>)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a recipe value")
    args = ap.parse_args(argv)
    try:
        record = publish(args.recipe, args.out, args.run, parse_overrides(args.set))
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    f32 = record["chrf_float32"]
    print(f"{args.out}: dev chrF {_cell(f32, 'dev', 'chrf')}, test chrF {_cell(f32, 'test', 'chrf')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
