"""Does the accuracy-budget path land inside a tight budget on a real model? Quantize one exported variant.

    python -m compress.tasks.classification.studies.int8_budget RUN_DIR --variant student --max-accuracy-drop 0.0
    [--out DIR]

The budget is checked on the run's held-out slice of train (as the pipeline does); dev accuracy of the result
is then measured with ONNX Runtime, one sentence at a time, next to the float32 source and plain int8.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from compress.calibration import calibration_feeds, model_input_names
from compress.tasks.classification.config import QuantizeConfig, Recipe
from compress.tasks.classification.data import load_task_data
from compress.tasks.classification.quantize import quantize
from export.runtime import OrtClassifier, accuracy_evaluator, tokenize_each


def _dev_accuracy(path: Path, tokenizer, texts, labels, max_length) -> float:
    clf = OrtClassifier(path, threads=2)
    preds = [int(clf(req).argmax(-1)[0]) for req in tokenize_each(tokenizer, texts, max_length)]
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--variant", required=True, help="an exported model variant (run_dir/export/<variant>)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.0)
    p.add_argument("--method", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--reduce-range", choices=["auto", "true", "false"], default="false")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    recipe = Recipe.model_validate(json.loads((a.run_dir / "manifest.json").read_text())["recipe"])
    data, ml = load_task_data(recipe.data), recipe.data.max_length
    src = a.run_dir / "export" / a.variant
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    evaluate = accuracy_evaluator(tok, data.holdout.texts, data.holdout.labels, ml)
    feeds = calibration_feeds(tok, data.train.texts[:128], ml, model_input_names(src / "model.onnx"))
    rr = {"auto": "auto", "true": True, "false": False}[a.reduce_range]
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        plain = quantize(src, out / "plain", QuantizeConfig(method=a.method, reduce_range=rr), feeds)
        cfg = QuantizeConfig(method=a.method, reduce_range=rr, max_accuracy_drop=a.max_accuracy_drop)
        budget = quantize(src, out / "budget", cfg, feeds, evaluate=evaluate)
        report = {
            "variant": a.variant,
            "settings": {"method": a.method, "reduce_range": rr, "max_accuracy_drop": a.max_accuracy_drop},
            "holdout": {
                "fp32": evaluate(src / "model.onnx"),
                "int8_plain": evaluate(out / "plain" / "model.onnx"),
                "int8_budget": budget["budget"]["accuracy"],
            },
            "dev": {
                name: _dev_accuracy(path, tok, data.dev.texts, data.dev.labels, ml)
                for name, path in (
                    ("fp32", src / "model.onnx"),
                    ("int8_plain", out / "plain" / "model.onnx"),
                    ("int8_budget", out / "budget" / "model.onnx"),
                )
            },
            "excluded_nodes": budget["budget"]["excluded_nodes"],
            "size_bytes": {"plain": plain["size_bytes"], "budget": budget["budget"]["size_bytes"]},
            "trials": budget["budget"]["trials"],
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
