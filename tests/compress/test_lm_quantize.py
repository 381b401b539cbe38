"""Quantizing an exported decoder: weight-only MatMulNBits (int4/int8, RTN/HQQ/GPTQ, accuracy_level measured),
dynamic int8, the tied head untied for it, the perplexity budget."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from compress.tasks.causal_lm.config import LMQuantizeConfig
from compress.tasks.causal_lm.export import generator_for
from compress.tasks.causal_lm.quantize import PerplexityBudgetError, quantize_lm
from compress.tasks.causal_lm.task import decoder_feeds, onnx_nll
from compress.weight_only import fold_constant_transposes
from tests.lm_fixtures import make_documents, tiny_tokenizer


def _blocks():
    from compress.tasks.causal_lm.data import pack_blocks, token_stream

    return pack_blocks(token_stream(tiny_tokenizer(), make_documents()["dev"]), 32)[:6]


def _nll_fn(artifact_dir):
    blocks = _blocks()

    def nll(path):
        gen = generator_for(artifact_dir, str(path))
        total, count = onnx_nll(gen, blocks)
        return total / count

    return nll


def _ops(path) -> dict:
    from collections import Counter

    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _attrs(path, op) -> list[dict]:
    nodes = [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == op]
    return [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]


def test_a_tied_head_gets_its_own_initializer(tiny_lm_exports):
    model = onnx.load(str(tiny_lm_exports["llama"] / "model.onnx"))
    head = next(n for n in model.graph.node if n.name == "/lm_head/MatMul")
    inits = {t.name for t in model.graph.initializer}
    assert head.input[1] not in inits  # the export reads the embedding through a Transpose
    assert fold_constant_transposes(model) == 1
    assert head.input[1] in {t.name for t in model.graph.initializer}


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_int4_rtn_quantizes_every_projection_and_the_head(family, tiny_lm_exports, tmp_path):
    src = tiny_lm_exports[family]
    cfg = LMQuantizeConfig(block_size=16, accuracy_level=4)
    prompt = list(range(1, 9))
    m = quantize_lm(src, tmp_path, cfg, heldout_nll=_nll_fn(src), timing_prompt=prompt, log=lambda s: None)
    ops = _ops(tmp_path / "model.onnx")
    per_layer = 4 if family == "gpt2" else 7  # GPT-2's Gemm projections become MatMul first
    assert ops["MatMulNBits"] == 4 * per_layer + 1  # + the LM head
    attrs = _attrs(tmp_path / "model.onnx", "MatMulNBits")
    assert {a["bits"] for a in attrs} == {4} and {a["block_size"] for a in attrs} == {16}
    assert {a.get("accuracy_level", 0) for a in attrs} == {4}
    assert m["accuracy_level"]["chosen"] == 4 and m["holdout_perplexity_ratio"] < 1.5
    assert m["size_bytes"] < m["source_size_bytes"]
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "artifact.json").is_file()
    # the result still generates through the project's decoder loop
    assert len(list(generator_for(tmp_path).stream(prompt, 5, ignore_eos=True))) == 5


def test_measured_accuracy_level_records_both_and_a_reason(tiny_lm_exports, tmp_path):
    src = tiny_lm_exports["llama"]
    logs = []
    m = quantize_lm(
        src, tmp_path, LMQuantizeConfig(block_size=16), heldout_nll=_nll_fn(src), timing_prompt=[1, 2, 3, 4],
        log=logs.append,
    )  # fmt: skip
    level = m["accuracy_level"]
    assert [r["accuracy_level"] for r in level["table"]] == [0, 4]
    assert all(r["decode_ms_per_token_p50"] > 0 for r in level["table"])
    assert level["chosen"] in (0, 4) and "ms/token" in level["reason"] and logs
    chosen = {a.get("accuracy_level", 0) for a in _attrs(tmp_path / "model.onnx", "MatMulNBits")}
    assert chosen == {level["chosen"]}


@pytest.mark.parametrize(
    ("cfg", "op"),
    [
        (LMQuantizeConfig(block_size=16, algorithm="hqq", accuracy_level=0), "MatMulNBits"),
        (LMQuantizeConfig(block_size=16, bits=8, accuracy_level=0), "MatMulNBits"),
        (LMQuantizeConfig(block_size=16, accuracy_level=0, embeddings="int4"), "GatherBlockQuantized"),
        (LMQuantizeConfig(block_size=16, accuracy_level=0, embeddings="int8"), "DequantizeLinear"),
        (LMQuantizeConfig(name="int8", method="dynamic"), "MatMulInteger"),
    ],
)
def test_other_schemes(cfg, op, tiny_lm_exports, tmp_path):
    src = tiny_lm_exports["llama"]
    m = quantize_lm(src, tmp_path, cfg, heldout_nll=_nll_fn(src), timing_prompt=[1, 2, 3], log=lambda s: None)
    assert _ops(tmp_path / "model.onnx")[op] >= 1
    assert m["holdout_perplexity_ratio"] < 1.5


def test_gptq_calibrates_on_train_blocks(tiny_lm_exports, tmp_path):
    src = tiny_lm_exports["llama"]
    gen = generator_for(src)
    calibration = [decoder_feeds(gen, b[None, :]) for b in _blocks()[:2]]
    cfg = LMQuantizeConfig(block_size=16, algorithm="gptq", accuracy_level=0)
    m = quantize_lm(src, tmp_path, cfg, heldout_nll=_nll_fn(src), timing_prompt=[1, 2], calibration=calibration)
    assert _ops(tmp_path / "model.onnx")["MatMulNBits"] >= 28 and math.isfinite(m["holdout_perplexity"])


def test_a_perplexity_budget_no_model_meets_ships_nothing(tiny_lm_exports, tmp_path):
    src = tiny_lm_exports["llama"]
    cfg = LMQuantizeConfig(block_size=16, accuracy_level=0, bits=4, max_perplexity_ratio=1.0)
    nll = _nll_fn(src)
    bumped = lambda p: nll(p) + (0.0 if p.name == "model.onnx" and p.parent == src else 0.01)  # noqa: E731
    with pytest.raises(PerplexityBudgetError, match="max_perplexity_ratio 1.0"):
        quantize_lm(src, tmp_path / "q", cfg, heldout_nll=bumped, timing_prompt=[1, 2])
    assert not (tmp_path / "q" / "model.onnx").exists()


def test_config_rejects_keys_of_the_other_method():
    with pytest.raises(ValueError, match="quantize.bits does not apply to method 'dynamic'"):
        LMQuantizeConfig(method="dynamic", bits=8)
    with pytest.raises(ValueError, match="power of two"):
        LMQuantizeConfig(block_size=48)
    assert np.isfinite(LMQuantizeConfig().block_size)


def _bits_of(path) -> list[int]:
    return sorted(a["bits"] for a in _attrs(path, "MatMulNBits"))


def test_mixed_precision_meets_its_budget_by_raising_the_most_sensitive_blocks(tiny_lm_exports, tmp_path):
    src = tiny_lm_exports["llama"]
    nll = _nll_fn(src)
    loose = LMQuantizeConfig(block_size=16, accuracy_level=4, precision="mixed", mixed_max_perplexity_ratio=100)
    m = quantize_lm(src, tmp_path / "loose", loose, heldout_nll=nll, timing_prompt=[1, 2], log=lambda s: None)
    mp = m["mixed_precision"]
    assert set(mp["assignment"].values()) == {"int4"} and len(mp["tried"]) == 1  # all int4 fits a loose budget
    assert set(mp["sensitivity_int4_alone"]) == {"layer 0", "layer 1", "layer 2", "layer 3", "lm_head"}
    assert set(_bits_of(tmp_path / "loose" / "model.onnx")) == {4}

    # A budget all-int4 misses: blocks are raised to int8 in order of their measured sensitivity, no further
    # than needed, and the file holds exactly the chosen bit widths.
    all4 = mp["tried"][0]["perplexity_ratio"]
    assert all4 > 1.0
    tight = loose.model_copy(update={"mixed_max_perplexity_ratio": 1 + (all4 - 1) / 3})
    m = quantize_lm(src, tmp_path / "tight", tight, heldout_nll=nll, timing_prompt=[1, 2], log=lambda s: None)
    mp = m["mixed_precision"]
    order = sorted(mp["sensitivity_int4_alone"], key=mp["sensitivity_int4_alone"].get, reverse=True)
    raised = [g for g, b in mp["assignment"].items() if b != "int4"]
    assert raised and raised == sorted(raised, key=order.index) and set(raised) == set(order[: len(raised)])
    assert mp["perplexity_ratio"] <= tight.mixed_max_perplexity_ratio
    one_fewer = [t for t in mp["tried"] if sum(b != 4 for b in t["assignment"].values()) == len(raised) - 1]
    assert one_fewer and one_fewer[0]["perplexity_ratio"] > tight.mixed_max_perplexity_ratio  # no further than needed
    assert len(mp["tried"]) <= 2 + math.ceil(math.log2(2 * 5))  # bisection over the 9 candidates, not each one
    assert 8 in _bits_of(tmp_path / "tight" / "model.onnx") or "float" in mp["assignment"].values()


def test_mixed_precision_within_a_size_budget_raises_what_fits(tiny_lm_exports, tmp_path):
    src = tiny_lm_exports["llama"]
    nll = _nll_fn(src)
    quiet = {"heldout_nll": nll, "timing_prompt": [1, 2], "log": lambda s: None}
    roomy = LMQuantizeConfig(block_size=16, accuracy_level=4, precision="mixed", mixed_max_size_mb=1000)
    m = quantize_lm(src, tmp_path / "roomy", roomy, **quiet)
    mp = m["mixed_precision"]
    all4 = mp["tried"][0]
    assert mp["budget_kind"] == "size" and set(all4["assignment"].values()) == {4}
    sensitive = {g for g, r in mp["sensitivity_int4_alone"].items() if r > 1}
    assert sensitive and all(mp["assignment"][g] != "int4" for g in sensitive)  # room for every raise that helps
    assert m["size_bytes"] > all4["size_bytes"]

    # Half the bytes between all int4 and that: the file fits, something was raised, something did not fit.
    mid_mb = (all4["size_bytes"] + m["size_bytes"]) / 2 / 1e6
    m = quantize_lm(src, tmp_path / "mid", roomy.model_copy(update={"mixed_max_size_mb": mid_mb}), **quiet)
    mp = m["mixed_precision"]
    assert m["size_bytes"] == (tmp_path / "mid" / "model.onnx").stat().st_size <= mid_mb * 1e6
    assert any(b != "int4" for b in mp["assignment"].values())
    assert all(t["size_bytes"] <= mid_mb * 1e6 for t in mp["tried"] if t["fits"])
    assert any(not t["fits"] for t in mp["tried"])  # something did not fit, and was not kept
    chosen = [t for t in mp["tried"] if "perplexity_ratio" in t]
    assert len(chosen) == 1 and chosen[0]["fits"] and chosen[0]["perplexity_ratio"] == mp["perplexity_ratio"]
    assert mp["perplexity_ratio"] == pytest.approx(m["holdout_perplexity_ratio"], rel=0.01)  # the file shipped

    # Smaller than all int4: refused, nothing written.
    tiny = roomy.model_copy(update={"mixed_max_size_mb": all4["size_bytes"] / 2 / 1e6})
    with pytest.raises(PerplexityBudgetError, match="already makes a .* MB file, over quantize.mixed_max_size_mb"):
        quantize_lm(src, tmp_path / "tiny", tiny, **quiet)
    assert not (tmp_path / "tiny" / "model.onnx").exists()


def test_mixed_precision_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="starts from 4-bit RTN"):
        LMQuantizeConfig(precision="mixed", algorithm="gptq")
    with pytest.raises(ValueError, match="applies to precision 'mixed'"):
        LMQuantizeConfig(mixed_max_perplexity_ratio=1.05)
    with pytest.raises(ValueError, match="mixed_max_size_mb applies to precision 'mixed'"):
        LMQuantizeConfig(mixed_max_size_mb=5)
    with pytest.raises(ValueError, match="give one budget"):
        LMQuantizeConfig(precision="mixed", mixed_max_size_mb=5, mixed_max_perplexity_ratio=1.05)



def test_a_model_over_the_protobuf_limit_is_quantized_with_its_weights_beside_it(tiny_lm_exports, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    import export.artifact
    from export.artifact import with_external_data

    src = tiny_lm_exports["llama"]
    cfg = LMQuantizeConfig(block_size=16, accuracy_level=0)
    inline = quantize_lm(src, tmp_path / "inline", cfg, heldout_nll=_nll_fn(src), timing_prompt=[1, 2, 3])
    assert with_external_data(tmp_path / "inline" / "model.onnx") == [tmp_path / "inline" / "model.onnx"]
    # every model written from here on is "too large" for one protobuf, as a 1B model's float32 weights are
    monkeypatch.setattr(export.artifact, "INLINE_LIMIT_BYTES", 0)
    side = quantize_lm(src, tmp_path / "side", cfg, heldout_nll=_nll_fn(src), timing_prompt=[1, 2, 3])
    files = with_external_data(tmp_path / "side" / "model.onnx")
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    assert side["size_bytes"] == sum(f.stat().st_size for f in files)
    assert sorted(p.name for p in (tmp_path / "side").iterdir() if ".onnx" in p.name) == [f.name for f in files]
    assert side["holdout_perplexity"] == pytest.approx(inline["holdout_perplexity"], rel=1e-6)
    assert _ops(tmp_path / "side" / "model.onnx") == _ops(tmp_path / "inline" / "model.onnx")
    # a size budget counts the side file too (and is not thrown off by the graph file alone being small)
    sized = LMQuantizeConfig(block_size=16, accuracy_level=0, precision="mixed", mixed_max_size_mb=100)
    m = quantize_lm(src, tmp_path / "sized", sized, heldout_nll=_nll_fn(src), timing_prompt=[1, 2, 3])
    assert (tmp_path / "sized" / "model.onnx.data").is_file() and m["size_bytes"] <= 100e6


def test_the_uint8_embedding_rewrite_computes_what_onnx_runtimes_dynamic_quantizer_does(tiny_lm_exports, tmp_path):
    """gather_uint8_ (the embeddings: int8 form, written in place and in chunks) against ONNX Runtime's dynamic
    quantizer restricted to the Gather: the same uint8 codes to within one step, the same logits."""
    from compress.int8 import Int8Spec, quantize_model
    from compress.weight_only import gather_uint8_, prepare

    src = tmp_path / "prepared.onnx"
    prepare(tiny_lm_exports["llama"] / "model.onnx", src)
    ours = onnx.load(str(src))
    node = gather_uint8_(ours, rows_per_chunk=7)  # chunks that do not divide the table
    onnx.save(ours, str(tmp_path / "ours.onnx"))
    quantize_model(src, tmp_path / "ort.onnx", Int8Spec("dynamic", "uint8", "uint8", reduce_range=False,
                                                        op_types=("Gather",)))  # fmt: skip
    theirs = onnx.load(str(tmp_path / "ort.onnx"))
    assert _ops(tmp_path / "ours.onnx")["DequantizeLinear"] == 1 and node

    def table(model):
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        return next(a for a in inits.values() if a.dtype == np.uint8 and a.ndim == 2)

    assert np.abs(table(ours).astype(int) - table(theirs).astype(int)).max() <= 1
    import onnxruntime as ort

    feeds = decoder_feeds(generator_for(tiny_lm_exports["llama"]), np.array([[3, 5, 7, 11, 13]]))
    a = ort.InferenceSession(str(tmp_path / "ours.onnx")).run(["logits"], feeds)[0]
    b = ort.InferenceSession(str(tmp_path / "ort.onnx")).run(["logits"], feeds)[0]
    assert np.abs(a - b).max() < 1e-2 and (a.argmax(-1) == b.argmax(-1)).all()
