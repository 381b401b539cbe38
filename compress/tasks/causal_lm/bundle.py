"""A deployment bundle of a causal LM: one directory with everything a device needs to generate text.

    model.onnx (+ model.onnx.data when its weights are kept outside it)  model.ort  required_operators.config
    tokenizer.json  generation_config.json  bundle.json  manifest.json (the run's)  generate.py  README.md

`generate.py` needs only onnxruntime, tokenizers and numpy; it is the same decoder loop the pipeline measured
(`compress/tasks/causal_lm/bundle_template/generate.py`). Before the bundle is written, that file, run from the
bundle directory on
both model.ort and model.onnx, must reproduce the greedy tokens the benchmark recorded for this variant.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

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
  plus generated); a longer prompt is refused with a message.
- `bundle.json`: what this is, the figures measured for it, the check against the pipeline's own tokens, checksums.
- `manifest.json`: the run that produced the model (recipe, per-stage hashes, versions).
"""


def bundle_lm(
    run_dir: Path,
    target: str,
    out_dir: Path,
    variant: str | None = None,
    *,
    max_perplexity_ratio: float = 1.25,
    max_kl_to_teacher: float = 0.5,
    force: bool = False,
) -> dict:
    """Write the bundle of a causal-LM run (see the module docstring); returns its metadata (bundle.json).

    Without `variant`, the fastest decoder on `target` whose dev perplexity is within `max_perplexity_ratio`
    of the teacher's and whose KL to the teacher is within `max_kl_to_teacher` (`select_lm_variant`).
    """
    from export.mobile import convert_to_ort

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
    with atomic_dir(out_dir) as tmp:
        copy_model(artifact_dir / "model.onnx", tmp)  # with its external-data file (weights over ONNX's 2 GiB)
        conv = None
        try:
            conv = convert_to_ort(
                tmp / "model.onnx", tmp, target_platform="arm" if target in ("mobile", "iot") else None
            )
        except Exception as e:  # noqa: BLE001 - a model the converter refuses ships as .onnx only, and says so
            conv = {"error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
        shutil.copy2(artifact_dir / "tokenizer.json", tmp / "tokenizer.json")
        if gen_cfg.is_file():
            shutil.copy2(gen_cfg, tmp / "generation_config.json")
        shutil.copy2(run_dir / "manifest.json", tmp / "manifest.json")
        shutil.copy2(TEMPLATE, tmp / "generate.py")
        meta = _metadata(report, chosen, target, threads, why, window, eos, conv)
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
        meta["check"] = _check(tmp, prompts, greedy, threads)
        (tmp / "README.md").write_text(_readme(meta))
        meta["files"] = {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.is_file() and f.name != "bundle.json"}
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


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
