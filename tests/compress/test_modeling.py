"""Students built from a subset of the teacher's layers."""

from __future__ import annotations

import pytest
import torch

from compress.modeling import build_student, count_parameters, load_classifier, num_layers
from compress.recipe import RecipeError


@pytest.fixture
def teacher(tiny_classifier_dir):
    model, tokenizer = load_classifier(tiny_classifier_dir)
    return model.eval(), tokenizer


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_student_keeps_the_chosen_layers_weights(teacher):
    model, _ = teacher
    student = build_student(model, [0, 2])
    assert num_layers(student) == 2 and student.config.num_hidden_layers == 2
    for s_idx, t_idx in enumerate([0, 2]):
        s_state = student.bert.encoder.layer[s_idx].state_dict()
        t_state = model.bert.encoder.layer[t_idx].state_dict()
        assert s_state.keys() == t_state.keys()
        for k in t_state:
            assert torch.equal(s_state[k], t_state[k]), (s_idx, t_idx, k)
    for part in ("bert.embeddings", "bert.pooler", "classifier"):
        s_state, t_state = student.get_submodule(part).state_dict(), model.get_submodule(part).state_dict()
        assert all(torch.equal(s_state[k], t_state[k]) for k in t_state), part
    # Two of four encoder layers dropped, nothing else.
    per_layer = count_parameters(model.bert.encoder.layer[0])
    assert count_parameters(student) == count_parameters(model) - 2 * per_layer


def test_all_layers_reproduce_the_teacher(teacher):
    model, tokenizer = teacher
    batch = tokenizer(["the movie was very good and lovely", "it is so dull"], padding=True, return_tensors="pt")
    student = build_student(model, [0, 1, 2, 3]).eval()
    with torch.no_grad():
        assert torch.equal(student(**batch).logits, model(**batch).logits)


def test_teacher_is_not_mutated_and_shares_no_storage(teacher):
    model, _ = teacher
    before = _state(model)
    student = build_student(model, [1, 3])
    assert num_layers(model) == 4 and model.config.num_hidden_layers == 4
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("layers", [[0, 4], [-1, 2]])
def test_layer_the_teacher_lacks_is_a_recipe_error(teacher, layers):
    model, _ = teacher
    with pytest.raises(RecipeError) as e:
        build_student(model, layers)
    assert f"distill.layers = {layers}" in str(e.value)
    assert "0..3" in str(e.value)


# ---- every supported family, tiny random configs ----

FAMILIES = ["bert", "roberta", "electra", "distilbert", "albert"]
V, HID, FFN, HEADS, N = 60, 32, 64, 4, 4


