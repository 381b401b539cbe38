"""A deployment bundle of a causal LM: one directory with everything a device needs to generate text.

    model.onnx (+ model.onnx.data when its weights are kept outside it)  model.ort  required_operators.config
    tokenizer.json  generation_config.json  bundle.json  manifest.json (the run's)  generate.py  README.md
    chat_template.jinja (when the model's tokenizer has one)
    draft/model.onnx, draft/model.ort (with `--draft VARIANT`: a smaller variant that speculates for the model)

`generate.py` needs only onnxruntime, tokenizers and numpy (and jinja2 for the chat template); it is the same
decoder loop the pipeline measured (`compress/tasks/causal_lm/bundle_template/generate.py`). Before the bundle is
written, that file, run from the bundle directory on both model.ort and model.onnx, must reproduce the greedy
tokens the benchmark recorded for this variant, and its chat template must give transformers' prompt tokens.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from compress.manifest import atomic_dir, library_versions
from compress.targets import BASELINES
from export.artifact import copy_model
from export.bundle_checks import BundleError, choose_variant, load_bundle_script, measured_artifact, open_run, sha256

TEMPLATE = Path(__file__).resolve().parent / "bundle_template" / "generate.py"
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0}


class LMBundleError(BundleError):
    """A run that cannot be bundled as asked, or a bundle that does not reproduce the measured tokens."""


def _tokens_per_s(v: dict, target: str) -> float | None:
    return v.get("targets", {}).get(target, {}).get("tokens_per_s")


SPEED_TIE = 0.05  # decode speeds this close to the fastest are one speed on a shared machine


def select_lm_variant(
    report: dict, target: str, *, max_perplexity_ratio: float = 1.25, max_kl_to_teacher: float = 0.5
) -> tuple[dict, str]:
    """The variant to ship to `target`: among the deployable ONNX variants whose dev perplexity is within
    `max_perplexity_ratio` of the teacher's *and* whose next-token distributions are within `max_kl_to_teacher`
    nats per token of the teacher's (KL(teacher || variant) on dev, measured by the benchmark), the fastest decoder
    there (tokens/s); speeds within 5% of the fastest count as ties, and among them the smallest download (gzip
    size) wins.

    Perplexity alone cannot tell a compressed teacher from another model of similar quality: a student that
    learned the corpus its own way (or a teacher undertrained enough that any extra training helps) passes a
    perplexity ratio while predicting other tokens than the model it claims to replace; the KL bound excludes it.

    Raises:
        LMBundleError: no deployable variant, or none within both bounds (names each candidate and its figures).
    """
    variants = report["variants"]
    deployable = [v for v in variants if v["runtime"] == "onnxruntime" and v["name"] not in BASELINES]
    if not deployable:
        raise LMBundleError("the report has no deployable ONNX variant (only baselines)")
    by = {v["name"]: v for v in variants}
    ref = by.get(report.get("reference") or "teacher-torch")
    ceiling = ref["perplexity"] * max_perplexity_ratio

    def kl(v: dict) -> float:
        value = v.get("kl_to_teacher")
        return float("inf") if value is None else value  # not measured (a report from before KL): not shown safe

    ok = [v for v in deployable if v["perplexity"] <= ceiling * (1 + 1e-9) and kl(v) <= max_kl_to_teacher]
    if not ok:
        listed = ", ".join(
            f"{v['name']} (perplexity {v['perplexity']:.3f}, KL "
            + (f"{v['kl_to_teacher']:.3f}" if v.get("kl_to_teacher") is not None else "not measured")
            + ")"
            for v in deployable
        )
        raise LMBundleError(
            f"no variant within {max_perplexity_ratio:g}x the teacher's dev perplexity {ref['perplexity']:.3f} and "
            f"within {max_kl_to_teacher:g} nats/token of KL to the teacher: {listed}; name one with --variant, or "
            "loosen the rule (--max-perplexity-ratio, --max-kl-to-teacher)"
        )
    fastest = max(_tokens_per_s(v, target) or 0.0 for v in ok)
    ties = [v for v in ok if (_tokens_per_s(v, target) or 0.0) >= fastest * (1 - SPEED_TIE)]
    best = min(ties, key=lambda v: v["size_gzip_bytes"])
    why = (
        f"fastest decoder on target {target} ({_tokens_per_s(best, target):.0f} tokens/s"
        + (f"; {len(ties)} within {SPEED_TIE:.0%} of the fastest, the smallest of them" if len(ties) > 1 else "")
        + f") among the {len(ok)} deployable variant(s) within {max_perplexity_ratio:g}x the teacher's dev "
        f"perplexity and {max_kl_to_teacher:g} nats/token of KL to it ({best['perplexity']:.3f} vs "
        f"{ref['perplexity']:.3f}; KL "
        + ("not measured" if best.get("kl_to_teacher") is None else f"{best['kl_to_teacher']:.3f}")
        + ")"
    )
    return best, why


def load_generate_module(bundle_dir: Path):
    """The bundle's own `generate.py`, imported as a module (what runs on the device)."""
    try:
        return load_bundle_script(bundle_dir, "generate.py", "language-model bundle")
    except BundleError as e:
        raise LMBundleError(str(e)) from None


