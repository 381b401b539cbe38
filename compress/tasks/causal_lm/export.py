"""Export stage of a causal LM: optimum's text-generation-with-past export, or ONNX Runtime GenAI's model builder
(`export.backend: genai`, `compress/tasks/causal_lm/genai.py`: fused attention and norms, the graph ONNX Runtime's
CPU kernels are
built for), checked against PyTorch.

Either writes one decoder, `model.onnx`, that takes the past key/values as inputs (empty for the prompt) and
returns the present ones: the same graph reads the prompt and generates. The check runs PyTorch (with
transformers' `DynamicCache`) and ONNX Runtime (`compress/tasks/causal_lm/bundle_template/generate.py`, the code a
bundle ships)
side by side on real prompts:

- teacher-forced: the same tokens fed to both, step by step through the cache; the logits must agree within
  `export.atol` at every step (prefill and each decode step);
- free-running: greedy generation of `export.new_tokens` tokens by each; the tokens must be identical.

Either failing fails the step: an artifact that does not compute what the model does is never shipped.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from compress.errors import StageError
from compress.tasks.causal_lm.config import LMExportConfig
from export.artifact import INLINE_LIMIT_BYTES, Artifact


class LMExportCheckError(StageError):
    """The ONNX decoder's logits or greedy tokens differ from PyTorch's."""


def generator_for(artifact_dir: Path, model_file: str | None = None, threads: int = 1, session=None,
                  spinning: bool = False):  # fmt: skip
    """The ONNX Runtime generator (the bundle's `Generator`) of an exported LM directory (`spinning`: its session's
    worker threads busy-wait, as a desktop app may run it; off as the bundle runs it)."""
    from compress.tasks.causal_lm.bundle_template.generate import Generator
    from export.session import ort_session

    artifact_dir = Path(artifact_dir)
    path = artifact_dir / model_file if model_file else Artifact.read(artifact_dir).path("model")
    config = json.loads((artifact_dir / "config.json").read_text())
    return Generator(
        path,
        artifact_dir / "tokenizer.json",
        int(config.get("max_position_embeddings") or config.get("n_positions")),
        eos_token_ids(artifact_dir),
        session=session if session is not None else ort_session(path, threads, spinning=spinning),
        attention_heads=config.get("num_attention_heads") or config.get("n_head"),
    )


def float32_bytes(model_dir: Path) -> int:
    """The model's weights in float32, from its safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), framework="np") as st:
            total += sum(4 * math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    return total


def _optimum_options(model_dir: Path) -> dict:
    """optimum 2.1's post-processing (deduplicating tied weights) measures the whole ModelProto, which protobuf
    cannot serialize past 2 GiB: every model over ONNX's limit fails there (Llama-3.2-1B's shape did, here). Such
    a model is exported without it: its graph then holds the tied head's weights beside the embedding's."""
    return {"no_post_process": True} if float32_bytes(model_dir) >= INLINE_LIMIT_BYTES else {}


def eos_token_ids(model_dir: Path) -> list[int]:
    """The tokens that end a generation: the generation config's, else the model config's."""
    for name in ("generation_config.json", "config.json"):
        f = Path(model_dir) / name
        if f.is_file():
            eos = json.loads(f.read_text()).get("eos_token_id")
            if eos is not None:
                return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return []


def _torch_decode(model, prompt: list[int], steps: int, forced: list[int] | None = None):
    """Logits of the prompt's last position and of each following step, through transformers' KV cache.

    Greedy when `forced` is None (the tokens chosen are returned), else the `forced` tokens are fed.
    """
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        ids = torch.tensor([prompt])
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        logits, tokens = [out.logits[0, -1].float().numpy()], []
        for i in range(steps):
            token = int(np.argmax(logits[-1])) if forced is None else forced[i]
            tokens.append(token)
            if i == steps - 1:
                break
            pos = len(prompt) + i
            out = model(
                input_ids=torch.tensor([[token]]),
                past_key_values=out.past_key_values,
                position_ids=torch.tensor([[pos]]),
                use_cache=True,
            )
            logits.append(out.logits[0, -1].float().numpy())
    return np.stack(logits), tokens


def _ort_forced(gen, prompt: list[int], tokens: list[int]) -> np.ndarray:
    logits, cache = gen.forward(np.asarray([prompt]))
    out, past = [logits[0, -1]], len(prompt)
    for token in tokens[:-1]:
        logits, cache = gen.forward(np.asarray([[token]]), cache, past)
        out.append(logits[0, -1])
        past += 1
    return np.stack(out)


def check_decoder(model_dir: Path, onnx_dir: Path, prompts: list[list[int]], config: LMExportConfig) -> dict:
    """Compare the exported decoder with the PyTorch model on `prompts` (see the module docstring).

    Returns:
        max_abs_logit_diff (over prompts and steps), its value at the prefill and per decode step, the share of
        prompts whose greedy tokens are identical, and the settings.
    """
    import gc

    from transformers import AutoModelForCausalLM

    steps = config.new_tokens
    # PyTorch's decoding of every prompt first, then the model freed: the two runtimes never hold the weights at
    # once (a 1B model: 5 GB each in float32).
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    reference = [_torch_decode(model, prompt, steps) for prompt in prompts]
    del model
    gc.collect()
    gen = generator_for(onnx_dir, threads=2)
    per_step = np.zeros(steps)
    identical, first_mismatch = 0, None
    for k, (prompt, (ref_logits, ref_tokens)) in enumerate(zip(prompts, reference, strict=True)):
        got_logits = _ort_forced(gen, prompt, ref_tokens)
        per_step = np.maximum(per_step, np.abs(ref_logits - got_logits).max(axis=-1))
        free = list(gen.stream(prompt, steps, ignore_eos=True))
        if free == ref_tokens:
            identical += 1
        elif first_mismatch is None:
            at = next(i for i, (a, b) in enumerate(zip(free, ref_tokens, strict=True)) if a != b)
            first_mismatch = {"prompt": k, "position": at, "torch": ref_tokens[at], "onnx": free[at]}
    return {
        "check_prompts": len(prompts),
        "prompt_tokens": len(prompts[0]) if prompts else 0,
        "new_tokens": steps,
        "max_abs_logit_diff": float(per_step.max()) if len(prompts) else 0.0,
        "max_abs_logit_diff_prefill": float(per_step[0]) if len(prompts) else 0.0,
        "max_abs_logit_diff_per_step": [float(x) for x in per_step],
        "greedy_identical": identical / max(1, len(prompts)),
        "first_mismatch": first_mismatch,
    }


def export_causal_lm(model_dir: Path, out_dir: Path, config: LMExportConfig, prompts: list[list[int]]) -> dict:
    """Export `model_dir` to `out_dir/model.onnx` with its KV cache, beside its tokenizer and configs; check it.

    Raises:
        LMExportCheckError: a logit difference above `config.atol` or a greedy token that differs.
    """
    out_dir = Path(out_dir)
    built = {}
    if config.backend == "genai":
        from transformers import AutoConfig

        from compress.architectures import head_dim
        from compress.tasks.causal_lm.genai import build, self_contained

        built = build(model_dir, out_dir, "fp32")
        self_contained(out_dir / "model.onnx", head_dim(AutoConfig.from_pretrained(model_dir, local_files_only=True)))
    else:
        from optimum.exporters.onnx import main_export

        main_export(
            str(model_dir),
            output=out_dir,
            task="text-generation-with-past",
            opset=config.opset,
            do_validation=False,  # optimum's own check uses random inputs; the one below uses real prompts
            local_files_only=True,
            **_optimum_options(model_dir),
        )
    for f in Path(model_dir).iterdir():  # the model's config, tokenizer (chat template too), generation files
        if f.is_file() and f.suffix in (".json", ".jinja"):
            shutil.copy2(f, out_dir / f.name)
    Artifact(out_dir, "causal-lm", {"model": "model.onnx"}).write()
    metrics = check_decoder(model_dir, out_dir, prompts, config)
    if metrics["max_abs_logit_diff"] > config.atol or metrics["greedy_identical"] < 1.0:
        raise LMExportCheckError(
            f"export check failed for {model_dir}: max |logit diff| {metrics['max_abs_logit_diff']:.2e} over "
            f"{config.new_tokens} cached decode steps (export.atol {config.atol}); greedy tokens identical for "
            f"{metrics['greedy_identical']:.0%} of {len(prompts)} prompts (first mismatch: {metrics['first_mismatch']})"
        )
    return {**metrics, "backend": config.backend, **({"genai_builder": built} if built else {})}
