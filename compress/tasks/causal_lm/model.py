"""Decoder-only language models: loading a user's, making a new one, perplexity, and the training loop.

The causal-LM counterpart of `compress.modeling` and `compress.training`. Training is transformers' `Trainer`
over fixed-length token blocks (`compress.tasks.causal_lm.data.BlockDataset`), with a `compute_loss` override for
distillation: the student learns the teacher's next-token distribution at every position (forward KL at a
temperature) plus the corpus's next token, optionally its hidden states. Full-vocabulary teacher logits cannot
be cached (8,192 x 4 bytes per token is 32 KB; 2M training tokens would be 64 GB), and a top-k cache costs the
same teacher forward passes as running the teacher on each batch when the corpus is seen about once; so the
teacher runs online, under `no_grad`, on the student's batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments

from compress.architectures import FAMILIES, family_of
from compress.errors import RecipeError
from compress.losses import hidden_state_loss, next_token_distillation_loss, next_token_loss
from compress.tasks.causal_lm.config import ArchitectureConfig
from compress.tasks.causal_lm.data import BlockDataset
from compress.training import KeepBest, WithProjections

DECODERS = sorted(k for k, f in FAMILIES.items() if f.kind == "decoder")


def check_causal_lm_dir(model_dir: Path, what: str = "teacher.path") -> dict:
    """Read a model directory's config.json and check it describes a decoder-only causal LM this tool handles,
    without loading the weights.

    Returns:
        The config as a dict.

    Raises:
        RecipeError: no or invalid config.json, a model that is not a causal LM, a family not in the table, no
            weights file, no tokenizer.
    """
    model_dir = Path(model_dir)
    where = f"{what} = {str(model_dir)!r}"
    cfg_path = model_dir / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{where}: not a Hugging Face model directory (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecipeError(f"{where}: config.json is not valid JSON ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise RecipeError(f"{where}: config.json is not a JSON object")
    kind = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    lm_head = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if kind not in DECODERS or (archs and not lm_head):
        head = f" ({', '.join(archs)})" if archs else ""
        raise RecipeError(
            f"{where}: model_type {kind!r}{head} is not a decoder-only causal LM; supported: {', '.join(DECODERS)}"
        )
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("pytorch_model*.bin")):
        raise RecipeError(f"{where}: no weights (*.safetensors or pytorch_model.bin)")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise RecipeError(f"{where}: no tokenizer (tokenizer.json)")
    return cfg


def load_causal_lm(model_dir: Path, what: str = "teacher.path"):
    """A causal LM and its tokenizer from a local directory (never from a hub).

    Raises:
        RecipeError: see `check_causal_lm_dir`, or weights that do not fit the config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_causal_lm_dir(model_dir, what)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RecipeError(f"{what} = {str(model_dir)!r}: cannot be loaded ({first})") from None
    return model.eval(), tokenizer


def new_decoder(arch: ArchitectureConfig, vocab_size: int, eos_id: int, seed: int):
    """A randomly initialised decoder of the family and shape `arch` describes (the model a teacher pretrains)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=arch.tie_embeddings
    )
    if arch.family == "gpt2":
        config = GPT2Config(
            n_embd=arch.hidden_size,
            n_layer=arch.layers,
            n_head=arch.heads,
            n_inner=arch.intermediate_size,
            n_positions=arch.max_positions,
            **common,
        )
        return GPT2LMHeadModel(config)
    shape = dict(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads or arch.heads,
        intermediate_size=arch.intermediate_size or 4 * arch.hidden_size,
        max_position_embeddings=arch.max_positions,
    )
    if arch.family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape, **common))
    return LlamaForCausalLM(LlamaConfig(**shape, **common))


def context_window(config) -> int:
    """Tokens the model can attend to (learned positions for GPT-2, the configured RoPE range otherwise)."""
    return int(config.max_position_embeddings)


def count_parameters(model) -> int:
    """Parameters, counting a tied embedding and LM head once."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Evaluation:
    """Next-token quality of a model on a set of blocks."""

    nll: float  # summed over predicted tokens
    tokens: int  # predicted tokens (every position of a block but the last)
    predictions: list[np.ndarray]  # per block, the argmax next token at each predicting position

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)


