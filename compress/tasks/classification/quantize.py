"""Quantize stage: post-training int8 with ONNX Runtime's quantization tool, dynamic or static (QDQ).

`quantize` is the pipeline's stage (a model directory in, an int8 model directory out). The file-level
operations underneath it (`Int8Spec`, `quantize_model`) are in `compress.int8`; the accuracy-budget search that
repeats them with different node exclusions is in `compress.sensitivity`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from compress.calibration import Feed
from compress.int8 import Int8Spec, quantize_model
from compress.sensitivity import choose_int8_variant, default_candidates, quantize_within_budget
from compress.tasks.classification.config import QuantizeConfig
from export.artifact import Artifact


def quantize(
    onnx_dir: Path,
    out_dir: Path,
    config: QuantizeConfig,
    calibration: Sequence[Feed] | None = None,
    *,
    evaluate: Callable[[Path], float] | None = None,
    check_texts: Sequence[str] | None = None,
    max_length: int = 128,
    latency_feeds: Sequence[Feed] | None = None,
) -> dict:
    """Write `out_dir/model.onnx`, an int8 version of `onnx_dir/model.onnx`, with its tokenizer and config.

    With `config.fuse`, ONNX Runtime's transformer fusions run first; with `config.embeddings == "int4"`, the
    token embedding becomes 4-bit blocks first (`compress.embedding_quant`), and the MatMuls `config.int4_nodes`
    names become 4-bit weight-only `MatMulNBits` (`_int4_nodes`); the int8 pass leaves both alone.
    With `config.select == "measure"`, every u8s8/u8u8 x 7/8-bit candidate of the method (x per-channel or not
    with `per_channel: measure`) is made and the one `evaluate` scores best is kept; candidates within
    `select_tolerance` of it are ties, broken by single-thread p50 on `latency_feeds` (else the smallest file).
    With `config.max_accuracy_drop`, the most sensitive nodes stay in float until `evaluate`'s drop from
    float32 fits the budget.

    Args:
        onnx_dir: an exported model directory (model.onnx, config.json, tokenizer files).
        out_dir: the int8 model directory to write.
        config: the recipe's quantize section (see `Int8Spec.from_config`).
        calibration: feeds for static int8 (`compress.calibration.calibration_feeds` over train sentences).
        evaluate: ONNX model path -> accuracy on held-out data; needed by `select: measure` and the budget.
        check_texts: sentences on which the fused graph is checked against the unfused one.
        max_length: tokenizer truncation for that check.
        latency_feeds: requests timed to break ties of `select: measure` (None: the smallest file wins).

    Returns:
        The settings used (with the reason for `reduce_range`), the quantized graph's operator counts, and the
        fusion, selection or budget records when those ran.

    Raises:
        RuntimeError: the result holds no int8 weights (op_types that match nothing in the graph).
        compress.sensitivity.AccuracyBudgetError: no int8 model fits `max_accuracy_drop`; nothing is written.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    spec = Int8Spec.from_config(config)
    if (config.select == "measure" or config.max_accuracy_drop is not None) and evaluate is None:
        raise ValueError("quantize: select 'measure' and max_accuracy_drop need an evaluate callable")
    out_dir.mkdir(parents=True, exist_ok=True)
    extra: dict = {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as tmp:
        src = _prepare_source(onnx_dir, Path(tmp), config, check_texts, max_length, extra)
        if config.select == "measure":
            spec, extra["selection"] = _select_spec(src, Path(tmp), spec, config, evaluate, calibration, latency_feeds)
        metrics = _write_int8(src, out_dir, spec, config, evaluate, calibration, extra)
    _copy_side_files(onnx_dir, out_dir)
    Artifact(out_dir, "classification").write()
    if metrics["int8_initializers"] == 0:
        raise RuntimeError(f"quantize: no int8 weights in {out_dir / 'model.onnx'}; op_types {list(spec.ops)}")
    if config.optimize_offline or config.external_data:
        extra["offline"] = _save_for_device(out_dir, config, check_texts or [], max_length)
    return {**metrics, **extra}


def _prepare_source(
    onnx_dir: Path,
    work: Path,
    config: QuantizeConfig,
    check_texts: Sequence[str] | None,
    max_length: int,
    extra: dict,
) -> Path:
    """The graph the int8 pass starts from: fused, 4-bit embedding, 4-bit nodes as asked (records into `extra`)."""
    src = onnx_dir / "model.onnx"
    if config.fuse:
        from export.optimize import optimize_onnx

        extra["fusion"] = optimize_onnx(onnx_dir, work / "fused", list(check_texts or []), max_length=max_length)
        src = work / "fused" / "model.onnx"
    if config.embeddings == "int4":
        from compress.embedding_quant import quantize_token_embedding

        extra["embedding"] = quantize_token_embedding(
            src, work / "embedding4.onnx", block_size=config.embedding_block_size
        )
        src = work / "embedding4.onnx"
    if config.int4_nodes:
        extra["int4_nodes"] = _int4_nodes(src, work / "int4.onnx", config.int4_nodes)
        src = work / "int4.onnx"
    return src


def _select_spec(
    src: Path,
    work: Path,
    spec: Int8Spec,
    config: QuantizeConfig,
    evaluate: Callable[[Path], float],
    calibration: Sequence[Feed] | None,
    latency_feeds: Sequence[Feed] | None,
) -> tuple[Int8Spec, dict]:
    """Measure every int8 candidate of the method on `src`; returns the chosen spec and the selection record."""
    candidates = [c for c in default_candidates(static=config.method == "static") if c.method == config.method]
    # The candidates vary the data types and reduce_range (and per-channel scales when asked); every
    # other key of the recipe is kept.
    keep = {k: getattr(spec, k) for k in ("per_channel", "op_types", "calibrate_method", "percentile")}
    candidates = [replace(c, **keep) for c in candidates]
    if config.per_channel == "measure":
        candidates += [replace(c, per_channel=True) for c in candidates]
    choice = choose_int8_variant(
        src,
        work / "candidates",
        evaluate,
        candidates,
        calibration=calibration,
        latency_feeds=latency_feeds,
        tolerance=config.select_tolerance,
    )
    selection = {
        "chosen": choice["chosen"],
        "reason": choice["reason"],
        "metric": "accuracy on the held-out slice of train",
        "candidates": [{k: v for k, v in r.items() if k != "path"} for r in choice["table"]],
    }
    return choice["chosen_spec"], selection


def _write_int8(
    src: Path,
    out_dir: Path,
    spec: Int8Spec,
    config: QuantizeConfig,
    evaluate: Callable[[Path], float] | None,
    calibration: Sequence[Feed] | None,
    extra: dict,
) -> dict:
    """Write `out_dir/model.onnx`, int8 from `src` (within the accuracy budget when set); returns its metrics."""
    if config.max_accuracy_drop is not None:
        res = quantize_within_budget(
            src,
            out_dir / "model.onnx",
            spec,
            evaluate,
            config.max_accuracy_drop,
            calibration or [],
            granularity=config.budget_granularity,
        )
        extra["budget"] = {k: v for k, v in res.to_dict().items() if k != "path"}
        metrics = res.metrics
    else:
        metrics = quantize_model(src, out_dir / "model.onnx", spec, calibration)
    if "selection" in extra:
        metrics["reduce_range_reason"] = f"measured on the held-out slice: {extra['selection']['reason']}"
    return metrics


def _copy_side_files(onnx_dir: Path, out_dir: Path) -> None:
    """Copy the model directory's files other than the ONNX graph and its weights (tokenizer, config)."""
    for f in onnx_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx" and not f.name.endswith(".onnx.data"):
            shutil.copy2(f, out_dir / f.name)


def _save_for_device(out_dir: Path, config: QuantizeConfig, check_texts: Sequence[str], max_length: int) -> dict:
    """Rewrite `out_dir/model.onnx` as `export.offline` saves it, checked against the inline model it replaces."""
    from transformers import AutoTokenizer

    from compress.errors import StageError
    from export.mobile import compare_outputs
    from export.offline import optimize_offline
    from export.runtime import tokenize_each

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".inline-") as tmp:
        inline = Path(tmp) / "model.onnx"
        (out_dir / "model.onnx").rename(inline)
        record = optimize_offline(
            inline, out_dir / "model.onnx", optimize=config.optimize_offline, external_data=config.external_data
        )
        Artifact(out_dir, "classification", graph_optimized=record["graph_optimized"]).write()
        if check_texts:
            tokenizer = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
            check = compare_outputs(
                inline, out_dir / "model.onnx", tokenize_each(tokenizer, list(check_texts)[:64], max_length)
            )
            record["check"] = check
            # ONNX Runtime applies the same optimizations at load to the inline model: the outputs must agree.
            if not (check["max_abs_logit_diff"] <= 1e-4 and check["label_agreement"] == 1.0):
                raise StageError(
                    f"{out_dir / 'model.onnx'}: the offline-optimized graph differs from the inline one: {check}"
                )
    return record


