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
