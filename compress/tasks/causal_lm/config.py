"""The causal-LM task's recipe (`task: causal-lm`) and the typed configs of its stages.

Pure pydantic; the shared pieces (the strict base, variant names, targets, the prune keys every task has) are in
`compress.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress.config import NAME, PRUNE_APPLIES, PruneBase, RecipeBase, TargetsConfig, _Config, distinct_layers
from compress.errors import RecipeError
from compress.targets import PRESETS, TargetSpec


class TextDataConfig(_Config):
    """A plain-text corpus. Paths are relative to the recipe file.

    `.txt` files hold documents separated by blank lines (`documents: blank-line`) or one per line
    (`documents: line`); `.jsonl` files one JSON object per line with the text under `text_field`. Documents are
    tokenized, joined with the end-of-text token and packed into blocks of `block_size` tokens.
    """

    train: Path
    dev: Path
    test: Path | None = None
    text_field: str = Field(default="text", description="JSONL: the key holding each document's text")
    documents: Literal["blank-line", "line"] = Field(
        default="blank-line", description=".txt: documents separated by blank lines, or one per line"
    )
    block_size: int = Field(default=256, ge=8, le=8192, description="tokens per training / evaluation block")
    holdout_fraction: float = Field(
        default=0.02, ge=0, le=0.5, description="share of train documents held out for model selection"
    )
    max_train_tokens: int | None = Field(default=None, ge=1, description="use a slice of train (trying out)")
    max_eval_tokens: int | None = Field(default=None, ge=1, description="use a slice of dev / test / held-out")


class ArchitectureConfig(_Config):
    """The decoder the teacher stage pretrains when the recipe brings no model (`teacher.path` / `base`)."""

    family: Literal["llama", "qwen2", "gpt2"] = "llama"
    hidden_size: int = Field(default=256, ge=16, le=8192)
    layers: int = Field(default=6, ge=1, le=128)
    heads: int = Field(default=8, ge=1, le=256)
    kv_heads: int | None = Field(default=4, ge=1, le=256, description="grouped-query attention (not gpt2)")
    intermediate_size: int | None = Field(default=768, ge=8, description="FFN width; default 4 x hidden (gpt2)")
    max_positions: int = Field(default=1024, ge=16, le=131072, description="the context window")
    tie_embeddings: bool = Field(default=True, description="the LM head shares the input embedding")

    @model_validator(mode="after")
    def _shapes(self) -> ArchitectureConfig:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"teacher.architecture.hidden_size = {self.hidden_size} is not a multiple of heads = {self.heads}"
            )
        if self.kv_heads is not None and self.family != "gpt2" and self.heads % self.kv_heads:
            raise ValueError(
                f"teacher.architecture.heads = {self.heads} is not a multiple of kv_heads = {self.kv_heads}"
            )
        if self.family == "gpt2" and self.kv_heads not in (None, self.heads):
            raise ValueError("teacher.architecture.kv_heads: gpt2 has no grouped-query attention (leave it out)")
        return self


class TokenizerConfig(_Config):
    """The byte-level BPE tokenizer trained on the train split for a pretrained-here teacher."""

    vocab_size: int = Field(default=8192, ge=300, le=262144)
    min_frequency: int = Field(default=2, ge=1)


class LMTrainingMemory(_Config):
    """The memory keys of a training section (teacher, distill, prune): what lets a 0.5B-1B decoder train within
    one machine's memory, each at the price stated."""

    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="one optimizer step per this many batches of batch_size (the step's batch is their product); "
        "memory of one batch",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="keep only each layer's input for the backward pass and run the layer again there: "
        "activation memory of one layer instead of all, about a third more compute",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto: bf16 (or fp16) mixed precision on a GPU, float32 on CPU; bf16: bf16 autocast on CPU "
        "too (half the activation memory; fast only where the CPU has bf16 instructions, AVX512-BF16 or AMX)",
    )


