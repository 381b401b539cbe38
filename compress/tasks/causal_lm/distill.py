"""Distill stage of a causal LM: a student from a subset of the teacher's layers, trained on its distributions.

The student is built by `compress.modeling.build_student` from the architecture table (layer subset, optionally a
narrower FFN or hidden size), so it is an ordinary model of the teacher's family. It learns the teacher's
next-token distribution at every position (forward KL at `temperature`, weight `alpha`) and the corpus's next
token (weight 1 - alpha), optionally the teacher's hidden states over a layer map; the weights with the lowest
held-out loss are kept. The teacher runs on each batch (see `compress.tasks.causal_lm.model` for why its logits are
not cached).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress.distributed import describe_runtime
from compress.modeling import default_hidden_map
from compress.tasks.causal_lm.config import LMDistillConfig, TextDataConfig
from compress.tasks.causal_lm.control import blocks_seen
from compress.tasks.causal_lm.data import BlockDataset, TextData, selection_blocks, train_blocks
from compress.tasks.causal_lm.model import (
    LMLossSpec,
    block_training_args,
    describe_decoder,
    final_train_loss,
    memory_args,
    train_lm,
)
from compress.tasks.causal_lm.teacher import measure_lm


@dataclass
class LMDistillResult:
    model: object
    metrics: dict = field(default_factory=dict)


def distill_lm(
    teacher,
    tokenizer,
    config: LMDistillConfig,
    data: TextData,
    data_config: TextDataConfig,
    *,
    seed: int,
    work_dir: Path,
    teacher_predictions: list[np.ndarray] | None = None,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
) -> LMDistillResult:
    """Build the student from `teacher` (not modified), distil it on the train blocks, keep the best held-out
    weights.

    Returns:
        The student and metrics: perplexity on held-out, dev and test, dev agreement with the teacher's greedy
        next tokens, parameters and MACs per token of student and teacher, training tokens, steps, wall time.
    """
    cfg = config
    student, layers, selection, spec = _build_student(teacher, tokenizer, cfg, data, data_config, seed, log)
    train_set = train_blocks(tokenizer, data.train, data_config)
    generated = None
    if cfg.generated_sequences:
        generated = teacher_sequences(teacher, tokenizer, train_set, cfg, data_config.block_size, seed, cache_dir, log)
        train_set = BlockDataset(np.concatenate([train_set.blocks, generated]))
    hold = selection_blocks(tokenizer, data.holdout, data_config)
    t_info, s_info = (
        describe_decoder(teacher, data_config.block_size),
        describe_decoder(student, data_config.block_size),
    )
    log(
        f"    student {s_info['params']:,} params, {s_info['macs_per_token'] / 1e6:.2f}M MACs/token | teacher "
        f"{t_info['params']:,} params, {t_info['macs_per_token'] / 1e6:.2f}M MACs/token (at {data_config.block_size} "
        f"tokens of context); {train_set.tokens:,} training tokens"
    )
    args = block_training_args(work_dir, cfg, seed, evaluate=hold is not None)
    t0 = time.perf_counter()
    student.train()
    history = train_lm(student, train_set, args, eval_dataset=hold, teacher=teacher, loss=spec)
    train_s = time.perf_counter() - t0
    student.eval()
    metrics, _ = measure_lm(student, tokenizer, data, data_config, reference=teacher_predictions)
    metrics.update(
        {
            **describe_decoder(student, data_config.block_size),
            "teacher_params": t_info["params"],
            "teacher_macs_per_token": t_info["macs_per_token"],
            "layer_indices": layers,
            "layer_selection": selection,
        }
    )
    metrics.update(_training_record(cfg, spec, train_set, generated, history, train_s))
    return LMDistillResult(student, metrics)


def _build_student(teacher, tokenizer, cfg: LMDistillConfig, data: TextData, data_config: TextDataConfig, seed: int,
                   log: Callable[[str], None]):  # fmt: skip
    """The student (its layers given, or chosen by measurement), the layers, the choice's record and its loss."""
    from compress.modeling import build_student, check_layer_map

    layers, selection = list(cfg.layers), None
    if cfg.num_layers is not None:
        blocks = _selection_blocks(tokenizer, data, data_config)
        layers, selection = select_layers(teacher, blocks, cfg.num_layers, cfg.layer_candidates)
        evaluations = sum(len(s["perplexity_without"]) for s in selection)
        dropped = [s["dropped"] for s in selection]
        log(
            f"    layers chosen by held-out perplexity: {layers} (dropped in order {dropped}; "
            f"{evaluations} models of {len(blocks)} blocks measured)"
        )
    torch.manual_seed(seed)
    student = build_student(
        teacher,
        layers,
        intermediate_size=cfg.intermediate_size,
        hidden_size=cfg.hidden_size,
        hidden_init=cfg.hidden_init,
        seed=seed,
    )
    n_t, n_s = int(teacher.config.num_hidden_layers), int(student.config.num_hidden_layers)
    hidden_map = cfg.hidden_layer_map or default_hidden_map(layers, n_t)
    spec = LMLossSpec(
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        kind=cfg.loss,
        skew=cfg.skew,
        hidden_weight=cfg.hidden_weight,
        hidden_layer_map=tuple(check_layer_map("distill", "hidden_layer_map", hidden_map, n_s, n_t)),
    )
    return student, layers, selection, spec


