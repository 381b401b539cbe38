"""Anchors: the teacher through ONNX Runtime GenAI and llama.cpp. Where their tools are missing the benchmark
says why instead of dropping them; where they are installed (`make anchors`), each anchor's runtime reproduces
the teacher's quality within what its quantization costs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.tasks.causal_lm.anchors import build_anchors, builder_python, llama_cpp_dir, runner
from compress.tasks.causal_lm.config import LMBenchmarkConfig
from compress.tasks.causal_lm.report import _anchor_section


def test_missing_tools_are_reported_with_the_reason_and_the_fix(tmp_path, monkeypatch, tiny_lm_dirs):
    monkeypatch.setenv("EDGE_COMPRESS_ANCHOR_BUILDER", str(tmp_path / "no" / "python"))
    monkeypatch.setenv("EDGE_COMPRESS_LLAMA_CPP_DIR", str(tmp_path / "no-llama"))
    logs: list[str] = []
    built, unavailable = build_anchors(
        ["genai-int4", "llama.cpp-q8_0", "llama.cpp-q4_k_m"], tiny_lm_dirs["llama"], tmp_path / "out", log=logs.append
    )
    assert built == {}
    assert [u["name"] for u in unavailable] == ["genai-int4", "llama.cpp-q8_0", "llama.cpp-q4_k_m"]
    assert all("make anchors" in u["reason"] for u in unavailable)
    assert "no builder environment" in unavailable[0]["reason"] and "convert_hf_to_gguf.py" in unavailable[1]["reason"]
    assert len(logs) == 2  # one line per tool
    report = {"anchors": {"built": {}, "unavailable": unavailable}, "variants": []}
    [section] = _anchor_section(report)
    assert [row[0] for row in section.rows] == ["genai-int4", "llama.cpp-q8_0", "llama.cpp-q4_k_m"]
    assert all(row[1].startswith("not measured: ") for row in section.rows)


def test_the_recipe_names_only_known_anchors():
    assert LMBenchmarkConfig(anchors=["genai-int4"]).anchors == ["genai-int4"]
    with pytest.raises(ValueError, match="anchors"):
        LMBenchmarkConfig(anchors=["ollama"])


def _installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return False
    return builder_python().exists() and (llama_cpp_dir() / "convert_hf_to_gguf.py").exists()


@pytest.mark.skipif(not _installed(), reason="anchor tools not installed (make anchors)")
def test_each_anchor_runtime_keeps_the_teachers_quality_and_generates_exactly_n_tokens(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.lm_fixtures import save_wide_head_llama

    teacher_dir = save_wide_head_llama(tmp_path / "teacher")
    built, unavailable = build_anchors(
        ["genai-int4", "llama.cpp-q8_0"], teacher_dir, tmp_path / "anchors", log=lambda _: None
    )
    assert unavailable == [] and set(built) == {"genai-int4", "llama.cpp-q8_0"}
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    ids = np.random.default_rng(0).integers(3, 250, size=(2, 24))

    def ppl(logits: np.ndarray) -> float:
        logits = torch.as_tensor(logits[:, :-1]).float()
        return math.exp(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), torch.as_tensor(ids[:, 1:]).reshape(-1)
            ).item()
        )

    with torch.no_grad():
        reference = ppl(model(torch.as_tensor(ids)).logits.numpy())
    bounds = {"llama.cpp-q8_0": 1.02, "genai-int4": 1.25}  # 8-bit is near lossless; int4 of a 32-wide model less so
    for name, b in built.items():
        r = runner(b["runtime"], b["path"], 1, all_logits=True)
        assert ppl(r.logits(ids)) <= bounds[name] * reference, name
        tokens = list(runner(b["runtime"], b["path"], 1).stream(ids[0, :8].tolist(), 6))
        assert len(tokens) == 6 and all(0 <= t < model.config.vocab_size for t in tokens)
    # llama.cpp's cache is sized by its caller (prompt + new tokens), not to the model's whole window, and a
    # request past it reloads the model with a cache that fits, giving the same tokens as one sized for it
    gguf = built["llama.cpp-q8_0"]["path"]
    small = runner("llama.cpp", gguf, 1, context=16)
    assert 16 <= small.context < 1024
    n = small.context - 8 + 4
    prompt = ids[0, :8].tolist()
    grown = list(small.stream(prompt, n))
    assert small.context >= 8 + n and grown == list(runner("llama.cpp", gguf, 1, context=8 + n).stream(prompt, n))