def tiny_family_model(family: str, seed: int = 0):
    """A randomly initialised 2-label classifier of `family`, 4 layers (ALBERT: 4 applications), hidden 32."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=V,
        hidden_size=HID,
        num_hidden_layers=N,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
        num_labels=2,
    )
    if family == "distilbert":
        cfg = tf.DistilBertConfig(
            vocab_size=V, dim=HID, n_layers=N, n_heads=HEADS, hidden_dim=FFN, max_position_embeddings=64, num_labels=2
        )
    elif family == "roberta":
        cfg = tf.RobertaConfig(**common, pad_token_id=1)
    elif family == "electra":
        cfg = tf.ElectraConfig(**common, embedding_size=16)
    elif family == "albert":
        cfg = tf.AlbertConfig(**common, embedding_size=16)
    else:
        cfg = tf.BertConfig(**common)
    return tf.AutoModelForSequenceClassification.from_config(cfg).eval()


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _layers_of(model):
    from compress.architectures import weight_layers as _weight_layers

    return _weight_layers(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_builds_a_layer_subset_student(family):
    teacher = tiny_family_model(family)
    student = build_student(teacher, [1, 3]).eval()
    assert num_layers(student) == 2 and num_layers(teacher) == N
    with torch.no_grad():
        out = student(**_inputs(), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    if family == "albert":
        # One shared layer, applied twice: the weights are the teacher's, only the depth changed.
        assert count_parameters(student) == count_parameters(teacher)
        assert student.config.num_hidden_layers == 2
    else:
        for s, t in zip(_layers_of(student), [_layers_of(teacher)[1], _layers_of(teacher)[3]], strict=True):
            assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), t.state_dict().values(), strict=True))
    full = build_student(teacher, list(range(N))).eval()
    with torch.no_grad():
        assert torch.equal(full(**_inputs()).logits, teacher(**_inputs()).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_narrow_student_keeps_the_most_important_heads_and_neurons_and_reloads(family, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from compress.architectures import family_of as _family
    from compress.modeling import head_importance, neuron_importance

    teacher = tiny_family_model(family)
    before = _state(teacher)
    student = build_student(teacher, [0, 2], heads=2, intermediate_size=16).eval()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched
    fam = _family(teacher)
    src = [0] if family == "albert" else [0, 2]
    h_imps, n_imps = head_importance(teacher), neuron_importance(teacher)
    for s_layer, i in zip(_layers_of(student), src, strict=True):
        t_layer, h_imp, n_imp = _layers_of(teacher)[i], h_imps[i], n_imps[i]
        size = HID // HEADS
        top_heads = sorted(torch.argsort(h_imp, descending=True)[:2].tolist())
        rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in top_heads])
        assert torch.equal(s_layer.get_submodule(fam.query).weight, t_layer.get_submodule(fam.query).weight[rows])
        assert torch.equal(s_layer.get_submodule(fam.out).weight, t_layer.get_submodule(fam.out).weight[:, rows])
        top = torch.sort(torch.argsort(n_imp, descending=True)[:16]).values
        assert torch.equal(s_layer.get_submodule(fam.ffn_in).weight, t_layer.get_submodule(fam.ffn_in).weight[top])
        assert torch.equal(s_layer.get_submodule(fam.ffn_out).weight, t_layer.get_submodule(fam.ffn_out).weight[:, top])
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**_inputs()).logits, student(**_inputs()).logits, atol=1e-6)
    assert count_parameters(reloaded) == count_parameters(student) < count_parameters(build_student(teacher, [0, 2]))


@pytest.mark.parametrize("family", FAMILIES)
def test_smaller_hidden_size_truncates_the_teachers_tensors(family, tmp_path):
    from transformers import AutoModelForSequenceClassification

    teacher = tiny_family_model(family)
    student = build_student(teacher, [0, 1], hidden_size=16, heads=2).eval()
    assert student.config.hidden_size == 16 and num_layers(student) == 2
    t_state = build_student(teacher, [0, 1]).state_dict()
    copied = 0
    for name, p in student.state_dict().items():
        t = t_state.get(name)
        if t is not None and t.dim() == p.dim() and all(a <= b for a, b in zip(p.shape, t.shape, strict=True)):
            assert torch.equal(p, t[tuple(slice(0, n) for n in p.shape)]), name
            copied += 1
    assert copied > 10
    random = build_student(teacher, [0, 1], hidden_size=16, heads=2, hidden_init="random")
    emb = student.get_input_embeddings().weight
    assert not torch.equal(random.get_input_embeddings().weight, emb)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**_inputs()).logits, student(**_inputs()).logits, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(heads=5), "distill.heads = 5"),
        (dict(intermediate_size=65), "distill.intermediate_size = 65"),
        (dict(hidden_size=20, heads=3), "distill.hidden_size = 20"),
        (dict(hidden_size=64), "distill.hidden_size = 64"),
    ],
)
def test_widths_the_teacher_cannot_give_are_recipe_errors(kwargs, key):
    with pytest.raises(RecipeError, match=key):
        build_student(tiny_family_model("bert"), [0, 1], **kwargs)


def test_macs_per_token_follow_the_structure():
    from compress.modeling import describe, macs_per_token
    from compress.structured import macs_per_token as structured_macs

    teacher = tiny_family_model("bert")
    seq = 16
    per_layer = 4 * HID * HID + 2 * seq * HID + 2 * HID * FFN  # Q, K, V, O + attention matmuls + FFN
    assert macs_per_token(teacher, seq) == N * per_layer == structured_macs(teacher, seq)
    narrow = build_student(teacher, [0, 2], heads=2, intermediate_size=16)
    w = 2 * (HID // HEADS)
    assert macs_per_token(narrow, seq) == 2 * (4 * HID * w + 2 * seq * w + 2 * HID * 16)
    d = describe(narrow, seq)
    assert d["heads_per_layer"] == [2, 2] and d["intermediate_size"] == 16 and d["layers"] == 2
    # ALBERT: the pruned shared layer runs at every application, and the count says so.
    albert = build_student(tiny_family_model("albert"), [0, 1, 2], heads=2)
    assert macs_per_token(albert, seq) == 3 * (4 * HID * w + 2 * seq * w + 2 * HID * FFN)
