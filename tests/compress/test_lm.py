"""Decoders: the architecture table, students of GPT-2 / Llama / Qwen2, LM losses, perplexity, loading errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from compress.architectures import FAMILIES, ONNX_LAYER, family_of, projection_modules
from compress.errors import RecipeError
from compress.losses import next_token_distillation_loss, next_token_loss, token_kl_loss
from compress.modeling import build_student
from compress.structured import macs_per_token
from compress.tasks.causal_lm.model import check_causal_lm_dir, evaluate_blocks, load_causal_lm
from tests.lm_fixtures import tiny_causal_lm

FAMILY_NAMES = ("gpt2", "llama", "qwen2", "phi3")


def test_one_table_covers_every_family_and_onnx_block_names():
    assert {"bert", "distilbert", "albert", "gpt2", "llama", "qwen2", "mistral"} <= set(FAMILIES)
    for name in ("/bert/encoder/layer.3/attention/MatMul", "/model/layers.0/mlp/MatMul", "/transformer/h.2/attn/Gemm"):
        assert ONNX_LAYER.search(name) is not None
    assert ONNX_LAYER.search("/lm_head/MatMul") is None


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_projections_include_conv1d_and_exclude_embeddings_and_head(family):
    model = tiny_causal_lm(family, 100, 0)
    names = [n for n, _ in projection_modules(model)]
    per_layer = {"gpt2": 4, "llama": 7, "qwen2": 7, "phi3": 4}[family]  # fused: qkv, out, gate-up (or up), down
    assert len(names) == 4 * per_layer
    assert not any("embed" in n or "wte" in n or "lm_head" in n for n in names)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_layer_subset_student_generates_with_its_own_kv_cache(family):
    teacher = tiny_causal_lm(family, 100, 0).eval()
    student = build_student(teacher, [0, 3]).eval()
    assert student.config.num_hidden_layers == 2
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = student(input_ids=ids).logits[0, -1]
        out = student(input_ids=ids[:, :-1], use_cache=True)  # the cache must index the student's own layers
        step = student(input_ids=ids[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits[0, -1]
        gen = student.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.allclose(full, step, atol=1e-5)
    assert gen.shape == (1, 17)
    # The teacher is untouched and the student's layers are copies of teacher layers 0 and 3.
    assert teacher.config.num_hidden_layers == 4
    t_layers = teacher.base_model.get_submodule(FAMILIES[family].layers)
    s_layers = student.base_model.get_submodule(FAMILIES[family].layers)
    for s, t in zip(s_layers, [t_layers[0], t_layers[3]], strict=True):
        for (_, a), (_, b) in zip(s.named_parameters(), t.named_parameters(), strict=True):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


@pytest.mark.parametrize(
    "model_type", ["mistral", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo", "olmo2", "stablelm"]
)
def test_other_llama_style_families_share_the_table_entry(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        model_type, vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, head_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(cfg).eval()
    assert len(projection_modules(teacher)) == 4 * 7
    student = build_student(teacher, [1, 3], intermediate_size=32).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        full = student(input_ids=ids).logits[0, -1]
        out = student(input_ids=ids[:, :-1], use_cache=True)
        step = student(input_ids=ids[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits[0, -1]
    assert torch.allclose(full, step, atol=1e-4)


def test_qwen2_layer_types_follow_the_kept_layers(tmp_path):
    teacher = tiny_causal_lm("qwen2", 100, 0)
    student = build_student(teacher, [1, 2])
    assert len(student.config.layer_types) == 2
    student.save_pretrained(tmp_path)  # a config whose per-layer list disagrees would not save or reload
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.num_hidden_layers == 2


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_narrower_ffn_keeps_gate_up_and_down_together(family):
    teacher = tiny_causal_lm(family, 100, 0)
    student = build_student(teacher, [0, 1], intermediate_size=16)
    fam = FAMILIES[family]
    layer = student.base_model.get_submodule(fam.layers)[0]
    for path in (fam.ffn_in, fam.ffn_gate, fam.ffn_out):
        if path:
            w = layer.get_submodule(path).weight
            assert (2 * 16 if fam.gate_up and path == fam.ffn_in else 16) in w.shape
    with torch.inference_mode():
        student(input_ids=torch.tensor([[1, 2, 3]]))
    assert macs_per_token(student.config, 10) < macs_per_token(teacher.config, 10)


def test_macs_count_grouped_query_attention_the_gated_ffn_and_the_head():
    cfg = tiny_causal_lm("llama", 100, 0).config  # d 32, 4 heads of 8, 2 kv heads, FFN 64, 4 layers, vocab 100
    per_layer = 2 * 32 * 32 + 2 * 32 * 16 + 2 * 10 * 32 + 3 * 32 * 64
    assert macs_per_token(cfg, 10) == 4 * per_layer + 32 * 100


def test_lm_losses():
    torch.manual_seed(0)
    logits, other = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    hf = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert torch.allclose(next_token_loss(logits, ids), hf)
    assert token_kl_loss(logits, logits, 2.0).abs() < 1e-6 and token_kl_loss(logits, other, 2.0) > 0
    assert torch.allclose(next_token_distillation_loss(logits, other, ids, 1.0, 0.0), hf)
    mixed = next_token_distillation_loss(logits, other, ids, 1.0, 0.25)
    assert torch.allclose(mixed, 0.25 * token_kl_loss(logits, other, 1.0) + 0.75 * hf)


def test_perplexity_is_exp_of_the_models_own_loss():
    model = tiny_causal_lm("llama", 100, 0).eval()
    blocks = [np.random.default_rng(0).integers(0, 100, 16) for _ in range(3)] + [np.arange(5)]
    ev = evaluate_blocks(model, blocks, batch_size=2)
    with torch.inference_mode():
        losses = [model(input_ids=torch.as_tensor(b)[None], labels=torch.as_tensor(b)[None]).loss for b in blocks]
    total = sum(float(loss) * (len(b) - 1) for loss, b in zip(losses, blocks, strict=True))
    assert ev.tokens == 3 * 15 + 4
    assert ev.perplexity == pytest.approx(math.exp(total / ev.tokens), rel=1e-5)
    assert [len(p) for p in ev.predictions] == [15, 15, 15, 4]


def test_loading_a_directory_that_is_not_a_causal_lm_says_so(tmp_path, tiny_lm_dirs, tiny_classifier_dir):
    with pytest.raises(RecipeError, match="not a decoder-only causal LM") as e:
        check_causal_lm_dir(tiny_classifier_dir)
    assert "model_type 'bert'" in str(e.value)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_lm_dirs["llama"], no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(RecipeError, match="no weights"):
        check_causal_lm_dir(no_weights)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_lm_dirs["gpt2"], bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(RecipeError, match="config.json is not valid JSON"):
        check_causal_lm_dir(bad)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_lm_dirs["llama"], mismatch)
    cfg = json.loads((mismatch / "config.json").read_text())
    (mismatch / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48, "num_attention_heads": 4}))
    with pytest.raises(RecipeError, match="cannot be loaded"):
        load_causal_lm(mismatch)
    model, tok = load_causal_lm(tiny_lm_dirs["qwen2"])
    assert family_of(model).name == "llama" and tok.eos_token_id is not None


def test_divergences_forward_reverse_and_skewed():
    from compress.losses import token_divergence

    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 13), torch.randn(2, 5, 13)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    forward = (p * (p.log() - q.log())).sum(-1).mean()
    reverse = (q * (q.log() - p.log())).sum(-1).mean()
    assert torch.allclose(token_divergence(s, t, "forward"), forward, atol=1e-6)
    assert torch.allclose(token_divergence(s, t, "reverse"), reverse, atol=1e-6)
    assert torch.allclose(token_divergence(s, t, "forward"), token_kl_loss(s, t, 1.0), atol=1e-6)
    mix = 0.3 * p + 0.7 * q
    skew = (p * (p.log() - mix.log())).sum(-1).mean()
    assert torch.allclose(token_divergence(s, t, "skew", skew=0.3), skew, atol=1e-6)
    mix_r = 0.3 * q + 0.7 * p
    skew_r = (q * (q.log() - mix_r.log())).sum(-1).mean()
    assert torch.allclose(token_divergence(s, t, "skew-reverse", skew=0.3), skew_r, atol=1e-6)
    assert torch.allclose(token_divergence(s, t, "skew", skew=0.0), forward, atol=1e-6)
    for kind in ("forward", "reverse", "skew", "skew-reverse"):
        assert token_divergence(s, s, kind) < 1e-6  # zero at the teacher
        assert token_divergence(s, t, kind) > 0
    # Temperature scales the distributions and multiplies by T^2.
    t2 = token_divergence(s, t, "reverse", temperature=2.0)
    q2, p2 = torch.softmax(s / 2, -1), torch.softmax(t / 2, -1)
    assert torch.allclose(t2, 4 * (q2 * (q2.log() - p2.log())).sum(-1).mean(), atol=1e-6)
    # The skewed divergence stays bounded where the student gives a token almost no mass.
    extreme = s.clone()
    extreme[..., 0] = -1e4
    g = torch.autograd.grad(token_divergence(extreme.requires_grad_(), t, "skew", skew=0.1), extreme)[0]
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="kind must be one of"):
        token_divergence(s, t, "jensen")


@pytest.mark.parametrize("kind", ["reverse", "skew-reverse"])
def test_a_student_trains_on_each_divergence(kind, tiny_lm_dirs, text_data_dir, tmp_path):
    from compress.tasks.causal_lm.config import LMDistillConfig, TextDataConfig
    from compress.tasks.causal_lm.data import load_text_data
    from compress.tasks.causal_lm.distill import distill_lm

    teacher, tok = load_causal_lm(tiny_lm_dirs["llama"])
    data_cfg = TextDataConfig(
        train=text_data_dir / "train.txt", dev=text_data_dir / "dev.txt", documents="line", block_size=32
    )
    skew = {"skew": 0.2} if kind.startswith("skew") else {}
    cfg = LMDistillConfig(layers=[0, 3], loss=kind, epochs=1, batch_size=8, learning_rate=3e-3, **skew)
    data = load_text_data(data_cfg)
    res = distill_lm(teacher, tok, cfg, data, data_cfg, seed=0, work_dir=tmp_path, log=lambda s: None)
    assert res.metrics["loss"]["kind"] == kind and res.metrics["loss"]["skew"] == skew.get("skew")
    with pytest.raises(ValueError, match="distill.skew applies only to loss 'skew'"):
        LMDistillConfig(loss="reverse", skew=0.3)
    assert 1 < res.metrics["dev_perplexity_torch"] < 300 and res.metrics["train_loss_final"] > 0


def test_memory_keys_accumulate_checkpoint_and_autocast_and_say_so(tiny_lm_dirs, text_data_dir, tmp_path, monkeypatch):
    """gradient_accumulation_steps, gradient_checkpointing and precision reach the Trainer, the student trains
    with them (chunked losses too), the record says what was used, and checkpointing is off afterwards."""
    from compress import losses
    from compress.tasks.causal_lm.config import LMDistillConfig, TextDataConfig
    from compress.tasks.causal_lm.data import load_text_data
    from compress.tasks.causal_lm.distill import distill_lm
    from compress.tasks.causal_lm.model import block_training_args

    monkeypatch.setattr(losses, "CHUNK_ABOVE_ELEMENTS", 0)  # the chunked divergence and cross-entropy
    teacher, tok = load_causal_lm(tiny_lm_dirs["llama"])
    data_cfg = TextDataConfig(
        train=text_data_dir / "train.txt", dev=text_data_dir / "dev.txt", documents="line", block_size=32
    )
    memory = {"gradient_accumulation_steps": 2, "gradient_checkpointing": True, "precision": "bf16"}
    cfg = LMDistillConfig(layers=[0, 3], max_steps=3, batch_size=4, learning_rate=3e-3, control=False, **memory)
    args = block_training_args(tmp_path, cfg, 0, evaluate=False)
    assert args.gradient_accumulation_steps == 2 and args.gradient_checkpointing and args.bf16
    res = distill_lm(teacher, tok, cfg, load_text_data(data_cfg), data_cfg, seed=0, work_dir=tmp_path, log=print)
    assert res.metrics["training_memory"] == memory
    assert res.metrics["train_blocks_seen"] == 3 * 4 * 2  # steps x batch x accumulation
    assert not res.model.model.gradient_checkpointing  # a trained model runs without it
    assert math.isfinite(res.metrics["dev_perplexity_torch"]) and res.metrics["train_loss_final"] > 0
    with pytest.raises(ValueError, match="precision"):
        LMDistillConfig(precision="fp8")
    import os

    later = block_training_args(tmp_path, LMDistillConfig(), 0, evaluate=False)  # the bf16 run left nothing behind
    assert not later.bf16 and os.environ.get("ACCELERATE_MIXED_PRECISION") in (None, "no")


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_causal_lm("llama", 64, 0).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        next_token_loss(model(input_ids=ids, use_cache=False).logits, ids).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_documents_start_with_bos_exactly_when_the_tokenizer_adds_one():
    """Llama 3's tokenizer puts BOS before every text, GPT-2's and Qwen2's do not: training, evaluation and the
    bundle's plain prompts follow the tokenizer's own configuration."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from compress.tasks.causal_lm.data import bos_prefix, token_stream
    from tests.lm_fixtures import tiny_tokenizer

    plain = tiny_tokenizer(300)
    assert bos_prefix(plain) == []
    backend = plain.backend_tokenizer
    backend.add_special_tokens(["<s>"])
    bos = backend.token_to_id("<s>")
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    llama_like = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<|endoftext|>")
    assert bos_prefix(llama_like) == [bos]
    text = "the parser reads a file"
    assert llama_like(text)["input_ids"] == [bos, *llama_like(text, add_special_tokens=False)["input_ids"]]
    stream = token_stream(llama_like, [text, "each thread sorts the list"]).tolist()
    eos = llama_like.eos_token_id
    assert stream[0] == bos and stream.count(bos) == 2 and stream[stream.index(eos) + 1] == bos and stream[-1] == eos