def _readme(meta: dict) -> str:
    chat = (
        f"""
- Chat: the model's own chat template (`chat_template.jinja`, rendered as transformers renders it: checked on
  {meta["check"]["chat_template"]["conversations_identical"]} conversations) wraps each prompt with `--chat`
  (`--system TEXT` first); `--interactive` keeps a multi-turn conversation and the model's cache between
  turns. Needs `pip install jinja2`.
"""
        if meta.get("chat")
        else "\n- No chat template: the model's tokenizer has none, so prompts are continued as text.\n"
    )
    d = meta.get("draft")
    if d:
        c = d["check"]
        chat += f"""
- Speculation: `draft/` holds `{d["variant"]}`, a smaller variant on the same tokenizer. `--draft` lets it propose
  {d["tokens"]} tokens per pass of the model (`--draft-tokens K`); the model keeps those it would have chosen, so
  the greedy tokens are the model's own (checked on {c["prompts"]} prompts: {c["greedy_identical"]:.0%}
  identical). Measured at bundle time ({c["threads"]} thread(s), {c["new_tokens"]} new tokens per prompt):
  {c["acceptance"]:.0%} of the proposals kept, {c["tokens_per_s"]["with_draft"]:.0f} tokens/s against
  {c["tokens_per_s"]["model"]:.0f} without ({c["speedup"]:.2f}x). Greedy only: no `--temperature` or
  `--interactive` with it.
"""
    chat += _forms_readme(meta.get("runtimes") or {})
    return f"""# {meta["variant"]} for target {meta["target"]}

From run `{meta["run"]}`. {meta["selection"]}.

```bash
pip install onnxruntime tokenizers numpy        # nothing else: no torch, no transformers
python generate.py "The os module provides"     # greedy; tokens are printed as they come
python generate.py "def parse(path):" --temperature 0.8 --top-p 0.95 --seed 1 --max-new-tokens 80
python generate.py --file prompts.txt           # one JSON line per prompt line
```

- `model.ort`: ONNX Runtime's mobile format (onnxruntime-android / -ios / minimal builds); `generate.py` uses
  it by default, `--model onnx` uses `model.onnx`. `required_operators.config` lists the operators a minimal
  build needs.
- The model keeps its key/value cache between steps. Context window: {meta["context_window"]} tokens (prompt
  plus generated); a longer prompt is refused with a message. Measured at: perplexity on blocks of
  {meta["validated_context"]["perplexity_block_tokens"]} tokens, speed up to
  {meta["validated_context"]["longest_timed_context"]} tokens of context; beyond that the model was not checked.
  When the context fills, generation stops (`--on-full stop`) or keeps the latest half and goes on
  (`--on-full slide`); `--max-context N` holds fewer tokens.
- `bundle.json`: what this is, the figures measured for it, the check against the pipeline's own tokens, checksums.
- `manifest.json`: the run that produced the model (recipe, per-stage hashes, versions).{chat}"""


