"""The bundle's model in the runtimes users already have: ONNX Runtime GenAI and llama.cpp.

A developer with an app built on GenAI's generator or on llama.cpp takes the shipped model in that runtime's own
form, checked at bundle time against the greedy tokens the benchmark recorded for the variant:

- **GenAI**: the bundle's `model.onnx` is GenAI's builder's graph (`export.backend: genai`), so the form is that
  same file with the builder's `genai_config.json` beside it (no second copy of the weights). Its check runs
  `onnxruntime_genai`'s generator on the bundle directory, given each prompt in the slices `generate.py` reads
  it in: the same file and the same passes, so its greedy tokens must be identical on every check prompt, or the
  config is left out and bundle.json says why. (A GenAI app appends a prompt whole; where the model quantizes
  activations per tensor, dynamic int8, a pass's scale depends on the tokens read together, so whole-prompt
  continuations may differ in near-ties: their share is recorded as `greedy_identical_whole_prompt`.)
- **GGUF**: llama.cpp's converter on the variant's float model directory (the student, cut or teacher it was
  quantized from), then llama.cpp's quantizer to the type nearest ours (`gguf_type`). llama.cpp's quantization
  is not ours, so its greedy tokens are not expected to be identical: the check measures **token agreement**,
  the share of the benchmark's greedy continuation tokens that are the GGUF model's own argmax when it reads
  the prompt and that continuation (teacher-forced, so one early difference does not count every later token
  as a miss), and keeps the file only at `GGUF_MIN_AGREEMENT` or above; the share of prompts whose free-running
  greedy tokens are identical is recorded too.

Each form needs its runtime installed where the bundle is made (`make anchors`); without it the form is not
made and bundle.json says so. Nothing here is needed to run the bundle's own `generate.py`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

FORMS = ("genai", "gguf")
# The least share of the benchmark's greedy tokens a GGUF form must predict itself (teacher-forced). Our int8 and
# llama.cpp's q8_0 round differently (per-row dynamic activations against per-block weights), so a small model's
# near-ties flip; 0.85 keeps a faithful conversion and refuses a broken one (a wrong tokenizer or tensor order
# gives near 0).
GGUF_MIN_AGREEMENT = 0.85


def parse_forms(value: str | None) -> tuple[str, ...]:
    """`--forms` ("genai,gguf", "none"; None: both) as a tuple of known forms.

    Raises:
        ValueError: a name that is not a form.
    """
    if value is None:
        return FORMS
    names = [x.strip() for x in str(value).split(",") if x.strip()]
    if names == ["none"]:
        return ()
    unknown = [x for x in names if x not in FORMS]
    if unknown:
        known = ", ".join(FORMS)
        raise ValueError(f"--forms: {', '.join(unknown)} not known; expected a comma list of {known}, or none")
    return tuple(dict.fromkeys(names))


def gguf_type(quantize: dict | None) -> str:
    """llama.cpp's type nearest to a variant's quantization (its recipe entry; None: a float model): int8 (dynamic,
    static, 8-bit weight-only) -> q8_0; int4 weight-only RTN/GPTQ -> q4_1 (blocks of 32 with a scale and a minimum,
    as our asymmetric int4 blocks) or q4_0 when symmetric; mixed int4/int8 -> q4_k_m (llama.cpp's own mixed
    recipe); float -> f32."""
    if not quantize:
        return "f32"
    if quantize.get("precision") == "mixed":
        return "q4_k_m"
    if quantize.get("method") in ("dynamic", "static") or int(quantize.get("bits") or 4) == 8:
        return "q8_0"
    return "q4_0" if quantize.get("symmetric") else "q4_1"


def genai_form(artifact_dir: Path, bundle_dir: Path, prompts: list[list[int]], expected: list[list[int]],
               new_tokens: int, threads: int) -> dict:  # fmt: skip
    """Add GenAI's config beside the bundle's model and check it (see the module docstring). Returns the record
    for bundle.json: {"shipped", "files", "greedy_identical", "command"} or {"shipped": False, "why"}."""
    cfg_path = Path(artifact_dir) / "genai_config.json"
    if not cfg_path.is_file():
        return {"shipped": False, "why": "the model was not exported by GenAI's builder (export.backend: genai)"}
    cfg = json.loads(cfg_path.read_text())
    model_file = ((cfg.get("model") or {}).get("decoder") or {}).get("filename")
    if model_file != "model.onnx":
        return {"shipped": False, "why": f"genai_config.json names {model_file!r}, not the bundle's model.onnx"}
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return {"shipped": False, "why": "onnxruntime-genai is not installed where the bundle was made (make anchors)"}
    from compress.tasks.causal_lm.anchors import GenAIRunner

    bundle_dir = Path(bundle_dir)
    added = [f for f in ("genai_config.json", "tokenizer_config.json") if not (bundle_dir / f).exists()]
    for f in added:
        if (Path(artifact_dir) / f).is_file():
            shutil.copy2(Path(artifact_dir) / f, bundle_dir / f)
    try:
        from compress.tasks.causal_lm.export import generator_for

        ours = generator_for(artifact_dir, "model.onnx", threads=threads)  # the bundle's model, read as it reads it
        slices = [ours.prefill_slices(len(p)) for p in prompts]
        del ours  # freed before GenAI loads the same weights
        runner = GenAIRunner(bundle_dir, threads)
        got = [list(runner.stream(p, new_tokens, slices=s)) for p, s in zip(prompts, slices, strict=True)]
        whole = [list(runner.stream(p, new_tokens)) for p in prompts]
        del runner
    except Exception as e:  # noqa: BLE001 - GenAI's own errors: the form is left out, the reason recorded
        _remove(bundle_dir, added)
        return {"shipped": False, "why": f"GenAI's generator failed on the bundle: {type(e).__name__}: {str(e)[:200]}"}
    same = sum(a == b for a, b in zip(got, expected, strict=True)) / len(prompts)
    same_whole = sum(a == b for a, b in zip(whole, expected, strict=True)) / len(prompts)
    if same < 1.0:
        _remove(bundle_dir, added)
        why = f"GenAI's generator gave other greedy tokens on the same file ({same:.0%} of prompts)"
        return {"shipped": False, "greedy_identical": same, "why": why}
    return {
        "shipped": True,
        "files": ["genai_config.json", "model.onnx", "tokenizer.json"],
        "greedy_identical": same,
        "greedy_identical_whole_prompt": same_whole,
        "prompts": len(prompts),
        "command": "python -c \"import onnxruntime_genai as og; m = og.Model('.'); ...\" (see README.md)",
    }


def gguf_form(model_dir: Path | None, kind: str, bundle_dir: Path, prompts: list[list[int]],
              expected: list[list[int]], threads: int, min_agreement: float = GGUF_MIN_AGREEMENT) -> dict:  # fmt: skip
    """Convert the variant's float model to GGUF at `kind`, into the bundle as `model-KIND.gguf`, and check its
    token agreement (see the module docstring). Returns the record for bundle.json."""
    from compress.tasks.causal_lm.anchors import AnchorUnavailable, LlamaCppRunner, build_gguf

    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return {"shipped": False, "why": "the run holds no float model directory this variant was made from"}
    name = f"model-{kind}.gguf"
    with tempfile.TemporaryDirectory(dir=bundle_dir.parent) as tmp:
        try:
            built = build_gguf(Path(model_dir), Path(tmp), [kind], stem="model")[kind]
        except (AnchorUnavailable, OSError) as e:
            return {"shipped": False, "type": kind, "why": str(e)[:300]}
        shutil.move(built["path"], bundle_dir / name)
    try:
        runner = LlamaCppRunner(bundle_dir / name, threads, all_logits=True)
        agree, identical = gguf_agreement(runner, prompts, expected)
        del runner
    except Exception as e:  # noqa: BLE001 - llama.cpp's own errors: the form is left out, the reason recorded
        (bundle_dir / name).unlink(missing_ok=True)
        return {"shipped": False, "type": kind, "why": f"llama.cpp failed on it: {type(e).__name__}: {str(e)[:200]}"}
    record = {"type": kind, "token_agreement": agree, "greedy_identical": identical, "min_agreement": min_agreement,
              "prompts": len(prompts), "command": built["command"], "builder": built["builder"]}  # fmt: skip
    if agree < min_agreement:
        (bundle_dir / name).unlink()
        why = f"token agreement {agree:.1%} with the benchmark's greedy tokens, below {min_agreement:.0%}"
        return {"shipped": False, **record, "why": why}
    return {"shipped": True, "file": name, **record}


def gguf_agreement(runner, prompts: list[list[int]], expected: list[list[int]]) -> tuple[float, float]:
    """(share of the expected continuation tokens that are the model's argmax after the prompt and the expected
    tokens before them, share of prompts whose free-running greedy tokens are all the expected ones)."""
    hits = total = same = 0
    for prompt, want in zip(prompts, expected, strict=True):
        logits = runner.logits(np.asarray([list(prompt) + list(want)]))[0]
        pred = logits[len(prompt) - 1 : len(prompt) - 1 + len(want)].argmax(-1)
        hits += int((pred == np.asarray(want)).sum())
        total += len(want)
        same += list(runner.stream(prompt, len(want))) == list(want)
    return hits / max(1, total), same / max(1, len(prompts))


def _remove(bundle_dir: Path, names: list[str]) -> None:
    for f in names:
        (bundle_dir / f).unlink(missing_ok=True)