class _TableModel:
    """A 'model' whose next-token logits depend on the current token only (a row of a fixed table)."""

    def __init__(self, table: np.ndarray):
        self.table = table

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.table[ids]


def test_benchmark_perplexity_and_kl_match_a_float64_reference_and_a_kept_reference_changes_nothing(monkeypatch):
    from compress.tasks.causal_lm import suite

    rng = np.random.default_rng(0)
    vocab = 50
    teacher, student = (rng.normal(0, 3, (vocab, vocab)).astype(np.float32) for _ in range(2))
    blocks = [rng.integers(0, vocab, n) for n in (17, 17, 17, 9, 17)]  # two lengths, a partial batch

    def exact(table, ref_table=None):
        nll, kl, count = 0.0, 0.0, 0
        for b in blocks:
            z = table[b[:-1]].astype(np.float64)
            logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
            nll -= logp[np.arange(len(b) - 1), b[1:]].sum()
            if ref_table is not None:
                r = ref_table[b[:-1]].astype(np.float64)
                ref = r - np.log(np.exp(r - r.max(-1, keepdims=True)).sum(-1, keepdims=True)) - r.max(-1, keepdims=True)
                kl += (np.exp(ref) * (ref - logp)).sum()
            count += len(b) - 1
        return math.exp(nll / count), kl / count

    monkeypatch.setattr(suite, "_Quality", _TableModel)  # the reference-as-model branch checks this class
    t, s = _TableModel(teacher), _TableModel(student)
    ref_ev = suite._evaluate(t, blocks, batch_size=2, keep=True)
    kept = ref_ev.log_probs
    assert kept is not None and all(lp.shape == (len(b) - 1, vocab) for lp, b in zip(kept, blocks, strict=True))
    by_model = suite._evaluate(s, blocks, batch_size=2, reference=t)
    by_kept = suite._evaluate(s, blocks, batch_size=2, reference=ref_ev.log_probs)
    ppl, kl = exact(student, teacher)
    assert ref_ev.perplexity == pytest.approx(exact(teacher)[0], rel=1e-5)
    for ev in (by_model, by_kept):
        assert ev.perplexity == pytest.approx(ppl, rel=1e-5)
        assert ev.kl_to_reference == pytest.approx(kl, rel=1e-5) and ev.kl_to_reference > 0.1
        assert all((p == student[b[:-1]].argmax(-1)).all() for p, b in zip(ev.predictions, blocks, strict=True))
    assert suite._evaluate(t, blocks, reference=ref_ev.log_probs).kl_to_reference == pytest.approx(0.0, abs=1e-6)
    monkeypatch.setattr(suite, "KEEP_REFERENCE_BYTES", 1000)  # past the cap nothing is kept
    assert suite._evaluate(t, blocks, keep=True).log_probs is None