def _int4_nodes(src: Path, dst: Path, patterns: Sequence[str], block_size: int = 32) -> dict:
    """Write `dst`: `src` with the MatMuls whose names match `patterns` as 4-bit `MatMulNBits` (blocks of
    `block_size`, asymmetric round-to-nearest, accuracy_level 4: int8 products on CPUs that have them), through
    `compress.weight_only.weight_only` with every other MatMul left in float.

    Raises:
        ValueError: a pattern matches no MatMul with a weight initializer (names the MatMuls there are).
    """
    import fnmatch

    import onnx

    from compress.weight_only import WeightOnlySpec, weight_only

    model = onnx.load(str(src))
    inits = {t.name for t in model.graph.initializer}
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits]
    chosen = [n for n in matmuls if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in matmuls)]
    if unmatched:
        raise ValueError(f"quantize.int4_nodes {unmatched} match no weight MatMul; the graph has {matmuls}")
    config = WeightOnlySpec(bits=4, block_size=block_size, embeddings="fp32")
    weight_only(src, dst, config, 4, bits_by_node={n: 4 for n in chosen})
    done = sum(1 for n in onnx.load(str(dst)).graph.node if n.op_type == "MatMulNBits")
    return {"nodes": chosen, "matmulnbits": done, "bits": 4, "block_size": block_size, "accuracy_level": 4}
