"""Train a causal-LM teacher with the teacher stage and publish it as a Hugging Face directory with a model card.

    python -m compress.tasks.causal_lm.publish configs/lm-teacher.yaml models/devdocs-llama   (make teacher-lm)

The recipe's `teacher` section must pretrain (no `teacher.path`); only the teacher stage runs. The directory gets
the weights as float16 safetensors (half the size of float32; the card gives the perplexity of the float32
weights and of the stored ones, so what the rounding costs is measured), the tokenizer, `training.json` (the
recipe, the corpus's checksums, versions, the commit, wall time and the held-out curve) and `README.md`, the model
card. It is written beside the destination and moved in place only when complete.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from compress.errors import RecipeError
from compress.manifest import atomic_dir, library_versions
from compress.publish import code_commit, corpus_files, machine_line, repo_relative
from compress.recipe import load_recipe, parse_overrides


def publish(recipe_path: Path, out: Path, overrides: dict | None = None) -> dict:
    """Train the recipe's teacher, then write `out` (a model directory with card); returns the training record."""
    from compress.tasks.causal_lm.data import load_text_data
    from compress.tasks.causal_lm.model import load_causal_lm
    from compress.tasks.causal_lm.teacher import measure_lm, train_teacher_lm

    recipe = load_recipe(recipe_path, overrides)
    if recipe.task != "causal-lm":
        raise RecipeError(f"{recipe_path}: task = {recipe.task!r}; publishing a teacher needs task: causal-lm")
    if recipe.teacher.path is not None or recipe.teacher.base is not None:
        key = "teacher.path" if recipe.teacher.path is not None else "teacher.base"
        raise RecipeError(
            f"{recipe_path}: {key} is set; publish pretrains a teacher from `teacher.architecture` (and its card says "
            "so): leave teacher.path and teacher.base out"
        )
    data = load_text_data(recipe.data)
    start = time.time()
    with tempfile.TemporaryDirectory() as work:
        result = train_teacher_lm(recipe.teacher, data, recipe.data, seed=recipe.seed, work_dir=Path(work))
    wall = time.time() - start
    model, tokenizer = result.model, result.tokenizer
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    record = {
        "recipe": json.loads(recipe.model_dump_json()),
        "recipe_file": str(recipe_path),
        "corpus": corpus_files(recipe.data),
        "corpus_dir": repo_relative(Path(recipe.data.train).parent),
        "commit": code_commit(),
        "versions": library_versions(),
        "machine": machine_line(),
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_time_s": round(wall, 1),
        "metrics_float32": result.metrics,
    }
    record["layer_removal"] = layer_removal(model, tokenizer, data, recipe.data)
    with atomic_dir(out) as tmp:
        model.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        stored, _ = load_causal_lm(tmp, "the published teacher")  # what a user loads: float16 -> float32
        stored_metrics, _ = measure_lm(stored.float().eval(), tokenizer, data, recipe.data)
        record["metrics_stored"] = stored_metrics
        (tmp / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(record, out.name))
    return record


def layer_removal(model, tokenizer, data, data_config) -> dict | None:
    """Held-out perplexity of the model and of the model without each one of its layers (a converged model
    needs every layer: removing any one should raise it; an undertrained one may improve without some)."""
    from compress.tasks.causal_lm.data import eval_blocks
    from compress.tasks.causal_lm.distill import select_layers
    from compress.tasks.causal_lm.model import evaluate_blocks

    if model.config.num_hidden_layers < 2:
        return None
    key = "holdout" if data.holdout else "dev"
    blocks = eval_blocks(tokenizer, getattr(data, key), data_config, key)
    model = model.float().eval()
    full = evaluate_blocks(model, blocks, batch_size=4, desc="all layers").perplexity
    _, rounds = select_layers(model, blocks, model.config.num_hidden_layers - 1)
    without = {str(i): p for i, p in rounds[0]["perplexity_without"].items()}
    return {"split": key, "perplexity": full, "without": without, "every_layer_needed": min(without.values()) > full}


def _ppl(value) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def _layer_lines(removal: dict | None) -> str:
    if not removal:
        return ""
    cells = ", ".join(f"layer {i}: {p:.2f}" for i, p in removal["without"].items())
    verdict = (
        "removing any one layer raises it" if removal["every_layer_needed"] else
        "**removing some layer lowers it: the model is not trained to use all its layers**"
    )  # fmt: skip
    return (
        f"Every layer's share: {removal['split']} perplexity {removal['perplexity']:.2f} with all layers; without "
        f"one ({cells}): {verdict}."
    )


