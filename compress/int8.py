"""int8 quantization of one ONNX file with ONNX Runtime's quantization tool: the file-level operations.

`Int8Spec` says which int8 variant to make; `quantize_model` makes it. A task's quantize stage and the
accuracy-budget search (`compress.sensitivity`) both build on these.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import onnx

from compress.calibration import Feed, FeedReader
from compress.hardware import cpu_info, has_vnni

# What each method can quantize in a BERT graph. quantize_dynamic (ONNX Runtime's IntegerOps mode) turns MatMul
# into MatMulInteger, Gather into a Gather of int8 tables, and the fused Attention/EmbedLayerNormalization of
# export.optimize into QAttention/QEmbedLayerNormalization (it also rewrites Gemm into MatMul + Add first, so the
# pooler and classifier are covered by "MatMul"). The QDQ quantizer has no rule for the fused contrib ops: on a
# fused graph static int8 covers the remaining MatMuls only.
DYNAMIC_OP_TYPES = ("MatMul", "Gather", "Attention", "EmbedLayerNormalization")
STATIC_OP_TYPES = ("MatMul", "Gemm", "Gather")

# The operators that show an int8 graph for what it is, counted in the metrics.
_INT8_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")

_SHORT = {"uint8": "u8", "int8": "s8"}


@dataclass(frozen=True)
class Int8Spec:
    """One int8 variant: method, data types and options of ONNX Runtime's quantizer.

    Attributes:
        method: "dynamic" (weights int8 offline, activations quantized at run time by DynamicQuantizeLinear)
            or "static" (QDQ: activation ranges fixed by calibration on real inputs).
        activation_type: "uint8" or "int8" (static only: dynamic activations are always uint8).
        weight_type: "int8" or "uint8".
        reduce_range: 7-bit weights; "auto" = on for x86 CPUs without VNNI (see `resolve_reduce_range`).
        per_channel: one scale per output channel of each weight instead of one per tensor.
        op_types: operator types to quantize; None = all BERT operators the method supports.
        calibrate_method: static only: "minmax", "entropy" or "percentile".
        percentile: the percentile of |activation| kept by the "percentile" calibration.
        nodes_to_exclude: node names (of the preprocessed graph) left in float32.
    """

    method: Literal["dynamic", "static"] = "dynamic"
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool | Literal["auto"] = "auto"
    per_channel: bool = False
    op_types: tuple[str, ...] | None = None
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.999
    nodes_to_exclude: tuple[str, ...] = ()

    def __post_init__(self):
        def check(field: str, value, allowed) -> None:
            if value not in allowed:
                raise ValueError(f"Int8Spec.{field}={value!r}: allowed {sorted(map(str, allowed))}")

        check("method", self.method, ("dynamic", "static"))
        check("activation_type", self.activation_type, ("uint8", "int8"))
        check("weight_type", self.weight_type, ("int8", "uint8"))
        check("reduce_range", self.reduce_range, (True, False, "auto"))
        check("calibrate_method", self.calibrate_method, ("minmax", "entropy", "percentile"))
        if self.method == "dynamic" and self.activation_type != "uint8":
            raise ValueError(
                "Int8Spec: dynamic quantization always has uint8 activations (DynamicQuantizeLinear); "
                "int8 activations need method='static'"
            )
        if not 0 < self.percentile <= 100:
            raise ValueError(f"Int8Spec.percentile={self.percentile}: must be in (0, 100]")
        if self.op_types is not None:
            from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

            object.__setattr__(self, "op_types", tuple(self.op_types))
            supported = set(IntegerOpsRegistry if self.method == "dynamic" else QDQRegistry)
            unknown = sorted(set(self.op_types) - supported)
            if unknown or not self.op_types:
                raise ValueError(
                    f"Int8Spec.op_types: {unknown or 'empty'} not quantized by method={self.method!r}; "
                    f"allowed {sorted(supported)}"
                )
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))

    @property
    def ops(self) -> tuple[str, ...]:
        """The operator types this spec quantizes."""
        if self.op_types is not None:
            return self.op_types
        return DYNAMIC_OP_TYPES if self.method == "dynamic" else STATIC_OP_TYPES

    @property
    def name(self) -> str:
        """A short label such as `dynamic-u8s8-rr` or `static-s8s8-pc-entropy`."""
        parts = [self.method, _SHORT[self.activation_type] + _SHORT[self.weight_type]]
        if self.reduce_range is True:
            parts.append("rr")
        elif self.reduce_range == "auto":
            parts.append("rrauto")
        if self.per_channel:
            parts.append("pc")
        if self.method == "static":
            parts.append(self.calibrate_method)
        return "-".join(parts)

    @classmethod
    def from_config(cls, config) -> Int8Spec:
        """The spec of one variant of the recipe's `quantize` section."""
        fields = {k: getattr(config, k) for k in cls.__dataclass_fields__ if k in type(config).model_fields}
        if fields.get("per_channel") == "measure":  # a candidate list decides it (the quantize stage)
            fields["per_channel"] = False
        if fields.get("op_types") is not None:
            fields["op_types"] = tuple(fields["op_types"])
        return cls(**fields)

    def to_dict(self) -> dict:
        """The spec as a JSON-ready dict (tuples as lists), for manifests and tables."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def resolve_reduce_range(setting: str | bool) -> tuple[bool, str]:
    """Whether to quantize weights to 7 bits, and why.

    On x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels (uint8 activations from DynamicQuantizeLinear,
    int8 weights) use VPMADDUBSW, whose int16 intermediate sums can saturate; 7-bit weights avoid it.
    With VNNI (or on ARM) full 8-bit weights are exact and more accurate.
    """
    if setting != "auto":
        return bool(setting), "set in the recipe"
    info = cpu_info()
    if info["machine"] in ("x86_64", "AMD64", "i686") and not has_vnni():
        return True, "x86 CPU without VNNI: u8s8 may saturate, so weights use 7 bits"
    return False, "CPU with VNNI or non-x86: full 8-bit weights"


def graph_summary(model_path: Path) -> dict:
    """Operator counts and int8/uint8 initializer counts of an ONNX graph."""
    model = onnx.load(str(model_path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    int8 = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {
        "op_counts": dict(sorted(ops.items())),
        "int8_initializers": int8,
        "initializers": len(model.graph.initializer),
    }


def int8_op_counts(op_counts: dict[str, int]) -> dict[str, int]:
    """The quantization operators among `op_counts`: Q/DQ, DynamicQuantizeLinear, *Integer, QLinear*, Q*."""
    return {
        op: n
        for op, n in op_counts.items()
        if op in _INT8_OPS or op.startswith("QLinear") or op in ("QAttention", "QEmbedLayerNormalization", "QGemm")
    }


def has_contrib_ops(model: onnx.ModelProto) -> bool:
    """Whether the graph holds ONNX Runtime's com.microsoft operators (a graph fused by export.optimize)."""
    return any(n.domain == "com.microsoft" for n in model.graph.node)


def preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-quantization pass, writing `dst`; nothing goes to the working directory.

    Shape inference and graph cleanup (`quant_pre_process`). Symbolic shape inference is skipped: it gives up on
    optimum's BERT graphs and then leaves `sym_shape_infer_temp.onnx` in the working directory. ONNX's own shape
    inference cannot type the outputs of com.microsoft operators, though, and static calibration records only
    tensors of known float type; so a fused graph is typed by onnxruntime.transformers' symbolic shape helper,
    which knows those operators and, unlike `SymbolicShapeInference.infer_shapes`, writes no file when it fails.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    quant_pre_process(src, dst, skip_symbolic_shape=True)
    model = onnx.load(str(dst))
    if has_contrib_ops(model):
        from onnxruntime.transformers.shape_infer_helper import SymbolicShapeInferenceHelper

        helper = SymbolicShapeInferenceHelper(model, auto_merge=True)
        try:
            helper.infer({})
        except Exception:  # noqa: BLE001 - untyped tensors only narrow static calibration; dynamic still works
            return dst
        onnx.save(helper.out_mp_, str(dst))
    return dst


def quantize_model(
    src: Path,
    dst: Path,
    spec: Int8Spec,
    calibration: Sequence[Feed] | None = None,
    *,
    preprocessed: bool = False,
    nodes_to_quantize: Sequence[str] | None = None,
    calibration_cache: Path | None = None,
) -> dict:
    """Write `dst`, the int8 version of the ONNX model `src` that `spec` describes.

    Args:
        src: the float32 ONNX model.
        dst: where the int8 model goes.
        spec: method, types and options.
        calibration: model feeds for static calibration (see `compress.calibration.calibration_feeds`).
        preprocessed: `src` already went through `preprocess` (node names then refer to it).
        nodes_to_quantize: quantize only these nodes (node names of the preprocessed graph).
        calibration_cache: static only: a JSON file of activation ranges; read if it exists, else written, so
            repeated quantizations of one model calibrate once.

    Returns:
        The settings used (with the reason for `reduce_range`), the graph's operator counts and int8 operator
        counts, int8 initializer count and file size.

    Raises:
        ValueError: static without calibration feeds (and no existing cache).
    """
    from onnxruntime.quantization import QuantType

    src, dst = Path(src), Path(dst)
    reduce_range, why = resolve_reduce_range(spec.reduce_range)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    # Types the quantizer cannot infer are those of com.microsoft operators' outputs, all float in these graphs.
    extra: dict = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    common = dict(
        op_types_to_quantize=list(spec.ops),
        per_channel=spec.per_channel,
        reduce_range=reduce_range,
        weight_type=types[spec.weight_type],
        nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
        nodes_to_exclude=list(spec.nodes_to_exclude) or None,
    )
    settings = _settings(spec, reduce_range, why)
    if spec.method == "static":
        static_extra, static_settings = _static_options(spec, calibration, calibration_cache)
        extra |= static_extra
        settings |= static_settings
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        model_in = src if preprocessed else preprocess(src, Path(tmp) / "preprocessed.onnx")
        _run_quantizer(model_in, dst, spec, calibration, calibration_cache, types, extra, common)
    summary = graph_summary(dst)
    return {
        **settings,
        **summary,
        "int8_ops": int8_op_counts(summary["op_counts"]),
        "size_bytes": dst.stat().st_size,
    }


