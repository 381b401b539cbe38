"""The seq2seq memory probe: what translating a few inputs does, in `benchmarks.memory`'s fresh process.

`texts` are the inputs as token ids (space-separated, one input per line); each is translated greedily, one at a
time, through what a user of the model runs: the bundle's loop, transformers, optimum or CTranslate2.
"""

from __future__ import annotations

import time


def child(runtime: str, model: str, tokenizer_dir: str, texts: list[str], threads: int, max_length: int,
          new_tokens: int) -> dict:  # fmt: skip
    """Load a seq2seq model and translate `texts` (token ids) greedily; the libraries a runtime needs are imported
    before the `none` check, so the no-model baseline holds them too."""
    inputs = [[int(t) for t in line.split()] for line in texts]
    import onnxruntime  # noqa: F401

    if runtime == "onnxruntime":
        from compress.tasks.seq2seq.bundle_template.translate import Translator
    elif runtime == "ctranslate2":
        from compress.tasks.seq2seq.anchors import CT2Translator
    else:
        import torch

        torch.set_num_threads(threads)
        from compress.tasks.seq2seq.model import plain_greedy

        if runtime == "torch":
            from transformers import AutoModelForSeq2SeqLM
        else:
            from compress.tasks.seq2seq.baselines import optimum_model
    if model == "none":
        return {"load_s": 0.0}
    t0 = time.perf_counter()
    if runtime == "onnxruntime":
        tr = Translator(model, threads)
        load_s = time.perf_counter() - t0
        return {"load_s": load_s, "generated": sum(len(tr.greedy([x], max_length)[0]) for x in inputs)}
    if runtime == "ctranslate2":
        ct2 = CT2Translator(model, threads, max_length)
        load_s = time.perf_counter() - t0
        return {"load_s": load_s, "generated": sum(len(ct2.greedy(x)) for x in inputs)}
    if runtime == "torch":
        m = AutoModelForSeq2SeqLM.from_pretrained(model, local_files_only=True).eval()
    else:
        m = optimum_model(model, threads)
    load_s = time.perf_counter() - t0
    plain = plain_greedy(m.config, max_length)
    made = 0
    with torch.inference_mode():
        for x in inputs:
            out = m.generate(input_ids=torch.tensor([x]), generation_config=plain, use_model_defaults=False)
            made += int(out.shape[1]) - 1
    return {"load_s": load_s, "generated": made}