def model_card(record: dict, name: str) -> str:
    m, s = record["metrics_float32"], record["metrics_stored"]
    t = record["recipe"]["teacher"]
    arch = t["architecture"]
    curve = m.get("heldout_curve") or []
    rows = "\n".join(
        f"| {c['epoch']:g} | {c['step']:,} | {c['heldout_perplexity']:.2f} | "
        + ("" if c["gain"] is None else f"{100 * c['gain']:.1f}%")
        + " |"
        for c in curve
    )
    stop = (
        f"stopped after the epoch that lowered held-out perplexity by less than {100 * t['min_epoch_gain']:g}%"
        if m.get("converged")
        else f"ran the recipe's maximum of {t['epochs']:g} epochs without meeting the convergence rule "
        f"(an epoch gaining less than {100 * (t['min_epoch_gain'] or 0):g}%): not converged by that rule"
    )
    held_out_stored = _ppl(s.get("holdout_perplexity_torch"))
    where = record["corpus_dir"]
    corpus = "\n".join(f"- `{c['file']}`: sha256 `{c['sha256']}`" for c in record["corpus"].values())
    return f"""---
library_name: transformers
license: other
tags: [causal-lm, edge-compress]
---
# {name}

A {m['params']:,}-parameter {arch['family'].capitalize()}-style decoder ({m['layers']} layers, hidden
{m['hidden_size']}, {arch['heads']} heads / {arch['kv_heads']} key-value heads, FFN {arch['intermediate_size']},
{m['vocab_size']:,}-piece byte-level BPE trained on the same text), pretrained from scratch by edge-compress's
teacher stage on the corpus in `{where}` ({where}/README.md: its sources, licences and split). Weights are
stored as float16 safetensors.

## Quality (perplexity on whole held-out pages, 256-token blocks)

| split | float32 (as trained) | float16 (as stored) |
|---|---:|---:|
| held-out (train pages never trained on) | {_ppl(m.get('holdout_perplexity_torch'))} | {held_out_stored} |
| dev | {_ppl(m.get('dev_perplexity_torch'))} | {_ppl(s.get('dev_perplexity_torch'))} |
| test | {_ppl(m.get('test_perplexity_torch'))} | {_ppl(s.get('test_perplexity_torch'))} |

## Training

- Recipe: `{record['recipe_file']}` (the whole recipe is in `training.json`); seed {record['recipe']['seed']}.
- {m['train_tokens']:,} training tokens per epoch, {m['epochs_trained']:g} epochs, {m['train_steps']:,}
  optimizer steps of {t['batch_size']} blocks; learning rate {t['learning_rate']:g}, linear decay over
  {t['epochs']:g} epochs; the weights of the lowest held-out loss kept (step {m.get('best_step')}).
- Convergence: {stop}.
- Wall time: {record['wall_time_s'] / 60:.1f} minutes on {record['machine']}.
- Code: commit {record['commit']}; {', '.join(f'{k} {v}' for k, v in sorted(record['versions'].items()))}.

{_layer_lines(record.get("layer_removal"))}

Held-out perplexity at the end of each epoch:

| epoch | step | held-out perplexity | gain over the epoch before |
|---:|---:|---:|---:|
{rows}

## Corpus

{corpus}

How the corpus is rebuilt byte for byte: `{where}/README.md`.

## Licence

The weights are derived from the corpus; its licences (and the licence files) are in `{where}`.

## Reproduce

    python -m compress.tasks.causal_lm.publish {record['recipe_file']} models/{name}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("out", type=Path, help="the model directory to write (replaced only when complete)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a recipe value")
    ap.add_argument("--card-only", action="store_true", help="rewrite OUT/README.md from OUT/training.json")
    args = ap.parse_args(argv)
    if args.card_only:
        record_file = args.out / "training.json"
        if not record_file.is_file():
            print(f"error: {record_file}: not found (publish the model first)", file=sys.stderr)
            return 2
        record = json.loads(record_file.read_text())
        record.setdefault("corpus_dir", repo_relative(Path(record["recipe"]["data"]["train"]).parent))
        (args.out / "README.md").write_text(model_card(record, args.out.name))
        return 0
    try:
        record = publish(args.recipe, args.out, parse_overrides(args.set))
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = record["metrics_float32"]
    print(f"{args.out}: dev perplexity {_ppl(m.get('dev_perplexity_torch'))}, {record['wall_time_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
