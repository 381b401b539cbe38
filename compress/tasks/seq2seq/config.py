"""The seq2seq task's recipe (`task: seq2seq`) and the typed configs of its stages.

Pure pydantic (no torch, no onnxruntime), so reading and checking a recipe stays fast; the shared pieces (the
strict base, variant names, targets) are in `compress.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress.config import NAME, PRUNE_APPLIES, PruneBase, RecipeBase, TargetsConfig, _Config, distinct_layers
from compress.errors import RecipeError
from compress.targets import PRESETS, TargetSpec


class PairDataConfig(_Config):
    """Source/target pairs: JSON Lines (two fields) or CSV / TSV (two named columns), optionally gzip-compressed.
    Paths are relative to the recipe file."""

    train: Path
    dev: Path
    test: Path | None = None
    source_field: str = Field(default="source", description="the JSONL key or CSV/TSV column of the input text")
    target_field: str = Field(default="target", description="the JSONL key or CSV/TSV column of the output text")
    source_prefix: str = Field(default="", description="text put before every input (T5's 'translate ...: ')")
    max_source_length: int = Field(default=128, ge=4, le=4096, description="input tokens kept")
    max_target_length: int = Field(default=128, ge=4, le=4096, description="output tokens: training and generation")
    holdout_fraction: float = Field(
        default=0.02, ge=0, le=0.5, description="share of train pairs held out for choices and gates"
    )
    max_train_examples: int | None = Field(default=None, ge=1, description="use a slice of train (trying out)")
    max_eval_examples: int | None = Field(default=None, ge=1, description="use a slice of dev / test / held-out")

    @model_validator(mode="after")
    def _two_fields(self):
        if self.source_field == self.target_field:
            raise ValueError(f"data.source_field and data.target_field are both {self.source_field!r}")
        return self


class Seq2SeqArchitectureConfig(_Config):
    """A teacher trained here from scratch: its family and shape."""

    family: Literal["t5", "bart"] = "t5"
    d_model: int = Field(default=256, ge=16, le=8192)
    encoder_layers: int = Field(default=4, ge=1, le=64)
    decoder_layers: int = Field(default=4, ge=1, le=64)
    heads: int = Field(default=4, ge=1, le=128)
    ffn: int = Field(default=1024, ge=8, le=65536, description="FFN width")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.heads:
            raise ValueError(f"teacher.architecture: heads = {self.heads} does not divide d_model = {self.d_model}")
        return self


class Seq2SeqTokenizerConfig(_Config):
    """The tokenizer trained with a teacher trained here: a SentencePiece-style unigram model over both sides."""

    vocab_size: int = Field(default=8000, ge=300, le=262144)


class Seq2SeqTeacherConfig(_Config):
    """A user's fine-tuned seq2seq directory (`path`, used as it is), or a teacher trained here on the pairs."""

    path: Path | None = Field(default=None, description="a Hugging Face seq2seq LM directory (T5, BART, Marian)")
    architecture: Seq2SeqArchitectureConfig = Seq2SeqArchitectureConfig()
    tokenizer: Seq2SeqTokenizerConfig = Seq2SeqTokenizerConfig()
    epochs: float = Field(default=10.0, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)


