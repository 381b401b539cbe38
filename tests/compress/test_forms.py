"""The bundle's forms for other runtimes: which llama.cpp type a variant maps to, the --forms list, and the
GGUF check's token agreement (compress.tasks.causal_lm.forms)."""

from __future__ import annotations

import numpy as np
import pytest

from compress.tasks.causal_lm.forms import FORMS, gguf_agreement, gguf_type, parse_forms


def test_forms_parse_and_refuse_unknown_names():
    assert parse_forms(None) == FORMS == ("genai", "gguf")
    assert parse_forms("gguf") == ("gguf",) and parse_forms("gguf, genai,gguf") == ("gguf", "genai")
    assert parse_forms("none") == ()
    with pytest.raises(ValueError, match="mlc not known"):
        parse_forms("genai,mlc")


def test_each_quantization_maps_to_the_nearest_llama_cpp_type():
    assert gguf_type(None) == "f32"
    assert gguf_type({"name": "int8", "method": "dynamic"}) == "q8_0"
    assert gguf_type({"method": "weight-only", "bits": 8}) == "q8_0"
    assert gguf_type({"method": "weight-only", "bits": 4}) == "q4_1"  # our int4 blocks have zero points
    assert gguf_type({"method": "weight-only", "bits": 4, "symmetric": True}) == "q4_0"
    assert gguf_type({"method": "weight-only", "precision": "mixed"}) == "q4_k_m"


class _Model:
    """A stand-in llama.cpp runner whose next token is always (last token + 1) % 10, except after token 7."""

    def logits(self, ids):
        ids = np.asarray(ids)
        out = np.zeros((*ids.shape, 10), dtype=np.float32)
        for b, row in enumerate(ids):
            for t, tok in enumerate(row):
                out[b, t, 0 if tok == 7 else (tok + 1) % 10] = 1.0
        return out

    def stream(self, prompt, n):
        tok = prompt[-1]
        for _ in range(n):
            tok = 0 if tok == 7 else (tok + 1) % 10
            yield tok


def test_gguf_agreement_is_teacher_forced_so_one_early_miss_costs_one_token():
    prompts = [[1, 2], [5]]
    expected = [[3, 4, 5, 6], [6, 7, 8, 9]]  # the second continues 7 -> 8 where the model says 0
    agree, identical = gguf_agreement(_Model(), prompts, expected)
    assert agree == pytest.approx(7 / 8)  # one miss of eight tokens, not the three after it as well
    assert identical == pytest.approx(1 / 2)
    assert gguf_agreement(_Model(), [[1]], [[5, 5, 5]])[0] == pytest.approx(0.0)