def _training_record(cfg: LMDistillConfig, spec: LMLossSpec, train_set, generated, history: list[dict],
                     train_s: float) -> dict:  # fmt: skip
    """What the student was trained on and how: the loss, the tokens and teacher-written blocks, steps, time."""
    best = next((h for h in reversed(history) if "best_eval_loss" in h), {})
    return {
        "holdout_perplexity_best": best.get("best_eval_perplexity"),
        "best_step": best.get("best_step"),
        "loss": {
            "temperature": spec.temperature,
            "alpha": spec.alpha,
            "kind": spec.kind,
            "skew": spec.skew if spec.kind.startswith("skew") else None,
            "hidden_weight": spec.hidden_weight,
            "hidden_layer_map": [list(p) for p in spec.hidden_layer_map],
            "teacher": "online (run on each batch)",
        },
        "train_tokens": train_set.tokens,
        "training_memory": memory_args(cfg),
        "train_blocks_seen": blocks_seen(
            cfg.epochs, cfg.max_steps, cfg.batch_size, len(train_set), cfg.gradient_accumulation_steps
        ),
        "generated_sequences": (
            {
                "blocks": len(generated),
                "tokens": int(generated.size),
                "prompt_tokens": cfg.generation_prompt_tokens,
                "temperature": cfg.generation_temperature,
                "top_p": cfg.generation_top_p,
            }
            if generated is not None
            else None
        ),
        "train_steps": max((h.get("step", 0) for h in history), default=0),
        "train_wall_s": train_s,
        "train_loss_final": final_train_loss(history),
        "runtime": describe_runtime(cfg.precision),  # processes (torchrun), device, precision
    }


def _selection_blocks(tokenizer, data: TextData, data_config: TextDataConfig, n: int = 16) -> list[np.ndarray]:
    """Up to `n` held-out blocks (the first train blocks when nothing is held out; never dev or test)."""
    source = data.holdout or data.train
    blocks = train_blocks(tokenizer, source, data_config)
    return [np.asarray(blocks[i]["input_ids"]) for i in range(min(n, len(blocks)))]


@torch.no_grad()
def select_layers(
    teacher, blocks: list[np.ndarray], keep: int, candidates: int | None = None
) -> tuple[list[int], list[dict]]:
    """Which `keep` teacher layers a student should start from, by measurement.

    Greedy: at each round remaining layers are skipped in turn (the model of the others, built as the student
    would be), and the one whose absence raises the perplexity of `blocks` least is dropped; repeated until
    `keep` remain. ShortGPT (Men et al. 2024) ranks layers once by how little they change the hidden state; the
    perplexity of the whole model is the quantity the student is judged by, and re-measuring after each drop
    accounts for layers that stand in for each other. Measuring every layer every round costs O(layers^2) whole
    models (about 220 to take 24 layers to 12); with `candidates`, each round measures only that many layers, those
    of least block influence (ShortGPT's score, `block_influence`, one forward pass of the current model): at most
    (layers - keep) x candidates evaluations.

    Returns:
        The kept layer indices (sorted) and one record per round: the layers present, the perplexity without each
        layer measured, the one dropped, and (with `candidates`) every layer's block influence.
    """
    from compress.architectures import num_layers
    from compress.modeling import build_student
    from compress.tasks.causal_lm.model import evaluate_blocks

    n = num_layers(teacher)
    if not 1 <= keep < n:
        raise ValueError(f"num_layers = {keep}: the teacher has {n} layers; keep between 1 and {n - 1}")

    def perplexity(layers: list[int]) -> float:
        return evaluate_blocks(build_student(teacher, layers), blocks, batch_size=4, desc="layer choice").perplexity

    current, rounds = list(range(n)), []
    while len(current) > keep:
        record: dict = {"layers": list(current)}
        pool = current
        if candidates is not None and candidates < len(current):
            model = teacher if len(current) == n else build_student(teacher, current)
            influence = dict(zip(current, block_influence(model, blocks[:_INFLUENCE_BLOCKS]), strict=True))
            pool = sorted(current, key=influence.get)[:candidates]
            record["block_influence"] = influence
        without = {i: perplexity([j for j in current if j != i]) for i in pool}
        drop = min(without, key=without.get)
        rounds.append({**record, "perplexity_without": without, "dropped": drop})
        current.remove(drop)
    return current, rounds


