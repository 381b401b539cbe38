"""How much does vocabulary trimming cost a trained student? Trim it, then measure dev/test accuracy.

    python -m compress.tasks.classification.studies.vocab_trim RUN_DIR [--variant student] [--min-frequency 1]
    [--keep-top 0]
        [--keep-chars true|false|ascii] [--size N]

Trimming happens after distillation (`distill.trim_vocab`), so applying it to a finished student measures
exactly what the option would ship. Accuracy is measured in PyTorch on both models, same sentences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compress.modeling import load_classifier
from compress.tasks.classification.config import Recipe
from compress.tasks.classification.data import encode, load_task_data
from compress.training import accuracy, predict_logits
from compress.vocab import TrimVocabConfig, trim_vocab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--variant", default=None, help="distill variant (default: the recipe's first)")
    p.add_argument("--min-frequency", type=int, default=1)
    p.add_argument("--keep-top", type=int, default=0)
    p.add_argument("--keep-chars", default="true", choices=["true", "false", "ascii"])
    p.add_argument("--size", type=int, default=None, help="fill up to N pieces with the most frequent others")
    a = p.parse_args()
    recipe = Recipe.model_validate(json.loads((a.run_dir / "manifest.json").read_text())["recipe"])
    name = a.variant or recipe.distill[0].name
    data = load_task_data(recipe.data)
    model, tok = load_classifier(a.run_dir / "distill" / name)
    chars = {"true": True, "false": False}.get(a.keep_chars, a.keep_chars)
    cfg = TrimVocabConfig(
        enabled=True, min_frequency=a.min_frequency, keep_top=a.keep_top, keep_chars=chars, size=a.size
    )
    evals = {"dev": data.dev.texts, **({"test": data.test.texts} if data.test else {})}
    res = trim_vocab(model, tok, data.train.texts, cfg, eval_texts=evals)
    out = {"variant": name, "trim": cfg.model_dump(), **res.metrics}
    ml = recipe.data.max_length
    for split in ("dev", "test"):
        s = getattr(data, split)
        if s is None:
            continue
        before = accuracy(predict_logits(model, tok, encode(tok, s, ml)), s.labels)
        after = accuracy(predict_logits(res.model, res.tokenizer, encode(res.tokenizer, s, ml)), s.labels)
        out[f"{split}_accuracy_before"], out[f"{split}_accuracy_after"] = before, after
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
