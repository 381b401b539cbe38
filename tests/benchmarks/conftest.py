"""Fixtures for the benchmark tests: the tiny task as `TaskData`, and four tiny variants of one model."""

from __future__ import annotations

import pytest

from tests.conftest import make_corpus


@pytest.fixture(scope="session")
def tiny_task():
    from compress.tasks.classification.data import Split, TaskData

    corpus = make_corpus()
    splits = {k: Split([t for t, _ in rows], [int(y) for _, y in rows]) for k, rows in corpus.items()}
    return TaskData(splits["train"], splits["dev"], splits["test"], ["0", "1"])


@pytest.fixture(scope="session")
def tiny_int8_dir(tmp_path_factory, tiny_onnx_dir):
    """The tiny ONNX model in dynamic int8 (ONNX Runtime's quantize_dynamic directly: these tests are about
    measuring a model, not about the quantize stage, which other tests cover), beside its tokenizer."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path_factory.mktemp("tiny_int8")
    for f in tiny_onnx_dir.iterdir():
        if f.suffix != ".onnx":
            shutil.copy2(f, out / f.name)
    quantize_dynamic(tiny_onnx_dir / "model.onnx", out / "model.onnx", weight_type=QuantType.QInt8)
    return out


@pytest.fixture(scope="session")
def tiny_optimum_int8_dir(tmp_path_factory, tiny_onnx_dir):
    from benchmarks.baselines import optimum_dynamic_int8

    out = tmp_path_factory.mktemp("tiny_optimum_int8")
    optimum_dynamic_int8(tiny_onnx_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_variants(tiny_onnx_dir, tiny_int8_dir, tiny_optimum_int8_dir):
    """Three ONNX variants: the teacher, optimum's int8 of it (baselines) and our int8 (deployable)."""
    from compress.tasks.classification.suite import Variant

    opt = tiny_optimum_int8_dir
    return [
        Variant("teacher-onnx", "baseline", "onnxruntime", None, tiny_onnx_dir / "model.onnx", tiny_onnx_dir, 1, 4),
        Variant("teacher-int8-optimum", "baseline", "onnxruntime", "teacher-onnx", opt / "model.onnx", opt, 1, 4),
        Variant("int8", "quantize", "onnxruntime", "teacher-onnx", tiny_int8_dir / "model.onnx", tiny_int8_dir, 1, 4),
    ]


@pytest.fixture(scope="session")
def tiny_torch_variant(trained_classifier_dir):
    """The teacher in PyTorch eager. Kept out of `tiny_variants`: each process that loads it spends seconds
    importing transformers (which imports scikit-learn), so only the tests about PyTorch use it."""
    from compress.tasks.classification.suite import Variant

    d = trained_classifier_dir
    return Variant("teacher-torch", "baseline", "torch", None, d, d, 1, 4)


@pytest.fixture(scope="session")
def bench_results(tiny_variants, tiny_task, tmp_path_factory):
    """`benchmark` on `tiny_variants` with every measurement on, two targets, tiny budgets (about 10 s)."""
    from compress.tasks.classification.config import BenchmarkConfig as BenchmarkSettings
    from compress.tasks.classification.suite import benchmark

    settings = BenchmarkSettings(
        targets=["iot", {"name": "mobile", "memory_limit_mb": 2048}],
        lengths=["real", 16],
        batch_sizes=[1, 8],
        warmup=2,
        requests=30,
        seconds=5,
        throughput_seconds=0.2,
        bootstrap_resamples=200,
    )
    work = tmp_path_factory.mktemp("bench")
    return benchmark(tiny_variants, tiny_task, settings, max_length=32, reference="teacher-onnx", work_dir=work)
