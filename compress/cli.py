"""The `edge-compress` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from compress import commands
from compress.errors import StageError
from compress.recipe import RecipeError, load_recipe, parse_overrides

_EPILOG = """examples:
  edge-compress run configs/default.yaml                 # SST-2 + MiniLM, every stage; report in runs/sst2-minilm/
  edge-compress run configs/quick.yaml --out /tmp/try    # a small slice of the data, a few minutes
  edge-compress run configs/default.yaml --set prune.sparsity=0.7   # re-runs prune and what follows it only
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-compress",
        description="Compress a fine-tuned transformer for CPU-only devices: teacher -> distilled student -> "
        "pruned -> ONNX -> int8 -> benchmark report.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a recipe through every stage (stages whose inputs and config are unchanged are skipped)",
        description="Run the pipeline described by RECIPE. Each stage's artifact, manifest.json, report.md "
        "and report.json go to the run directory. Re-running skips stages whose config and inputs are "
        "unchanged; an interrupted run resumes at the stage it was in.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("recipe", type=Path, help="YAML recipe, e.g. configs/default.yaml")
    run.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<recipe name>)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a recipe value, e.g. --set prune.sparsity=0.7 (repeatable; value parsed as YAML)",
    )
    check = sub.add_parser("check", help="validate a recipe and its data files without running anything")
    check.add_argument("recipe", type=Path)
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE")
    commands.add_subparsers(sub)  # compare, bundle, predict: they work on finished runs
    return p


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    if args.command in commands.COMMANDS:  # before transformers is imported: `predict` stays light
        sys.exit(commands.dispatch(args))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        recipe = load_recipe(args.recipe, parse_overrides(args.overrides))
        if args.command == "check":
            from compress.tasks import task_for

            task = task_for(recipe.task)
            data = task.load_data(recipe)
            task.preflight(recipe)
            print(f"{args.recipe}: ok ({task.name}: {task.summary(data)})")
            for line in task.costs(recipe, data) if hasattr(task, "costs") else []:  # an optional hook
                print(line)
            return
        from compress.pipeline import run_pipeline

        run_pipeline(recipe, args.out)
    except RecipeError as e:
        print(f"edge-compress: error: {e}", file=sys.stderr)
        sys.exit(2)
    except StageError as e:
        print(f"edge-compress: stage failed: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        # A full disk, a directory made read-only under a running step: the step's temporary is gone (atomic_dir)
        # and the finished steps are kept; the user needs the cause, not a traceback.
        where = f" ({e.filename})" if e.filename else ""
        print(f"edge-compress: stage failed: {e.strerror or e}{where}; finished steps are kept", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("edge-compress: interrupted; finished stages are kept, run again to resume", file=sys.stderr)
        sys.exit(130)