def bundle_lm(
    run_dir: Path,
    target: str,
    out_dir: Path,
    variant: str | None = None,
    *,
    max_perplexity_ratio: float = 1.25,
    max_kl_to_teacher: float = 0.5,
    draft: str | None = None,
    draft_tokens: int = 4,
    forms: str | None = None,
    force: bool = False,
) -> dict:
    """Write the bundle of a causal-LM run (see the module docstring); returns its metadata (bundle.json).

    Without `variant`, the fastest decoder on `target` whose dev perplexity is within `max_perplexity_ratio`
    of the teacher's and whose KL to the teacher is within `max_kl_to_teacher` (`select_lm_variant`).
    `draft`: another variant of the run (same tokenizer) carried in `draft/` to speculate for the model
    (`generate.py --draft`, `draft_tokens` proposals per pass); its greedy tokens must be the model's own, and the
    tokens/s with and without it and the share of its proposals kept are measured (`_check_draft`).
    `forms`: the model also for the runtimes users already have ("genai,gguf", the default, or "none";
    `compress.tasks.causal_lm.forms`), each checked against the benchmark's greedy tokens, recorded in
    bundle.json's `runtimes` (with the reason where one is not made).
    """
    from compress.tasks.causal_lm.forms import parse_forms

    try:
        wanted_forms = parse_forms(forms)
    except ValueError as e:
        raise LMBundleError(str(e)) from None
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    report, manifest = open_run(run_dir, out_dir, force, variant)
    chosen, why, threads = choose_variant(
        report,
        run_dir,
        target,
        variant,
        lambda r, t: select_lm_variant(
            r, t, max_perplexity_ratio=max_perplexity_ratio, max_kl_to_teacher=max_kl_to_teacher
        ),
    )
    if not chosen.get("artifact"):
        raise LMBundleError(f"variant {chosen['name']!r}: the report does not name its artifact directory")
    # inside the run directory given, never a stored absolute path, and as the benchmark measured it
    artifact_dir = measured_artifact(run_dir, manifest, chosen["artifact"])
    config = json.loads((artifact_dir / "config.json").read_text())
    window = int(config.get("max_position_embeddings") or config.get("n_positions"))
    gen_cfg = artifact_dir / "generation_config.json"
    eos = json.loads(gen_cfg.read_text()).get("eos_token_id") if gen_cfg.is_file() else config.get("eos_token_id")
    eos = [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    greedy = chosen.get("greedy") or {}
    prompts = report.get("settings", {}).get("greedy_prompt_ids") or []
    draft_dir = _draft_artifact(report, run_dir, manifest, chosen, artifact_dir, draft, draft_tokens)
    with atomic_dir(out_dir) as tmp:
        copy_model(artifact_dir / "model.onnx", tmp)  # with its external-data file (weights over ONNX's 2 GiB)
        conv = _with_ort(tmp / "model.onnx", target)
        shutil.copy2(artifact_dir / "tokenizer.json", tmp / "tokenizer.json")
        if gen_cfg.is_file():
            shutil.copy2(gen_cfg, tmp / "generation_config.json")
        shutil.copy2(run_dir / "manifest.json", tmp / "manifest.json")
        shutil.copy2(TEMPLATE, tmp / "generate.py")
        meta = _metadata(report, chosen, target, threads, why, window, eos, conv)
        meta["chat"], meta["bos_token_ids"] = _tokenizer_settings(artifact_dir, tmp)
        meta["kv_cache"] = _kv_cache_mode(tmp / "model.onnx")
        meta["attention_heads"] = config.get("num_attention_heads") or config.get("n_head")
        if draft_dir is not None:
            meta["draft"] = _add_draft(draft_dir, tmp, draft, draft_tokens, target)
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
        meta["check"] = _check(tmp, prompts, greedy, threads)
        if draft_dir is not None:
            meta["draft"]["check"] = _check_draft(tmp, prompts, greedy, threads)
        models = [m for m in ("ort", "onnx") if (tmp / f"model.{m}").is_file()]
        record = {"task": "causal-lm", "count": len(prompts), "prompts": prompts,
                  "expected": {m: greedy["tokens"] for m in models}}  # fmt: skip
        (tmp / "check.json").write_text(json.dumps(record) + "\n")  # what `edge-compress verify` compares with
        if meta["chat"] is not None:
            meta["check"]["chat_template"] = _check_chat(tmp, artifact_dir)
        meta["runtimes"] = _other_runtimes(wanted_forms, report, run_dir, manifest, chosen, artifact_dir, tmp,
                                           prompts, greedy, threads)  # fmt: skip
        (tmp / "README.md").write_text(_readme(meta))
        meta["files"] = {
            f.relative_to(tmp).as_posix(): sha256(f)
            for f in sorted(tmp.rglob("*"))
            if f.is_file() and f.name != "bundle.json"
        }
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _forms_readme(runtimes: dict) -> str:
    """The README's lines on the model's GenAI and GGUF forms (`_other_runtimes`)."""
    out = ""
    g = runtimes.get("genai")
    if g and g.get("shipped"):
        out += f"""
- ONNX Runtime GenAI: `genai_config.json` beside `model.onnx` (the same file) makes this directory a GenAI model:
  `import onnxruntime_genai as og; model = og.Model(".")`, then `og.Generator` as GenAI documents (greedy tokens
  checked identical to `generate.py`'s on {g["prompts"]} prompts at bundle time, each prompt appended in the slices
  `generate.py` reads it in; appended whole, as an app usually does, {g.get("greedy_identical_whole_prompt", 1.0):.0%}
  of them: a model that quantizes activations per tensor, dynamic int8, rounds a pass by the tokens read together).
"""
    elif g:
        out += f"\n- No GenAI form: {g['why']}.\n"
    q = runtimes.get("gguf")
    if q and q.get("shipped"):
        out += f"""
- llama.cpp: `{q["file"]}` (llama.cpp's converter on the float model, quantized by llama.cpp to {q["type"].upper()},
  the type nearest this model's): `llama-cli -m {q["file"]}`, or `llama_cpp.Llama("{q["file"]}")` in Python. Its
  quantization is llama.cpp's, not this model's: {q["token_agreement"]:.1%} of the checked greedy tokens are its own
  argmax too (teacher-forced, {q["prompts"]} prompts; the bundle requires {q["min_agreement"]:.0%}), and
  {q["greedy_identical"]:.0%} of the prompts give identical greedy continuations.
"""
    elif q:
        out += f"\n- No GGUF form: {q['why']}.\n"
    return out


def _other_runtimes(forms, report: dict, run_dir: Path, manifest: dict, chosen: dict, artifact_dir: Path,
                    bundle_dir: Path, prompts, greedy: dict, threads: int) -> dict:  # fmt: skip
    """The model's GenAI and GGUF forms in the bundle (`compress.tasks.causal_lm.forms`), each checked."""
    from compress.tasks.causal_lm.forms import genai_form, gguf_form, gguf_type

    out = {}
    if "genai" in forms:
        out["genai"] = genai_form(artifact_dir, bundle_dir, prompts, greedy["tokens"], greedy["new_tokens"], threads)
    if "gguf" in forms:
        recipe = manifest.get("recipe") or {}
        entry = next((q for q in recipe.get("quantize") or [] if q.get("name") == chosen["name"]), None)
        model_dir = _float_model_dir(report, run_dir, chosen)
        out["gguf"] = gguf_form(model_dir, gguf_type(entry), bundle_dir, prompts, greedy["tokens"], threads)
    return out


def _float_model_dir(report: dict, run_dir: Path, chosen: dict) -> Path | None:
    """The model directory (safetensors and config) a variant was made from: its own for a student or a cut, its
    source's for a quantized one, the teacher's for the teacher's exports; None where the run holds none."""
    by = {v["name"]: v for v in report.get("variants") or []}
    v = by.get(chosen["parent"]) if chosen.get("stage") == "quantize" else chosen
    if v is None:
        return None
    if v["name"] in ("teacher-onnx", "teacher-torch"):
        step = "teacher"
    elif v.get("stage") in ("distill", "prune"):
        step = f"{v['stage']}/{v['name']}"
    else:
        return None
    path = Path(run_dir) / step
    return path if (path / "config.json").is_file() else None


def _with_ort(model: Path, target: str) -> dict:
    """`model` converted to ONNX Runtime's mobile format beside it (`export.mobile.convert_to_ort`); a model the
    converter refuses ships as .onnx only: {"error": why} instead of the conversion's record."""
    from export.mobile import convert_to_ort

    try:
        return convert_to_ort(model, model.parent, target_platform="arm" if target in ("mobile", "iot") else None)
    except Exception as e:  # noqa: BLE001 - the converter's own error types; the bundle says why, not a traceback
        return {"error": f"{type(e).__name__}: {str(e).strip()[:200]}"}


def _metadata(report: dict, chosen: dict, target: str, threads: int, why: str, window: int, eos: list[int],
              conv: dict | None) -> dict:  # fmt: skip
    """The bundle's record (bundle.json) before its check and checksums: what it is and what was measured."""
    return {
        "format": 1,
        "task": "causal-lm",
        "run": report.get("run"),
        "variant": chosen["name"],
        "target": target,
        "threads": threads,
        "selection": why,
        "context_window": window,
        "validated_context": _validated_context(report.get("settings") or {}),
        "eos_token_ids": eos,
        "generation": dict(GENERATION_DEFAULTS),
        "measured": {
            k: chosen.get(k)
            for k in (
                "perplexity",
                "perplexity_test",
                "kl_to_teacher",
                "agreement_with_teacher",
                "size_bytes",
                "size_gzip_bytes",
            )
        }
        | {
            "tokens_per_s_on_target": _tokens_per_s(chosen, target),
            "ttft_ms_on_target": chosen.get("targets", {}).get(target, {}).get("ttft_ms"),
            "cpu": report.get("environment", {}).get("cpu", {}).get("model"),
        },
        "ort_conversion": conv if conv is None or "error" in conv else {k: conv[k] for k in ("target_platform",)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {k: v for k, v in library_versions().items() if k in ("onnxruntime", "onnx", "tokenizers")},
    }


def _kv_cache_mode(model: Path) -> str:
    """How generate.py holds the cache: "in-place" where the graph's attention appends to a buffer it is given
    (`GroupQueryAttention`: one preallocated buffer per layer, bound as past and present), else "copy" (a graph
    that concatenates returns a longer cache each step). The bundle's check then runs that mode."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return "in-place" if any(n.op_type == "GroupQueryAttention" for n in graph.node) else "copy"


def _draft_artifact(report: dict, run_dir: Path, manifest: dict, chosen: dict, artifact_dir: Path,
                    draft: str | None, tokens: int) -> Path | None:  # fmt: skip
    """The artifact directory of the draft variant `draft` (None: no draft), as the benchmark measured it.

    Raises:
        LMBundleError: an unknown or non-ONNX variant, the shipped variant itself, fewer than 1 draft token, or
            a draft whose tokenizer is not the model's.
    """
    if draft is None:
        return None
    if int(tokens) < 1:
        raise LMBundleError(f"--draft-tokens {tokens}: expected at least 1")
    by = {v["name"]: v for v in report["variants"]}
    if draft not in by:
        raise LMBundleError(
            f"--draft {draft!r}: no such variant in {run_dir / 'report.json'}; variants: {', '.join(by)}"
        )
    v = by[draft]
    if v["runtime"] != "onnxruntime" or not v.get("artifact"):
        raise LMBundleError(f"--draft {draft!r} runs on {v['runtime']}; a draft must be an ONNX variant of the run")
    if draft == chosen["name"]:
        raise LMBundleError(f"--draft {draft!r} is the variant being shipped; a draft is a smaller, faster variant")
    path = measured_artifact(run_dir, manifest, v["artifact"])
    if sha256(path / "tokenizer.json") != sha256(artifact_dir / "tokenizer.json"):
        raise LMBundleError(
            f"--draft {draft!r}: its tokenizer.json differs from {chosen['name']!r}'s; a draft must propose the "
            "model's own tokens (a student with a trimmed or retrained vocabulary cannot)"
        )
    return path


def _add_draft(draft_dir: Path, bundle_dir: Path, name: str, tokens: int, target: str) -> dict:
    """Copy the draft's model into `bundle_dir/draft/` (and its .ort where the converter takes it: else
    generate.py runs the draft from model.onnx); its record."""
    dst = bundle_dir / "draft"
    dst.mkdir()
    copy_model(draft_dir / "model.onnx", dst)
    _with_ort(dst / "model.onnx", target)
    config = json.loads((draft_dir / "config.json").read_text())
    return {
        "variant": name,
        "model": "draft/model.onnx",
        "tokens": int(tokens),
        "kv_cache": _kv_cache_mode(dst / "model.onnx"),
        "context_window": int(config.get("max_position_embeddings") or config.get("n_positions")),
    }


def _check_draft(bundle_dir: Path, prompts: list[list[int]], greedy: dict, threads: int, rounds: int = 3) -> dict:
    """The bundle's generate.py with its draft against the greedy tokens the benchmark recorded (they must be
    identical: speculation changes the work per token, never a token), and its speed with and without the draft
    on those prompts, interleaved, `rounds` times, after one warm-up of each."""
    expected = greedy.get("tokens") or []
    n = greedy.get("new_tokens", 0)
    module = load_generate_module(bundle_dir)
    model = "ort" if (bundle_dir / "model.ort").is_file() else "onnx"
    plain = module.Generator.from_bundle(bundle_dir, model=model, threads=threads)
    spec = module.Generator.from_bundle(bundle_dir, model=model, threads=threads, draft=True)
    got, passes, proposed, accepted = [], 0, 0, 0
    for p in prompts:
        got.append(list(spec.stream(p, n, ignore_eos=True)))
        passes += spec.speculation["passes"]
        proposed += spec.speculation["proposed"]
        accepted += spec.speculation["accepted"]
    same = sum(a == b for a, b in zip(got, expected, strict=True))
    if same < len(prompts):
        raise LMBundleError(
            f"with the draft, the bundle generates other greedy tokens than the model alone ({same} of "
            f"{len(prompts)} prompts identical); not writing the bundle"
        )
    seconds = {"model": [], "draft": []}
    for r in range(rounds + 1):  # round 0 warms both up
        for name, gen in (("model", plain), ("draft", spec)) if r % 2 else (("draft", spec), ("model", plain)):
            t0 = time.perf_counter()
            for p in prompts:
                for _ in gen.stream(p, n, ignore_eos=True):
                    pass
            if r:
                seconds[name].append(time.perf_counter() - t0)
    tokens = n * len(prompts)
    model_tps, draft_tps = tokens / float(np.median(seconds["model"])), tokens / float(np.median(seconds["draft"]))
    return {
        "prompts": len(prompts),
        "new_tokens": n,
        "greedy_identical": same / len(prompts),
        "model_file": f"model.{model}",
        "acceptance": accepted / proposed if proposed else None,
        "tokens_per_pass": (accepted + passes) / passes if passes else None,  # of the model, each verifying
        "tokens_per_s": {"model": round(model_tps, 1), "with_draft": round(draft_tps, 1)},
        "speedup": round(draft_tps / model_tps, 3),
        "rounds": rounds,
        "threads": threads,
    }


# Conversations on which the bundle's chat template must give transformers' tokens (a template that refuses one,
# such as a system message where the model has none, must refuse it in both).
CHAT_SAMPLES = (
    [{"role": "user", "content": "How do I open a file?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": " How do I open a file? "}],
    [
        {"role": "user", "content": "Name a sorting algorithm."},
        {"role": "assistant", "content": "Merge sort."},
        {"role": "user", "content": "Its complexity, with \"quotes\" & <tags>?"},
    ],
)


def _tokenizer_settings(artifact_dir: Path, bundle_dir: Path) -> tuple[dict | None, list[int]]:
    """What generate.py needs of the model's tokenizer configuration beyond tokenizer.json: its chat template
    (`_chat_template`) and the BOS a plain prompt starts with (`compress.tasks.causal_lm.data.bos_prefix`)."""
    from transformers import AutoTokenizer

    from compress.tasks.causal_lm.data import bos_prefix

    tok = AutoTokenizer.from_pretrained(artifact_dir, local_files_only=True)
    return _chat_template(artifact_dir, bundle_dir, tok), bos_prefix(tok)


def _chat_template(artifact_dir: Path, bundle_dir: Path, tok=None) -> dict | None:
    """The model's chat template (tokenizer_config.json's `chat_template` or chat_template.jinja) written into the
    bundle, and the special tokens it is rendered with; None when the tokenizer has none."""
    from transformers import AutoTokenizer

    tok = tok if tok is not None else AutoTokenizer.from_pretrained(artifact_dir, local_files_only=True)
    template = tok.chat_template
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default")
    if not template:
        return None
    (bundle_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    return {"template": "chat_template.jinja", "special_tokens": dict(tok.special_tokens_map)}


def _check_chat(bundle_dir: Path, artifact_dir: Path) -> dict:
    """generate.py's rendering of `CHAT_SAMPLES` against transformers' `apply_chat_template`: the same token ids,
    or the same refusal."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(artifact_dir, local_files_only=True)
    module = load_generate_module(bundle_dir)
    gen = module.Generator.from_bundle(bundle_dir, model="onnx")
    checked = refused = 0
    for messages in CHAT_SAMPLES:
        try:
            want = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        except Exception:  # noqa: BLE001 - the template's own refusal (raise_exception), to be matched below
            want = None
        try:
            got = gen.chat_ids(messages)
        except module.PromptError:
            got = None
        if got != want:
            raise LMBundleError(
                f"the bundle's chat template renders {len(messages)} message(s) as other tokens than transformers' "
                f"apply_chat_template ({'refused' if got is None else len(got)} against "
                f"{'refused' if want is None else len(want)}); not writing the bundle"
            )
        checked += want is not None
        refused += want is None
    return {"conversations_identical": checked, "refused_by_both": refused}


