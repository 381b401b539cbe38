"""Decoders of published shapes: the configurations give the published parameter counts, and a built directory
goes through the loader the pipeline uses."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.errors import RecipeError
from compress.tasks.causal_lm.model import load_causal_lm
from compress.tasks.causal_lm.shapes import PUBLISHED, build_random, main, published_config
from tests.lm_fixtures import make_documents

# The model cards' parameter counts (tied embedding and head counted once).
PUBLISHED_PARAMETERS = {
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "qwen2.5-0.5b": 494_032_768,
    "qwen3-0.6b": 596_049_920,
    "llama-3.2-1b": 1_235_814_400,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_published_shape_has_its_published_parameter_count(name):
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = AutoModelForCausalLM.from_config(published_config(name))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]


def test_a_built_shape_loads_as_a_teacher_with_the_published_vocabulary(tmp_path):
    docs = make_documents()["train"]
    record = build_random("qwen2.5-0.5b", tmp_path / "m", docs, overrides={"num_hidden_layers": 1, "hidden_size": 64,
                          "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1})  # fmt: skip
    model, tok = load_causal_lm(tmp_path / "m")
    assert model.config.vocab_size == 151936 and model.config.model_type == "qwen2"
    assert len(tok) == record["tokenizer_pieces"] <= 151936  # a small corpus stops short: the rest is padding
    assert model.config.eos_token_id == tok.eos_token_id
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "m" / "shape.json").read_text())["overrides"]["num_hidden_layers"] == 1


def test_unknown_shapes_and_empty_corpora_are_refused(tmp_path, capsys):
    with pytest.raises(RecipeError, match="unknown shape 'gpt-5'"):
        published_config("gpt-5")
    with pytest.raises(RecipeError, match="no documents"):
        build_random("smollm2-135m", tmp_path / "m", [])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["smollm2-135m", "--corpus", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert "no text" in capsys.readouterr().err and not (tmp_path / "x").exists()