class Seq2SeqDistillConfig(_Config):
    """Recipe section `distill` (seq2seq): a student of teacher layers (shrink and fine-tune) trained on the
    teacher's token distributions and the reference outputs."""

    name: str = Field(default="student", pattern=NAME, description="variant name")
    encoder_layers: list[int] | None = Field(
        default=None, min_length=1, description="teacher encoder layers kept; default: all of them"
    )
    decoder_layers: list[int] | None = Field(
        default=None,
        min_length=1,
        description="teacher decoder layers kept; default: every other one from the first (DistilBART)",
    )
    temperature: float = Field(default=1.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the KL to the teacher; 1-alpha on targets")
    epochs: float = Field(default=2.0, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=5e-4, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    max_chrf_drop: float | None = Field(
        default=10.0, ge=0, le=100, description="quality gate: held-out chrF at most this below the teacher's"
    )

    _encoder_sorted = field_validator("encoder_layers")(lambda v: v if v is None else distinct_layers(v))
    _decoder_sorted = field_validator("decoder_layers")(lambda v: v if v is None else distinct_layers(v))


class Seq2SeqPruneConfig(PruneBase):
    """Recipe section `prune` (a list): unstructured or n:m masks over the attention (self and cross) and FFN
    projections of both stacks (magnitude, or Wanda: |w| times its input's norm on training pairs), in one shot or
    on the cubic schedule, held through a fine-tune that distils the teacher, then made permanent. The zeros make
    the compressed download smaller; ONNX Runtime's dense CPU kernels do not run them faster. Whole heads and FFN
    neurons (structured) are not built for encoder-decoders: students are cut by layers (`distill.*_layers`)."""

    APPLIES: ClassVar[dict] = {**PRUNE_APPLIES, "calibration_batches": ("importance", ("wanda",))}

    method: Literal["unstructured", "n:m"] = Field(
        default="unstructured", description="structured (heads, FFN) is not built for encoder-decoders"
    )
    importance: Literal["magnitude", "wanda"] = Field(default="magnitude", description="which weights go first")
    calibration_batches: int = Field(default=8, ge=1, le=10_000, description="wanda: training batches run")
    temperature: float = Field(default=1.0, gt=0, le=100)
    max_steps: int | None = Field(default=None, ge=1, description="stop the fine-tune after this many steps")
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, lt=1, description="0: decay would pull the kept weights to 0 too")
    max_chrf_drop: float | None = Field(
        default=10.0, ge=0, le=100, description="quality gate: held-out chrF at most this below its source's"
    )


class Seq2SeqExportConfig(_Config):
    """Recipe section `export`: encoder and decoder-with-past ONNX files (optimum's exporter), checked against
    PyTorch: logits at every cached step within `atol`, greedy outputs identical."""

    opset: int = Field(default=18, ge=14, le=21)
    atol: float = Field(default=1e-3, gt=0, description="max abs logit difference at any decoding step")
    inputs: int = Field(default=8, ge=1, le=1000, description="dev inputs whose greedy outputs must be identical")


class Seq2SeqQuantizeConfig(_Config):
    """Recipe section `quantize` (seq2seq): ONNX Runtime's dynamic int8, or weight-only int4/int8
    (`MatMulNBits`), applied to the encoder and the decoder."""

    name: str = Field(default="int8", pattern=NAME)
    source: str | None = Field(default=None, description="the teacher or a distill variant; default: first student")
    method: Literal["dynamic", "weight-only"] = "dynamic"
    per_channel: bool = Field(default=False, description="dynamic: one scale per output channel")
    bits: Literal[4, 8] = Field(default=4, description="weight-only: bits per weight")
    block_size: int = Field(default=32, ge=16, le=256, description="weight-only: weights per scale")
    max_chrf_drop: float | None = Field(
        default=2.0, ge=0, le=100, description="quality gate: held-out chrF at most this below its source's"
    )

    @model_validator(mode="after")
    def _method_keys(self):
        weight_only = ("bits", "block_size")
        for key in weight_only if self.method == "dynamic" else ("per_channel",):
            if key in self.model_fields_set:
                raise ValueError(f"quantize.{key} does not apply to method {self.method!r}")
        return self


class Seq2SeqBenchmarkConfig(TargetsConfig):
    """Recipe section `benchmark` (seq2seq): quality (chrF, BLEU) of each variant's artifact on dev and test, and
    its sentence latency and peak memory on each target."""

    targets: list[TargetSpec] = Field(default=[PRESETS["host"], PRESETS["iot"]], min_length=1)
    sentences: int = Field(default=32, ge=1, le=10_000, description="dev inputs timed per variant and target")
    runs: int = Field(default=3, ge=1, le=100, description="timed passes over the timed sentences")
    warmup: int = Field(default=1, ge=0, le=100, description="untimed passes first")
    memory: bool = Field(default=True, description="peak RSS of a fresh process per model and target")
    anchors: list[Literal["ctranslate2-int8"]] = Field(
        default=["ctranslate2-int8"], description="the teacher as other runtimes ship it (skipped if not installed)"
    )


class Seq2SeqRecipe(RecipeBase):
    """A whole `task: seq2seq` run."""

    DATA_FORMATS = (".jsonl", ".tsv", ".csv", ".jsonl.gz", ".tsv.gz", ".csv.gz")

    task: Literal["seq2seq"]
    data: PairDataConfig
    teacher: Seq2SeqTeacherConfig = Seq2SeqTeacherConfig()
    distill: list[Seq2SeqDistillConfig] = Field(default=[Seq2SeqDistillConfig()], min_length=0)
    prune: list[Seq2SeqPruneConfig] = Field(default=[], min_length=0)
    export: Seq2SeqExportConfig = Seq2SeqExportConfig()
    quantize: list[Seq2SeqQuantizeConfig] = Field(default=[Seq2SeqQuantizeConfig()], min_length=0)
    benchmark: Seq2SeqBenchmarkConfig = Seq2SeqBenchmarkConfig()

    @model_validator(mode="after")
    def _builds_a_variant(self) -> Seq2SeqRecipe:
        if not self.distill and not self.quantize:
            raise ValueError(
                "distill and quantize are both empty: the run would build no variant to benchmark; add a quantize "
                "entry with source: teacher at least"
            )
        return self

    def quantize_sources(self) -> list[str]:
        return ["teacher", *super().quantize_sources()]

    def default_quantize_source(self) -> str:
        return self.distill[0].name if self.distill else "teacher"

    def teacher_dirs(self) -> dict[str, Path]:
        return {"path": self.teacher.path} if self.teacher.path is not None else {}

    def resolve_paths(self, resolve) -> Seq2SeqRecipe:
        if self.teacher.path is None:
            return self
        tp = resolve(self.teacher.path)
        if not (tp / "config.json").is_file():
            raise RecipeError(f"teacher.path = {str(tp)!r}: not a Hugging Face model directory (no config.json)")
        return self.model_copy(update={"teacher": self.teacher.model_copy(update={"path": tp})})
