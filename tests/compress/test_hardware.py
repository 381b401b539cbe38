"""The process-level machine settings: large allocations reused inside `reused_heap`."""

from __future__ import annotations

import resource

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
