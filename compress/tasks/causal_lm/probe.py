"""The causal LM's memory probe: what one generation does, in `benchmarks.memory`'s fresh process.

`texts` is one prompt (its token ids, as strings); the model generates `new_tokens` after it (greedy, KV cache)
through what a user of it runs: this project's decoder loop, transformers, optimum, or an anchor's runtime.
"""

from __future__ import annotations

import time
from pathlib import Path

from compress.targets import ANCHOR_RUNTIMES


def child(
    runtime: str, model: str, tokenizer_dir: str, texts: list[str], threads: int, max_length: int, new_tokens: int
) -> dict:
    """Load a causal LM and generate `new_tokens` after `prompt` (greedy, KV cache), as a device would.

    The libraries a runtime needs are imported before the `none` check, so the no-model baseline holds them too.
    """
    prompt = [int(t) for t in texts]
    import onnxruntime  # noqa: F401

    if runtime == "onnxruntime":
        from compress.tasks.causal_lm.export import generator_for
    elif runtime in ANCHOR_RUNTIMES:
        from compress.tasks.causal_lm.anchors import runner

        __import__("onnxruntime_genai" if runtime == "genai" else "llama_cpp")
    else:
        import torch

        torch.set_num_threads(threads)
        if runtime == "torch":
            from transformers import AutoModelForCausalLM as model_class
        else:
            from optimum.onnxruntime import ORTModelForCausalLM as model_class

            from export.session import session_options
    if model == "none":
        return {"load_s": 0.0}
    t0 = time.perf_counter()
    if runtime == "onnxruntime":
        path = Path(model)
        gen = generator_for(path.parent, path.name, threads=threads)
        load_s = time.perf_counter() - t0
        n = sum(1 for _ in gen.stream(prompt, new_tokens, ignore_eos=True))
        return {"load_s": load_s, "generated": n}
    if runtime in ANCHOR_RUNTIMES:
        r = runner(runtime, model, threads, context=len(prompt) + new_tokens)
        load_s = time.perf_counter() - t0
        return {"load_s": load_s, "generated": sum(1 for _ in r.stream(prompt, new_tokens))}
    if runtime == "torch":
        m = model_class.from_pretrained(model, local_files_only=True).eval()
    else:
        m = model_class.from_pretrained(model, session_options=session_options(threads))
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt])
    pad = m.generation_config.pad_token_id
    with torch.inference_mode():
        out = m.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad if pad is not None else m.generation_config.eos_token_id,
        )
    return {"load_s": load_s, "generated": int(out.shape[1] - ids.shape[1])}
