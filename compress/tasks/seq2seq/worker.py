"""Sentence latency of several seq2seq variants under one target's constraints, in a fresh process.

Run as `python -m compress.tasks.seq2seq.worker SPEC.json`: the process pins itself to the target's cores, loads
every variant with the target's thread count (worker threads not spinning, unless the target says so), and turns the
same inputs into outputs with each, one input at a time as an app does, interleaved (the variant order rotates from
input to input, so a slow moment of the machine is shared), then prints one JSON line of raw times.

Each variant runs through what a user of it runs: `torch` is transformers' `generate` (greedy, its cache),
`optimum` optimum's `ORTModelForSeq2SeqLM.generate`;
`onnxruntime` is the bundle's loop (`bundle_template/translate.py`); `ctranslate2` is CTranslate2's
`Translator` (int8 compute, `compress.tasks.seq2seq.anchors`). Each writes its own greedy output (up to
`max_length` tokens), so the work per input is the model's own: the figure is what a user waits for.
"""

from __future__ import annotations

import json
import os
import time

from benchmarks.process import process_facts, read_spec, run_worker


class _OnnxRunner:
    def __init__(self, path: str, threads: int, max_length: int, spinning: bool = False):
        from compress.tasks.seq2seq.bundle_template.translate import Translator

        self.translator = Translator(path, threads, spinning=spinning)
        self.session = self.translator.decoder  # what process_facts reads back
        self.max_length = max_length

    def __call__(self, ids: list[int]) -> int:
        return len(self.translator.greedy([ids], self.max_length)[0])


class _CT2Runner:
    def __init__(self, path: str, threads: int, max_length: int, spinning: bool = False):
        from compress.tasks.seq2seq.anchors import CT2Translator

        self.translator = CT2Translator(path, threads, max_length)

    def __call__(self, ids: list[int]) -> int:
        return len(self.translator.greedy(ids))


class _TorchRunner:
    optimum = False

    def __init__(self, path: str, threads: int, max_length: int, spinning: bool = False):
        import torch
        from transformers import AutoModelForSeq2SeqLM

        from compress.tasks.seq2seq.model import plain_greedy

        torch.set_num_threads(threads)
        self.torch = torch
        if self.optimum:
            from compress.tasks.seq2seq.baselines import optimum_model

            self.model = optimum_model(path, threads, spinning)
        else:
            self.model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True).eval()
        self.config = plain_greedy(self.model.config, max_length)

    def __call__(self, ids: list[int]) -> int:
        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids=self.torch.tensor([ids]), generation_config=self.config, use_model_defaults=False
            )
        return int(out.shape[1]) - 1


class _OptimumRunner(_TorchRunner):
    optimum = True


def _run(spec: dict) -> dict:
    runners, load_s = {}, {}
    for v in spec["variants"]:
        t0 = time.perf_counter()
        kind = {"torch": _TorchRunner, "optimum": _OptimumRunner, "ctranslate2": _CT2Runner}.get(
            v["runtime"], _OnnxRunner
        )
        runners[v["name"]] = kind(v["path"], spec["threads"], spec["max_length"], spec.get("spinning", False))
        load_s[v["name"]] = time.perf_counter() - t0
    names, inputs = list(runners), spec["inputs"]
    for n in names:
        for _ in range(spec["warmup"]):
            for x in inputs:
                runners[n](x)
    times = {n: [] for n in names}
    tokens = {n: [] for n in names}
    k = 0
    for _ in range(spec["runs"]):
        for x in inputs:
            for j in range(len(names)):
                n = names[(k + j) % len(names)]
                t0 = time.perf_counter()
                made = runners[n](x)
                times[n].append(time.perf_counter() - t0)
                tokens[n].append(made)
            k += 1
    return {"load_s": load_s, "sentence_s": times, "output_tokens": tokens, "process": process_facts(runners)}


def measure_target(target, variants: list[dict], inputs: list[list[int]], protocol: dict) -> dict:
    """Run the worker for one target in a fresh process and return its raw times.

    Args:
        target: a resolved `compress.targets.Target`.
        variants: [{"name", "runtime" (torch | onnxruntime), "path"}].
        inputs: the timed inputs as token ids.
        protocol: max_length, runs, warmup.

    Raises:
        RuntimeError: the worker failed; the message holds the last lines of its stderr.
    """
    return run_worker(
        "compress.tasks.seq2seq.worker",
        target,
        {"variants": variants, "inputs": inputs, **protocol},
        "seq2seq benchmark worker",
    )


def main() -> None:
    spec = read_spec()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print(json.dumps(_run(spec)))


if __name__ == "__main__":
    main()