class LMTeacherConfig(LMTrainingMemory):
    """Take a user's causal LM (`path`), continue training one on the corpus (`base`), or pretrain one here."""

    path: Path | None = Field(default=None, description="a Hugging Face causal-LM directory: used as it is")
    base: Path | None = Field(default=None, description="a Hugging Face causal-LM directory to train further")
    architecture: ArchitectureConfig = ArchitectureConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    random_weights: bool = Field(
        default=False,
        description="the model's weights are random (a published shape measured for size, speed and memory, "
        "`compress.tasks.causal_lm.shapes`): the collapse test against the unigram model is off for it and "
        "every variant made from it; ratios to a parent still gate",
    )
    epochs: float = Field(default=1.0, gt=0, le=100)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(default=16, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.1, ge=0, lt=1)
    eval_steps: int | None = Field(default=None, ge=1, description="held-out evaluation every N steps")
    min_epoch_gain: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="train until an epoch lowers held-out perplexity by less than this fraction (0.02 = 2%), "
        "`epochs` at most; the learning-rate schedule spans `epochs`",
    )

    @model_validator(mode="after")
    def _one_source(self) -> LMTeacherConfig:
        if self.path is not None and self.base is not None:
            raise ValueError("teacher.path (use as it is) and teacher.base (train further): choose one")
        return self


class LMDistillConfig(LMTrainingMemory):
    """A student from a subset of the teacher's layers (optionally a narrower FFN or hidden size), trained on the
    teacher's next-token distributions (forward KL at a temperature) and the corpus's next tokens."""

    name: str = Field(default="student", pattern=NAME)
    layers: list[int] = Field(default=[0, 2, 4], min_length=1, description="teacher layers the student keeps")
    num_layers: int | None = Field(
        default=None,
        ge=1,
        description="instead of `layers`: keep this many, chosen by measured importance (the layer whose removal "
        "raises held-out perplexity least goes first, one at a time)",
    )
    layer_candidates: int | None = Field(
        default=8,
        ge=1,
        description="with num_layers: each round measures only this many layers by removal, those that change the "
        "hidden state least (block influence, one forward pass): at most (layers - num_layers) x this many models "
        "evaluated; null: every remaining layer each round",
    )
    intermediate_size: int | None = Field(default=None, ge=1, description="FFN width kept per layer")
    hidden_size: int | None = Field(default=None, ge=8, description="a smaller hidden size (new config)")
    hidden_init: Literal["truncate", "random"] = "truncate"
    temperature: float = Field(default=1.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the divergence; 1-alpha on the tokens")
    loss: Literal["forward", "reverse", "skew", "skew-reverse"] = Field(
        default="forward", description="the divergence to the teacher: KL(p||q), KL(q||p), or DistiLLM's skewed ones"
    )
    skew: float = Field(default=0.1, ge=0, lt=1, description="skew / skew-reverse: the share of the other mixed in")
    hidden_weight: float = Field(default=0.0, ge=0, le=1000, description="hidden-state MSE")
    hidden_layer_map: list[tuple[int, int]] | None = Field(
        default=None, description="(student, teacher) hidden-state indices, 0 = embeddings; default from layers"
    )
    eval_steps: int | None = Field(default=None, ge=1, description="held-out evaluation every N steps")
    control: bool = Field(
        default=True,
        description="also train the equal-training control: the student's shape from random weights, on the corpus "
        "alone, for as many blocks as the student saw; its perplexity is reported beside the student's",
    )
    generated_sequences: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="sequence-level KD: this many blocks the teacher writes from train prompts, added to the "
        "training data (and labelled by the teacher online, like the corpus)",
    )
    generation_prompt_tokens: int = Field(default=32, ge=1, description="generated sequences: corpus prompt length")
    generation_temperature: float = Field(default=1.0, ge=0, le=10, description="generated sequences: 0 = greedy")
    generation_top_p: float = Field(default=1.0, gt=0, le=1, description="generated sequences: nucleus sampling")
    max_perplexity_ratio: float | None = Field(
        default=1.5, ge=1, le=100, description="quality gate: held-out perplexity at most this times the teacher's"
    )
    epochs: float = Field(default=1.0, gt=0, le=100)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1, le=4096)
    learning_rate: float = Field(default=5e-4, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)

    _distinct_sorted = field_validator("layers")(distinct_layers)

    @model_validator(mode="after")
    def _one_layer_choice(self) -> LMDistillConfig:
        if self.num_layers is not None and "layers" in self.model_fields_set:
            raise ValueError(
                "distill.layers (which layers) and distill.num_layers (how many, chosen by measure): choose one"
            )
        return self

    @model_validator(mode="after")
    def _skew_applies(self) -> LMDistillConfig:
        if self.skew != 0.1 and not self.loss.startswith("skew"):
            raise ValueError(f"distill.skew applies only to loss 'skew' or 'skew-reverse', not {self.loss!r}")
        return self


