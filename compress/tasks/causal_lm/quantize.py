"""Quantize stage of a causal LM: dynamic int8 or weight-only 4/8-bit blocks, on the exported decoder.

- dynamic: ONNX Runtime's `quantize_dynamic` (int8 weights, activations quantized per call: `MatMulInteger`),
  through `compress.int8.quantize_model` as for the classifier, with the same 7-bit rule for x86 without VNNI.
- weight-only: ONNX Runtime's `MatMulNBitsQuantizer` (int4 or int8 weights in blocks of `block_size` along the
  input dimension, a scale and optionally a zero point per block: `MatMulNBits`). Rounding is RTN (ONNX
  Runtime's default quantizer), HQQ (half-quadratic, no calibration; its float zero points take a slow
  ONNX Runtime kernel on CPU) or GPTQ (calibrated on train blocks). The token embedding stays fp32, or becomes
  int4 blocks (`GatherBlockQuantized`) or an int8 table.
  `accuracy_level` is the kernel's compute type: 0 dequantizes the weights to fp32 per call, 4 quantizes the
  activations to int8 and multiplies in int8 (ONNX Runtime issue 23004 reports int4 about 10x slower than
  int8 without it on some CPUs). With `accuracy_level: measure` both are built (the same weights, the attribute
  differs), timed on this CPU and scored on held-out perplexity, and the choice is recorded with its reason.
  `precision: mixed` picks int4, int8 or float per block by measured sensitivity (`mixed_precision`).

Before either, the graph rewrites ONNX Runtime's quantizers need (`compress.weight_only.prepare`: a tied head's
transpose folded, `Gemm` as MatMul + Add). The weight-only quantization itself is `compress.weight_only`.

The held-out perplexities of the float32 source and of the result are returned; the task's quality gate
(`compress.gate`) compares them with `max_perplexity_ratio`. For dynamic int8 the same bound drives a search that
keeps the most sensitive nodes in float until it fits, as the classifier's budget does (`compress.sensitivity`);
when nothing fits, `PerplexityBudgetError` and no model.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from compress.int8 import Int8Spec, graph_summary, int8_op_counts, quantize_model
from compress.tasks.causal_lm.config import LMQuantizeConfig
from compress.weight_only import (
    WEIGHT_ONLY_OPS,
    prepare,
    set_accuracy_level,
    weight_matmuls,
    weight_only,
)
from export.artifact import Artifact, move_model, save_model, with_external_data

# A callable scoring an ONNX decoder file: mean negative log-likelihood per token on held-out blocks.
HeldOutNLL = Callable[[Path], float]


class PerplexityBudgetError(RuntimeError):
    """No quantized model within `quantize.max_perplexity_ratio`: the float32 model stays the one to ship."""


def matmul_groups(src: Path, block_size: int) -> dict[str, list[str]]:
    """The quantizable MatMul nodes of a decoder by block: "layer N" (ONNX node names follow module paths, read
    through `compress.architectures.ONNX_LAYER`), "lm_head", or "other"."""
    from compress.architectures import ONNX_LAYER

    take, _ = weight_matmuls(onnx.load(str(src), load_external_data=False), block_size)
    groups: dict[str, list[str]] = {}
    for name in take:
        m = ONNX_LAYER.search(name)
        key = f"layer {int(m.group(1))}" if m else ("lm_head" if "lm_head" in name else "other")
        groups.setdefault(key, []).append(name)
    # Layers in order (ONNX nodes need not be), then the head.
    return dict(sorted(groups.items(), key=lambda kv: int(kv[0].split()[1]) if kv[0].startswith("layer ") else 1e9))


def mixed_precision(
    src: Path, tmp: Path, config: LMQuantizeConfig, heldout_nll: HeldOutNLL, fp32_nll: float, log
) -> tuple[Path, dict]:
    """Per-block int4 / int8 / float under a perplexity or a size budget, by measured sensitivity.

    Each block (a layer's projections, the LM head) is quantized to int4 alone, everything else float, and its
    held-out perplexity cost measured. Then, from all int4:

    - perplexity budget (`mixed_max_perplexity_ratio`): the most sensitive block is raised to int8, then the next,
      until the model is within the budget of float32; if even all int8 misses it, blocks go back to float in
      the same order. The smallest model within the budget.
    - size budget (`mixed_max_size_mb`): blocks are raised to int8, then float, in order of measured cost per
      weight (a large block must buy its bytes with more sensitivity), each kept only if the file still fits
      (greedy knapsack). The best model measured sensitivity can buy within the bytes.

    llama.cpp's `--target-bpw` trades bits for size by its own error proxy; here measured perplexity decides.

    Returns:
        The model file (accuracy_level 0; the caller chooses the level) and the record: budget, per-block
        sensitivity, every assignment tried with its perplexity ratio (and file size), the chosen assignment.

    Raises:
        PerplexityBudgetError: no assignment within the perplexity budget, or all int4 already over the size.
    """
    groups = matmul_groups(src, config.block_size)
    n_weights = _weights_per_node(src, groups)
    counter = [0]

    def ratio_of(path: Path) -> float:
        return math.exp(heldout_nll(path) - fp32_nll)

    def build(assign: dict[str, int], score: bool = True) -> tuple[Path, float | None]:
        counter[0] += 1
        path = tmp / f"mixed-{counter[0]}.onnx"
        bits = {n: assign[g] for g, nodes in groups.items() for n in nodes}
        weight_only(src, path, config, 0, bits_by_node=bits)
        return path, (ratio_of(path) if score else None)

    # A size budget that all int4 already misses is refused before the sensitivity pass (a minute or more).
    start = _all_int4_within_size(groups, config, build) if config.mixed_max_size_mb is not None else None
    sensitivity = {}
    for g in groups:
        path, ratio = build({h: 4 if h == g else 32 for h in groups})
        sensitivity[g] = ratio
        _remove(path)
    if start is not None:
        path, cand, ratio, tried = _mixed_within_size(groups, sensitivity, n_weights, start, build, ratio_of)
        budget_text = f"file within {config.mixed_max_size_mb} MB"
    else:
        path, cand, ratio, tried = _mixed_within_perplexity(groups, sensitivity, config, build)
        budget_text = f"budget {config.mixed_max_perplexity_ratio}"
    bits = sum(cand[g] * n_weights[g] for g in groups) / max(1, sum(n_weights.values()))
    log(
        "    mixed precision: "
        + ", ".join(f"{g} {'float' if b == 32 else f'int{b}'}" for g, b in cand.items())
        + f"; held-out perplexity {ratio:.4f}x float32, {_file_bytes(path) / 1e6:.2f} MB ({budget_text})"
    )
    by_size = config.mixed_max_size_mb is not None
    record = {
        "budget_kind": "size" if by_size else "perplexity",
        "budget": config.mixed_max_size_mb if by_size else config.mixed_max_perplexity_ratio,
        "sensitivity_int4_alone": sensitivity,
        "tried": tried,
        "assignment": {g: ("float" if b == 32 else f"int{b}") for g, b in cand.items()},
        "perplexity_ratio": ratio,
        "size_bytes": _file_bytes(path),
        "mean_bits_per_projection_weight": bits,
    }
    return path, record


def _mixed_within_perplexity(groups, sensitivity, config, build):
    """The first assignment, raising blocks by sensitivity (int8, then float), within the perplexity budget.

    The candidates (all int4, then one more block raised at each step) lower the perplexity ratio step by step, so
    the first within the budget is found by bisection: all int4 first (often enough), the last candidate (if even
    it misses, nothing will), then halving: at most 2 + log2(2 x blocks) models built and scored, not one per
    candidate. A step that raised the ratio (noise between nearly equal candidates) can make it pick a later
    candidate than a linear scan would: a model that is still within the budget, a little larger.
    """
    budget = config.mixed_max_perplexity_ratio
    order = sorted(groups, key=lambda g: sensitivity[g], reverse=True)
    assign = {g: 4 for g in groups}
    candidates = [dict(assign)]
    for level in (8, 32):
        for g in order:
            assign[g] = level
            candidates.append(dict(assign))
    candidates = candidates[:-1]  # the last is all float: not a quantized model
    tried, kept = [], {}

    def within(i: int) -> bool:
        path, ratio = build(candidates[i])
        tried.append({"assignment": candidates[i], "perplexity_ratio": ratio, "size_bytes": _file_bytes(path)})
        if ratio <= budget:
            kept[i] = (path, ratio)
        else:
            _remove(path)
        return ratio <= budget

    lo, hi = 0, len(candidates) - 1
    if not within(lo):
        if hi == lo or not within(hi):
            raise PerplexityBudgetError(
                f"mixed precision: no assignment of int4 / int8 / float blocks is within quantize."
                f"mixed_max_perplexity_ratio {budget} (best tried {min(t['perplexity_ratio'] for t in tried):.4f})"
            )
        while hi - lo > 1:  # candidates[lo] misses the budget, candidates[hi] is within it
            mid = (lo + hi) // 2
            if within(mid):
                hi = mid
            else:
                lo = mid
    else:
        hi = lo
    for i, (path, _) in kept.items():
        if i != hi:
            _remove(path)
    path, ratio = kept[hi]
    return path, candidates[hi], ratio, tried


def _all_int4_within_size(groups, config, build) -> tuple[Path, int, int]:
    """All int4, built: (its file, its size, the byte limit every candidate must meet).

    Raises:
        PerplexityBudgetError: all int4 is already over `mixed_max_size_mb`.
    """
    path, _ = build({g: 4 for g in groups}, score=False)
    # Candidates are built at accuracy_level 0 (no attribute); the level chosen later may add one attribute per
    # MatMulNBits node. All int4 has the most such nodes, so its growth bounds every candidate's.
    model = onnx.load(str(path), load_external_data=False)  # the graph: what the attributes add to
    set_accuracy_level(model, 4)
    limit = int(config.mixed_max_size_mb * 1e6) - max(0, model.ByteSize() - path.stat().st_size)
    del model
    size = _file_bytes(path)
    if size > limit:
        _remove(path)
        raise PerplexityBudgetError(
            f"mixed precision: every block at int4 already makes a {size / 1e6:.2f} MB file, over "
            f"quantize.mixed_max_size_mb {config.mixed_max_size_mb} (raise it, or cut the model)"
        )
    return path, size, limit


def _mixed_within_size(groups, sensitivity, n_weights, start, build, ratio_of):
    """From all int4 (`start`), raise blocks by measured cost per weight (int8, then float) while the file fits."""
    path, size, limit = start
    assign = {g: 4 for g in groups}
    tried = [{"assignment": dict(assign), "size_bytes": size, "fits": True}]
    order = sorted(groups, key=lambda g: (sensitivity[g] - 1) / max(1, n_weights[g]), reverse=True)
    for level in (8, 32):
        for g in order:
            if sensitivity[g] <= 1 or (level == 32 and assign[g] != 8):
                continue  # int4 costs this block nothing measurable; float only over int8
            cand = {**assign, g: level}
            if all(b == 32 for b in cand.values()):
                continue  # all float: not a quantized model
            new_path, _ = build(cand, score=False)
            new_size = _file_bytes(new_path)
            tried.append({"assignment": cand, "size_bytes": new_size, "fits": new_size <= limit})
            if new_size <= limit:
                _remove(path)
                path, assign, size = new_path, cand, new_size
            else:
                _remove(new_path)
    ratio = ratio_of(path)
    next(t for t in reversed(tried) if t["assignment"] == assign)["perplexity_ratio"] = ratio
    return path, assign, ratio, tried


def _remove(path: Path) -> None:
    """Delete a candidate model and its external-data file (a large model's candidates have one each)."""
    for f in with_external_data(path):
        f.unlink()


def _file_bytes(path: Path) -> int:
    """A model's bytes on disk, with its external-data file if it has one."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _weights_per_node(src: Path, groups: dict[str, list[str]]) -> dict[str, int]:
    """Weights of each block's quantizable MatMuls."""
    model = onnx.load(str(src), load_external_data=False)
    dims = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    weight = {n.name: dims.get(n.input[1], 0) for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    return {g: sum(weight.get(n, 0) for n in nodes) for g, nodes in groups.items()}


def _decode_seconds_per_token(
    artifact_dir: Path, paths: dict[str, Path], prompt: Sequence[int], new_tokens: int, rounds: int
) -> dict:
    """p50 seconds per decode step of each model, timed interleaved on one thread (warm-up first)."""
    from compress.tasks.causal_lm.export import generator_for

    gens = {k: generator_for(artifact_dir, str(Path(p).resolve()), threads=1) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in gens}
    for r in range(rounds + 1):
        for k, g in gens.items():
            stamps = []
            for _ in g.stream(prompt, new_tokens, ignore_eos=True):
                stamps.append(time.perf_counter())
            if r > 0:  # round 0 is warm-up
                times[k] += list(np.diff(stamps))
    return {k: float(np.median(v)) for k, v in times.items()}


def quantize_lm(
    onnx_dir: Path,
    out_dir: Path,
    config: LMQuantizeConfig,
    *,
    heldout_nll: HeldOutNLL,
    timing_prompt: Sequence[int],
    calibration: Sequence[dict] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write `out_dir`, the quantized artifact of the exported decoder in `onnx_dir` (beside its tokenizer).

    Args:
        onnx_dir: an exported causal-LM artifact.
        out_dir: the directory to write.
        config: the recipe's quantize variant.
        heldout_nll: ONNX file -> mean NLL per token on held-out blocks (the perplexity budget and the
            accuracy_level choice read it).
        timing_prompt: prompt tokens for the accuracy_level timing.
        calibration: decoder feeds (GPTQ).

    Returns:
        Settings, graph operator counts, held-out perplexity of float32 and of the result, the accuracy_level
        measurements and choice, sizes.

    Raises:
        PerplexityBudgetError: dynamic int8's search found no node set within `max_perplexity_ratio`.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    src_artifact = Artifact.read(onnx_dir)
    src = src_artifact.path("model")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"method": config.method}
    fp32_nll = heldout_nll(src)
    metrics["holdout_perplexity_fp32"] = math.exp(fp32_nll)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as tmp:
        tmp = Path(tmp)
        prepared = tmp / "prepared.onnx"
        metrics["rewrites"] = prepare(src, prepared)
        if config.method == "dynamic":
            metrics.update(_dynamic_int8(prepared, tmp, config, heldout_nll, calibration))
        else:
            metrics.update(
                _weight_only(prepared, tmp, config, heldout_nll, fp32_nll, onnx_dir, timing_prompt, calibration, log)
            )
        nll = heldout_nll(tmp / "model.onnx")
        metrics["holdout_perplexity"] = math.exp(nll)
        metrics["holdout_perplexity_ratio"] = math.exp(nll - fp32_nll)
        if (
            config.max_perplexity_ratio is not None
            and metrics["holdout_perplexity_ratio"] > config.max_perplexity_ratio
        ):
            raise PerplexityBudgetError(
                f"held-out perplexity {metrics['holdout_perplexity']:.3f} is "
                f"{metrics['holdout_perplexity_ratio']:.4f}x the float32 model's "
                f"{metrics['holdout_perplexity_fp32']:.3f} "
                f"(quantize.max_perplexity_ratio {config.max_perplexity_ratio})"
            )
        move_model(tmp / "model.onnx", out_dir)
    source_files = with_external_data(src)  # the source's weights (optimum names them model.onnx_data) stay there
    for f in onnx_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx" and f not in source_files and f.name != "artifact.json":
            shutil.copy2(f, out_dir / f.name)
    Artifact(out_dir, "causal-lm", {"model": "model.onnx"}).write()
    ops = Counter(n.op_type for n in onnx.load(str(out_dir / "model.onnx"), load_external_data=False).graph.node)
    metrics["quantized_ops"] = {**int8_op_counts(dict(ops)), **{k: ops[k] for k in WEIGHT_ONLY_OPS if ops[k]}}
    if not metrics["quantized_ops"]:
        raise RuntimeError(f"quantize: no quantized operator in {out_dir / 'model.onnx'}")
    metrics["size_bytes"] = sum(f.stat().st_size for f in with_external_data(out_dir / "model.onnx"))
    metrics["source_size_bytes"] = sum(f.stat().st_size for f in source_files)
    return metrics


def _dynamic_int8(prepared: Path, tmp: Path, config: LMQuantizeConfig, heldout_nll: HeldOutNLL,
                  calibration: Sequence[dict] | None) -> dict:  # fmt: skip
    """Dynamic int8 of `prepared` into tmp/model.onnx: every MatMul and Gather, or (with a perplexity budget and
    calibration feeds) the blocks the budget search keeps."""
    metrics: dict = {}
    spec = Int8Spec(
        "dynamic",
        "uint8",
        "int8",
        reduce_range=config.reduce_range,
        per_channel=config.per_channel,
        op_types=("MatMul", "Gather"),
    )
    if config.max_perplexity_ratio is not None and calibration:
        from compress.sensitivity import AccuracyBudgetError, quantize_within_budget

        try:
            res = quantize_within_budget(
                prepared,
                tmp / "model.onnx",
                spec,
                lambda p: -heldout_nll(p),
                math.log(config.max_perplexity_ratio),
                calibration or [],
                granularity="block",
            )
        except AccuracyBudgetError as e:
            raise PerplexityBudgetError(str(e)) from None
        metrics.update(res.metrics)
        metrics["budget"] = {k: v for k, v in res.to_dict().items() if k not in ("path", "metrics")}
    else:
        metrics.update(quantize_model(prepared, tmp / "model.onnx", spec))
    return metrics


def _weight_only(prepared: Path, tmp: Path, config: LMQuantizeConfig, heldout_nll: HeldOutNLL, fp32_nll: float,
                 onnx_dir: Path, timing_prompt, calibration, log) -> dict:  # fmt: skip
    """Weight-only int4 (uniform, or mixed per block) of `prepared` into tmp/model.onnx, at the recipe's
    accuracy_level or the one measured best."""
    metrics: dict = {}
    level = config.accuracy_level
    base = tmp / ("level0.onnx" if level == "measure" else "model.onnx")
    if config.precision == "mixed":
        mixed, metrics["mixed_precision"] = mixed_precision(prepared, tmp, config, heldout_nll, fp32_nll, log)
        model = onnx.load(str(mixed))
        set_accuracy_level(model, 0 if level == "measure" else level)
        save_model(model, base)
    else:
        metrics.update(weight_only(prepared, base, config, 0 if level == "measure" else level, calibration))
    if level == "measure":
        metrics["accuracy_level"] = _choose_accuracy_level(onnx_dir, base, tmp, heldout_nll, timing_prompt, log)
    else:
        metrics["accuracy_level"] = {"chosen": level, "reason": "set in the recipe"}
    summary = graph_summary(tmp / "model.onnx")
    metrics.update(summary)
    metrics["weight_only_ops"] = {op: summary["op_counts"].get(op, 0) for op in WEIGHT_ONLY_OPS}
    return metrics


def _choose_accuracy_level(artifact_dir: Path, level0: Path, tmp: Path, heldout_nll: HeldOutNLL, prompt, log) -> dict:
    """Time and score accuracy_level 0 (fp32 compute) against 4 (int8 compute); keep 4 when it is faster and
    costs under 1% of perplexity, else 0."""
    level4 = tmp / "level4.onnx"
    model = onnx.load(str(level0))
    set_accuracy_level(model, 4)
    save_model(model, level4)
    per_token = _decode_seconds_per_token(artifact_dir, {"0": level0, "4": level4}, prompt, new_tokens=24, rounds=3)
    nll = {"0": heldout_nll(level0), "4": heldout_nll(level4)}
    table = [
        {
            "accuracy_level": int(k),
            "decode_ms_per_token_p50": per_token[k] * 1e3,
            "holdout_perplexity": math.exp(nll[k]),
        }
        for k in ("0", "4")
    ]
    faster = per_token["4"] < per_token["0"]
    cheap = nll["4"] - nll["0"] <= math.log(1.01)
    chosen = 4 if faster and cheap else 0
    why = (
        f"level 4 (int8 compute) decodes at {per_token['4'] * 1e3:.3f} ms/token vs {per_token['0'] * 1e3:.3f} for "
        f"level 0 (fp32 compute), 1 thread on this CPU; held-out perplexity {math.exp(nll['4']):.3f} vs "
        f"{math.exp(nll['0']):.3f}"
    )
    log(f"    accuracy_level: {why}; chosen {chosen}")
    save_model(onnx.load(str(level4 if chosen == 4 else level0)), tmp / "model.onnx")  # with its own data file
    return {"chosen": chosen, "reason": why, "table": table}
