"""The causal-LM bundle's default choice: perplexity within a ratio of the teacher's *and* KL to it within a bound."""

import pytest

from compress.tasks.causal_lm.bundle import LMBundleError, select_lm_variant


def _variant(name, perplexity, kl, tokens_per_s, gzip=1000, runtime="onnxruntime"):
    return {
        "name": name,
        "runtime": runtime,
        "perplexity": perplexity,
        "kl_to_teacher": kl,
        "size_gzip_bytes": gzip,
        "targets": {"iot": {"tokens_per_s": tokens_per_s}},
    }


def _report(*variants):
    teacher = _variant("teacher-torch", 20.0, 0.0, 100.0, runtime="torch")
    return {"reference": "teacher-torch", "variants": [teacher, *variants]}


def test_a_student_within_the_perplexity_ratio_but_far_from_the_teacher_is_excluded():
    # "own-way" is the fastest and within 1.25x the teacher's perplexity, but predicts other distributions
    report = _report(
        _variant("own-way", 22.0, 0.9, 900.0),
        _variant("distilled", 23.0, 0.3, 600.0),
        _variant("too-weak", 40.0, 0.2, 1200.0),
    )
    chosen, why = select_lm_variant(report, "iot")
    assert chosen["name"] == "distilled"
    assert "1.25x" in why and "0.5 nats/token" in why and "KL 0.300" in why
    # perplexity alone would have shipped the student that does not replace the teacher
    loose, _ = select_lm_variant(report, "iot", max_kl_to_teacher=float("inf"))
    assert loose["name"] == "own-way"


def test_no_variant_within_both_bounds_names_each_candidates_figures():
    report = _report(_variant("own-way", 22.0, 0.9, 900.0), _variant("unmeasured", 21.0, None, 800.0))
    with pytest.raises(LMBundleError) as e:
        select_lm_variant(report, "iot")
    message = str(e.value)
    assert "within 0.5 nats/token of KL to the teacher" in message
    assert "own-way (perplexity 22.000, KL 0.900)" in message
    assert "unmeasured (perplexity 21.000, KL not measured)" in message
    assert "--max-kl-to-teacher" in message


def test_a_report_from_before_kl_can_still_be_bundled_by_perplexity_alone_when_asked():
    report = _report(_variant("old", 22.0, None, 900.0))
    chosen, why = select_lm_variant(report, "iot", max_kl_to_teacher=float("inf"))
    assert chosen["name"] == "old" and "KL not measured" in why


def test_the_bounds_are_inclusive_and_speed_ties_go_to_the_smaller_download():
    report = _report(_variant("a", 25.0, 0.5, 1000.0, gzip=900), _variant("b", 24.0, 0.4, 980.0, gzip=500))
    chosen, why = select_lm_variant(report, "iot")
    assert chosen["name"] == "b" and "2 within 5% of the fastest" in why
