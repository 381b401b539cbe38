"""Device targets: the classes of device the benchmark emulates and a bundle is built for.

A target emulates a class of device on this CPU: a thread count, intra-op spinning off (a phone's scheduler
and battery do not tolerate busy-waiting worker threads; a target may turn it on, as a desktop or server runs,
to measure each runtime both ways), optionally pinned to that many cores
(`os.sched_setaffinity`) and an address-space cap (`RLIMIT_AS`). It is an emulation of mobile-class
constraints on this machine's cores, not a measurement on a phone: the CPU model and ISA go with every figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Variants every other variant is compared with, when present in the run (ratios, paired speed-ups).
BASELINES = ("teacher-torch", "teacher-onnx", "teacher-int8-optimum")
# The runtimes of the anchors (a task's `anchors`): the teacher as other tools ship and run it. Decoders: GenAI,
# llama.cpp; encoder-decoders: CTranslate2.
ANCHOR_RUNTIMES = ("genai", "llama.cpp", "ctranslate2")


def is_reference(variant: dict) -> bool:
    """A report's variant that this project did not build: a baseline or an anchor."""
    return variant["name"] in BASELINES or variant.get("stage") == "anchor"


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
    spinning: bool = Field(
        default=False,
        description="worker threads busy-wait between operations instead of sleeping, as each runtime does out of "
        "the box: ONNX Runtime's allow_spinning, OpenMP's own default policy (a short spin before sleeping) for "
        "PyTorch and llama.cpp; off (the default; OMP_WAIT_POLICY=PASSIVE) as a phone's scheduler and battery want",
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


def target_item(v: Any) -> Any:
    """`mobile` -> the preset; `{name: mobile, memory_limit_mb: 768}` -> the preset with that change."""
    if isinstance(v, str):
        if v not in PRESETS:
            raise ValueError(f"unknown target {v!r}; named targets: {', '.join(PRESETS)} (or a mapping with name)")
        return PRESETS[v]
    if isinstance(v, dict) and v.get("name") in PRESETS:
        return {**PRESETS[v["name"]].model_dump(), **v}
    return v


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
    return Target(spec.name, threads, pinned, limit, spec.spinning)
