"""Seq2seq pieces: reading pairs, the held-out split, the recipe's checks, students of teacher layers, the loss,
the gate, and the bundle's decoding loop."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from compress.errors import RecipeError
from compress.gate import generation_gate
from compress.recipe import load_recipe
from compress.tasks.seq2seq.config import PairDataConfig
from compress.tasks.seq2seq.data import load_pair_data, read_pairs
from compress.tasks.seq2seq.training import IGNORE, seq2seq_loss
from tests.s2s_fixtures import write_pairs, write_s2s_recipe


def _cfg(tmp_path, **kw) -> PairDataConfig:
    return PairDataConfig(train=tmp_path / "train.jsonl", dev=tmp_path / "dev.jsonl", **kw)


def test_pairs_are_read_from_jsonl_tsv_csv_and_gzip(tmp_path):
    rows = [{"de": "das haus", "en": "the house"}, {"de": "", "en": "skipped"}, {"de": "ein hund", "en": "a dog"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "a.tsv").write_text("de\ten\n" + "".join(f"{r['de']}\t{r['en']}\n" for r in rows))
    (tmp_path / "a.csv.gz").write_bytes(
        gzip.compress(("de,en\n" + "".join(f'"{r["de"]}",{r["en"]}\n' for r in rows)).encode())
    )
    cfg = _cfg(tmp_path, source_field="de", target_field="en")
    for name in ("a.jsonl", "a.tsv", "a.csv.gz"):
        pairs = read_pairs(tmp_path / name, "train", cfg)
        assert pairs.sources == ["das haus", "ein hund"] and pairs.targets == ["the house", "a dog"], name


def test_a_missing_field_or_column_is_named_with_its_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"source": "x", "target": "y"}\n{"source": "z"}\n')
    with pytest.raises(RecipeError, match=r"data.target_field = 'target': line 2 .* no such key"):
        read_pairs(tmp_path / "a.jsonl", "train", _cfg(tmp_path))
    (tmp_path / "a.tsv").write_text("src\ttarget\nx\ty\n")
    with pytest.raises(RecipeError, match=r"data.source_field = 'source': .* no such column \(columns: src, target\)"):
        read_pairs(tmp_path / "a.tsv", "train", _cfg(tmp_path))
    (tmp_path / "b.jsonl").write_text('{"source": 3, "target": "y"}\n')
    with pytest.raises(RecipeError, match="line 1: 'source' is 3, expected a string"):
        read_pairs(tmp_path / "b.jsonl", "train", _cfg(tmp_path))
    (tmp_path / "c.jsonl").write_text('{"source": " ", "target": "y"}\n')
    with pytest.raises(RecipeError, match="no pairs"):
        read_pairs(tmp_path / "c.jsonl", "train", _cfg(tmp_path))


def test_the_held_out_slice_keeps_every_pair_of_a_source_on_one_side(tmp_path):
    rows = [{"source": f"s{i % 50}", "target": f"t{i}"} for i in range(400)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "dev.jsonl").write_text(json.dumps(rows[0]))
    data = load_pair_data(_cfg(tmp_path, holdout_fraction=0.2), seed=1)
    assert 0 < len(data.holdout) < 400 and len(data.holdout) + len(data.train) == 400
    assert not set(data.holdout.sources) & set(data.train.sources)
    again = load_pair_data(_cfg(tmp_path, holdout_fraction=0.2), seed=1)
    assert again.holdout == data.holdout


def test_the_recipe_refuses_what_it_cannot_do(tmp_path):
    data = write_pairs(tmp_path / "data", train=20, dev=4, test=4)
    with pytest.raises(RecipeError, match=r"prune.0.method.*'unstructured' or 'n:m'"):  # no structured cut yet
        load_recipe(write_s2s_recipe(tmp_path / "r1.yaml", data, prune=[{"name": "p", "method": "structured",
                                                                        "heads": 0.5}]))  # fmt: skip
    with pytest.raises(RecipeError, match=r"prune.0.calibration_batches applies only to importance 'wanda'"):
        load_recipe(write_s2s_recipe(tmp_path / "r6.yaml", data, prune=[{"name": "p", "calibration_batches": 4}]))
    with pytest.raises(RecipeError, match=r"quantize.0.bits does not apply to method 'dynamic'"):
        load_recipe(write_s2s_recipe(tmp_path / "r2.yaml", data, quantize=[{"name": "q", "bits": 8}]))
    with pytest.raises(RecipeError, match="source_field and data.target_field are both 'source'"):
        load_recipe(write_s2s_recipe(tmp_path / "r3.yaml", data, data={"target_field": "source"}))
    with pytest.raises(RecipeError, match="distill and quantize are both empty: the run would build no variant"):
        load_recipe(write_s2s_recipe(tmp_path / "r5.yaml", data, distill=[], quantize=[]))
    from compress.tasks import task_for

    recipe = load_recipe(write_s2s_recipe(tmp_path / "r4.yaml", data, distill=[{"name": "s", "decoder_layers": [5]}]))
    with pytest.raises(RecipeError, match=r"distill.0.decoder_layers: layer 5 does not exist .* has 2 layers"):
        task_for("seq2seq").preflight(recipe)


def _t5(layers: int = 3):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(
        T5Config(
            vocab_size=64,
            d_model=16,
            d_kv=4,
            d_ff=32,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )  # fmt: skip
    ).eval()


def test_a_t5_student_keeps_the_named_layers_and_the_first_layers_position_bias():
    from compress.tasks.seq2seq.model import build_student, layer_counts

    teacher = _t5()
    student = build_student(teacher, [0, 2], [1], "distill")
    assert layer_counts(student) == {"encoder_layers": 2, "decoder_layers": 1}
    assert (student.config.num_layers, student.config.num_decoder_layers) == (2, 1)
    t_dec, s_dec = teacher.decoder.block, student.decoder.block
    assert torch.equal(s_dec[0].layer[0].SelfAttention.q.weight, t_dec[1].layer[0].SelfAttention.q.weight)
    bias = s_dec[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert torch.equal(bias, t_dec[0].layer[0].SelfAttention.relative_attention_bias.weight)
    assert torch.equal(student.encoder.block[1].layer[1].DenseReluDense.wo.weight,
                       teacher.encoder.block[2].layer[1].DenseReluDense.wo.weight)  # fmt: skip
    assert (
        teacher.decoder.block[1].layer[0].SelfAttention.q.weight.data_ptr()
        != s_dec[0].layer[0].SelfAttention.q.weight.data_ptr()
    )
    x = torch.tensor([[5, 6, 7, 1]])
    student(input_ids=x, decoder_input_ids=torch.tensor([[0, 5]]))  # runs, with its cache slots renumbered
    same = build_student(teacher, None, None, "distill")
    assert torch.allclose(
        same(input_ids=x, decoder_input_ids=x).logits, teacher(input_ids=x, decoder_input_ids=x).logits
    )


def test_a_bart_student_saves_and_loads_with_its_new_depth(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration

    from compress.tasks.seq2seq.model import build_student, layer_counts

    torch.manual_seed(0)
    teacher = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=4,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=32)).eval()  # fmt: skip
    student = build_student(teacher, None, [0, 3], "distill")
    student.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert layer_counts(loaded) == {"encoder_layers": 2, "decoder_layers": 2}
    x = torch.tensor([[0, 5, 6, 2]])
    assert torch.allclose(
        loaded(input_ids=x, decoder_input_ids=x).logits, student(input_ids=x, decoder_input_ids=x).logits
    )
    with pytest.raises(RecipeError, match="decoder_layers: layer 4 does not exist"):
        build_student(teacher, None, [4], "distill")


def test_the_loss_ignores_padding_and_is_cross_entropy_without_a_teacher():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[1, 3:] = IGNORE
    loss = seq2seq_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    changed = student.clone()
    changed[1, 3:] += 100.0 * torch.randn(2, 11)  # only padded positions
    assert torch.allclose(seq2seq_loss(changed, teacher, labels, alpha=0.5, temperature=2.0), loss)
    ce = torch.nn.functional.cross_entropy(student.reshape(-1, 11), labels.reshape(-1), ignore_index=IGNORE)
    assert torch.allclose(seq2seq_loss(student, teacher, labels, alpha=0.0, temperature=2.0), ce)
    assert torch.allclose(
        seq2seq_loss(teacher, teacher, labels, alpha=1.0, temperature=2.0), torch.tensor(0.0), atol=1e-6
    )


def test_the_gate_fails_a_collapsed_generator_and_a_drop_beyond_its_budget():
    assert generation_gate(["a", "b", "c"], 50.0, metric="chrf").passed
    collapsed = generation_gate([""] * 200, 10.0, metric="chrf")
    assert not collapsed.passed and "collapsed" in collapsed.reason
    drop = generation_gate(["a", "b"], 40.0, metric="chrf", parent="teacher", parent_score=45.0, max_drop=2.0)
    assert not drop.passed and "5.00 points below teacher's 45.00" in drop.reason
    assert generation_gate(["a", "b"], 44.0, metric="chrf", parent="teacher", parent_score=45.0, max_drop=2.0).passed


def test_the_bundle_loop_matches_pytorch_greedy_and_beam_one_is_greedy(tmp_path):
    from transformers import T5TokenizerFast

    from compress.tasks.seq2seq.bundle_template.translate import Translator
    from compress.tasks.seq2seq.export import check_export, export_seq2seq
    from compress.tasks.seq2seq.model import train_tokenizer

    texts = ["das haus ist rot", "der hund sieht die katze", "ein kleiner hund", "the house is red", "a small dog"]
    tok = train_tokenizer(texts * 20, "t5", 300)
    assert isinstance(tok, T5TokenizerFast)
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path / "m")
    cfg = PairDataConfig(
        train=tmp_path / "t.jsonl", dev=tmp_path / "d.jsonl", max_source_length=16, max_target_length=8
    )
    (tmp_path / "onnx").mkdir()
    export_seq2seq(tmp_path / "m", tmp_path / "onnx", model, tok, cfg, 18)
    check = check_export(model, tok, tmp_path / "onnx", texts, cfg, 1e-3)
    assert check["identical_outputs"] == len(texts)
    translator = Translator(tmp_path / "onnx")
    for t in texts:
        ids = tok(t).input_ids
        assert translator.beam(ids, 8, 1) == translator.greedy([ids], 8)[0]
        assert len(translator.beam(ids, 8, 3)) <= 8
    # a padded batch gives each input its own output (float32: padding is masked, not mixed in)
    batch = [tok(t).input_ids for t in texts]
    assert translator.greedy(batch, 8) == [translator.greedy([x], 8)[0] for x in batch]


def test_the_source_gap_tells_a_model_that_reads_its_input_from_one_that_does_not(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from compress.tasks.seq2seq.data import Pairs
    from compress.tasks.seq2seq.training import MIN_SOURCE_GAP, source_gap
    from tests.s2s_fixtures import make_pairs, make_user_model

    d = make_user_model("t5", tmp_path / "t5")
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    rows = make_pairs(64, 11)
    pairs = Pairs([r["source"] for r in rows], [r["target"] for r in rows])
    assert source_gap(model, tok, pairs, "", 24, 16) > 10 * MIN_SOURCE_GAP  # a word-for-word task: it must read
    with torch.no_grad():  # the encoder's output made the same for every input: nothing of the source gets through
        model.encoder.final_layer_norm.weight.zero_()
    assert abs(source_gap(model, tok, pairs, "", 24, 16)) < MIN_SOURCE_GAP


def _bart(decoder_layers: int = 2):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    return BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=2,
        decoder_layers=decoder_layers, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=32)).eval()  # fmt: skip


@pytest.mark.parametrize("make", [_t5, _bart])
def test_masks_reach_every_projection_of_both_stacks_and_nothing_else(make):
    from compress.architectures import projection_modules
    from compress.masks import UnstructuredPruner, measure_sparsity
    from compress.structured import remove_masks_

    model = make()
    layers = 3 if make is _t5 else 2  # in each stack
    names = [n for n, _ in projection_modules(model)]
    enc, dec = [n for n in names if n.startswith("encoder.")], [n for n in names if n.startswith("decoder.")]
    cross = [n for n in dec if "EncDecAttention" in n or "encoder_attn" in n]
    # per layer: Q, K, V, O and the two FFN matrices; the decoder's also its cross-attention's Q, K, V, O
    assert (len(enc), len(dec), len(cross), len(names)) == (6 * layers, 10 * layers, 4 * layers, 16 * layers)
    assert not any("shared" in n or "embed" in n or "lm_head" in n or "relative_attention_bias" in n for n in names)
    embed = model.get_input_embeddings().weight.detach().clone()
    UnstructuredPruner(sparsity=0.5).prune_to_(model, 1.0)
    remove_masks_(model)
    m = measure_sparsity(model)
    assert abs(m["sparsity_prunable"] - 0.5) < 0.01
    assert set(m["per_layer"]) == {f"{stack}.{i}" for stack in ("encoder", "decoder") for i in range(layers)}
    assert torch.equal(model.get_input_embeddings().weight, embed)  # shared by encoder, decoder and head: dense
    model = make()
    UnstructuredPruner(nm=(2, 4)).prune_to_(model, 1.0)
    for _, mod in projection_modules(model):
        w = mod.weight.detach()  # (out, in): at most 2 of every 4 consecutive inputs of a row are kept
        assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


def test_prune_seq2seq_holds_its_zeros_through_the_fine_tune_and_on_the_cubic_schedule(tmp_path):
    from compress.masks import measure_sparsity
    from compress.tasks.seq2seq.config import Seq2SeqArchitectureConfig, Seq2SeqPruneConfig
    from compress.tasks.seq2seq.model import new_model, train_tokenizer
    from compress.tasks.seq2seq.prune import prune_seq2seq

    data_dir = write_pairs(tmp_path / "data", train=96, dev=8, test=8)
    cfg = _cfg(data_dir, max_source_length=16, max_target_length=16)
    data = load_pair_data(cfg, seed=0)
    tok = train_tokenizer(data.train.sources + data.train.targets, "bart", 300)

    teacher = new_model(Seq2SeqArchitectureConfig(family="bart", d_model=32, encoder_layers=2, decoder_layers=2,
                                                  heads=2, ffn=64), tok, 16).eval()  # fmt: skip
    seen = []
    for kw in ({"schedule": "oneshot", "importance": "wanda", "calibration_batches": 2},
               {"schedule": "cubic", "every": 1, "end": 0.5}):  # fmt: skip
        p = Seq2SeqPruneConfig(name="p", sparsity=0.6, epochs=1, batch_size=16, learning_rate=1e-3, **kw)
        model, metrics = prune_seq2seq(teacher, tok, teacher, p, data, cfg, seed=0, work_dir=tmp_path / "w",
                                       measure=lambda m: {"probe": 1.0})  # fmt: skip
        assert metrics["train_steps"] == 6  # 96 pairs / 16, one epoch: the masks were held through it
        assert abs(measure_sparsity(model)["sparsity_prunable"] - 0.6) < 0.01 and metrics["sparsity_prunable"] >= 0.59
        assert not any(h for mod in model.modules() for h in mod._forward_pre_hooks.values())  # zeros baked in
        seen.append(metrics)
    assert seen[0]["probe_before_finetune"] == 1.0 and seen[0]["importance"] == "wanda"
    assert seen[1]["schedule_history"][-1][1] == 1.0 and len(seen[1]["schedule_history"]) > 2
    assert measure_sparsity(teacher)["sparsity_prunable"] == 0.0  # a copy was pruned, never the input
