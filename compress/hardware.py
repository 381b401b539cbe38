"""What CPU this is: the facts that int8 speed and correctness depend on."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults, put back after the block
_GLIBC_MMAP_THRESHOLD = 128 * 1024  # its default, before it raises it dynamically


@cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def returned_heap() -> Iterator[bool]:
    """Map every block over 128 KB afresh and unmap it on free while the block runs (and after: glibc has no call
    that gives back its dynamic threshold); yields whether it could (glibc only).

    By default glibc raises its mmap threshold to the size of each mapped block that is freed (up to 32 MB), after
    which such blocks come from the heap, and a heap fragmented by blocks of many sizes is not given back. A
    process that evaluates one model after another (the benchmark's perplexity and KL, on the language-model
    default: ONNX Runtime sessions, 8 MB logit slices, their float64 copies) then grew to 16.5 GB peak where the
    same step with the threshold fixed at glibc's default held 2.1 GB, in about the same time (282 s and 307 s,
    measured 2026-12-05). Fixing the threshold (any such mallopt turns the dynamic one off) is that."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD))
    try:
        yield ok
    finally:
        libc.malloc_trim(0)


@contextmanager
def reused_heap() -> Iterator[bool]:
    """Serve large blocks from the heap and keep freed memory for reuse while the block runs; yields whether it
    could (glibc only: elsewhere nothing changes).

    glibc maps every allocation over its mmap threshold (32 MB at most) afresh and unmaps it on free, so a training
    step whose logits are batch x block x vocabulary (16 x 256 x 8192 float32: 134 MB, several of them per step)
    pays a page fault for each 4 KB page of each, every step. On the language-model default's distillation step (2
    threads) that was 4.5M faults in 8 steps and 3.6 s a step; with mmap off and trimming deferred, 0.7M faults and
    1.7 s. Allocator tuning has no library call in PyTorch (its THP_MEM_ALLOC_ENABLE cut faults but made steps
    slower here), hence mallopt. The cost: freed blocks stay resident for reuse, so the peak can rise by a few of
    the largest blocks (an aligned request is a little larger than the hole its predecessor left, so repeated
    64 MB tensors settle after about four holes, then fault no more). What the block freed is returned at its end."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    try:
        yield ok
    finally:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def in_fresh_process(fn, *args):
    """`fn(*args)` run in a child process started afresh (spawn), so that whatever it leaves allocated goes back to
    the system when it ends; its return value, or its exception raised here. `fn` must be importable by name."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def children_peak_rss_bytes() -> int:
    """The largest peak resident memory of any child process this process has waited for so far (workers, probes,
    fresh processes): `getrusage(RUSAGE_CHILDREN)`, which is never reset."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KB on Linux
