"""The causal-LM export: one decoder with a KV cache, equal to PyTorch at every decode step, greedy-identical."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from compress.tasks.causal_lm.config import LMExportConfig
from compress.tasks.causal_lm.export import LMExportCheckError, check_decoder, export_causal_lm, generator_for
from compress.tasks.causal_lm.task import onnx_nll
from export.artifact import Artifact
from tests.lm_fixtures import make_documents, tiny_tokenizer

FAMILIES = ("gpt2", "llama", "qwen2")


def _prompts(n=3, length=10):
    from compress.tasks.causal_lm.data import prompts_from

    return prompts_from(tiny_tokenizer(), make_documents()["dev"], n, length)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_has_a_kv_cache_and_matches_pytorch_step_by_step(family, tiny_lm_dirs, tiny_lm_exports):
    d = tiny_lm_exports[family]
    art = Artifact.read(d)
    assert art.task == "causal-lm" and art.files == {"model": "model.onnx"}
    graph = onnx.load(str(d / "model.onnx"), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    assert {"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.3.value"} <= inputs
    assert {"logits", "present.0.key"} <= {o.name for o in graph.output}
    assert (d / "tokenizer.json").is_file() and (d / "config.json").is_file()
    m = check_decoder(tiny_lm_dirs[family], d, _prompts(), LMExportConfig(new_tokens=12))
    assert m["max_abs_logit_diff"] < 1e-4 and m["greedy_identical"] == 1.0
    assert len(m["max_abs_logit_diff_per_step"]) == 12  # the prefill and every cached decode step


@pytest.mark.parametrize("family", FAMILIES)
def test_perplexity_of_the_onnx_artifact_equals_pytorchs(family, tiny_lm_dirs, tiny_lm_exports):
    from compress.tasks.causal_lm.data import pack_blocks, token_stream
    from compress.tasks.causal_lm.model import evaluate_blocks, load_causal_lm

    model, tok = load_causal_lm(tiny_lm_dirs[family])
    stream = token_stream(tok, make_documents()["dev"])
    blocks = pack_blocks(stream, 32, keep_tail=True)
    ref = evaluate_blocks(model, blocks)
    total, count = onnx_nll(generator_for(tiny_lm_exports[family]), blocks)
    assert count == ref.tokens
    assert np.exp(total / count) == pytest.approx(ref.perplexity, rel=1e-5)


def test_a_wrong_export_fails_the_check(tmp_path, tiny_lm_dirs):
    d = tmp_path / "bad"
    export_causal_lm(tiny_lm_dirs["llama"], d, LMExportConfig(new_tokens=4), _prompts(2, 8))
    model = onnx.load(str(d / "model.onnx"))
    for t in model.graph.initializer:  # perturb one projection: the artifact no longer computes the model
        if t.dims and len(t.dims) == 2 and t.dims[0] == 32 and t.dims[1] == 64:
            arr = onnx.numpy_helper.to_array(t).copy() * 1.5
            t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
            break
    onnx.save(model, str(d / "model.onnx"))
    m = check_decoder(tiny_lm_dirs["llama"], d, _prompts(2, 8), LMExportConfig(new_tokens=4))
    assert m["max_abs_logit_diff"] > 1e-3
    bad_model = tmp_path / "model_dir"
    shutil.copytree(tiny_lm_dirs["llama"], bad_model)
    with pytest.raises(LMExportCheckError, match="export check failed"):
        export_causal_lm(bad_model, tmp_path / "strict", LMExportConfig(new_tokens=4, atol=1e-12), _prompts(2, 8))


def test_generator_sampling_is_reproducible_and_respects_limits(tiny_lm_exports):
    from compress.tasks.causal_lm.bundle_template.generate import PromptError

    gen = generator_for(tiny_lm_exports["llama"])
    prompt = _prompts(1, 6)[0]
    a = list(gen.stream(prompt, 10, temperature=0.9, top_k=20, top_p=0.9, seed=5, ignore_eos=True))
    b = list(gen.stream(prompt, 10, temperature=0.9, top_k=20, top_p=0.9, seed=5, ignore_eos=True))
    assert a == b and len(a) == 10
    with pytest.raises(PromptError, match="empty prompt"):
        list(gen.stream([], 5))
    with pytest.raises(PromptError, match="context window is 256"):
        list(gen.stream([1] * 256, 5))
    assert len(list(gen.stream([1] * 250, 50, ignore_eos=True))) == 6  # the window fills up
    out = gen.generate("The parser", 12, stop=["."])
    assert "." not in out["text"] and out["finish_reason"] in ("stop", "length", "end_of_text")
    config = json.loads((tiny_lm_exports["llama"] / "config.json").read_text())
    assert gen.context_window == config["max_position_embeddings"]


@pytest.mark.parametrize("family", ["phi3", "gemma3_text"])
def test_fused_and_gemma3_decoders_export_with_their_cache_and_match_pytorch(family, tmp_path):
    """Phi-3 (fused qkv_proj and gate_up_proj) and Gemma 3's text decoder (sliding and global layers, q/k norms)
    through the export and its check: the same greedy tokens, logits within tolerance at every step."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.lm_fixtures import save_tiny_causal_lm

    if family == "phi3":
        src = save_tiny_causal_lm(tmp_path / family, family, train_steps=30)
    else:
        import torch

        tok = tiny_tokenizer()
        cfg = AutoConfig.for_model(
            family, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, head_dim=8, sliding_window=4,
            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
        )  # fmt: skip
        torch.manual_seed(0)
        src = tmp_path / family
        AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
        tok.save_pretrained(src)
    out = tmp_path / "onnx"
    m = export_causal_lm(src, out, LMExportConfig(new_tokens=8), _prompts(2, 10))
    assert m["greedy_identical"] == 1.0 and m["max_abs_logit_diff"] < 1e-3
    inputs = {i.name for i in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.input}
    assert {"past_key_values.0.key", "past_key_values.1.value"} <= inputs