@torch.inference_mode()
def evaluate_blocks(model, blocks: Sequence[np.ndarray], batch_size: int = 8, desc: str = "perplexity") -> Evaluation:
    """Perplexity and greedy next-token predictions of a PyTorch causal LM over `blocks` (no padding: blocks of
    one length are batched together)."""
    model.eval()
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    predictions: list[np.ndarray | None] = [None] * len(blocks)
    by_length: dict[int, list[int]] = {}
    for i, b in enumerate(blocks):
        by_length.setdefault(len(b), []).append(i)
    batches = [idx[k : k + batch_size] for idx in by_length.values() for k in range(0, len(idx), batch_size)]
    for idx in tqdm(batches, desc=desc, unit="batch", leave=False):
        ids = torch.as_tensor(np.stack([blocks[i] for i in idx]), device=device)
        logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
        for r in range(len(idx)):  # a block at a time: float32 temporaries of (block, vocabulary), not the batch's
            z = logits[r, :-1].float()
            nll += float((torch.logsumexp(z, -1) - z.gather(-1, ids[r, 1:, None])[:, 0]).double().sum())
        tokens += int(ids[:, 1:].numel())
        for row, i in zip(logits[:, :-1].argmax(-1).cpu().numpy(), idx, strict=True):
            predictions[i] = row
    return Evaluation(nll, tokens, predictions)


