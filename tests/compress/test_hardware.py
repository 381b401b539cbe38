"""The process-level machine settings: large allocations reused inside `reused_heap`, given back inside
`returned_heap`."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from compress.hardware import reused_heap

PAGE = resource.getpagesize()


def _faults_of_repeated_tensors(numel: int, warm: int, repeats: int) -> int:
    for _ in range(warm):
        torch.ones(numel)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        torch.ones(numel)  # allocated, written and freed, as a training step's logits are
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def test_large_tensors_reuse_freed_memory_inside_reused_heap_and_not_after():
    with reused_heap() as active:
        if not active:
            pytest.skip("not glibc: the allocator is left as it is")
        # 64 MB each: over glibc's largest mmap threshold. The first few fault in any case (each aligned request
        # is a little larger than the hole its predecessor left), then they settle.
        inside = _faults_of_repeated_tensors(16 * 2**20, warm=8, repeats=4)
        held = _rss()
    returned = held - _rss()
    assert inside < 4 * 64 * 2**20 // PAGE // 10
    assert returned > 64 * 2**20  # what the block kept for reuse is given back at its end
    # glibc's default is back: a block larger than any hole the heap kept is mapped afresh and faulted page by
    # page every time (smaller ones may still be served from the heap's free chunks, as glibc does by default).
    after = _faults_of_repeated_tensors(256 * 2**20, warm=1, repeats=2)
    assert after > 2 * 2**30 // PAGE // 2


# In a fresh process: glibc's dynamic mmap threshold starts at its default there (this one's may be fixed already).
HEAP_PROBE = """
import contextlib
import sys
import numpy as np
from compress.hardware import returned_heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * %d

def run():
    a = np.ones(2 * 2**20)  # 16 MB: mapped; freeing it raises glibc's dynamic threshold to its size
    del a
    base = rss()
    blocks = [np.ones(2 * 2**20) for _ in range(8)]  # 128 MB
    pins = [np.ones(2000) for _ in range(20)]  # 16 KB blocks after them on the heap
    del blocks
    return rss() - base

with returned_heap() if sys.argv[1] == "returned" else contextlib.nullcontext(False) as active:
    print(run(), bool(active))
"""


def test_returned_heap_gives_freed_large_blocks_back_where_glibcs_default_keeps_them(tmp_path):
    def kept(mode: str) -> tuple[int, bool]:
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE % PAGE, mode], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
        return int(out[0]), out[1] == "True"

    default, _ = kept("default")
    returned, active = kept("returned")
    if not active:
        pytest.skip("not glibc: the allocator is left as it is")
    assert default > 100 * 2**20  # 16 MB blocks served from a heap that small blocks then pin: 128 MB kept
    assert returned < 8 * 2**20  # each mapped afresh and unmapped on free


def test_a_fresh_process_returns_its_result_and_raises_its_error():
    import os

    from compress.hardware import children_peak_rss_bytes, in_fresh_process

    assert in_fresh_process(os.getpid) != os.getpid()
    assert children_peak_rss_bytes() > 0
    with pytest.raises(ValueError, match="invalid literal"):
        in_fresh_process(int, "not a number")
