"""Peak memory: a fresh process per model, compared with the same process loading no model."""

from __future__ import annotations

import pytest

from benchmarks.memory import measure_peak_rss

PROBE = "compress.tasks.classification.probe"


def test_peak_rss_of_an_onnx_model_in_a_fresh_process(tiny_onnx_dir, tiny_corpus):
    texts = [t for t, _ in tiny_corpus["dev"][:8]]
    m = measure_peak_rss("onnxruntime", tiny_onnx_dir / "model.onnx", tiny_onnx_dir, texts, probe=PROBE)
    assert m["baseline_rss_bytes"] > 10 * 2**20  # a Python process with numpy and onnxruntime imported
    # Loading a session and running it allocates (12 MB measured for this tiny model): above baseline.
    assert m["peak_rss_bytes"] > m["baseline_rss_bytes"]
    assert m["model_rss_bytes"] == m["peak_rss_bytes"] - m["baseline_rss_bytes"]
    assert m["load_s"] > 0


def test_a_probe_that_fails_raises_with_its_error(tiny_onnx_dir, tmp_path):
    with pytest.raises(RuntimeError, match=r"memory probe failed for .*missing\.onnx.*NO_SUCHFILE"):
        measure_peak_rss("onnxruntime", tmp_path / "missing.onnx", tiny_onnx_dir, ["good"], probe=PROBE)
