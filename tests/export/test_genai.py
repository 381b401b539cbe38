"""The GenAI builder as the export backend: fused graph, one file, checked against PyTorch like optimum's export,
quantized by this project's quantizers. Runs where the builder is installed (`make anchors`)."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from compress.tasks.causal_lm.config import LMExportConfig, LMQuantizeConfig
from compress.tasks.causal_lm.genai import builder_python
from tests.lm_fixtures import make_documents, save_wide_head_llama, tiny_tokenizer

pytestmark = pytest.mark.skipif(not builder_python().exists(), reason="GenAI model builder not installed")


def test_the_genai_backend_exports_a_fused_decoder_that_matches_pytorch_and_quantizes(tmp_path):
    from compress.tasks.causal_lm.data import pack_blocks, prompts_from, token_stream
    from compress.tasks.causal_lm.export import export_causal_lm, generator_for
    from compress.tasks.causal_lm.quantize import quantize_lm
    from compress.tasks.causal_lm.task import onnx_nll

    model_dir = save_wide_head_llama(tmp_path / "model")
    prompts = prompts_from(tiny_tokenizer(), make_documents()["dev"], 3, 10)
    m = export_causal_lm(model_dir, tmp_path / "onnx", LMExportConfig(backend="genai", new_tokens=8), prompts)
    assert m["backend"] == "genai" and m["greedy_identical"] == 1.0 and m["max_abs_logit_diff"] < 1e-3
    assert not (tmp_path / "onnx" / "model.onnx.data").exists()  # one file
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node)
    assert ops["GroupQueryAttention"] == 2 and ops["SkipSimplifiedLayerNormalization"] > 0

    blocks = pack_blocks(token_stream(tiny_tokenizer(), make_documents()["dev"]), 32)[:4]

    def nll(path):
        total, count = onnx_nll(generator_for(tmp_path / "onnx", str(path)), blocks)
        return total / count

    q = quantize_lm(
        tmp_path / "onnx", tmp_path / "int4", LMQuantizeConfig(block_size=16, accuracy_level=4), heldout_nll=nll,
        timing_prompt=[1, 2, 3], log=lambda _: None,
    )  # fmt: skip
    assert q["quantized_ops"]["MatMulNBits"] >= 2 * 4 + 1  # every projection of both layers, and the head
    assert q["holdout_perplexity_ratio"] < 1.1

    # The same quantized file through GenAI's own generator (benchmark.in_genai): the same greedy tokens as ours.
    pytest.importorskip("onnxruntime_genai")
    from compress.tasks.causal_lm.anchors import runner

    theirs, ours = runner("genai", tmp_path / "int4", 1), generator_for(tmp_path / "int4", "model.onnx", threads=1)
    for p in prompts:
        assert list(theirs.stream(p, 8)) == list(ours.stream(p, 8, ignore_eos=True))