class LMExportConfig(_Config):
    """ONNX export with the KV cache (optimum's text-generation-with-past), checked against PyTorch: logits at
    every step of a cached decode, and greedy tokens."""

    backend: Literal["optimum", "genai"] = Field(
        default="optimum",
        description="optimum's text-generation-with-past export, or ONNX Runtime GenAI's model builder (fused "
        "GroupQueryAttention and norms; Llama family; `make anchors` installs it)",
    )
    opset: int = Field(default=18, ge=14, le=21)
    atol: float = Field(default=1e-3, gt=0, description="max abs logit difference at any decode step")
    prompts: int = Field(default=8, ge=1, le=1000, description="dev prompts checked")
    prompt_tokens: int = Field(default=32, ge=1, le=4096)
    new_tokens: int = Field(default=16, ge=1, le=4096, description="greedy tokens that must be identical")


class LMQuantizeConfig(_Config):
    """Post-training quantization of an exported decoder: dynamic int8 (`MatMulInteger`), or weight-only 4 or
    8 bits in blocks (`MatMulNBits`)."""

    name: str = Field(default="int4", pattern=NAME)
    source: str | None = Field(default=None, description="the distill or prune variant; default: the first student")
    method: Literal["dynamic", "weight-only"] = "weight-only"
    # dynamic int8
    reduce_range: Literal["auto"] | bool = Field(default="auto", description="dynamic: 7-bit weights")
    per_channel: bool = Field(default=False, description="dynamic: one scale per output channel")
    # weight-only
    bits: Literal[4, 8] = Field(default=4, description="weight-only: bits per weight")
    block_size: int = Field(default=32, ge=16, le=256, description="weight-only: weights per scale")
    symmetric: bool = Field(default=False, description="weight-only: no zero points")
    algorithm: Literal["rtn", "hqq", "gptq"] = Field(default="rtn", description="weight-only: how weights round")
    accuracy_level: Literal["measure", 0, 1, 2, 3, 4] = Field(
        default="measure",
        description="weight-only: MatMulNBits compute type (0: dequantize to fp32, 4: int8); 'measure': both, "
        "keep the faster unless it costs perplexity",
    )
    embeddings: Literal["fp32", "int8", "int4"] = Field(
        default="fp32",
        description="weight-only: the token embedding too; int8 (a uint8 table, dequantized per token) or int4 "
        "(GatherBlockQuantized; ONNX Runtime 1.32's .ort format cannot hold 4-bit tensors: ships as .onnx only)",
    )
    calibration_blocks: int = Field(default=8, ge=1, le=10_000, description="gptq: train blocks")
    precision: Literal["uniform", "mixed"] = Field(
        default="uniform",
        description="weight-only: every projection at `bits`, or per layer int4 / int8 / float chosen by measured "
        "perplexity sensitivity to meet mixed_max_perplexity_ratio",
    )
    mixed_max_perplexity_ratio: float = Field(
        default=1.01, ge=1, le=100, description="mixed: held-out perplexity at most this times the float32 model's"
    )
    mixed_max_size_mb: float | None = Field(
        default=None,
        gt=0,
        description="mixed: a size budget instead: the model file at most this many MB (10^6 bytes); the blocks "
        "of highest measured perplexity cost per weight are raised to int8, then float, while the file fits",
    )
    max_perplexity_ratio: float | None = Field(
        default=1.25,
        ge=1,
        le=100,
        description="quality gate: held-out perplexity at most this times the float32 source's (dynamic: also "
        "the budget of the search that keeps the most sensitive nodes in float)",
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("block_size must be a power of two (16 ... 256)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LMQuantizeConfig:
        weight_only = (
            "bits",
            "block_size",
            "symmetric",
            "algorithm",
            "accuracy_level",
            "embeddings",
            "precision",
            "mixed_max_perplexity_ratio",
            "mixed_max_size_mb",
        )
        dynamic = ("reduce_range", "per_channel")
        keys = dynamic if self.method == "weight-only" else weight_only
        for key in keys:
            if getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(f"quantize.{key} does not apply to method {self.method!r}")
        for key in ("mixed_max_perplexity_ratio", "mixed_max_size_mb"):
            if self.precision == "uniform" and getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(f"quantize.{key} applies to precision 'mixed'")
        if self.mixed_max_size_mb is not None and self.mixed_max_perplexity_ratio != 1.01:
            raise ValueError(
                "quantize: give one budget for precision 'mixed': mixed_max_perplexity_ratio or mixed_max_size_mb"
            )
        if self.precision == "mixed" and (self.bits != 4 or self.algorithm != "rtn"):
            raise ValueError("quantize.precision 'mixed' starts from 4-bit RTN (bits 4, algorithm rtn)")
        if self.algorithm == "hqq" and self.bits != 4:
            raise ValueError("quantize.algorithm 'hqq' quantizes to 4 bits only")
        if self.algorithm == "gptq" and (self.bits != 4 or self.symmetric):
            raise ValueError("quantize.algorithm 'gptq' here is ONNX Runtime's 4-bit asymmetric GPTQ")
        return self


class LMBenchmarkConfig(TargetsConfig):
    """What the device feels: perplexity, time to first token, decode speed, memory and size per variant."""

    DEFAULT_PRIMARY: ClassVar[str] = "iot"

    targets: list[TargetSpec] = Field(default=[PRESETS["host"], PRESETS["iot"]], min_length=1)
    prompt_lengths: list[int] = Field(default=[32, 128, 512], min_length=1, description="TTFT prompt lengths")
    new_tokens: int = Field(default=128, ge=2, le=4096, description="tokens generated per timed request")
    prompts: int = Field(default=2, ge=1, le=100, description="distinct prompts per length")
    runs: int = Field(default=2, ge=1, le=100, description="timed generations per prompt and variant")
    warmup: int = Field(
        default=1, ge=0, le=100, description="untimed full generations per variant first, after the longest prompt"
    )
    memory: bool = Field(default=True, description="peak RSS of a fresh process per model and target")
    baselines: list[Literal["optimum", "optimum-int8"]] = Field(
        default=["optimum", "optimum-int8"],
        description="reference rows beside the PyTorch teacher (always measured): the teacher through optimum's "
        "export and ORTModelForCausalLM, and quantized by optimum's own dynamic int8 recipe (its quantizer holds "
        "about 4x the float model: 22 GB for 1.2B parameters, measured; leave it out for a large model)",
    )
    worker_memory_gb: float | None = Field(
        default=8.0,
        gt=0,
        description="the speed workers hold variants whose weights in memory add up to at most this (a variant "
        "larger alone gets a worker to itself): the benchmark's peak is a group's, not every variant's at once; "
        "variants are interleaved within a worker; null: one worker per target holds them all",
    )
    memory_context: int = Field(default=128, ge=1, le=65536, description="prompt tokens of the RSS probe")
    memory_contexts: list[int] = Field(
        default=[],
        description="further prompt lengths of the RSS probe, on the primary target, for the run's own ONNX "
        "variants: the report plots peak RSS and decode ms/token against context",
    )
    ort_format: bool = Field(default=True, description="convert ONNX variants to .ort and check them")
    greedy_prompts: int = Field(default=20, ge=1, le=1000, description="dev prompts for greedy agreement")
    greedy_tokens: int = Field(default=32, ge=1, le=4096)
    eval_threads: int | None = Field(default=None, ge=1, description="perplexity runs; default every core")
    anchors: list[Literal["genai-int4", "llama.cpp-q8_0", "llama.cpp-q4_k_m"]] = Field(
        default=[],
        description="the teacher through the tools a user would pick instead, each run by its own runtime: ONNX "
        "Runtime GenAI's model builder (int4) and llama.cpp (GGUF Q8_0, Q4_K_M); `make anchors` installs them",
    )

    in_genai: list[str] = Field(
        default=[],
        description="our variants (distill, prune or quantize names) also run through ONNX Runtime GenAI's own "
        "generator, the same model file (export.backend genai; `make anchors`): the bundle's decode loop against "
        "the runtime a user would pick, like for like; each row is named NAME-genai",
    )
    in_llama_cpp: list[str] = Field(
        default=[],
        description="our variants also run by llama.cpp (`make anchors`): llama.cpp's converter on the float model "
        "the variant was made from, quantized by llama.cpp to the type nearest the variant's (dynamic int8: Q8_0; "
        "int4: Q4_1 or Q4_0; mixed: Q4_K_M; float: F32), as the bundle's GGUF form; each row is named NAME-llama.cpp",
    )

    @field_validator("baselines")
    @classmethod
    def _int8_from_optimums_export(cls, v: list[str]) -> list[str]:
        if "optimum-int8" in v and "optimum" not in v:
            raise ValueError("optimum-int8 quantizes optimum's export: list optimum too")
        return v

    @field_validator("prompt_lengths")
    @classmethod
    def _lengths(cls, v: list[int]) -> list[int]:
        if any(not 1 <= x <= 65536 for x in v) or len(set(v)) != len(v):
            raise ValueError("prompt lengths must be distinct and in [1, 65536]")
        return v


class LMPruneConfig(PruneBase, LMTrainingMemory):
    """Pruning of a decoder: unstructured or n:m masks (magnitude or Wanda), or a structured cut (whole KV
    groups, FFN neurons, hidden channels; Minitron activation importance) in one shot or in rounds, each
    distilled from the source."""

    APPLIES: ClassVar[dict] = {
        **PRUNE_APPLIES,
        "hidden": ("method", ("structured",)),
        "rounds": ("schedule", ("cubic",)),
        "calibration_batches": ("importance", ("activation", "wanda")),
        "control": ("method", ("structured",)),
    }
    STRUCTURES: ClassVar[tuple[str, ...]] = ("heads", "ffn", "hidden")

    importance: Literal["magnitude", "activation", "wanda"] = Field(
        default="magnitude",
        description="weight magnitude; activation (structured): mean squared activations on calibration text, as "
        "Minitron; wanda (unstructured or n:m): |w| times its input's norm on calibration text, ranked within each "
        "output row",
    )
    hidden: float = Field(default=0.0, ge=0, lt=1, description="structured: share of hidden channels removed")
    rounds: int | None = Field(
        default=None,
        ge=2,
        le=100,
        description="cubic, structured: cuts (default 3), from start to end of the fine-tune, the share removed "
        "growing on the cubic schedule; each cut model is distilled until the next",
    )
    calibration_batches: int = Field(
        default=8, ge=1, le=10_000, description="activation, wanda: training batches run to measure activations"
    )
    control: bool = Field(
        default=True,
        description="structured: also train the equal-training control, the cut's shape from random weights on the "
        "corpus alone for as many blocks as the cut and its source student saw",
    )
    max_perplexity_ratio: float | None = Field(
        default=1.25, ge=1, le=100, description="quality gate: held-out perplexity over the source's"
    )


class CausalLMRecipe(RecipeBase):
    """A causal language-model run (`task: causal-lm`): a decoder that continues a text."""

    DATA_FORMATS: ClassVar[tuple[str, ...]] = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")

    task: Literal["causal-lm"]
    data: TextDataConfig
    teacher: LMTeacherConfig = LMTeacherConfig()
    distill: list[LMDistillConfig] = Field(
        default=[LMDistillConfig()],
        min_length=0,
        description="students; [] for post-training compression of the teacher alone (configs/lm-ptq.yaml)",
    )
    prune: list[LMPruneConfig] = Field(default=[], min_length=0)
    export: LMExportConfig = LMExportConfig()
    quantize: list[LMQuantizeConfig] = Field(default=[LMQuantizeConfig()], min_length=0)
    benchmark: LMBenchmarkConfig = LMBenchmarkConfig()

    @model_validator(mode="after")
    def _teacher_training(self) -> CausalLMRecipe:
        t = self.teacher
        if t.min_epoch_gain is not None and (t.path is not None or self.data.holdout_fraction == 0):
            why = "teacher.path is used as it is" if t.path is not None else "data.holdout_fraction is 0"
            raise ValueError(f"teacher.min_epoch_gain: measured on held-out train pages, but {why}")
        return self

    @model_validator(mode="after")
    def _same_model_rows(self) -> CausalLMRecipe:
        names = [*(d.name for d in self.distill), *(p.name for p in self.prune), *(q.name for q in self.quantize)]
        for name in self.benchmark.in_llama_cpp:
            if name not in names:
                raise ValueError(f"benchmark.in_llama_cpp: {name!r} is not a variant of this recipe (one of {names})")
        for name in self.benchmark.in_genai:
            if name not in names:
                raise ValueError(f"benchmark.in_genai: {name!r} is not a variant of this recipe (one of {names})")
            if self.export.backend != "genai":
                raise ValueError(
                    f"benchmark.in_genai: {name!r} can run in GenAI's generator only as GenAI's builder exports it "
                    f"(export.backend: genai, not {self.export.backend})"
                )
        return self

    @model_validator(mode="after")
    def _decoder_pruning(self) -> CausalLMRecipe:
        for i, p in enumerate(self.prune):
            if p.method != "structured" and p.rounds is not None:
                raise ValueError(
                    f"prune.{i}.rounds applies to method 'structured'; {p.method} masks tighten every prune.every "
                    "optimizer steps"
                )
            if p.method == "structured" and p.every != PruneBase.model_fields["every"].default:
                raise ValueError(
                    f"prune.{i}.every: a structured cut of a decoder changes its matrices' shapes, so it cuts in "
                    "prune.rounds rounds (default 3), each distilled until the next, not every N optimizer steps"
                )
            if p.importance == "activation" and p.method != "structured":
                raise ValueError(f"prune.{i}.importance = 'activation' applies to method 'structured'")
            if p.importance == "wanda" and p.method == "structured":
                raise ValueError(f"prune.{i}.importance = 'wanda' scores single weights: method unstructured or n:m")
            if p.importance == "wanda" and "scope" in p.model_fields_set and p.method != "n:m":
                raise ValueError(f"prune.{i}.scope: wanda ranks the weights of each output row (leave scope out)")
        return self

    def quantize_sources(self) -> list[str]:
        # The teacher too: its int4 is what a user would ship without a student (the anchor to beat).
        return ["teacher", *super().quantize_sources()]

    def default_quantize_source(self) -> str:
        # The student, not a pruned copy: unstructured zeros make no decoder faster, int4 of the student does
        # (a structured prune is quantized when a quantize variant names it as its source). Without students
        # (post-training compression of the user's model), the teacher.
        return self.distill[0].name if self.distill else "teacher"

    @model_validator(mode="after")
    def _prune_needs_a_student(self) -> CausalLMRecipe:
        if self.prune and not self.distill:
            raise ValueError(
                "prune: a decoder is pruned from a distill variant (its fine-tune is distilled from the teacher), "
                "and distill is empty; add a distill section or remove prune"
            )
        return self

    def teacher_dirs(self) -> dict[str, Path]:
        return {k: getattr(self.teacher, k) for k in ("path", "base") if getattr(self.teacher, k) is not None}

    def resolve_paths(self, resolve) -> CausalLMRecipe:
        teacher = self.teacher
        for key in ("path", "base"):
            value = getattr(teacher, key)
            if value is not None:
                tp = resolve(value)
                if not (tp / "config.json").is_file():
                    raise RecipeError(
                        f"teacher.{key} = {str(tp)!r}: not a Hugging Face model directory (no config.json)"
                    )
                teacher = teacher.model_copy(update={key: tp})
        return self.model_copy(update={"teacher": teacher})
