"""Accuracy-aware int8: which nodes to leave in float32 so int8 stays within an accuracy budget, and which int8
variant (data types, 7- or 8-bit weights) suits this CPU.

ONNX Runtime's quantizer quantizes whatever it is told to; it has no notion of a budget. The search here is the
glue: rank nodes by the output error each causes when quantized alone (SQNR of the logits against float32 on
calibration inputs, cheaper than an accuracy run), then keep the most sensitive ones in float32, in growing
groups, until the caller's evaluation says the accuracy drop is within the budget.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from compress.architectures import ONNX_LAYER
from compress.calibration import Feed
from compress.int8 import Int8Spec, preprocess, quantize_model

Evaluate = Callable[[Path], float]  # ONNX model path -> accuracy (any metric, higher is better)


class AccuracyBudgetError(RuntimeError):
    """No int8 model within the accuracy budget: the caller keeps the float32 model."""


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `test` against `reference`, in dB (inf when they are equal)."""
    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    noise = float(((reference - test) ** 2).sum())
    if noise == 0:
        return float("inf")
    return float(10 * np.log10((reference**2).sum() / noise))


def _plain_gemm(node: onnx.NodeProto) -> bool:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and attrs.get("transA", 0) == 0


def quantizable_nodes(model_path: Path, spec: Int8Spec) -> list[str]:
    """Names of the nodes of a preprocessed graph that `spec` quantizes, in graph order.

    The names are the ones `nodes_to_exclude` matches: dynamic int8 first rewrites a Gemm `X` into MatMul
    `X_MatMul` + Add, so its name is listed that way. Dynamic MatMuls count only with a constant weight
    (activation x activation products stay float); static QDQ quantizes those too.
    """
    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    ops, dynamic = set(spec.ops), spec.method == "dynamic"
    names: list[str] = []
    for n in graph.node:
        if not n.name:
            continue
        if n.op_type == "MatMul" and "MatMul" in ops and (not dynamic or n.input[1] in inits):
            names.append(n.name)
        elif n.op_type == "Gemm" and dynamic and "MatMul" in ops and n.input[1] in inits and _plain_gemm(n):
            names.append(n.name + "_MatMul")
        elif n.op_type == "Gemm" and not dynamic and "Gemm" in ops and n.input[1] in inits:
            names.append(n.name)
        elif n.op_type == "Gather" and "Gather" in ops and n.input[0] in inits:
            names.append(n.name)
        elif n.op_type in ops and n.op_type not in ("MatMul", "Gemm", "Gather"):
            names.append(n.name)
    return [n for n in names if n not in spec.nodes_to_exclude]


def group_nodes(nodes: Sequence[str], granularity: Literal["node", "block"]) -> dict[str, tuple[str, ...]]:
    """Units of the search: each node alone, or the nodes of each encoder block together.

    Blocks are read from optimum's node names (`/bert/encoder/layer.3/attention/self/query/MatMul`); a node
    without a layer index in its name (embeddings, pooler, classifier, nodes the fusion renamed) is its own unit.
    """
    if granularity not in ("node", "block"):
        raise ValueError(f"granularity={granularity!r}: allowed ['block', 'node']")
    groups: dict[str, list[str]] = {}
    for name in nodes:
        m = ONNX_LAYER.search(name) if granularity == "block" else None
        groups.setdefault(f"layer.{m.group(1)}" if m else name, []).append(name)
    return {k: tuple(v) for k, v in groups.items()}


def _outputs(model_path: Path, feeds: Sequence[Feed]) -> np.ndarray:
    """Every output of the model on every feed, flattened into one vector."""
    from export.session import ort_session

    session = ort_session(model_path, 1)
    names = {i.name for i in session.get_inputs()}
    outs = [o.ravel() for f in feeds for o in session.run(None, {k: v for k, v in f.items() if k in names})]
    return np.concatenate(outs).astype(np.float64)


