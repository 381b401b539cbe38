"""Graph fusion and fp16 for exported encoders, each checked against the model it came from.

`optimize_onnx` runs ONNX Runtime's transformer optimizer: the attention subgraph becomes one Attention node,
Add + LayerNormalization one SkipLayerNormalization, the embeddings one EmbedLayerNormalization, bias + GELU
one BiasGelu. `to_fp16` halves the weights for runtimes with fast fp16 (GPUs, ARMv8.2+); on x86 CPUs ONNX
Runtime runs most fp16 operators through casts, so it is a size variant there, not a speed one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from export.runtime import OrtClassifier, batched_logits


class OptimizeCheckError(RuntimeError):
    """The transformed model's outputs differ from the original's beyond the tolerance."""


def _copy_side_files(src_dir: Path, out_dir: Path) -> None:
    for f in src_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx":
            shutil.copy2(f, out_dir / f.name)


def _check(ref_path: Path, got_path: Path, tokenizer_dir: Path, texts: list[str], max_length: int, atol: float) -> dict:
    """Logits of both models on `texts` (length-sorted padded batches): max abs difference and label agreement."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    ref = batched_logits(OrtClassifier(ref_path), tokenizer, texts, max_length)
    got = batched_logits(OrtClassifier(got_path), tokenizer, texts, max_length)
    max_diff = float(np.abs(ref - got).max())
    metrics = {
        "check_examples": len(texts),
        "max_abs_logit_diff": max_diff,
        "label_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
    }
    if not max_diff <= atol:  # also catches NaN
        raise OptimizeCheckError(
            f"{got_path}: max |logit diff| {max_diff:.2e} vs {ref_path} on {len(texts)} sentences (atol {atol})"
        )
    return metrics


def attention_shape(config: dict) -> tuple[int, int]:
    """`num_heads` and `hidden_size` to give the optimizer, from a Hugging Face config dict.

    The optimizer reads each layer's head count from the constant shape of its query Reshape and falls back to
    these values only where the shape is not constant. With heads pruned (`config.pruned_heads`), the layers
    differ and no single value is right, so 0/0 asks it to detect every layer (measured: per-layer counts come
    out right either way, but a wrong value also prints a warning per model).
    """
    if config.get("pruned_heads"):
        return 0, 0
    heads = config.get("num_attention_heads") or config.get("n_heads") or 0
    hidden = config.get("hidden_size") or config.get("dim") or 0
    return int(heads), int(hidden)


def optimize_onnx(
    onnx_dir: Path,
    out_dir: Path,
    check_texts: list[str],
    *,
    max_length: int,
    atol: float = 1e-4,
    model_type: str = "bert",
    opt_level: int | None = None,
) -> dict:
    """Write `out_dir/model.onnx`, `onnx_dir/model.onnx` with ONNX Runtime's transformer fusions, beside its files.

    Args:
        onnx_dir: an exported model directory (model.onnx, config.json, tokenizer files).
        out_dir: the directory to write.
        check_texts: real sentences on which the fused model must reproduce the original's logits.
        max_length: truncation length for the check.
        atol: max abs logit difference allowed.
        model_type: the optimizer's model family ("bert" covers BERT, RoBERTa, DistilBERT, ELECTRA encoders).
        opt_level: ONNX Runtime's graph optimization level before the fusions (None: the optimizer's default).

    Returns:
        The fused-operator counts, per-layer attention head counts, whether the optimizer calls the graph fully
        fused, the check's metrics and the file sizes.

    Raises:
        OptimizeCheckError: fused logits differ by more than `atol`.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    config = json.loads((onnx_dir / "config.json").read_text())
    num_heads, hidden_size = attention_shape(config)
    optimizer = optimize_model(
        str(onnx_dir / "model.onnx"),
        model_type=model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=opt_level,
    )
    fused = optimizer.get_fused_operator_statistics()
    heads = [
        next(a.i for a in n.attribute if a.name == "num_heads")
        for n in optimizer.model.graph.node
        if n.op_type in ("Attention", "MultiHeadAttention")
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    optimizer.save_model_to_file(str(out_dir / "model.onnx"))
    _copy_side_files(onnx_dir, out_dir)
    check = _check(onnx_dir / "model.onnx", out_dir / "model.onnx", out_dir, check_texts, max_length, atol)
    return {
        "fused_ops": {op: n for op, n in fused.items() if n},
        "fully_fused": bool(optimizer.is_fully_optimized(fused)),
        "attention_heads": heads,
        "num_heads_given": num_heads,
        "hidden_size_given": hidden_size,
        **check,
        "size_bytes": (out_dir / "model.onnx").stat().st_size,
        "source_size_bytes": (onnx_dir / "model.onnx").stat().st_size,
    }


def to_fp16(
    onnx_dir: Path,
    out_dir: Path,
    check_texts: list[str],
    *,
    max_length: int,
    atol: float = 1e-2,
) -> dict:
    """Write `out_dir/model.onnx`: `onnx_dir/model.onnx` with float16 weights and compute, float32 inputs/outputs.

    Uses onnxruntime.transformers.float16 (onnxconverter-common's converter); `keep_io_types` keeps the logits
    float32 so callers do not change, and its default block list keeps the operators without fp16 kernels in
    float32.

    Returns:
        The check's metrics (max abs logit difference, label agreement) and the file sizes.

    Raises:
        OptimizeCheckError: fp16 logits differ by more than `atol`.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    model = convert_float_to_float16(onnx.load(str(onnx_dir / "model.onnx")), keep_io_types=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    _copy_side_files(onnx_dir, out_dir)
    check = _check(onnx_dir / "model.onnx", out_dir / "model.onnx", out_dir, check_texts, max_length, atol)
    fp16 = sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return {
        **check,
        "fp16_initializers": fp16,
        "size_bytes": (out_dir / "model.onnx").stat().st_size,
        "source_size_bytes": (onnx_dir / "model.onnx").stat().st_size,
    }