def _validated_context(settings: dict) -> dict:
    """How long a context the bundle's figures were measured at: perplexity and KL on blocks of `block_size`
    tokens, speed on prompts of up to the longest prompt length plus the new tokens."""
    lengths = settings.get("prompt_lengths") or []
    return {
        "perplexity_block_tokens": settings.get("block_size"),
        "longest_timed_context": max(lengths) + int(settings.get("new_tokens") or 0) if lengths else None,
    }


# What runs in the emulated arm64 guest (`export.verify`): the bundle's own generate.py on the recorded prompts,
# and at a first differing token, the guest's logit margin between its token and the recorded one.
VERIFY_GUEST = r'''
def main(bundle_dir, check_file, out_file):
    sys.path.insert(0, str(bundle_dir))
    import generate

    check = json.loads(check_file.read_text(encoding="utf-8"))
    out = {}
    for model, expected in check["expected"].items():
        gen = generate.Generator.from_bundle(bundle_dir, model=model, threads=1)
        rows = []
        for prompt, want in zip(check["prompts"], expected):
            got = list(gen.stream(prompt, len(want), ignore_eos=True))
            row = {"tokens": got}
            k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
            if k is not None:
                z = gen.forward(np.asarray([list(prompt) + list(want[:k])]))[0][0, -1]
                row["divergence"] = {"step": k, "expected": int(want[k]), "got": int(got[k]),
                                     "guest_margin": float(z[got[k]] - z[want[k]])}
            rows.append(row)
        out[model] = rows
    out_file.write_text(json.dumps(out))
'''
# A greedy token may differ from x86's only where x86's own top two were this close in logit (a near-tie: the
# other CPU's rounding may pick either); anywhere else a different token is a fault.
NEAR_TIE_LOGIT = 0.1


