"""What the benchmark measures and under which constraints: named device targets and the timing protocol.

A target emulates a class of device on this CPU: a thread count, intra-op spinning off (a phone's scheduler
and battery do not tolerate busy-waiting worker threads), optionally pinned to that many cores
(`os.sched_setaffinity`) and an address-space cap (`RLIMIT_AS`). It is an emulation of mobile-class
constraints on this machine's cores, not a measurement on a phone: the CPU model and ISA go with every figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Variants every other variant is compared with, when present in the run (ratios, paired speed-ups).
BASELINES = ("teacher-torch", "teacher-onnx", "teacher-int8-optimum")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Config):
    """A device class to emulate. `threads: all` means every core this process may run on."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    threads: int | Literal["all"] = Field(default="all", description="intra-op threads")
    pin_cpus: bool = Field(default=False, description="pin the process to its first `threads` allowed cores")
    memory_limit_mb: int | None = Field(
        default=None, ge=64, description="RLIMIT_AS cap (address space, stricter than RSS) for the memory probe"
    )

    @field_validator("threads")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError("threads must be in [1, 256] or 'all'")
        return v


# The named targets. Threads follow common hardware: a phone app gets about 2 big cores to itself, a small
# Linux board (Pi Zero 2 class, an IoT gateway) 1 core and 512 MB. RLIMIT_AS counts reserved address space,
# not touched memory: measured here, Python + ONNX Runtime running MiniLM fp32 peaks at 405 MB of address space
# (200 MB RSS), PyTorch eager at 1.2 GB (476 MB RSS), so 512 MB admits ONNX Runtime models and not PyTorch.
PRESETS: dict[str, TargetSpec] = {
    "host": TargetSpec(name="host", threads="all"),
    "mobile": TargetSpec(name="mobile", threads=2, pin_cpus=True),
    "iot": TargetSpec(name="iot", threads=1, pin_cpus=True, memory_limit_mb=512),
}


def _target_item(v: Any) -> Any:
    """`mobile` -> the preset; `{name: mobile, memory_limit_mb: 768}` -> the preset with that change."""
    if isinstance(v, str):
        if v not in PRESETS:
            raise ValueError(f"unknown target {v!r}; named targets: {', '.join(PRESETS)} (or a mapping with name)")
        return PRESETS[v]
    if isinstance(v, dict) and v.get("name") in PRESETS:
        return {**PRESETS[v["name"]].model_dump(), **v}
    return v


class BenchmarkSettings(_Config):
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
        return [_target_item(x) for x in v] if isinstance(v, list) else v

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
    def _names(self) -> BenchmarkSettings:
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


@dataclass(frozen=True)
class Target:
    """A target resolved on this machine: concrete thread count and core set."""

    name: str
    threads: int
    cpus: tuple[int, ...] | None  # None: not pinned
    memory_limit_bytes: int | None
    spinning: bool = False

    def describe(self) -> dict:
        return {
            "threads": self.threads,
            "cpus": list(self.cpus) if self.cpus is not None else None,
            "memory_limit_bytes": self.memory_limit_bytes,
            "intra_op_spinning": self.spinning,
            "oversubscribed": self.cpus is not None and self.threads > len(self.cpus),
        }


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def resolve_target(spec: TargetSpec) -> Target:
    """Concrete threads and cores for `spec` on this machine (`all` = every core this process may use)."""
    cpus = allowed_cpus()
    threads = len(cpus) if spec.threads == "all" else int(spec.threads)
    pinned = tuple(cpus[: max(1, min(threads, len(cpus)))]) if spec.pin_cpus else None
    limit = spec.memory_limit_mb * 2**20 if spec.memory_limit_mb is not None else None
    return Target(spec.name, threads, pinned, limit)