def rank_sensitivity(
    model_path: Path,
    spec: Int8Spec,
    groups: dict[str, tuple[str, ...]],
    feeds: Sequence[Feed],
    work_dir: Path,
    *,
    calibration_cache: Path | None = None,
) -> list[tuple[str, float]]:
    """Quantize each group alone and measure the SQNR of all outputs against float32 on `feeds`.

    Args:
        model_path: a preprocessed float32 model (`compress.int8.preprocess`).
        spec: the int8 variant.
        groups: unit name -> node names (`group_nodes`).
        feeds: inputs for the error measurement, and the calibration data of static int8.
        work_dir: where the one-group models are written (each replaces the previous one).
        calibration_cache: static only: shared activation ranges, so the model is calibrated once.

    Returns:
        (unit name, SQNR in dB), most sensitive (lowest SQNR) first.
    """
    reference = _outputs(model_path, feeds)
    path = Path(work_dir) / "one_group.onnx"
    scores = []
    for name, nodes in groups.items():
        quantize_model(
            model_path,
            path,
            spec,
            feeds,
            preprocessed=True,
            nodes_to_quantize=nodes,
            calibration_cache=calibration_cache,
        )
        scores.append((name, sqnr_db(reference, _outputs(path, feeds))))
    return sorted(scores, key=lambda s: s[1])


@dataclass(frozen=True)
class BudgetResult:
    """The int8 model that fits the budget and how it was found."""

    path: Path
    excluded_nodes: tuple[str, ...]
    accuracy: float
    fp32_accuracy: float
    max_accuracy_drop: float
    size_bytes: int
    fp32_size_bytes: int
    metrics: dict  # quantize_model's metrics of the chosen model
    trials: tuple[dict, ...] = ()  # every quantization tried: units kept float32, accuracy, size
    sensitivity: tuple[tuple[str, float], ...] = field(default=())  # (unit, SQNR dB), most sensitive first

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "excluded_nodes": list(self.excluded_nodes),
            "accuracy": self.accuracy,
            "fp32_accuracy": self.fp32_accuracy,
            "accuracy_drop": self.fp32_accuracy - self.accuracy,
            "max_accuracy_drop": self.max_accuracy_drop,
            "size_bytes": self.size_bytes,
            "fp32_size_bytes": self.fp32_size_bytes,
            "trials": list(self.trials),
            "sensitivity": [{"unit": u, "sqnr_db": s} for u, s in self.sensitivity],
            **{k: v for k, v in self.metrics.items() if k not in ("nodes_to_exclude", "size_bytes")},
        }


def quantize_within_budget(
    fp32_path: Path,
    out_path: Path,
    spec: Int8Spec,
    evaluate: Evaluate,
    max_accuracy_drop: float,
    feeds: Sequence[Feed],
    *,
    granularity: Literal["node", "block"] = "node",
    fp32_accuracy: float | None = None,
) -> BudgetResult:
    """Write `out_path`, the int8 model of `fp32_path` with the fewest float32 units that stays within the budget.

    First everything `spec` covers is quantized; if `evaluate` then shows a drop above `max_accuracy_drop`, the
    units (nodes or encoder blocks) are ranked by `rank_sensitivity` and the k most sensitive kept in float32,
    for k = 1, 2, 4, ... up to all but one, then the smallest passing k is bisected. Only a model within the
    budget is ever written to `out_path`.

    Args:
        fp32_path: the float32 ONNX model.
        out_path: where the int8 model goes.
        spec: the int8 variant; its own `nodes_to_exclude` stay excluded.
        evaluate: ONNX model path -> accuracy on held-out data (higher is better; any metric works). It gets
            bare model files in a temporary directory: tokenizer and labels come from the caller.
        max_accuracy_drop: allowed `evaluate(fp32) - evaluate(int8)`, >= 0.
        feeds: calibration inputs (static calibration and the sensitivity measurement).
        granularity: search unit, "node" (finest, one quantization per node) or "block" (one per encoder block).
        fp32_accuracy: `evaluate(fp32_path)` if already known.

    Returns:
        The excluded nodes, accuracy, sizes and the trail of the search.

    Raises:
        ValueError: a negative budget, or nothing in the graph that `spec` quantizes.
        AccuracyBudgetError: even one quantized unit breaks the budget; keep the float32 model.
    """
    if not max_accuracy_drop >= 0:
        raise ValueError(f"max_accuracy_drop={max_accuracy_drop}: must be >= 0")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    base = evaluate(fp32_path) if fp32_accuracy is None else fp32_accuracy
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".budget-") as tmp_dir:
        tmp = Path(tmp_dir)
        pre = preprocess(fp32_path, tmp / "preprocessed.onnx")
        cache = tmp / "calibration.json" if spec.method == "static" else None
        groups = group_nodes(quantizable_nodes(pre, spec), granularity)
        if not groups:
            raise ValueError(f"nothing in {fp32_path} is quantized by {spec.name} (op_types {list(spec.ops)})")
        best, ranking, trials, made = _search_budget(
            pre, tmp, spec, groups, feeds, cache, evaluate, base, max_accuracy_drop
        )
        trail = tuple(trials.values())  # in the order tried
        if best is None:
            raise _budget_error(spec, fp32_path, max_accuracy_drop, base, trail, len(groups))
        os.replace(tmp / f"keep_{best}.onnx", out_path)
    metrics, excluded = made[best]
    return BudgetResult(
        path=out_path,
        excluded_nodes=excluded,
        accuracy=trials[best]["accuracy"],
        fp32_accuracy=base,
        max_accuracy_drop=max_accuracy_drop,
        size_bytes=out_path.stat().st_size,
        fp32_size_bytes=fp32_path.stat().st_size,
        metrics=metrics,
        trials=trail,
        sensitivity=tuple(ranking),
    )


