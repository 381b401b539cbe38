"""The .ort mobile format and ONNX Runtime's mobile usability checker, on tiny fp32, dynamic and static int8."""

from __future__ import annotations

import onnx
import pytest

from export.mobile import compare_outputs, convert_to_ort, mobile_usability
from tests.conftest import make_corpus


@pytest.fixture(scope="module")
def requests(tiny_onnx_dir):
    from transformers import AutoTokenizer

    from export.runtime import tokenize_each

    tok = AutoTokenizer.from_pretrained(tiny_onnx_dir)
    return tokenize_each(tok, [t for t, _ in make_corpus()["dev"]], 32)


@pytest.fixture(scope="module")
def dynamic_int8(tmp_path_factory, tiny_onnx_dir):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path_factory.mktemp("dyn") / "model.onnx"
    quantize_dynamic(tiny_onnx_dir / "model.onnx", out, weight_type=QuantType.QInt8)
    return out


@pytest.fixture(scope="module")
def static_qdq(tmp_path_factory, tiny_onnx_dir, requests):
    """A static QDQ int8 model (activations calibrated on the dev requests): the form NNAPI can take."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(requests)

        def get_next(self):
            return next(self.it, None)

    out = tmp_path_factory.mktemp("qdq") / "model.onnx"
    quantize_static(
        tiny_onnx_dir / "model.onnx",
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
    )
    return out


@pytest.mark.parametrize("which", ["fp32", "dynamic", "static_qdq"])
def test_ort_conversion_gives_the_onnx_models_outputs(
    which, tiny_onnx_dir, dynamic_int8, static_qdq, requests, tmp_path
):
    src = {"fp32": tiny_onnx_dir / "model.onnx", "dynamic": dynamic_int8, "static_qdq": static_qdq}[which]
    platform = "arm" if which == "static_qdq" else None  # ARM: QDQ groups may fuse into int8 kernels
    conv = convert_to_ort(src, tmp_path, target_platform=platform)
    ort_path = tmp_path / "model.ort"
    assert conv["ort_path"] == str(ort_path) and conv["size_bytes"] == ort_path.stat().st_size > 1000
    assert ort_path.read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
    assert "Converted 1/1 models successfully." in conv["log"]
    ops = (tmp_path / "required_operators.config").read_text()
    assert "ai.onnx" in ops
    cmp = compare_outputs(src, ort_path, requests)
    assert cmp["label_agreement"] == 1.0 and cmp["max_abs_logit_diff"] < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ort", "required_operators.config"]


def test_usability_verdict_names_what_blocks_nnapi(dynamic_int8, static_qdq):
    dyn = mobile_usability(dynamic_int8)
    assert set(dyn["eps"]) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    nnapi = dyn["eps"]["NNAPI"]
    assert {"ai.onnx:DynamicQuantizeLinear", "ai.onnx:MatMulInteger"} <= set(nnapi["as_is"]["unsupported_ops"])
    assert nnapi["as_is"]["suitability"] in ("YES", "MAYBE", "NO")
    assert 0 < nnapi["as_is"]["supported_nodes"] < nnapi["as_is"]["nodes"]
    # Dynamic input shapes (batch, sequence) keep nodes off NNAPI; fixing them is the checker's second question.
    assert dyn["dynamic_inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert nnapi["fixed_shapes"]["supported_nodes"] > nnapi["as_is"]["supported_nodes"]
    assert "DynamicQuantizeLinear" in dyn["verdict"] and dyn["log"]
    qdq = mobile_usability(static_qdq)["eps"]["NNAPI"]["fixed_shapes"]
    # Static QDQ int8 has no dynamic quantization ops: NNAPI takes its quantized MatMuls.
    assert not {"ai.onnx:DynamicQuantizeLinear", "ai.onnx:MatMulInteger"} & set(qdq["unsupported_ops"])
    assert (
        qdq["supported_nodes"] / qdq["nodes"]
        > nnapi["fixed_shapes"]["supported_nodes"] / nnapi["fixed_shapes"]["nodes"]
    )


def test_static_qdq_graph_is_what_the_usability_check_saw(static_qdq):
    ops = {n.op_type for n in onnx.load(str(static_qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
