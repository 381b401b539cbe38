"""The optimum dynamic int8 baseline: optimum's recipe, in the graph, close to the fp32 teacher."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx


def test_optimum_int8_baseline_is_dynamic_int8_and_agrees_with_fp32(tiny_optimum_int8_dir, tiny_onnx_dir):
    from transformers import AutoTokenizer

    from export.runtime import OrtClassifier, batched_logits
    from tests.conftest import make_corpus

    model = onnx.load(str(tiny_optimum_int8_dir / "model.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["DynamicQuantizeLinear"] > 0 and ops["MatMulInteger"] > 0
    # optimum's avx2 recipe: uint8 weights, per channel (a scale per output column), full 8-bit range.
    u8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    assert len(u8) >= 8
    recipe = json.loads((tiny_optimum_int8_dir / "ort_config.json").read_text())["quantization"]
    assert (recipe["per_channel"], recipe["reduce_range"], recipe["is_static"]) == (True, False, False)
    assert {"config.json", "tokenizer.json"} <= {p.name for p in tiny_optimum_int8_dir.iterdir()}

    tok = AutoTokenizer.from_pretrained(tiny_onnx_dir)
    texts = [t for t, _ in make_corpus()["dev"]]
    ref = batched_logits(OrtClassifier(tiny_onnx_dir / "model.onnx"), tok, texts, 32)
    got = batched_logits(OrtClassifier(tiny_optimum_int8_dir / "model.onnx"), tok, texts, 32)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cos.min() > 0.95
