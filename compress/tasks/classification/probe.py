"""The classifier's memory probe: what one request process does, in `benchmarks.memory`'s fresh process.

Tokenize the texts, load the model (ONNX Runtime or PyTorch), classify each text alone. With `model="none"`
the same process stops before the model: the baseline whose peak is subtracted.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.memory import request_arrays


def child(
    runtime: str, model: str, tokenizer_dir: str, texts: list[str], threads: int, max_length: int, new_tokens: int
) -> dict:
    """Load `model` and classify `texts` one by one (`new_tokens` is not used by a classifier)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    # The requests as arrays, built in the baseline too: preparing inputs is the application's cost, not the model's.
    requests = request_arrays(tok.encode_batch(texts))
    if runtime == "onnxruntime":
        import onnxruntime  # noqa: F401  (imported in the baseline too: its import is not the model's cost)

        from export.session import ort_session

        if model == "none":
            return {"load_s": 0.0}
        t0 = time.perf_counter()
        sess = ort_session(model, threads)
        load_s = time.perf_counter() - t0
        names = [i.name for i in sess.get_inputs()]
        for r in requests:
            sess.run(None, {k: r[k] for k in names})
    else:
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        if model == "none":
            return {"load_s": 0.0}
        t0 = time.perf_counter()
        m = AutoModelForSequenceClassification.from_pretrained(model, local_files_only=True).eval()
        load_s = time.perf_counter() - t0
        with torch.inference_mode():
            for r in requests:
                m(input_ids=torch.from_numpy(r["input_ids"]), attention_mask=torch.from_numpy(r["attention_mask"]))
    return {"load_s": load_s}
