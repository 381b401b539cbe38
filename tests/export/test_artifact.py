"""Compressed size of a weights file: exact for a small file, estimated from spaced samples for a large one."""

from __future__ import annotations

import gzip

import numpy as np

from export.artifact import gzip_size, gzip_size_is_estimated


def _weights_like(n: int) -> bytes:
    """Sections that compress very differently, as a model file's do: float32 weights, int8 codes, zeros."""
    rng = np.random.default_rng(0)
    floats = rng.normal(0, 0.02, n // 16).astype(np.float32).tobytes()
    codes = np.clip(rng.normal(0, 20, n // 2), -127, 127).astype(np.int8).tobytes()
    return floats + codes + bytes(n // 4)


def test_a_small_file_is_gzipped_whole_and_a_large_one_estimated_within_a_few_percent(tmp_path):
    data = _weights_like(1 << 22)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    exact = len(gzip.compress(data, compresslevel=6))
    assert gzip_size(path) == exact and not gzip_size_is_estimated(path)
    sampled = gzip_size(path, chunk=1 << 16, exact_up_to=1 << 20)
    assert gzip_size_is_estimated(path, exact_up_to=1 << 20)
    assert abs(sampled - exact) / exact < 0.03, (sampled, exact)
