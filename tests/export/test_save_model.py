"""ONNX files over the 2 GiB protobuf limit: written with their tensors beside the graph, read back the same."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import export.artifact
from export.artifact import copy_model, save_model, tensor_bytes, with_external_data


def _model(n: int = 4096):
    w = numpy_helper.from_array(np.arange(n, dtype=np.float32).reshape(-1, 64), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n // 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w],
    )  # fmt: skip
    return helper.make_model(graph)


def test_a_model_under_the_limit_is_one_file(tmp_path):
    assert save_model(_model(), tmp_path / "m.onnx") == [tmp_path / "m.onnx"]
    assert with_external_data(tmp_path / "m.onnx") == [tmp_path / "m.onnx"]


def test_a_model_over_the_limit_keeps_its_tensors_beside_the_graph_and_travels_with_them(tmp_path, monkeypatch):
    model = _model()
    assert tensor_bytes(model) >= 4096 * 4
    monkeypatch.setattr(export.artifact, "INLINE_LIMIT_BYTES", 1024)
    files = save_model(model, tmp_path / "m.onnx")
    assert files == [tmp_path / "m.onnx", tmp_path / "m.onnx.data"] and files[1].stat().st_size >= 4096 * 4
    assert files[0].stat().st_size < 1024
    # a second save over the first does not append to the old data file
    save_model(onnx.load(str(files[0])), tmp_path / "m.onnx")
    assert files[1].stat().st_size < 2 * 4096 * 4
    (tmp_path / "out").mkdir()
    copied = copy_model(files[0], tmp_path / "out")
    back = numpy_helper.to_array(onnx.load(str(copied)).graph.initializer[0])
    assert np.array_equal(back, np.arange(4096, dtype=np.float32).reshape(-1, 64))
    assert tensor_bytes(onnx.load(str(copied), load_external_data=False)) >= 4096 * 4
