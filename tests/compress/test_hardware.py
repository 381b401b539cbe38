"""The process-level machine settings: large allocations reused inside `reused_heap`."""

from __future__ import annotations

import resource

import pytest
import torch

from compress.hardware import reused_heap


def _faults_of_repeated_large_tensors(repeats: int = 4) -> int:
    for _ in range(8):  # 64 MB each: over glibc's largest mmap threshold. Inside the block the first few fault
        torch.ones(16 * 2**20)  # in any case (each aligned request is a little larger than the hole it left)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        torch.ones(16 * 2**20)  # allocated, written and freed, as a training step's logits are
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_large_tensors_reuse_freed_memory_inside_reused_heap_and_not_after():
    with reused_heap() as active:
        if not active:
            pytest.skip("not glibc: the allocator is left as it is")
        inside = _faults_of_repeated_large_tensors()
    after = _faults_of_repeated_large_tensors()
    pages = 4 * 64 * 2**20 // resource.getpagesize()
    assert after > pages // 2  # glibc's default: mapped afresh and faulted page by page every time
    assert inside < pages // 10
