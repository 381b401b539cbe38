"""Benchmark settings: named targets, overrides, validation, and the mapping of the original section."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from benchmarks.settings import PRESETS, BenchmarkSettings, TargetSpec, as_settings


def test_defaults_measure_three_targets_with_mobile_first_in_the_headline():
    s = BenchmarkSettings()
    assert [t.name for t in s.targets] == ["host", "mobile", "iot"]
    assert [t.threads for t in s.targets] == ["all", 2, 1]
    assert s.primary == "mobile"
    assert (s.requests, s.seconds, s.lengths, s.batch_sizes) == (1000, 30.0, ["real", 16, 64, 128], [1, 8, 32])
    assert BenchmarkSettings(targets=["iot", "host"]).primary == "iot"


def test_a_preset_with_overrides_and_a_custom_target():
    s = BenchmarkSettings(targets=[{"name": "iot", "memory_limit_mb": 256}, {"name": "pi4", "threads": 4}])
    iot, pi4 = s.targets
    assert (iot.threads, iot.pin_cpus, iot.memory_limit_mb) == (1, True, 256)
    assert pi4 == TargetSpec(name="pi4", threads=4)
    assert PRESETS["iot"].memory_limit_mb == 512  # the preset itself is unchanged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": ["watch"]}, "unknown target 'watch'"),
        ({"targets": ["iot", "iot"]}, "names must be unique"),
        ({"primary_target": "host", "targets": ["iot"]}, "not among targets"),
        ({"lengths": ["real", 2]}, "outside"),
        ({"lengths": [16, 16]}, "distinct"),
        ({"batch_sizes": [0]}, "batch sizes"),
        ({"targets": [{"name": "x", "threads": 0}]}, "threads must be"),
        ({"targets": [{"name": "x", "memory_limit_mb": 10}]}, "greater than or equal to 64"),
        ({"seconds": 0}, "greater than 0"),
        ({"confidence": 1.0}, "less than 1"),
        ({"warmup_runs": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        BenchmarkSettings(**kwargs)


def test_the_original_benchmark_section_maps_to_one_target_and_its_passes():
    # The recipe's first `benchmark` section: threads, warmup, passes, latency_examples, memory.
    def original(threads=1, warmup=20, passes=1, latency_examples=None, memory=True):
        return SimpleNamespace(
            threads=threads, warmup=warmup, passes=passes, latency_examples=latency_examples, memory=memory
        )

    s = as_settings(original(threads=2, warmup=3, passes=2, latency_examples=16, memory=False))
    assert s.targets == [TargetSpec(name="threads-2", threads=2)]  # not pinned, no memory cap: as before
    assert (s.warmup, s.passes, s.latency_examples, s.memory) == (3, 2, 16, False)
    assert (s.lengths, s.batch_sizes, s.ort_format) == (["real"], [], False)
    assert as_settings(original()).targets[0].name == "threads-1"
    assert as_settings(s) is s


def test_a_config_with_the_same_keys_is_taken_as_is():
    mirror = SimpleNamespace(**BenchmarkSettings(targets=["iot"], requests=5).model_dump())
    s = as_settings(mirror)
    assert [t.name for t in s.targets] == ["iot"] and s.requests == 5 and s.batch_sizes == [1, 8, 32]


def test_settings_survive_a_json_round_trip_as_the_manifest_stores_them():
    s = BenchmarkSettings(targets=["host", {"name": "iot", "memory_limit_mb": 256}, {"name": "pi4", "threads": 4}])
    assert BenchmarkSettings.model_validate(s.model_dump(mode="json")) == s