_INFLUENCE_BLOCKS = 4  # block influence is a ranking of layers: a few blocks order them as well as many (measured)


@torch.no_grad()
def block_influence(model, blocks: list[np.ndarray]) -> list[float]:
    """Per layer, 1 - the mean cosine similarity of its input and output hidden states over the tokens of
    `blocks` (ShortGPT's block influence: a layer that barely changes the residual stream scores near 0).

    Written here because transformers returns the hidden states between layers but the last one after the final
    norm; hooks on each layer read its own input and output.
    """
    from compress.architectures import weight_layers

    layers = list(weight_layers(model))
    sums, seen = [0.0] * len(layers), {}

    def before(i):
        def hook(_module, args, kwargs):
            seen[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def after(i):
        def hook(_module, _args, _kwargs, out):
            h = out[0] if isinstance(out, tuple) else out
            sim = torch.nn.functional.cosine_similarity(seen.pop(i).float(), h.float(), dim=-1)  # (B, T)
            sums[i] += float(sim.sum())

        return hook

    handles = [layer.register_forward_pre_hook(before(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(after(i), with_kwargs=True) for i, layer in enumerate(layers)]
    tokens = 0
    try:
        model.eval()
        for b in blocks:
            ids = torch.as_tensor(np.asarray(b, dtype=np.int64))[None]
            model(input_ids=ids, use_cache=False)
            tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return [1.0 - s / tokens for s in sums]


@torch.no_grad()
def teacher_sequences(teacher, tokenizer, train_set, cfg: LMDistillConfig, block_size: int, seed: int,
                      cache_dir: Path | None = None, log: Callable[[str], None] = print) -> np.ndarray:  # fmt: skip
    """Sequence-level knowledge distillation (Kim and Rush 2016): blocks the teacher writes itself.

    Each starts from the first `generation_prompt_tokens` of a train block (seeded choice) and is continued by the
    teacher (`generate`, sampling at `generation_temperature` / `generation_top_p`, greedy at temperature 0) to a
    full block, end-of-text included. They are written once per teacher and settings to `cache_dir` (a file named
    by the hash of the teacher's weights and the settings) and read back by every student that asks for the same.

    Returns:
        (generated_sequences, block_size) token ids.
    """
    import hashlib
    import json

    settings = {
        "n": cfg.generated_sequences,
        "prompt_tokens": cfg.generation_prompt_tokens,
        "temperature": cfg.generation_temperature,
        "top_p": cfg.generation_top_p,
        "block_size": block_size,
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, t in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().numpy().tobytes())
    path = Path(cache_dir) / f"teacher-sequences-{digest.hexdigest()[:16]}.npy" if cache_dir else None
    if path is not None and path.exists():
        log(f"    {cfg.generated_sequences} teacher-written blocks read from {path.name}")
        return np.load(path)
    if cfg.generation_prompt_tokens >= block_size:
        raise ValueError(f"generation_prompt_tokens = {cfg.generation_prompt_tokens}: not below the block size")
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(train_set), (cfg.generated_sequences,), generator=gen).tolist()
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    out, t0 = [], time.perf_counter()
    teacher.eval()
    torch.manual_seed(seed)
    for k in range(0, len(picks), 16):
        prompts = torch.as_tensor(
            np.stack([train_set.blocks[i][: cfg.generation_prompt_tokens] for i in picks[k : k + 16]])
        )
        n_new = block_size - prompts.shape[1]
        sample = cfg.generation_temperature > 0
        ids = teacher.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=n_new,
            min_new_tokens=n_new,  # full blocks: end-of-text is a token like any other inside a packed block
            do_sample=sample,
            temperature=cfg.generation_temperature if sample else None,
            top_p=cfg.generation_top_p if sample else None,
            top_k=0 if sample else None,
            pad_token_id=pad,
        )
        out.append(ids.numpy())
    blocks = np.concatenate(out).astype(np.int64)
    log(f"    {len(blocks)} teacher-written blocks of {block_size} tokens in {time.perf_counter() - t0:.0f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, blocks)
        tmp.replace(path)
    return blocks
