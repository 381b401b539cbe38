"""Export stage: a Hugging Face classifier directory to ONNX with optimum, checked against PyTorch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from compress.errors import StageError
from compress.tasks.classification.config import ExportConfig
from export.artifact import Artifact
from export.runtime import OrtClassifier, TorchClassifier, batched_logits


class ExportCheckError(StageError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the configured tolerance."""


def export_onnx(
    model_dir: Path, out_dir: Path, config: ExportConfig, check_texts: list[str], *, max_length: int
) -> dict:
    """Export `model_dir` to `out_dir/model.onnx` (dynamic batch and sequence axes) beside its tokenizer.

    The check runs both models on `check_texts` (real sentences, padded batches) and compares logits.

    Returns:
        Metrics of the check: max abs logit difference and predicted-label agreement.

    Raises:
        ExportCheckError: difference above `config.atol` or agreement below `config.min_agreement`.
    """
    from optimum.exporters.onnx import main_export
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    # optimum's own validation uses random inputs; the real-sentence check below is the one that gates.
    main_export(
        str(model_dir),
        output=out_dir,
        task="text-classification",
        opset=config.opset,
        do_validation=False,
        local_files_only=True,
    )
    for f in Path(model_dir).iterdir():  # tokenizer files optimum did not copy
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")) and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    tokenizer = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    texts = check_texts[: config.check_examples]
    ref = batched_logits(TorchClassifier(model_dir), tokenizer, texts, max_length)
    got = batched_logits(OrtClassifier(out_dir / "model.onnx", threads=2), tokenizer, texts, max_length)
    max_diff = float(np.abs(ref - got).max())
    agreement = float((ref.argmax(-1) == got.argmax(-1)).mean())
    metrics = {"check_examples": len(texts), "max_abs_logit_diff": max_diff, "label_agreement": agreement}
    Artifact(out_dir, "classification").write()
    if max_diff > config.atol or agreement < config.min_agreement:
        raise ExportCheckError(
            f"export check failed for {model_dir}: max |logit diff| {max_diff:.2e} (export.atol {config.atol}), "
            f"label agreement {agreement:.4f} (export.min_agreement {config.min_agreement})"
        )
    return metrics