def test_a_fused_gate_and_up_keep_the_same_neurons_in_both_halves():
    """Phi-3's gate_up_proj holds a neuron's gate row at i and its up row at F + i: a narrower FFN keeps both."""
    from compress.modeling import neuron_importance

    teacher = tiny_causal_lm("phi3", 100, 0).eval()  # FFN 64
    keep = torch.sort(torch.argsort(neuron_importance(teacher)[0], descending=True)[:16]).values
    student = build_student(teacher, [0, 1, 2, 3], intermediate_size=16).eval()
    t_mlp, s_mlp = teacher.model.layers[0].mlp, student.model.layers[0].mlp
    assert torch.equal(s_mlp.gate_up_proj.weight, t_mlp.gate_up_proj.weight[torch.cat([keep, keep + 64])])
    assert torch.equal(s_mlp.down_proj.weight, t_mlp.down_proj.weight[:, keep])
    full = build_student(teacher, [0, 1, 2, 3], intermediate_size=64).eval()  # every neuron: the same function
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        assert torch.allclose(full(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-5)
    assert macs_per_token(teacher.config, 10) - macs_per_token(student.config, 10) == 4 * 3 * 32 * 48


def test_gemma3s_image_text_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]})
    )
    with pytest.raises(RecipeError, match="not a decoder-only causal LM"):
        check_causal_lm_dir(tmp_path)
