"""Models saved for the device: graph optimized offline, weights in a memory-mapped side file; the sessions and
bundles that load them with optimizations off; the quantize stage that writes them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import uses_external_data
from transformers import AutoTokenizer

from compress.tasks.classification.config import QuantizeConfig
from compress.tasks.classification.quantize import quantize
from export.artifact import Artifact
from export.offline import EXTERNAL_MIN_BYTES, optimize_offline
from export.runtime import OrtClassifier, batched_logits
from export.session import ort_session, preoptimized


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory, tiny_onnx_dir):
    d = tmp_path_factory.mktemp("offline")
    for f in tiny_onnx_dir.iterdir():
        if f.suffix != ".onnx" and f.name != "artifact.json":
            shutil.copy2(f, d / f.name)
    record = optimize_offline(tiny_onnx_dir / "model.onnx", d / "model.onnx")
    Artifact(d, "classification", graph_optimized=record["graph_optimized"]).write()
    return d, record


def test_weights_go_to_the_side_file_and_the_graph_is_optimized(offline_dir, tiny_onnx_dir):
    d, record = offline_dir
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    inline = [t for t in model.graph.initializer if not uses_external_data(t)]
    assert external and all(len(t.raw_data) < EXTERNAL_MIN_BYTES for t in inline)
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    inline_bytes = sum(len(t.raw_data) for t in inline)
    assert (d / "model.onnx.data").stat().st_size > 5 * inline_bytes  # the weights left the graph file
    assert record["nodes_after"] < record["nodes_before"]  # fusions ran (e.g. bias + GELU, MatMul + Add)
    assert record["graph_optimized"]["level"] == "extended"
    assert Artifact.read(d).weight_files() == [d / "model.onnx", d / "model.onnx.data"]
    files = (d / "model.onnx", d / "model.onnx.data")
    assert Artifact.read(d).sizes()["size_bytes"] == sum(f.stat().st_size for f in files)


def test_sessions_load_it_unoptimized_and_compute_the_same_logits(offline_dir, tiny_onnx_dir, tiny_corpus):
    import onnxruntime as ort

    d, _ = offline_dir
    assert preoptimized(d / "model.onnx") and not preoptimized(tiny_onnx_dir / "model.onnx")
    level = ort_session(d / "model.onnx").get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert ort_session(tiny_onnx_dir / "model.onnx").get_session_options().graph_optimization_level != level
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)
    texts = [t for split in ("dev", "test") for t, _ in tiny_corpus[split]]
    ref = batched_logits(OrtClassifier(tiny_onnx_dir / "model.onnx"), tokenizer, texts, 32)
    got = batched_logits(OrtClassifier(d / "model.onnx"), tokenizer, texts, 32)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_external_data_alone_keeps_the_graph(tmp_path, tiny_onnx_dir):
    record = optimize_offline(tiny_onnx_dir / "model.onnx", tmp_path / "model.onnx", optimize=False)
    assert record["graph_optimized"] is None and record["nodes_after"] == record["nodes_before"]
    assert (tmp_path / "model.onnx.data").is_file()
    assert not list(tmp_path.glob(".offline-*"))  # the work directory is gone


def test_ort_conversion_takes_the_side_file_along(offline_dir, tmp_path, tiny_onnx_dir, tiny_corpus):
    from export.mobile import convert_to_ort

    d, _ = offline_dir
    conv = convert_to_ort(d / "model.onnx", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)
    texts = [t for t, _ in tiny_corpus["dev"]]
    ref = batched_logits(OrtClassifier(d / "model.onnx"), tokenizer, texts, 32)
    got = batched_logits(OrtClassifier(conv["ort_path"]), tokenizer, texts, 32)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_quantize_stage_writes_the_device_form_and_checks_it(tmp_path, tiny_onnx_dir, tiny_corpus):
    texts = [t for t, _ in tiny_corpus["dev"]]
    config = QuantizeConfig(embeddings="int4", optimize_offline=True, external_data=True)
    summary = quantize(tiny_onnx_dir, tmp_path / "q", config, check_texts=texts, max_length=32)
    out = tmp_path / "q"
    art = Artifact.read(out)
    assert art.graph_optimized and art.graph_optimized["onnxruntime"]
    assert [f.name for f in art.weight_files()] == ["model.onnx", "model.onnx.data"]
    assert summary["offline"]["check"]["label_agreement"] == 1.0
    assert summary["offline"]["check"]["requests"] == min(len(texts), 64)
    model = onnx.load(str(out / "model.onnx"))  # external data read back from the side file
    ops = {n.op_type for n in model.graph.node}
    assert "GatherBlockQuantized" in ops and ops & {"MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger"}
    int8 = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
    assert sum(len(t.raw_data) for t in int8) > 0.5 * (out / "model.onnx.data").stat().st_size
    assert not list(out.glob(".inline-*")) and not list(out.glob("*.onnx.tmp"))
    assert json.loads((out / "artifact.json").read_text())["graph_optimized"]["level"] == "extended"