def compare_verification(bundle_dir: Path, check: dict, result: dict, near_tie: float = NEAR_TIE_LOGIT) -> dict:
    """The guest's greedy tokens against the ones recorded at bundle time, per model file; at each first
    divergence, x86's logit margin between the recorded token and the guest's, computed here by the bundle's own
    generate.py, tells a near-tie from a fault."""
    module = load_generate_module(Path(bundle_dir))
    per_model, passed = {}, True
    for model, expected in check["expected"].items():
        rows = result.get(model) or []
        gen = None
        same, ties, faults = 0, [], []
        for i, (prompt, want, row) in enumerate(zip(check["prompts"], expected, rows, strict=True)):
            div = row.get("divergence")
            if div is None and row["tokens"] == want:
                same += 1
                continue
            if div is None:  # shorter or longer output, no differing token: a fault
                faults.append({"prompt": i, "reason": f"{len(row['tokens'])} tokens instead of {len(want)}"})
                continue
            gen = gen or module.Generator.from_bundle(bundle_dir, model=model, threads=1)
            z = gen.forward(np.asarray([list(prompt) + list(want[: div["step"]])]))[0][0, -1]
            entry = {"prompt": i, **div, "x86_margin": float(z[div["expected"]] - z[div["got"]])}
            (ties if entry["x86_margin"] <= near_tie else faults).append(entry)
        ok = not faults
        passed &= ok
        per_model[model] = {"prompts": len(expected), "identical": same, "near_ties": ties, "faults": faults,
                            "passed": ok}  # fmt: skip
    summary = ", ".join(
        f"{m}: {r['identical']}/{r['prompts']} greedy continuations identical, {len(r['near_ties'])} near-tie(s)"
        for m, r in per_model.items()
    )
    return {"models": per_model, "near_tie_logit": near_tie, "passed": passed, "summary": summary}


