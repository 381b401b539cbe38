"""What CPU this is: the facts that int8 speed and correctness depend on."""

from __future__ import annotations

import os
import platform
from functools import cache

_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "sve")


@cache
def cpu_info() -> dict:
    """CPU model, core count and the instruction-set extensions that matter for int8 kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware") and model in (
                    "",
                    platform.machine(),
                    platform.processor(),
                ):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "isa": {f: f in flags for f in _ISA_FLAGS},
    }


def has_vnni() -> bool:
    isa = cpu_info()["isa"]
    return bool(isa["avx512_vnni"] or isa["avx_vnni"] or isa["amx_int8"])