def agreement(predictions: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Share of positions where two models' greedy next tokens agree (teacher-forced on the same blocks)."""
    same = sum(int((a == b).sum()) for a, b in zip(predictions, reference, strict=True))
    return same / max(1, sum(len(a) for a in reference))


# ---- training ----


@dataclass(frozen=True)
class LMLossSpec:
    """loss = alpha * divergence(teacher_T, student_T) * T^2 + (1 - alpha) * next-token CE + hidden_weight * hidden
    MSE; the divergence is `kind` (`compress.losses.token_divergence`)."""

    temperature: float = 1.0
    alpha: float = 0.5
    kind: str = "forward"
    skew: float = 0.1
    hidden_weight: float = 0.0
    hidden_layer_map: tuple[tuple[int, int], ...] = ()


class CausalLMTrainer(Trainer):
    """The Trainer on token blocks: next-token cross-entropy, or distillation from a teacher run on each batch."""

    def __init__(self, *args, loss: LMLossSpec | None = None, teacher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_spec, self.teacher = loss, teacher
        self.model_accepts_loss_kwargs = False  # the loss below is a mean over tokens already
        if teacher is not None:
            self._teacher_state = (next(teacher.parameters()).device, teacher.training)
            teacher.eval().to(self.args.device)

    def release(self) -> None:
        """Give the teacher back its device and mode."""
        if self.teacher is not None:
            device, training = self._teacher_state
            self.teacher.to(device).train(training)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs["input_ids"]
        spec = self.loss_spec
        if spec is None or self.teacher is None or not model.training:
            out = model(input_ids=ids, use_cache=False)
            loss = next_token_loss(out.logits, ids)
            return (loss, out) if return_outputs else loss
        want_hidden = spec.hidden_weight > 0
        out = model(input_ids=ids, use_cache=False, output_hidden_states=want_hidden)
        with torch.no_grad():
            t_out = self.teacher(input_ids=ids, use_cache=False, output_hidden_states=want_hidden)
        loss = next_token_distillation_loss(
            out.logits, t_out.logits, ids, spec.temperature, spec.alpha, spec.kind, spec.skew
        )
        if want_hidden:
            mask = torch.ones_like(ids)
            projected = out.get("projected_hidden_states")
            if projected is not None:  # a narrower student: its mapped states, projected to the teacher's width
                student_hidden, pairs = projected, [(k, t) for k, (_, t) in enumerate(spec.hidden_layer_map)]
            else:
                student_hidden, pairs = out.hidden_states, spec.hidden_layer_map
            loss = loss + spec.hidden_weight * hidden_state_loss(student_hidden, t_out.hidden_states, pairs, mask)
        return (loss, out) if return_outputs else loss


def train_lm(
    model,
    dataset: BlockDataset,
    args: TrainingArguments,
    *,
    eval_dataset: BlockDataset | None = None,
    teacher=None,
    loss: LMLossSpec | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> list[dict]:
    """Train `model` in place on token blocks; with `eval_dataset`, keep the weights of the lowest held-out loss.

    Returns:
        The Trainer's log history, ending with {"best_eval_loss", "best_eval_perplexity", "best_step"} when a
        held-out set was evaluated.
    """
    if len(dataset) == 0:
        return []
    keep_best = KeepBest("eval_loss") if eval_dataset is not None else None
    projections = None
    if loss is not None and loss.hidden_weight > 0 and teacher is not None:
        hs, ht = model.config.hidden_size, teacher.config.hidden_size
        if hs != ht:
            projections = nn.ModuleList(nn.Linear(hs, ht) for _ in loss.hidden_layer_map)
    trainable = (
        WithProjections(model, projections, [s for s, _ in loss.hidden_layer_map]) if projections is not None else model
    )
    trainer = CausalLMTrainer(
        model=trainable,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        callbacks=[*(callbacks or []), *([keep_best] if keep_best else [])] or None,
        loss=loss,
        teacher=teacher,
    )
    try:
        trainer.train()
        if args.gradient_checkpointing:
            trainable.gradient_checkpointing_disable()  # the Trainer turned it on; a trained model runs without
        if keep_best is not None:
            if keep_best.last_eval_step != trainer.state.global_step:
                trainer.evaluate()  # the final weights are a candidate too
            keep_best.restore(trainable)
    finally:
        trainer.release()
    model.eval()
    history = list(trainer.state.log_history)
    if keep_best is not None and keep_best.best is not None:
        best_loss = -keep_best.best[0]
        history.append(
            {"best_eval_loss": best_loss, "best_eval_perplexity": math.exp(best_loss), "best_step": keep_best.step}
        )
    return history


def block_training_args(work_dir: Path, cfg, seed: int, *, evaluate: bool):
    """Trainer settings for fixed-length token blocks from a training section (teacher, distill): its epochs,
    max_steps, batch size, learning rate, warm-up, weight decay and eval_steps; losses only at evaluation (a
    language model's logits are too large to gather)."""
    from compress.training import training_args

    return training_args(
        work_dir,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=seed,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        evaluate=evaluate,
        eval_steps=cfg.eval_steps,
        max_steps=cfg.max_steps,
        group_by_length=False,
        prediction_loss_only=True,
        logging_steps=50,
        **memory_args(cfg),
    )


def memory_args(cfg) -> dict:
    """`training_args`' memory settings from a section with the `LMTrainingMemory` keys."""
    return {
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "precision": cfg.precision,
    }


def final_train_loss(history: list[dict]) -> float | None:
    return next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None)


def describe_decoder(model, context: int) -> dict:
    """Size figures of a decoder: parameters, layers, widths, and MACs per generated token at `context` tokens."""
    from compress.structured import macs_per_token

    cfg = model.config
    family_of(model)
    return {
        "params": count_parameters(model),
        "embedding_params": model.get_input_embeddings().weight.numel(),
        "layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "heads": int(cfg.num_attention_heads),
        "kv_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        "vocab_size": int(cfg.vocab_size),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "macs_per_token": macs_per_token(cfg, context),
        "macs_context": context,
    }