def verify(bundle_dir: Path, cpus: list[str], progress=print) -> dict:
    """The bundle's generate.py on emulated arm64 CPUs against its recorded tokens (`export.verify`)."""
    from export.verify import verify_bundle

    return verify_bundle(
        bundle_dir, VERIFY_GUEST, lambda c, r: compare_verification(bundle_dir, c, r), cpus, progress
    )


def _check(bundle_dir: Path, prompts: list[list[int]], greedy: dict, threads: int) -> dict:
    """The bundle's generate.py, on each of its model files, against the greedy tokens the benchmark recorded."""
    expected = greedy.get("tokens") or []
    n = greedy.get("new_tokens", 0)
    if not prompts or len(expected) != len(prompts):
        raise LMBundleError("the report holds no greedy tokens for this variant to check the bundle against")
    module = load_generate_module(bundle_dir)
    out = {"prompts": len(prompts), "new_tokens": n}
    for model in ("ort", "onnx"):
        if not (bundle_dir / f"model.{model}").is_file():
            continue
        gen = module.Generator.from_bundle(bundle_dir, model=model, threads=threads)
        got = [list(gen.stream(p, n, ignore_eos=True)) for p in prompts]
        same = sum(a == b for a, b in zip(got, expected, strict=True)) / len(prompts)
        out[f"greedy_identical_{model}"] = same
        if same < 1.0:
            raise LMBundleError(
                f"model.{model} in the bundle generates other greedy tokens than the pipeline measured "
                f"({same:.0%} of {len(prompts)} prompts identical); not writing the bundle"
            )
    return out