def _search_budget(
    pre: Path,
    tmp: Path,
    spec: Int8Spec,
    groups: dict[str, tuple[str, ...]],
    feeds: Sequence[Feed],
    cache: Path | None,
    evaluate: Evaluate,
    base: float,
    max_accuracy_drop: float,
) -> tuple[int | None, list[tuple[str, float]], dict[int, dict], dict[int, tuple[dict, tuple[str, ...]]]]:
    """Try k = 0, then rank the units and find the smallest k most sensitive kept float32 that fits the budget."""
    ranking: list[tuple[str, float]] = []
    trials: dict[int, dict] = {}  # k -> what the result reports
    made: dict[int, tuple[dict, tuple[str, ...]]] = {}  # k -> (quantize_model metrics, excluded nodes)

    def fits(k: int) -> bool:
        kept = [u for u, _ in ranking[:k]]
        excluded = tuple(n for u in kept for n in groups[u])
        path = tmp / f"keep_{k}.onnx"
        metrics = quantize_model(
            pre,
            path,
            replace(spec, nodes_to_exclude=spec.nodes_to_exclude + excluded),
            feeds,
            preprocessed=True,
            calibration_cache=cache,
        )
        accuracy = float(evaluate(path))
        ok = base - accuracy <= max_accuracy_drop
        trials[k] = {"float32_units": kept, "accuracy": accuracy, "size_bytes": metrics["size_bytes"], "fits": ok}
        made[k] = metrics, excluded
        if not ok:
            path.unlink()
        return ok

    n = len(groups)
    best = 0 if fits(0) else None
    if best is None and n > 1:
        ranking = rank_sensitivity(pre, spec, groups, feeds, tmp, calibration_cache=cache)
        best = _smallest_passing_k(fits, n)
    return best, ranking, trials, made


def _smallest_passing_k(fits: Callable[[int], bool], n: int) -> int | None:
    """Double k from 1 to at most n - 1 until `fits(k)`, then bisect to the smallest passing k (None: none passes)."""
    best = None
    failing, k = 0, 1
    while best is None:
        if fits(k):
            best = k
        elif k == n - 1:
            break
        else:
            failing, k = k, min(2 * k, n - 1)
    while best is not None and best - failing > 1:  # the smallest passing k, if the drop falls with k
        mid = (failing + best) // 2
        if fits(mid):
            best = mid
        else:
            failing = mid
    return best


def _budget_error(
    spec: Int8Spec, fp32_path: Path, max_accuracy_drop: float, base: float, trail: tuple[dict, ...], n: int
) -> AccuracyBudgetError:
    """The error that lists every quantization tried when none fits the budget."""
    tried = ", ".join(f"{t['accuracy']:.4f} with {len(t['float32_units'])} of {n} units float32" for t in trail)
    return AccuracyBudgetError(
        f"no {spec.name} int8 model of {fp32_path} within max_accuracy_drop {max_accuracy_drop}: "
        f"float32 accuracy {base:.4f}; tried {tried}. Keep the float32 model."
    )


def default_candidates(static: bool) -> list[Int8Spec]:
    """The int8 variants whose accuracy depends on the CPU's integer kernels.

    On x86 without VNNI, u8s8 products go through VPMADDUBSW, whose int16 sums saturate with full 8-bit weights
    (7-bit weights, `reduce_range`, avoid it); u8u8 takes a kernel that widens first and does not saturate;
    ONNX Runtime runs s8s8 QDQ as u8s8 on x86 (it shifts the activations), so it behaves like u8s8.
    """
    specs = [
        Int8Spec("dynamic", "uint8", "int8", reduce_range=False),
        Int8Spec("dynamic", "uint8", "int8", reduce_range=True),
        Int8Spec("dynamic", "uint8", "uint8", reduce_range=False),
        Int8Spec("dynamic", "uint8", "uint8", reduce_range=True),
    ]
    if static:
        specs += [
            Int8Spec("static", "uint8", "int8", reduce_range=False),
            Int8Spec("static", "uint8", "int8", reduce_range=True),
            Int8Spec("static", "uint8", "uint8", reduce_range=False),
            Int8Spec("static", "int8", "int8", reduce_range=False),
            Int8Spec("static", "int8", "int8", reduce_range=True),
        ]
    return specs


