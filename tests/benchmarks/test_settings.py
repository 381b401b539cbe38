"""Benchmark settings: named targets, overrides, validation, and the mapping of the original section."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compress.targets import PRESETS, TargetSpec
from compress.tasks.classification.config import BenchmarkConfig as BenchmarkSettings


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


def test_settings_survive_a_json_round_trip_as_the_manifest_stores_them():
    s = BenchmarkSettings(targets=["host", {"name": "iot", "memory_limit_mb": 256}, {"name": "pi4", "threads": 4}])
    assert BenchmarkSettings.model_validate(s.model_dump(mode="json")) == s
