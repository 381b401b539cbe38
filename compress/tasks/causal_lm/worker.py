"""Time to first token and decode speed of several causal LMs under one target's constraints, in a fresh process.

Run as `python -m compress.tasks.causal_lm.worker SPEC.json`: the process pins itself to the target's cores, loads every
variant with the target's thread count (worker threads not spinning, unless the target says so), and generates
from the same prompts with each, interleaved (the variant order rotates from generation to generation, so a slow
moment of the machine is shared), then prints one JSON line of raw times: each generation's wall time and the
process's CPU time during it (every thread's: CPU time over wall time above the useful work shows threads that
spin while they wait).

Each variant generates through what a user of it runs:
- `torch`: transformers' `generate` (greedy, its KV cache);
- `optimum`: optimum's `ORTModelForCausalLM.generate` on the exported decoder;
- `onnxruntime`: this project's decoder loop, the bundle's `generate.py`;
- `genai`, `llama.cpp`: ONNX Runtime GenAI's `Generator` and llama.cpp's `Llama` (`compress.tasks.causal_lm.anchors`).
A streamer (or the loop itself) stamps each new token: the first stamp is the time to first token (the prompt's
forward pass and the first choice), the gaps between the others are per-token decode latencies. Every
generation produces exactly `new_tokens` tokens (end-of-text is ignored or suppressed), so all variants do
the same work.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.process import process_facts, read_spec, run_worker


def _hf_streamer():
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        """Wall time of each `put`: the first is the prompt, each later one a new token."""

        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    return Stamps


def _stamped(stream):
    """A token stream (prompt, new tokens) -> tokens, as the timed callable `_runner` returns."""

    def run(prompt: list[int], new_tokens: int):
        t0 = time.perf_counter()
        stamps = [time.perf_counter() for _ in stream(prompt, new_tokens)]
        return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    return run


def _runner(variant: dict, threads: int, context: int, spinning: bool = False):
    """A callable (prompt ids, new tokens) -> (seconds to the first token, [seconds per later token]); `context`:
    the longest prompt + new tokens it will be given (llama.cpp's cache is sized to it)."""
    runtime = variant["runtime"]
    from compress.targets import ANCHOR_RUNTIMES

    if runtime in ANCHOR_RUNTIMES:
        from compress.tasks.causal_lm.anchors import runner as anchor_runner

        return _stamped(anchor_runner(runtime, variant["path"], threads, context=context, spinning=spinning).stream)
    if runtime == "onnxruntime":
        from compress.tasks.causal_lm.export import generator_for

        path = Path(variant["path"])
        gen = generator_for(path.parent, path.name, threads=threads, spinning=spinning)
        run = _stamped(lambda prompt, new_tokens: gen.stream(prompt, new_tokens, ignore_eos=True))
        run.session = gen.session
        return run
    import torch

    torch.set_num_threads(threads)
    if runtime == "torch":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(variant["path"], local_files_only=True).eval()
    else:
        from optimum.onnxruntime import ORTModelForCausalLM

        from export.session import session_options

        model = ORTModelForCausalLM.from_pretrained(
            variant["path"], session_options=session_options(threads, spinning=spinning),
            provider="CPUExecutionProvider",
        )
    streamer_class = _hf_streamer()
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else model.generation_config.eos_token_id

    def run(prompt: list[int], new_tokens: int):
        ids = torch.tensor([prompt])
        streamer = streamer_class()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # no early end-of-text: every variant does the same work
                do_sample=False,
                pad_token_id=pad,
                streamer=streamer,
            )
        stamps = streamer.times[1:]  # the first put is the prompt
        return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    return run


def _run(spec: dict) -> dict:
    threads = spec["threads"]
    import onnxruntime  # libraries first, so that load_s is the model's load alone

    runners, load_s = {}, {}
    context = max(len(p) for prompts in spec["prompts"].values() for p in prompts) + spec["new_tokens"]
    for v in spec["variants"]:
        t0 = time.perf_counter()
        runners[v["name"]] = _runner(v, threads, context, spec.get("spinning", False))
        load_s[v["name"]] = time.perf_counter() - t0
    names = list(runners)
    warm = spec["warmup_prompt"]  # the longest prompt: arenas and caches grow to their largest before timing
    for _ in range(spec["warmup"]):
        for n in names:
            runners[n](warm, spec["new_tokens"])  # a full generation
    settle = float(spec.get("settle_s") or 0.0)
    ttft: dict[str, dict[str, list[float]]] = {}
    steps: dict[str, dict[str, list[float]]] = {}
    wall: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    k = 0
    for length, prompts in spec["prompts"].items():
        ttft[length], steps[length] = {n: [] for n in names}, {n: [] for n in names}
        wall[length], cpu[length] = {n: [] for n in names}, {n: [] for n in names}
        for prompt in prompts:
            for _ in range(spec["runs"]):
                for j in range(len(names)):
                    n = names[(k + j) % len(names)]
                    if settle:  # the previous generation's spinning threads go quiet before this one is timed
                        time.sleep(settle)
                    c0, t0 = time.process_time(), time.perf_counter()
                    first, later = runners[n](prompt, spec["new_tokens"])
                    wall[length][n].append(time.perf_counter() - t0)
                    cpu[length][n].append(time.process_time() - c0)
                    ttft[length][n].append(first)
                    steps[length][n].extend(later)
                k += 1
    ours = {n: r for n, r in runners.items() if isinstance(getattr(r, "session", None), onnxruntime.InferenceSession)}
    facts = process_facts(ours)
    return {"load_s": load_s, "ttft_s": ttft, "step_s": steps, "generation_s": wall, "cpu_s": cpu, "process": facts}


def measure_lm_target(target, variants: list[dict], prompts: dict[str, list[list[int]]], protocol: dict) -> dict:
    """Run the worker for one target in a fresh process and return its raw times.

    Args:
        target: a resolved `compress.targets.Target`.
        variants: [{"name", "runtime" (torch | optimum | onnxruntime | genai | llama.cpp), "path"}].
        prompts: prompt length (as a string) -> prompts (token id lists of that length).
        protocol: new_tokens, runs, warmup, warmup_prompt, settle_s (an untimed pause before each generation).

    Returns:
        load_s, ttft_s (length -> variant -> seconds), step_s (length -> variant -> per-token seconds),
        generation_s and cpu_s (length -> variant -> each generation's wall and process CPU seconds), process,
        wall_s (the whole worker).

    Raises:
        RuntimeError: the worker failed; the message holds the last lines of its stderr.
    """
    spec = {
        "variants": variants,
        "prompts": prompts,
        **protocol,
    }
    return run_worker("compress.tasks.causal_lm.worker", target, spec, "LM benchmark worker")


def main() -> None:
    spec = read_spec()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print(json.dumps(_run(spec)))


if __name__ == "__main__":
    main()
