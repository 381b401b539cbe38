"""The bundle's decode loop (`generate.py`): its cache, in place or passed on, gives the tokens and logits of a
plain `session.run` loop; sampling draws from exactly the top-k / top-p set; streamed text is the decoded text."""

from __future__ import annotations

import numpy as np
import pytest

from compress.tasks.causal_lm.bundle_template import generate as g
from compress.tasks.causal_lm.genai import builder_python
from tests.lm_fixtures import make_documents, save_wide_head_llama, tiny_tokenizer


def _reference_candidates(logits, temperature, top_k, top_p):
    """Top-k then top-p by a full sort in float64: the definition."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if top_k and top_k < z.size:
        kth = np.sort(z)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    if top_p < 1.0:
        keep = np.cumsum(p[order]) - p[order] < top_p
        order = order[keep]
    else:
        order = order[p[order] > 0]
    return set(order.tolist()), p


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (0, 0.9), (0, 0.5), (40, 1.0), (40, 0.8), (5000, 0.95), (0, 1e-6)])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 3.0])
def test_sampling_candidates_are_exactly_the_top_k_then_top_p_set(top_k, top_p, temperature):
    rng = np.random.default_rng(0)
    for trial in range(5):
        logits = (rng.standard_normal(8192) * (1 + 3 * trial)).astype(np.float32)  # flat to peaked
        tokens, mass = g._candidates(logits, temperature, top_k, top_p)
        want, p = _reference_candidates(logits, temperature, top_k, top_p)
        assert set(tokens.tolist()) == want
        assert np.all(np.diff(mass) >= 0)
        got = np.diff(np.concatenate([[0.0], mass])) / mass[-1]
        np.testing.assert_allclose(got, p[tokens] / p[tokens].sum(), rtol=1e-4, atol=1e-9)


def test_sampling_draws_by_probability_and_greedy_is_the_argmax():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(1)
    draws = np.bincount([g._choose(logits, 1.0, 0, 1.0, rng) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(draws, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    draws = {g._choose(logits, 1.0, 0, 0.7, rng) for _ in range(2000)}
    assert draws == {0, 1}  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    assert g._choose(logits, 0.0, 0, 1.0, rng) == 0


def test_incremental_detokenization_gives_the_whole_decode():
    class Gen:  # what _Detokenizer needs of a generator
        def __init__(self, tok):
            self.tok = tok

        def decode(self, ids):
            return self.tok.decode(ids, skip_special_tokens=True)

    tok = tiny_tokenizer()
    gen = Gen(tok)
    text = "Ünïcödé — 日本語 テキスト 🙂 and plain words.\n  indented(x) == 3"
    ids = tok.encode(text, add_special_tokens=False)
    rng = np.random.default_rng(0)
    for sequence in (ids, rng.integers(0, len(tok), 200).tolist()):
        detok = g._Detokenizer(gen)
        pieces = "".join(detok.add(int(t)) for t in sequence)
        whole = gen.decode(sequence)
        assert whole.startswith(pieces) and len(whole) - len(pieces) <= 4  # only an incomplete tail held back
    detok = g._Detokenizer(gen)
    assert "".join(detok.add(int(t)) for t in ids) == gen.decode(ids)  # ends on a complete character


def _plain_loop(gen, prompt, steps):
    """Greedy decoding by `session.run` with NumPy caches (the loop before I/O binding): logits per step."""
    feeds_cache, past, out, token = gen.empty_cache(1), 0, [], None
    ids = np.asarray([prompt], dtype=np.int64)
    for _ in range(steps):
        feeds = {"input_ids": ids, **feeds_cache}
        if "attention_mask" in gen.input_names:
            feeds["attention_mask"] = np.ones((1, past + ids.shape[1]), dtype=np.int64)
        if "position_ids" in gen.input_names:
            feeds["position_ids"] = np.arange(past, past + ids.shape[1], dtype=np.int64)[None]
        res = gen.session.run(["logits", *gen.present_names], feeds)
        past += ids.shape[1]
        feeds_cache = dict(zip(gen.past_names, res[1:], strict=True))
        out.append(res[0][0, -1])
        token = int(np.argmax(res[0][0, -1]))
        ids = np.asarray([[token]], dtype=np.int64)
    return np.stack(out)


def _loop(gen, prompt, steps):
    logits, cache = gen.forward(np.asarray([prompt]))
    out, past = [logits[0, -1]], len(prompt)
    for _ in range(steps - 1):
        logits, cache = gen.forward(np.asarray([[int(np.argmax(out[-1]))]]), cache, past)
        out.append(logits[0, -1])
        past += 1
    return np.stack(out), cache


def _check_against_the_plain_loop(gen, prompts, steps):
    for prompt in prompts:
        want = _plain_loop(gen, prompt, steps)
        got, cache = _loop(gen, prompt, steps)
        assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert cache.length == len(prompt) + steps - 1


def _prompts(n=3, length=12):
    from compress.tasks.causal_lm.data import prompts_from

    return prompts_from(tiny_tokenizer(), make_documents()["dev"], n, length)


def test_a_concatenating_graph_passes_its_cache_on_and_decodes_as_the_plain_loop(tiny_lm_exports):
    from compress.tasks.causal_lm.export import generator_for

    gen = generator_for(tiny_lm_exports["llama"])
    _check_against_the_plain_loop(gen, _prompts(), 20)
    assert gen.kv_cache == "copy"  # optimum's graph concatenates: it refused the in-place binding, then ran
    forced = g.Generator(gen.model_path, tiny_lm_exports["llama"] / "tokenizer.json", 256, session=gen.session,
                         kv_cache="in-place")  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own error type: a present longer than its past
        forced.forward(np.asarray([_prompts(1)[0]]))


@pytest.fixture(scope="module")
def genai_export(tmp_path_factory):
    if not builder_python().exists():
        pytest.skip("GenAI model builder not installed (make anchors)")
    from compress.tasks.causal_lm.config import LMExportConfig
    from compress.tasks.causal_lm.export import export_causal_lm

    root = tmp_path_factory.mktemp("genai_loop")
    model_dir = save_wide_head_llama(root / "model")
    export_causal_lm(model_dir, root / "onnx", LMExportConfig(backend="genai", new_tokens=8), _prompts())
    return root / "onnx"


def test_an_in_place_cache_decodes_as_the_plain_loop_and_grows_without_changing_a_token(genai_export):
    from compress.tasks.causal_lm.export import generator_for

    gen = generator_for(genai_export)
    _check_against_the_plain_loop(gen, _prompts(), 20)
    assert gen.kv_cache == "in-place"
    gen.cache_start = 16  # buffers of 16 positions, doubled twice over a 12-token prompt and 40 steps
    want = _plain_loop(gen, _prompts(1)[0], 40)
    got, cache = _loop(gen, _prompts(1)[0], 40)
    assert cache.in_place and cache.capacity == 64 and cache.length == 12 + 39
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    np.testing.assert_allclose(got, want, atol=1e-4)
    copy = generator_for(genai_export)
    copy.kv_cache = "copy"
    assert copy.generate(_prompts(1)[0], 30, ignore_eos=True)["tokens"] == gen.generate(
        _prompts(1)[0], 30, ignore_eos=True
    )["tokens"]


def test_a_kept_cache_continues_as_a_fresh_one_in_place_and_passed_on(genai_export, tiny_lm_exports):
    from compress.tasks.causal_lm.export import generator_for

    for d in (genai_export, tiny_lm_exports["llama"]):
        gen = generator_for(d)
        gen.cache_start = 16
        first, second = _prompts(2, 20)
        state: dict = {}
        a = gen.generate(first, 10, state=state, ignore_eos=True)
        follow = [*first, *a["tokens"], *second[:5]]  # a second turn: the first turn's tokens then more
        kept = gen.generate(follow, 10, state=state, ignore_eos=True)
        fresh = gen.generate(follow, 10, ignore_eos=True)
        assert kept["tokens"] == fresh["tokens"]
        assert state["cache"].length == len(follow) + 9


def test_a_long_prompt_is_read_in_slices_to_the_same_tokens(genai_export, tiny_lm_exports):
    from compress.tasks.causal_lm.export import generator_for

    prompt = [t for p in _prompts(4, 40) for t in p][:150]
    for d in (genai_export, tiny_lm_exports["llama"]):
        whole, sliced = generator_for(d), generator_for(d)
        whole.prefill_chunk, sliced.prefill_chunk = 10_000, 32  # one pass; five slices, the last of 22
        whole.prefill_scratch = sliced.prefill_scratch = None  # slices by length alone (bounded scratch: below)
        a, b = whole.generate(prompt, 20, ignore_eos=True), sliced.generate(prompt, 20, ignore_eos=True)
        assert a["tokens"] == b["tokens"]
        la, ca = whole.prefill(prompt)
        lb, cb = sliced.prefill(prompt)
        assert la.shape[1] == 150 and lb.shape[1] == 150 - 4 * 32 and ca.length == cb.length == 150
        np.testing.assert_allclose(la[0, -1], lb[0, -1], atol=1e-4)


def test_prefill_slices_shorten_as_the_context_grows_so_scratch_stays_within_its_budget(genai_export):
    from compress.tasks.causal_lm.export import generator_for

    gen, whole = generator_for(genai_export), generator_for(genai_export)
    whole.prefill_scratch = None
    gen.prefill_chunk, gen.prefill_scratch = 64, 64 * (gen.vocab + gen.attention_heads * 64)  # 64 tokens at 0
    assert gen.attention_heads == 4 and gen.vocab == 300  # from config.json (the cache holds 2 key/value heads)
    lengths, past = [], 0
    while past < 200:
        n = gen.slice_length(past, 200 - past)
        assert n >= 16 and (n == 16 or n * (gen.vocab + gen.attention_heads * (past + n)) <= gen.prefill_scratch)
        lengths.append(n)
        past += n
    assert lengths[0] == 64 and lengths[-1] < lengths[0] and sorted(lengths[:-1], reverse=True) == lengths[:-1]
    prompt = [t for p in _prompts(5, 40) for t in p][:200]
    a, b = gen.generate(prompt, 12, ignore_eos=True), whole.generate(prompt, 12, ignore_eos=True)
    assert a["tokens"] == b["tokens"]


def _speculating(target_dir, draft_dir, tokens=4):
    from compress.tasks.causal_lm.export import generator_for

    gen = generator_for(target_dir)
    gen.use_draft(generator_for(draft_dir), tokens)
    return gen


@pytest.mark.parametrize("k", [1, 3, 6])
def test_a_draft_changes_the_work_per_token_never_a_token(tiny_lm_exports, k):
    from compress.tasks.causal_lm.export import generator_for

    alone = generator_for(tiny_lm_exports["llama"])
    for draft, all_kept in (("gpt2", False), ("llama", True)):  # another model; the model itself
        gen = _speculating(tiny_lm_exports["llama"], tiny_lm_exports[draft], k)
        proposed = accepted = 0
        for prompt in _prompts(3, 10):
            want = alone.generate(prompt, 30, ignore_eos=True)["tokens"]
            assert gen.generate(prompt, 30, ignore_eos=True)["tokens"] == want
            sp = gen.speculation
            assert sp["draft_steps"] == sp["proposed"] and sp["accepted"] <= sp["proposed"]
            # every pass yields its kept proposals and one token of its own; the prefill yields the first token
            assert sp["accepted"] + sp["passes"] + 1 <= 30 <= sp["accepted"] + sp["passes"] + 1 + k
            proposed, accepted = proposed + sp["proposed"], accepted + sp["accepted"]
        if all_kept:
            assert accepted == proposed > 0
        else:
            assert 0 < accepted < proposed  # a model trained on the same text agrees often, not always


def test_speculation_stops_where_the_model_alone_stops(tiny_lm_exports):
    from compress.tasks.causal_lm.export import generator_for

    prompt = _prompts(1, 12)[0]
    for window in (14, 17, 20):  # room for 1 to 7 new tokens: proposals cut to the room left
        alone = generator_for(tiny_lm_exports["llama"])
        alone.context_window = window
        gen = _speculating(tiny_lm_exports["llama"], tiny_lm_exports["qwen2"], 4)
        gen.context_window = window
        a, b = alone.generate(prompt, 50, ignore_eos=True), gen.generate(prompt, 50, ignore_eos=True)
        assert a["tokens"] == b["tokens"] and len(b["tokens"]) == window - 12
        assert b["finish_reason"] == a["finish_reason"] == "context_window"
    eos = _speculating(tiny_lm_exports["llama"], tiny_lm_exports["gpt2"], 4)
    alone = generator_for(tiny_lm_exports["llama"])
    first = alone.generate(prompt, 20, ignore_eos=True)["tokens"]
    eos.eos_token_ids = alone.eos_token_ids = {first[5]}  # a token the model makes: generation ends at it
    assert eos.generate(prompt, 20)["tokens"] == alone.generate(prompt, 20)["tokens"] == first[: first.index(first[5])]


def test_a_draft_must_share_the_vocabulary_and_speculates_greedy_decoding_only(tiny_lm_exports, tmp_path):
    import shutil

    from compress.tasks.causal_lm.export import generator_for
    from tests.lm_fixtures import tiny_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_lm_exports["gpt2"], other)
    tiny_tokenizer(320).save_pretrained(other)  # another vocabulary, the same model file
    gen = generator_for(tiny_lm_exports["llama"])
    with pytest.raises(ValueError, match="share the model's vocabulary"):
        gen.use_draft(generator_for(other))
    with pytest.raises(ValueError, match="at least 1"):
        gen.use_draft(generator_for(tiny_lm_exports["gpt2"]), 0)
    gen.use_draft(generator_for(tiny_lm_exports["gpt2"]))
    with pytest.raises(g.PromptError, match="greedy decoding only"):
        gen.generate(_prompts(1)[0], 5, temperature=0.8)


def test_an_in_place_model_speculates_with_either_kind_of_draft(genai_export, tiny_lm_exports):
    from compress.tasks.causal_lm.export import generator_for

    alone = generator_for(genai_export)
    for draft in (genai_export, tiny_lm_exports["llama"]):  # a draft with a cache in place; one passed on
        gen = generator_for(genai_export)
        gen.cache_start = 16  # buffers grow while verified proposals are cut back
        gen.use_draft(generator_for(draft), 5)
        for prompt in _prompts(2, 12):
            assert gen.generate(prompt, 40, ignore_eos=True)["tokens"] == alone.generate(prompt, 40, ignore_eos=True)[
                "tokens"
            ]
        assert gen.kv_cache == "in-place"


def test_a_genai_form_is_the_same_file_checked_by_genais_generator_or_left_out(genai_export, tmp_path):
    """The bundle's GenAI form: genai_config.json beside the bundle's model.onnx, kept only where GenAI's
    generator gives the recorded greedy tokens (compress.tasks.causal_lm.forms)."""
    pytest.importorskip("onnxruntime_genai")
    import shutil

    from compress.tasks.causal_lm.export import generator_for
    from compress.tasks.causal_lm.forms import genai_form

    b = tmp_path / "bundle"
    b.mkdir()
    for f in ("model.onnx", "tokenizer.json"):
        shutil.copy2(genai_export / f, b / f)
    ours = generator_for(genai_export, threads=1)
    prompts = _prompts(3)
    want = [list(ours.stream(p, 8, ignore_eos=True)) for p in prompts]
    got = genai_form(genai_export, b, prompts, want, 8, 1)
    assert got["shipped"] and got["greedy_identical"] == 1.0 and (b / "genai_config.json").is_file()
    assert 0 <= got["greedy_identical_whole_prompt"] <= 1  # GenAI's own way, the prompt appended whole
    c = tmp_path / "other"
    shutil.copytree(b, c)
    (c / "genai_config.json").unlink()
    wrong = [w[:-1] + [(w[-1] + 1) % 300] for w in want]  # a last token the model would not choose
    refused = genai_form(genai_export, c, prompts, wrong, 8, 1)
    assert not refused["shipped"] and refused["greedy_identical"] < 1.0 and "other greedy tokens" in refused["why"]
    assert not (c / "genai_config.json").exists()  # no form that failed its check is left in the bundle
    not_genai = genai_form(tmp_path / "nothing-here", c, prompts, want, 8, 1)
    assert not not_genai["shipped"] and "GenAI's builder" in not_genai["why"]


def test_genais_generator_given_our_prefill_slices_reproduces_our_loop_on_dynamic_int8(genai_export, tmp_path):
    """Dynamic int8 quantizes a pass's activations per tensor, so its logits depend on which tokens a pass reads
    together: GenAI's generator reads a prompt whole, our loop in bounded slices. Given our slices
    (`prefill_slices`), GenAI's generator on the same file gives our greedy tokens (the bundle's GenAI-form check)."""
    pytest.importorskip("onnxruntime_genai")
    from compress.tasks.causal_lm.anchors import runner
    from compress.tasks.causal_lm.config import LMQuantizeConfig
    from compress.tasks.causal_lm.export import generator_for
    from compress.tasks.causal_lm.quantize import quantize_lm

    m = quantize_lm(genai_export, tmp_path / "int8", LMQuantizeConfig(name="int8", method="dynamic"),
                    heldout_nll=lambda _: 1.0, timing_prompt=[1, 2, 3], log=lambda _: None)  # fmt: skip
    assert m["quantized_ops"].get("DynamicQuantizeLinear", 0) > 0  # activations quantized per tensor, per pass
    ours = generator_for(tmp_path / "int8", threads=1)
    ours.prefill_scratch = 16 * (ours.vocab + ours.attention_heads * 48)  # slices of 16 tokens at this length
    theirs = runner("genai", tmp_path / "int8", 1)
    for prompt in _prompts(3, 40):
        slices = ours.prefill_slices(len(prompt))
        assert len(slices) == 3 and sum(slices) == 40
        assert list(theirs.stream(prompt, 8, slices=slices)) == list(ours.stream(prompt, 8, ignore_eos=True))


def test_a_generation_allocates_its_in_place_cache_once_for_prompt_and_new_tokens(genai_export, monkeypatch):
    from compress.tasks.causal_lm.bundle_template import generate
    from compress.tasks.causal_lm.export import generator_for

    gen = generator_for(genai_export)
    gen.cache_start = 16
    prompt = _prompts(1)[0]  # 12 tokens
    want = list(gen.stream(prompt, 40, ignore_eos=True))

    def no_growth(self, capacity):
        raise AssertionError("the cache grew during a generation whose length was known")

    monkeypatch.setattr(generate.KVCache, "grown", no_growth)
    state: dict = {}
    assert list(gen.stream(prompt, 40, ignore_eos=True, state=state)) == want
    assert state["cache"].capacity == 64 and state["cache"].length == 12 + 39  # 16 doubled to hold 52, once