def choose_int8_variant(
    fp32_path: Path,
    out_dir: Path,
    evaluate: Evaluate,
    specs: Sequence[Int8Spec] | None = None,
    *,
    calibration: Sequence[Feed] | None = None,
    latency_feeds: Sequence[Feed] | None = None,
    latency_warmup: int = 5,
    tolerance: float = 0.0,
) -> dict:
    """Quantize `fp32_path` with each candidate spec, evaluate each, and choose one for this CPU.

    The chosen variant has the best `evaluate` score; among those within `tolerance` of it, the lowest p50
    latency when `latency_feeds` are given (timed interleaved, one thread), else the smallest file, else the
    first in `specs`.

    Args:
        fp32_path: the float32 ONNX model.
        out_dir: each candidate is written to `out_dir/<spec name>.onnx`.
        evaluate: ONNX model path -> score, higher is better (accuracy, or SQNR/agreement with float32).
        specs: the candidates (default `default_candidates`, with static ones when `calibration` is given).
        calibration: feeds for static calibration.
        latency_feeds: requests for a quick single-thread latency comparison (None: no timing).
        latency_warmup: untimed calls per variant before timing.
        tolerance: scores this close to the best count as ties.

    Returns:
        `table` (one row per candidate: name, spec, score, size, int8 op counts, path, optionally latency_ms),
        `chosen` (its name), `chosen_spec` and `reason`.
    """
    fp32_path, out_dir = Path(fp32_path), Path(out_dir)
    specs = list(specs) if specs is not None else default_candidates(static=calibration is not None)
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("choose_int8_variant: two candidate specs have the same name")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _quantize_candidates(fp32_path, out_dir, specs, evaluate, calibration)
    if latency_feeds:
        latency = _candidate_latency(rows, latency_feeds, latency_warmup)
        for r in rows:
            r["latency_ms"] = latency[r["name"]]
    best = max(r["score"] for r in rows)
    ties = [r for r in rows if r["score"] >= best - tolerance]
    chosen = min(ties, key=lambda r: (r["latency_ms"]["p50"] if latency_feeds else 0.0, r["size_bytes"]))
    if len(ties) == 1:
        reason = f"best score {chosen['score']:.6g}"
    elif latency_feeds:
        reason = f"fastest p50 of {len(ties)} variants within {tolerance} of the best score"
    else:
        reason = f"smallest of {len(ties)} variants within {tolerance} of the best score"
    return {
        "table": rows,
        "chosen": chosen["name"],
        "chosen_spec": next(s for s in specs if s.name == chosen["name"]),
        "reason": reason,
    }


def _quantize_candidates(
    fp32_path: Path,
    out_dir: Path,
    specs: Sequence[Int8Spec],
    evaluate: Evaluate,
    calibration: Sequence[Feed] | None,
) -> list[dict]:
    """Write each spec's int8 model to `out_dir/<spec name>.onnx` and return one scored table row per spec."""
    rows = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".choose-") as tmp:
        pre = preprocess(fp32_path, Path(tmp) / "preprocessed.onnx")
        for spec in specs:
            path = out_dir / f"{spec.name}.onnx"
            metrics = quantize_model(pre, path, spec, calibration, preprocessed=True)
            rows.append(
                {
                    "name": spec.name,
                    "spec": spec.to_dict(),
                    "reduce_range": metrics["reduce_range"],
                    "score": float(evaluate(path)),
                    "size_bytes": metrics["size_bytes"],
                    "int8_ops": metrics["int8_ops"],
                    "int8_initializers": metrics["int8_initializers"],
                    "path": str(path),
                }
            )
    return rows


def _candidate_latency(rows: list[dict], latency_feeds: Sequence[Feed], latency_warmup: int) -> dict:
    """Row name -> single-thread latency statistics of its model, timed interleaved over `latency_feeds`."""
    from benchmarks.latency import measure_latency
    from export.session import ort_session

    def runner(path: str):
        session = ort_session(path, 1)
        return lambda feed: session.run(None, feed)

    return measure_latency(
        {r["name"]: runner(r["path"]) for r in rows}, list(latency_feeds), warmup=latency_warmup, passes=5
    )
