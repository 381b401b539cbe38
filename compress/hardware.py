"""What CPU this is: the facts that int8 speed and correctness depend on."""

from __future__ import annotations

import os
import platform
import sys
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


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux: writing 5 to /proc/self/clear_refs resets VmHWM), so
    that `peak_rss_bytes` then gives the peak of what runs next; False where the system has no such reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size since it started or since `reset_peak_rss` (Linux's VmHWM; else
    getrusage's lifetime peak), in bytes; None where neither is available. VmHWM is this address space's own
    high-water mark; Linux carries ru_maxrss across fork+exec, so a child of a large parent would report the
    parent's peak through getrusage."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return None
