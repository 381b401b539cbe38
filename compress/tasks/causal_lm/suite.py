"""Benchmark stage of a causal LM: every variant measured the same way, on the artifact that ships.

Quality comes from the main process: perplexity on dev and test through the variant's own runtime, the share of
positions where its greedy next token is the teacher's (teacher-forced on the dev blocks), and greedy
continuations of dev prompts (kept, so that a bundle can be checked against them). Speed comes from one fresh
worker process per target (`compress.tasks.causal_lm.worker`): time to first token at each prompt length and per-token
decode latency. Memory: a fresh process per model and target generating at a fixed context
(`benchmarks.memory`). Size: the weight files as shipped, raw and gzip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks.latency import paired_rate_ratio_ci, percentiles, rate_ci
from benchmarks.memory import measure_peak_rss
from benchmarks.process import environment
from compress.targets import ANCHOR_RUNTIMES, BASELINES, resolve_target
from compress.tasks.causal_lm.anchors import runner, weight_files
from compress.tasks.causal_lm.config import LMBenchmarkConfig, TextDataConfig
from compress.tasks.causal_lm.data import TextData, eval_blocks, prompts_from
from compress.tasks.causal_lm.worker import measure_lm_target
from export.artifact import Artifact, file_sizes

GREEDY_PROMPT_TOKENS = 32
SPIN_SETTLE_S = 0.05  # untimed pause before each generation on a spinning target (`_speed`)


@dataclass(frozen=True)
class LMVariant:
    """One model to measure. `path`: model.onnx for onnxruntime, the model directory for torch, optimum and
    genai, the .gguf file for llama.cpp."""

    name: str
    stage: str  # teacher, distill, prune, quantize or baseline
    runtime: str  # torch (transformers), optimum (ORTModelForCausalLM), onnxruntime (this project's decoder loop),
    # or an anchor's own runtime: genai (ONNX Runtime GenAI) or llama.cpp (`compress.tasks.causal_lm.anchors`)
    parent: str | None
    path: Path
    model_dir: Path  # tokenizer and config
    params: int
    layers: int


class _Quality:
    """Forward passes and greedy decoding through one variant's runtime, for the quality figures."""

    def __init__(self, v: LMVariant, threads: int, model_file: Path | None = None):
        self.v = v
        self.anchor = None
        if v.runtime in ANCHOR_RUNTIMES:
            self.anchor = runner(v.runtime, v.path, threads, all_logits=True)
        elif v.runtime == "onnxruntime":
            from compress.tasks.causal_lm.export import generator_for

            # An .ort conversion lives apart from the artifact's tokenizer and config: name the file.
            self.gen = generator_for(v.model_dir, model_file or v.path.name, threads=threads)
        else:
            import torch

            torch.set_num_threads(threads)
            if v.runtime == "torch":
                from transformers import AutoModelForCausalLM

                self.model = AutoModelForCausalLM.from_pretrained(v.path, local_files_only=True).eval()
            else:
                from optimum.onnxruntime import ORTModelForCausalLM

                from export.session import session_options

                self.model = ORTModelForCausalLM.from_pretrained(v.path, session_options=session_options(threads))

    def logits(self, ids: np.ndarray) -> np.ndarray:
        if self.anchor is not None:
            return self.anchor.logits(ids)
        if self.v.runtime == "onnxruntime":
            return self.gen.forward(ids)[0]
        import torch

        with torch.inference_mode():
            t = torch.as_tensor(ids)
            return self.model(input_ids=t, attention_mask=torch.ones_like(t), use_cache=False).logits.float().numpy()

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        if self.anchor is not None:
            return list(self.anchor.stream(prompt, n))
        if self.v.runtime == "onnxruntime":
            return list(self.gen.stream(prompt, n, ignore_eos=True))
        import torch

        ids = torch.tensor([prompt])
        pad = self.model.generation_config.pad_token_id
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad if pad is not None else self.model.generation_config.eos_token_id,
            )
        return out[0, len(prompt) :].tolist()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis in float32 (one float32 copy of the logits, never a float64 one: a 256-token
    block at a 152k vocabulary is 155 MB in float32). Computed by PyTorch's vectorised, multi-threaded kernel: the
    same figures as NumPy's exp/sum to float32 rounding, 5-10x faster on the benchmark's vocabularies (measured)."""
    return _log_probs(logits).numpy()


def _log_probs(logits: np.ndarray):
    import torch

    return torch.log_softmax(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), -1)


# The reference's dev log-probabilities are kept for every other variant's KL while they take at most this much
# memory (the default's 160 blocks at an 8k vocabulary: 1.3 GB); beyond it (160 blocks at 152k: 25 GB) they are
# computed again for each variant, as its forward passes are.
KEEP_REFERENCE_BYTES = 2 * 2**30
# KL of each variant to its parent (the model it was quantized, pruned or distilled from; llama.cpp's standard
# check of a quantization) is measured on the first dev blocks whose parent log-probabilities fit in this much
# memory, at most PARENT_KL_BLOCKS (16 blocks of 256 at an 8k vocabulary: 134 MB; 3 at 152k), kept while the
# parent has children left to measure.
KEEP_PARENT_BYTES = 512 * 2**20
PARENT_KL_BLOCKS = 16


@dataclass
class _Evaluation:
    perplexity: float
    tokens: int
    predictions: list  # the argmax next token at each predicting position, per block
    kl_to_reference: float | None = None  # mean KL(reference || variant) per token, nats
    log_probs: list | None = None  # with keep=True and within KEEP_REFERENCE_BYTES: per block, (T - 1, vocabulary)
    kl_to_parent: float | None = None  # mean KL(parent || variant) per token over the parent's kept blocks
    first_log_probs: list | None = None  # with keep_first=K: the first K blocks' (T - 1, vocabulary), for children


def _evaluate(
    q: _Quality,
    blocks: list[np.ndarray],
    batch_size: int = 4,
    reference: _Quality | list | None = None,
    keep: bool = False,
    parent: list | None = None,
    keep_first: int = 0,
) -> _Evaluation:
    """Perplexity over `blocks`, the argmax next token at each predicting position and, with `reference` (the
    teacher), the mean per-token KL divergence KL(teacher || variant) of the next-token distributions, exact over
    the whole vocabulary. `reference` is the teacher's `_Quality` (its logits computed again for each chunk) or
    the log-probabilities an earlier `_evaluate(teacher, blocks, keep=True)` kept (`log_probs`); `keep` keeps this
    variant's when they fit in KEEP_REFERENCE_BYTES. `parent`: the log-probabilities of the first blocks that
    the variant's parent kept (`keep_first`), for its mean KL(parent || variant) over them. Per-token sums are
    accumulated in float64."""
    import torch

    nll, kl, count, preds = 0.0, 0.0, 0, [None] * len(blocks)
    pkl, pcount = 0.0, 0
    first: list = [None] * min(keep_first, len(blocks))
    kept: list | None = [None] * len(blocks) if keep else None
    positions = sum(len(b) - 1 for b in blocks)
    order: dict[int, list[int]] = {}
    for i, b in enumerate(blocks):
        order.setdefault(len(b), []).append(i)
    for idx in order.values():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k : k + batch_size]
            ids = np.stack([blocks[i] for i in chunk])
            logits = q.logits(ids)[:, :-1]
            if kept is not None and positions * logits.shape[-1] * 4 > KEEP_REFERENCE_BYTES:
                kept = None
            ref_logits = reference.logits(ids)[:, :-1] if isinstance(reference, _Quality) else None
            for r, i in enumerate(chunk):  # one block at a time: float32 temporaries of (block, vocabulary)
                logp = _log_probs(logits[r])
                target = torch.from_numpy(np.ascontiguousarray(ids[r, 1:], dtype=np.int64))
                nll -= float(logp.gather(-1, target[:, None]).sum(dtype=torch.float64))
                if reference is not None:
                    ref = _log_probs(ref_logits[r]) if ref_logits is not None else reference[i]
                    kl += float((ref.exp() * (ref - logp)).sum(dtype=torch.float64))
                if parent is not None and i < len(parent):
                    pkl += float((parent[i].exp() * (parent[i] - logp)).sum(dtype=torch.float64))
                    pcount += int(logp.shape[0])
                if kept is not None:
                    kept[i] = logp
                if i < len(first):
                    first[i] = logp
                preds[i] = logp.argmax(-1).numpy()  # the logits' argmax: log-softmax keeps the order
            count += int(ids[:, 1:].size)
    return _Evaluation(
        math.exp(nll / count), count, preds, kl / count if reference is not None else None, log_probs=kept,
        kl_to_parent=pkl / pcount if pcount else None, first_log_probs=first or None,
    )  # fmt: skip


def _prefix_match(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _summary(times_s: list[float]) -> dict:
    return percentiles(times_s) if times_s else {}


def benchmark_lm(
    variants: list[LMVariant],
    data: TextData,
    data_config: TextDataConfig,
    config: LMBenchmarkConfig,
    *,
    reference: str,
    work_dir: Path,
    log: Callable[[str], None] = print,
    anchors: dict | None = None,
) -> dict:
    """Perplexity, agreement, greedy continuations, TTFT, decode speed, peak RSS and size of each variant.

    Args:
        variants: the models; names in `BASELINES` are the reference points of the report's ratios.
        data: the corpus (dev and test are measured; dev also gives the prompts).
        data_config: block size and evaluation caps.
        config: the recipe's `benchmark` section.
        reference: the variant whose greedy predictions the others' agreement is measured against.
        work_dir: where `.ort` conversions are kept.
        log: one line per measurement phase.
        anchors: how the anchors among `variants` were built, and those that could not be
            (`compress.tasks.causal_lm.anchors.build_anchors`: {"built": {...}, "unavailable": [...]}), for the report.

    Returns:
        environment, settings and one record per variant (schema in `benchmarks/report.py`).
    """
    import os

    from transformers import AutoTokenizer

    s = config
    threads = s.eval_threads or os.cpu_count() or 1
    tokenizer = AutoTokenizer.from_pretrained(variants[0].model_dir, local_files_only=True)
    splits = {"dev": eval_blocks(tokenizer, data.dev, data_config, "dev")}
    if data.test:
        splits["test"] = eval_blocks(tokenizer, data.test, data_config, "test")
    greedy_prompts = prompts_from(
        tokenizer, data.dev, s.greedy_prompts, GREEDY_PROMPT_TOKENS, data_config.max_eval_tokens
    )

    t0 = time.perf_counter()
    records = _quality(variants, splits, greedy_prompts, reference, s, threads)
    quality_s = time.perf_counter() - t0

    deployable = [v for v in variants if v.runtime == "onnxruntime" and v.name not in BASELINES]
    if s.ort_format:
        for v in tqdm(deployable, desc=".ort conversion", unit="variant"):
            records[v.name]["ort"] = _ort_format(v, work_dir / "ort", splits["dev"], greedy_prompts[:4], s, threads)

    # Speed: the same prompts for every variant and target.
    prompts = {str(n): prompts_from(tokenizer, data.dev, s.prompts, n, None) for n in s.prompt_lengths}
    targets = [resolve_target(t) for t in s.targets]
    per_target = _speed(variants, targets, prompts, prompts[str(max(s.prompt_lengths))][0], s, log)
    if s.memory:
        memory_prompt = [str(t) for t in prompts_from(tokenizer, data.dev, 1, s.memory_context, None)[0]]
        _memory(variants, targets, memory_prompt, s, per_target, log)
        if s.memory_contexts:
            primary = next(t for t in targets if t.name == s.primary)
            _memory_by_context(deployable, primary, tokenizer, data.dev, s, per_target, log)
    middle = str(sorted(s.prompt_lengths)[len(s.prompt_lengths) // 2])
    for v in variants:
        _target_figures(records[v.name], v.name, targets, per_target, s.primary, middle)
    same_model_ratios(records, targets, per_target, s.primary)
    return {
        "task": "causal-lm",
        "environment": environment(targets, s.primary, per_target),
        "settings": _settings(s, data_config, records[reference], greedy_prompts, middle, threads, quality_s)
        | {"baselines": [b for b in BASELINES if b in records], "speed_workers": per_target[s.primary]["workers"]},
        "reference": reference,
        "anchors": anchors or {"built": {}, "unavailable": []},
        "variants": [records[v.name] for v in variants],
    }


def _settings(s: LMBenchmarkConfig, data_config: TextDataConfig, ref: dict, greedy_prompts: list[list[int]],
              middle: str, threads: int, quality_s: float) -> dict:  # fmt: skip
    """How the figures were measured, for the report."""
    return {
        "primary_target": s.primary,
        "ttft_headline_length": int(middle),
        "prompt_lengths": list(s.prompt_lengths),
        "new_tokens": s.new_tokens,
        "prompts_per_length": s.prompts,
        "runs": s.runs,
        "warmup": s.warmup,
        "decoding": "greedy, batch 1, KV cache; exactly new_tokens tokens (end-of-text ignored)",
        "perplexity": f"non-overlapping blocks of {data_config.block_size} tokens, each read from an empty cache",
        "block_size": data_config.block_size,
        "kl_to_teacher": "KL(teacher || variant) of the next-token distributions on the dev blocks, nats per "
        "token, exact over the vocabulary",
        "dev_tokens": ref["dev_tokens"],
        "test_tokens": ref.get("test_tokens"),
        "greedy_prompts": len(greedy_prompts),
        "greedy_prompt_ids": greedy_prompts,
        "greedy_prompt_tokens": GREEDY_PROMPT_TOKENS,
        "greedy_tokens": s.greedy_tokens,
        "memory_context": s.memory_context,
        "memory_contexts": sorted({*s.memory_contexts, s.memory_context}) if s.memory_contexts else [],
        "eval_threads": threads,
        "quality_wall_s": quality_s,
        "protocol": s.model_dump(mode="json"),
    }


def _quality(variants: list[LMVariant], splits: dict, greedy_prompts: list[list[int]], reference: str,
             s: LMBenchmarkConfig, threads: int) -> dict[str, dict]:  # fmt: skip
    """Perplexity on each split, KL to the reference and agreement with it on dev, greedy continuations and
    sizes: one record per variant. The reference is measured first and its dev log-probabilities kept (or, past
    KEEP_REFERENCE_BYTES, the reference kept loaded), since every other variant's KL reads them."""
    records: dict[str, dict] = {}
    preds: dict[str, list] = {}
    greedy: dict[str, list[list[int]]] = {}
    ref: _Quality | list | None = None
    order = parents_first(variants, reference)
    names = {v.name for v in variants}
    children = {v.name: sum(1 for c in variants if c.parent == v.name) for v in variants}
    dev = splits["dev"]
    vocab_bytes = 4 * max(1, len(dev[0]) - 1) * _vocab_size(variants[0]) if dev else 1
    first_blocks = max(1, min(PARENT_KL_BLOCKS, len(dev), KEEP_PARENT_BYTES // max(1, vocab_bytes)))
    kept_first: dict[str, list] = {}  # parents' log-probabilities on the first dev blocks, while children remain
    for v in tqdm(order, desc="perplexity and greedy", unit="variant"):
        q = _Quality(v, threads)
        rec = {k: (str(x) if isinstance(x, Path) else x) for k, x in asdict(v).items()}
        for split, blocks in splits.items():
            is_ref_dev = v.name == reference and split == "dev"
            parent = kept_first.get(v.parent) if split == "dev" else None
            keep_first = first_blocks if split == "dev" and children[v.name] else 0
            ev = _evaluate(q, blocks, reference=ref if split == "dev" else None, keep=is_ref_dev, parent=parent,
                           keep_first=keep_first)  # fmt: skip
            if is_ref_dev:
                ref = ev.log_probs if ev.log_probs is not None else q  # kept, or computed again per variant
            rec["perplexity" if split == "dev" else f"perplexity_{split}"] = ev.perplexity
            rec[f"{split}_tokens"] = ev.tokens
            if split == "dev":
                preds[v.name] = ev.predictions
                rec["kl_to_teacher"] = 0.0 if v.name == reference else ev.kl_to_reference
                if ev.kl_to_parent is not None:
                    rec["kl_to_parent"] = ev.kl_to_parent
                    rec["kl_to_parent_blocks"] = len(parent)
                if ev.first_log_probs is not None:
                    kept_first[v.name] = ev.first_log_probs
        if v.parent in names:
            children[v.parent] -= 1
            if children[v.parent] == 0:
                kept_first.pop(v.parent, None)
        greedy[v.name] = [q.greedy(p, s.greedy_tokens) for p in greedy_prompts]
        rec.update(file_sizes(_weight_files(v)))
        records[v.name] = rec
    ref_preds, ref_greedy = preds[reference], greedy[reference]
    for name, rec in records.items():
        same = sum(int((a == b).sum()) for a, b in zip(preds[name], ref_preds, strict=True))
        rec["agreement_with_teacher"] = same / sum(len(b) for b in ref_preds)
        matches = [_prefix_match(g, r) for g, r in zip(greedy[name], ref_greedy, strict=True)]
        rec["greedy_prefix_match"] = float(np.mean(matches)) / s.greedy_tokens
        rec["greedy_identical_with_teacher"] = float(np.mean([m == s.greedy_tokens for m in matches]))
        rec["greedy"] = {"prompts": len(greedy_prompts), "new_tokens": s.greedy_tokens, "tokens": greedy[name]}
    return {v.name: records[v.name] for v in variants}


def parents_first(variants: list[LMVariant], reference: str) -> list[LMVariant]:
    """The variants in measuring order: the reference first, then each variant after its parent (recipe order
    otherwise), so a parent's log-probabilities are measured before its children's KL to them."""
    by = {v.name: v for v in variants}
    out: list[LMVariant] = []
    seen: set[str] = set()

    def visit(v: LMVariant, path: tuple[str, ...] = ()) -> None:
        if v.name in seen or v.name in path:
            return
        if v.parent in by:
            visit(by[v.parent], (*path, v.name))
        seen.add(v.name)
        out.append(v)

    for v in sorted(variants, key=lambda v: v.name != reference):
        visit(v)
    return out


def _vocab_size(v: LMVariant) -> int:
    """The model's vocabulary (logit width), from its config.json."""
    import json

    cfg = json.loads((Path(v.model_dir) / "config.json").read_text())
    return int(cfg.get("vocab_size") or 1)


def _speed(variants: list[LMVariant], targets: list, prompts: dict, warmup_prompt: list[int], s: LMBenchmarkConfig,
           log: Callable[[str], None]) -> dict[str, dict]:  # fmt: skip
    """Raw time to first token and per-token decode times of every variant, one fresh worker per target."""
    protocol = {"new_tokens": s.new_tokens, "runs": s.runs, "warmup": s.warmup, "warmup_prompt": warmup_prompt}
    groups = worker_groups(variants, s.worker_memory_gb)
    per_target: dict[str, dict] = {}
    for target in targets:
        how = (
            f"{len(variants)} variants interleaved"
            if len(groups) == 1
            else f"{len(variants)} variants in {len(groups)} workers of at most {s.worker_memory_gb} GB of weights "
            f"({' | '.join(', '.join(v.name for v in g) for g in groups)}), interleaved within each"
        )
        log(
            f"    benchmark target {target.name}: {target.threads} thread(s), cores "
            f"{list(target.cpus) if target.cpus else 'any'}, spinning {'on' if target.spinning else 'off'}; {how}, "
            f"prompts of {s.prompt_lengths} tokens, {s.new_tokens} new tokens, {s.prompts} prompts x {s.runs} runs"
        )
        # On a spinning target a pause before each timed generation: the previous runtime's threads (OpenMP's
        # spin, ONNX Runtime's pool) would otherwise still spin on the cores the next one is timed on (measured:
        # our int8 6,553 tokens/s right after GenAI's and llama.cpp's generations, 8,110 with 20 ms between).
        settle = {"settle_s": SPIN_SETTLE_S if target.spinning else 0.0}
        parts = [
            measure_lm_target(
                target,
                [{"name": v.name, "runtime": v.runtime, "path": str(v.path)} for v in g],
                prompts,
                {**protocol, **settle},
            )
            for g in groups
        ]
        merged = {k: {} for k in ("load_s", "ttft_s", "step_s", "generation_s", "cpu_s")}
        for part in parts:
            merged["load_s"].update(part["load_s"])
            for key in ("ttft_s", "step_s", "generation_s", "cpu_s"):
                for length, by_name in part[key].items():
                    merged[key].setdefault(length, {}).update(by_name)
        # what each worker read back (the same settings; a worker without an ONNX Runtime session has no ORT facts)
        merged["process"] = {k: x for part in parts for k, x in part["process"].items()}
        merged["wall_s"] = sum(part["wall_s"] for part in parts)
        merged["workers"] = [[v.name for v in g] for g in groups]
        per_target[target.name] = merged
    return per_target


def resident_bytes(v: LMVariant) -> int:
    """What a variant's weights take in memory once loaded: float32 parameters in PyTorch, the weight files
    otherwise (ONNX Runtime and the anchors' runtimes hold them about as stored)."""
    if v.runtime == "torch":
        return 4 * int(v.params)
    return sum(f.stat().st_size for f in _weight_files(v))


def worker_groups(variants: list[LMVariant], cap_gb: float | None) -> list[list[LMVariant]]:
    """The variants in order, cut into consecutive groups whose `resident_bytes` add up to at most `cap_gb` (one
    variant over the cap alone is a group); one group when `cap_gb` is None."""
    if cap_gb is None:
        return [list(variants)]
    cap, groups, used = cap_gb * 1e9, [[]], 0
    for v in variants:
        size = resident_bytes(v)
        if groups[-1] and used + size > cap:
            groups.append([])
            used = 0
        groups[-1].append(v)
        used += size
    return groups


def _memory(variants: list[LMVariant], targets: list, memory_prompt: list[str], s: LMBenchmarkConfig,
            per_target: dict[str, dict], log: Callable[[str], None]) -> None:  # fmt: skip
    """Peak RSS of each variant on each target (a fresh process per model), into `per_target[target]["memory"]`;
    not on a spinning target other than the primary (a spinning thread holds no more memory than a sleeping one)."""
    for target in [t for t in targets if not t.spinning or t.name == s.primary]:
        log(
            f"    peak RSS on target {target.name}: a fresh process per model, generating after a "
            f"{s.memory_context}-token prompt"
        )
        per_target[target.name].setdefault("memory", {}).update(_probe_each(variants, target, memory_prompt, s))


def _memory_by_context(variants: list[LMVariant], target, tokenizer, dev, s: LMBenchmarkConfig,
                       per_target: dict[str, dict], log: Callable[[str], None]) -> None:  # fmt: skip
    """Peak RSS of each of `variants` on `target` generating after a prompt of each of `memory_contexts` tokens
    (a fresh process each), beside the headline probe's: `per_target[target]["memory_by_context"]`."""
    contexts = sorted(set(s.memory_contexts) - {s.memory_context})
    log(f"    peak RSS against context on target {target.name}: prompts of {', '.join(map(str, contexts))} tokens")
    out = per_target[target.name].setdefault("memory_by_context", {})
    for n in contexts:
        prompt = [str(t) for t in prompts_from(tokenizer, dev, 1, n, None)[0]]
        for name, m in _probe_each(variants, target, prompt, s).items():
            out.setdefault(name, {})[str(n)] = {**m, "prompt_tokens": len(prompt)}
    for v in variants:  # the headline probe is one more point of each curve
        headline = (per_target[target.name].get("memory") or {}).get(v.name)
        if headline is not None:
            out.setdefault(v.name, {})[str(s.memory_context)] = headline


def _probe_each(variants: list[LMVariant], target, prompt: list[str], s: LMBenchmarkConfig) -> dict[str, dict]:
    """`measure_peak_rss` of each variant generating `s.new_tokens` after `prompt` on `target`, by name (the
    no-model process measured once per runtime)."""
    base: dict[str, dict] = {}
    out = {}
    for v in variants:
        m = measure_peak_rss(
            v.runtime,
            v.path,
            v.model_dir,
            prompt,
            threads=target.threads,
            cpus=target.cpus,
            memory_limit_bytes=target.memory_limit_bytes,
            baseline=base.get(v.runtime),
            probe="compress.tasks.causal_lm.probe",
            new_tokens=s.new_tokens,
        )
        base[v.runtime] = m.pop("baseline")
        out[v.name] = m
    return out


def _target_figures(rec: dict, name: str, targets: list, per_target: dict, primary: str, middle: str) -> None:
    """A variant's summaries per target (TTFT per prompt length, decode latency, tokens/s, load time, memory), and
    the primary target's at the top level of its record."""
    rec["targets"] = {}
    for target in targets:
        res = per_target[target.name]
        steps_all = [x for length in res["step_s"] for x in res["step_s"][length][name]]
        decode = _summary(steps_all)
        counts, seconds = _requests(res, name)
        rec["targets"][target.name] = {
            "ttft_ms": {length: _summary(res["ttft_s"][length][name]) for length in res["ttft_s"]},
            "decode_ms_per_token": decode,
            "decode_ms_per_token_by_length": {
                length: _summary(res["step_s"][length][name]) for length in res["step_s"]
            },
            "tokens_per_s": 1e3 / decode["mean"] if decode else None,
            **({"tokens_per_s_ci": rate_ci(counts, seconds)["ci"]} if seconds else {}),
            **_cpu_per_wall(res, name),
            "load_s": res["load_s"][name],
            **({"memory": res["memory"][name]} if "memory" in res else {}),
            **(
                {"memory_by_context": dict(sorted(res["memory_by_context"][name].items(), key=lambda kv: int(kv[0])))}
                if name in res.get("memory_by_context", {})
                else {}
            ),
        }
    first = rec["targets"][primary]
    rec["tokens_per_s"] = first["tokens_per_s"]
    if "tokens_per_s_ci" in first:
        rec["tokens_per_s_ci"] = first["tokens_per_s_ci"]
    rec["decode_ms_per_token"] = first["decode_ms_per_token"]
    rec["ttft_ms"] = first["ttft_ms"][middle]
    if "memory" in first and "error" not in first["memory"]:
        rec.update({k: x for k, x in first["memory"].items() if k != "fits_memory_limit"})


def _cpu_per_wall(res: dict, name: str) -> dict:
    """{"cpu_per_wall": the process's CPU seconds over wall seconds during the variant's timed generations}: about 1
    per busy thread; a runtime whose threads spin while they wait shows its thread count whatever it computes."""
    wall = sum(x for by in (res.get("generation_s") or {}).values() for x in by.get(name, []))
    cpu = sum(x for by in (res.get("cpu_s") or {}).values() for x in by.get(name, []))
    return {"cpu_per_wall": cpu / wall} if wall > 0 else {}


def _requests(res: dict, name: str) -> tuple[list[int], list[float]]:
    """(decode steps, their seconds) per timed generation of variant `name` on one target, in the worker's order
    (every length, prompt and run; each generation gave the same number of steps)."""
    counts, seconds = [], []
    for length, by_name in res["step_s"].items():
        steps, n = by_name[name], len(res["ttft_s"][length][name])
        if not steps or not n or len(steps) % n:
            continue
        k = len(steps) // n
        counts += [k] * n
        seconds += [sum(steps[i : i + k]) for i in range(0, len(steps), k)]
    return counts, seconds


def same_model_ratios(records: dict, targets: list, per_target: dict, primary: str) -> None:
    """For each of our variants also run by another runtime (a `-genai` row of `benchmark.in_genai`, a `-llama.cpp`
    row of `benchmark.in_llama_cpp`): our tokens/s over theirs on the same requests, with a paired bootstrap
    interval, per target, into that row's record as `vs_parent` (and the primary target's at its top level)."""
    for name, rec in records.items():
        parent = rec.get("parent")
        if rec.get("stage") != "anchor" or parent not in records or records[parent].get("runtime") != "onnxruntime":
            continue
        for target in targets:
            counts, ours = _requests(per_target[target.name], parent)
            counts_b, theirs = _requests(per_target[target.name], name)
            if not ours or counts != counts_b:
                continue
            rec["targets"][target.name]["vs_parent"] = paired_rate_ratio_ci(counts, ours, theirs)
        if "vs_parent" in rec["targets"].get(primary, {}):
            rec["vs_parent"] = rec["targets"][primary]["vs_parent"]


def _weight_files(v: LMVariant) -> list[Path]:
    if v.runtime in ANCHOR_RUNTIMES:
        return weight_files(v.runtime, v.path)
    if v.runtime == "torch":
        return sorted(Path(v.path).glob("*.safetensors"))
    if v.runtime == "optimum":
        return Artifact.read(Path(v.path)).weight_files()
    return Artifact.read(v.path.parent).weight_files()




def _ort_format(v: LMVariant, work_dir: Path, dev_blocks, prompts, s: LMBenchmarkConfig, threads: int) -> dict:
    """Convert to .ort; perplexity of the .ort file on a few dev blocks and greedy tokens against the ONNX file."""
    from export.mobile import convert_to_ort

    out = Path(work_dir) / v.name
    try:
        conv = convert_to_ort(v.path, out)
        q_ort = _Quality(v, threads, Path(conv["ort_path"]).resolve())
    except Exception as e:  # noqa: BLE001 - a model the converter refuses, or a .ort that will not load, is a finding
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}
    q_onnx = _Quality(v, threads)
    blocks = dev_blocks[:8]
    ppl_ort = _evaluate(q_ort, blocks).perplexity
    ppl_onnx = _evaluate(q_onnx, blocks).perplexity
    same = [q_ort.greedy(p, s.greedy_tokens) == q_onnx.greedy(p, s.greedy_tokens) for p in prompts]
    return {
        "path": conv["ort_path"],
        "size_bytes": conv["size_bytes"],
        "perplexity_first_blocks": ppl_ort,
        "perplexity_first_blocks_onnx": ppl_onnx,
        "greedy_identical_with_onnx": float(np.mean(same)),
    }