def _settings(spec: Int8Spec, reduce_range: bool, why: str) -> dict:
    """The settings `quantize_model` reports for every method."""
    return {
        "method": spec.method,
        "name": spec.name,
        "activation_type": spec.activation_type,
        "weight_type": spec.weight_type,
        "op_types": list(spec.ops),
        "per_channel": spec.per_channel,
        "reduce_range": reduce_range,
        "reduce_range_reason": why,
        "nodes_to_exclude": list(spec.nodes_to_exclude),
    }


def _static_options(
    spec: Int8Spec, calibration: Sequence[Feed] | None, calibration_cache: Path | None
) -> tuple[dict, dict]:
    """Static int8's extra quantizer options and reported settings; raises without feeds or an existing cache."""
    has_cache = calibration_cache is not None and Path(calibration_cache).is_file()
    if not calibration and not has_cache:
        raise ValueError("static int8 needs calibration feeds")
    extra: dict = {}
    if spec.calibrate_method == "percentile":
        extra["CalibPercentile"] = spec.percentile
    if spec.calibrate_method != "minmax":
        # The histogram calibrators stack every collected output into one array, which fails on requests of
        # different lengths; ONNX Runtime's strided collection (meant for memory) with a stride of one
        # request merges their histograms one at a time instead.
        extra["CalibStridedMinMax"] = 1
    settings = {
        "format": "QDQ",
        "calibrate_method": spec.calibrate_method,
        "calibration_examples": len(calibration) if calibration else None,
    }
    if spec.calibrate_method == "percentile":
        settings["percentile"] = spec.percentile
    return extra, settings


def _run_quantizer(
    model_in: Path,
    dst: Path,
    spec: Int8Spec,
    calibration: Sequence[Feed] | None,
    calibration_cache: Path | None,
    types: dict,
    extra: dict,
    common: dict,
) -> None:
    """Run ONNX Runtime's dynamic or static (QDQ) quantizer on `model_in`, writing `dst`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_dynamic, quantize_static

    if spec.method == "dynamic":
        quantize_dynamic(model_in, dst, extra_options=extra, **common)
    else:
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        quantize_static(
            model_in,
            dst,
            FeedReader(calibration) if calibration else None,
            quant_format=QuantFormat.QDQ,
            activation_type=types[spec.activation_type],
            calibrate_method=methods[spec.calibrate_method],
            extra_options=extra,
            calibration_cache_path=calibration_cache,
            **common,
        )
