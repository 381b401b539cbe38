"""The causal-LM path end to end on tiny decoders: every stage, the report, caching, user models, the bundle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from compress.pipeline import plan, run_pipeline
from compress.recipe import load_recipe
from tests.lm_fixtures import write_lm_recipe, write_text_data

VARIANTS = ["teacher-torch", "teacher-onnx", "teacher-int8-optimum", "student", "pruned", "cut", "int4", "int8"]
STEPS = [
    "teacher",
    "distill/student",
    "prune/pruned",
    "prune/cut",
    "export/teacher",
    "export/student",
    "export/pruned",
    "export/cut",
    "quantize/int4",
    "quantize/int8",
    "benchmark",
]
RUNTIME_PINS = ["onnxruntime==1.32.0", "tokenizers==0.22.2", "numpy==2.4.6"]


def _ran(logs: list[str]) -> list[str]:
    return [line.split("] ")[1].split(": ")[0] for line in logs if line.endswith(": running")]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("lm_pipeline")
    data = write_text_data(work / "data")
    prune = [
        {"name": "pruned", "sparsity": 0.5, "epochs": 0.5, "batch_size": 8},
        {
            "name": "cut",
            "method": "structured",
            "heads": 0.5,
            "ffn": 0.5,
            "hidden": 0.25,
            "importance": "activation",
            "calibration_batches": 2,
            "epochs": 0.5,
            "batch_size": 8,
            "learning_rate": 3.0e-3,
            "max_perplexity_ratio": 10,  # a tiny model cut this hard: the mechanism is under test, not quality
        },
    ]
    recipe = load_recipe(
        write_lm_recipe(
            work / "recipe.yaml",
            data,
            prune=prune,
            benchmark={"memory": True, "memory_contexts": [48], "anchors": ["genai-int4", "llama.cpp-q8_0"],
                       "worker_memory_gb": 0.0004, "in_llama_cpp": ["int8"],
                       # the same target with its threads spinning: each runtime measured both ways
                       "targets": ["host", {"name": "host-spin", "threads": "all", "spinning": True}]},
            # fmt: skip
        )
    )
    out = work / "run"
    logs: list[str] = []
    report = run_pipeline(recipe, out, log=logs.append)
    return recipe, out, report, logs


def test_every_stage_runs_and_the_report_has_every_variant(lm_run):
    recipe, out, report, logs = lm_run
    assert [s.id for s in plan(recipe)] == STEPS == _ran(logs)
    on_disk = json.loads((out / "report.json").read_text())
    ours = [v["name"] for v in on_disk["variants"] if v["stage"] != "anchor"]
    assert on_disk["task"] == "causal-lm" and ours == VARIANTS
    for v in on_disk["variants"]:
        assert v["perplexity"] > 1 and v["perplexity_test"] > 1
        assert 0 <= v["agreement_with_teacher"] <= 1 and v["tokens_per_s"] > 0
        host = v["targets"]["host"]
        assert set(host["ttft_ms"]) == {"8", "16"} and host["ttft_ms"]["8"]["p50"] > 0
        assert host["decode_ms_per_token"]["n"] == 2 * 7  # 2 prompt lengths x (8 new tokens - 1) gaps
        assert v["peak_rss_bytes"] > v["baseline_rss_bytes"] > 0
        assert v["size_bytes"] > v["size_gzip_bytes"] > 0
    by = {v["name"]: v for v in on_disk["variants"]}
    assert by["teacher-torch"]["agreement_with_teacher"] == 1.0 and by["teacher-torch"]["greedy_prefix_match"] == 1.0
    md = (out / "report.md").read_text()
    for name in VARIANTS:
        assert f"| {name}" in md
    assert "accuracy_level" in md and "Time to first token" in md
    assert {p.name for p in (out / "report_plots").iterdir()} >= {"quality_vs_speed.png", "ttft_by_length.png"}


def test_speed_workers_hold_groups_within_the_memory_cap_and_every_variant_is_timed(lm_run):
    """benchmark.worker_memory_gb (400 kB here): the variants are timed in several workers, none holding more than the
    cap unless one variant alone is larger, and every variant is timed on every prompt length."""
    from pathlib import Path

    from compress.tasks.causal_lm.suite import LMVariant, worker_groups

    _, _, report, _ = lm_run
    groups = report["settings"]["speed_workers"]
    names = [v["name"] for v in report["variants"]]
    assert len(groups) > 1 and sorted(n for g in groups for n in g) == sorted(names)
    for v in report["variants"]:
        assert all(v["targets"]["host"]["ttft_ms"][length] for length in v["targets"]["host"]["ttft_ms"])
    fake = [LMVariant(f"v{i}", "distill", "torch", None, Path("."), Path("."), params, 1) for i, params in
            enumerate([100, 200, 2000, 50, 50])]  # fmt: skip
    # float32 in PyTorch: 400, 800, 8000, 200, 200 bytes against a 1200-byte cap
    assert [[v.name for v in g] for g in worker_groups(fake, 1.2e-6)] == [["v0", "v1"], ["v2"], ["v3", "v4"]]
    assert worker_groups(fake, None) == [fake]


def test_onnx_perplexity_equals_the_pytorch_models_and_quantized_graphs_hold_their_ops(lm_run):
    _, out, report, _ = lm_run
    manifest = json.loads((out / "manifest.json").read_text())
    by = {v["name"]: v for v in report["variants"]}
    student_torch = manifest["stages"]["distill/student"]["metrics"]["dev_perplexity_torch"]
    assert by["student"]["perplexity"] == pytest.approx(student_torch, rel=1e-4)
    teacher_torch = manifest["stages"]["teacher"]["metrics"]["dev_perplexity_torch"]
    assert by["teacher-onnx"]["perplexity"] == pytest.approx(teacher_torch, rel=1e-4)
    assert by["teacher-torch"]["perplexity"] == pytest.approx(teacher_torch, rel=1e-6)

    def ops(step):
        return {n.op_type for n in onnx.load(str(out / step / "model.onnx")).graph.node}

    assert "MatMulNBits" in ops("quantize/int4") and "MatMulInteger" in ops("quantize/int8")
    pruned = manifest["stages"]["prune/pruned"]["metrics"]
    assert pruned["sparsity_prunable"] == pytest.approx(0.5, abs=1e-3)
    assert by["pruned"]["size_gzip_bytes"] < by["student"]["size_gzip_bytes"]  # zeros compress
    # the structured cut: smaller matrices in an ordinary config, exported with its KV cache like any other
    cut = manifest["stages"]["prune/cut"]["metrics"]
    assert cut["cut"] == {
        "kv_groups": [2, 1],
        "attention_heads": [4, 2],
        "ffn_width": [64, 32],
        "hidden_size": [32, 24],
    }
    student = manifest["stages"]["distill/student"]["metrics"]
    assert cut["params"] < student["params"] and cut["macs_per_token"] < student["macs_per_token"]
    assert by["cut"]["perplexity"] == pytest.approx(cut["dev_perplexity_torch"], rel=1e-4)
    assert by["cut"]["size_bytes"] < 0.8 * by["student"]["size_bytes"]


def test_each_student_and_cut_has_an_equal_training_control_and_every_variant_a_kl_to_the_teacher(lm_run):
    _, out, report, _ = lm_run
    manifest = json.loads((out / "manifest.json").read_text())
    student = manifest["stages"]["distill/student"]["metrics"]
    cut = manifest["stages"]["prune/cut"]["metrics"]
    assert "control" not in manifest["stages"]["prune/pruned"]["metrics"]  # unstructured: the student's shape
    batch = 8  # the fixtures' distill and cut batch size
    # the student's control reads as many blocks as the student did; the cut's, the student's and its own
    assert student["control"]["train_steps"] == -(-student["train_blocks_seen"] // batch)
    lineage = student["train_blocks_seen"] + cut["train_blocks_seen"]
    assert cut["control"]["train_steps"] == -(-lineage // batch)
    for m in (student, cut):
        c = m["control"]
        assert c["dev_perplexity_torch"] > 1 and c["loss"].startswith("next-token cross-entropy")
        assert c["dev_perplexity_ratio"] == pytest.approx(m["dev_perplexity_torch"] / c["dev_perplexity_torch"])
    by = {v["name"]: v for v in report["variants"]}
    assert by["teacher-torch"]["kl_to_teacher"] == 0.0
    assert by["teacher-onnx"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)  # the same model, other runtime
    assert by["student"]["kl_to_teacher"] > 1e-3 and by["int4"]["kl_to_teacher"] > 0
    # KL to the parent, for every variant whose parent was measured (llama.cpp's check of a quantization)
    for v in report["variants"]:
        if v["parent"] in by:
            assert v["kl_to_parent"] >= -1e-6 and v["kl_to_parent_blocks"] >= 1, v["name"]
        else:
            assert "kl_to_parent" not in v
    assert by["teacher-onnx"]["kl_to_parent"] == pytest.approx(0.0, abs=1e-6)  # teacher-torch, other runtime
    assert 0 < by["int4"]["kl_to_parent"] < by["int4"]["kl_to_teacher"]  # int4 of the student: near its source
    # a quantized student is measured against its source's control; the teacher has none
    assert by["int4"]["control"]["model"] == "student" and by["cut"]["control"]["model"] == "cut"
    assert "control" not in by["teacher-torch"] and "control" not in by["pruned"]  # trained further, no control
    md = (out / "report.md").read_text()
    assert "Compression against equal training" in md and "KL nats" in md and "KL parent" in md


def test_every_anchor_is_measured_or_reported_with_its_reason(lm_run):
    _, out, _, _ = lm_run
    report = json.loads((out / "report.json").read_text())
    measured = {v["name"]: v for v in report["variants"] if v["stage"] == "anchor"}
    missing = {u["name"]: u["reason"] for u in report["anchors"]["unavailable"]}
    expected = {"genai-int4", "llama.cpp-q8_0", "int8-llama.cpp"}
    assert set(measured) | set(missing) == expected and not set(measured) & set(missing)
    md = (out / "report.md").read_text()
    assert "Against what a user would pick instead" in md
    for reason in missing.values():
        assert reason and f"not measured: {reason}"[:60] in md
    for name, v in measured.items():
        assert v["runtime"] in ("genai", "llama.cpp") and v["perplexity"] > 1 and v["tokens_per_s"] > 0
        assert name in md


def test_a_variant_in_llama_cpp_is_its_own_model_at_the_nearest_type_timed_against_ours(lm_run):
    """benchmark.in_llama_cpp: int8 (dynamic) as llama.cpp converts and quantizes the student it came from (Q8_0),
    measured on every target beside our loop, with a paired ratio and its KL to our int8."""
    _, out, report, _ = lm_run
    by = {v["name"]: v for v in report["variants"]}
    if "int8-llama.cpp" not in by:
        pytest.skip("llama.cpp not installed here (make anchors): " + str(report["anchors"]["unavailable"])[:200])
    row = by["int8-llama.cpp"]
    assert row["runtime"] == "llama.cpp" and row["parent"] == "int8" and row["path"].endswith("student-q8_0.gguf")
    assert row["perplexity"] == pytest.approx(by["int8"]["perplexity"], rel=0.1)  # the same model, rounded alike
    assert 0 <= row["kl_to_parent"] < 0.05
    for t in ("host", "host-spin"):
        paired = row["targets"][t]["vs_parent"]
        assert paired["ci"][0] <= paired["ratio"] <= paired["ci"][1]
    md = (out / "report.md").read_text()
    assert "The same model in other runtimes" in md and "| llama.cpp (Q8_0) | host-spin |" in md


def test_a_spinning_target_runs_every_runtime_spinning_and_records_cpu_time(lm_run):
    """A target with `spinning: true`: ONNX Runtime's allow_spinning and OpenMP's wait policy (PyTorch, llama.cpp)
    read back from its worker; every generation's CPU time recorded; no second memory probe."""
    _, out, report, _ = lm_run
    env = report["environment"]["targets"]
    assert env["host"]["intra_op_spinning"] is False and env["host-spin"]["intra_op_spinning"] is True
    still, spin = env["host"]["process"], env["host-spin"]["process"]
    assert still["omp_wait_policy"] == "PASSIVE" and still["ort_allow_spinning"] == "0"
    assert spin["omp_wait_policy"] is None and spin["ort_allow_spinning"] == "1"  # OpenMP's own default: it spins
    for v in report["variants"]:
        for t in ("host", "host-spin"):
            assert v["targets"][t]["cpu_per_wall"] > 0.2, (v["name"], t)  # CPU time was measured and counted
        assert "memory" in v["targets"]["host"] and "memory" not in v["targets"]["host-spin"]
    assert "intra-op spinning on" in (out / "report.md").read_text()


def test_memory_against_context_is_measured_tabled_and_plotted_for_our_variants(lm_run):
    _, out, report, _ = lm_run
    assert report["settings"]["memory_contexts"] == [48, 128]  # the headline probe's 128 is one more point
    ours = {"student", "pruned", "cut", "int4", "int8"}
    for v in report["variants"]:
        curve = v["targets"]["host"].get("memory_by_context")
        if v["name"] not in ours:
            assert curve is None  # baselines and anchors: the headline probe only
            continue
        assert list(curve) == ["48", "128"] and curve["48"]["prompt_tokens"] == 48
        assert all(m["peak_rss_bytes"] > m["baseline_rss_bytes"] > 0 for m in curve.values())
        assert curve["128"] == v["targets"]["host"]["memory"]
    md = (out / "report.md").read_text()
    assert "### Against context (target host)" in md and "| RSS MB @48 | RSS MB @128 |" in md
    assert (out / "report_plots" / "context.png").stat().st_size > 1000


def test_each_step_records_its_own_peak_memory(lm_run):
    _, out, _, logs = lm_run
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    done = {k: v for k, v in stages.items() if v.get("status") == "done"}
    assert len(done) > 10
    for record in done.values():
        assert record["peak_rss_scope"] == "step" and 50e6 < record["peak_rss_bytes"] < 8e9
    assert any(", peak memory " in line and "GiB" in line for line in logs)


def test_the_memory_estimates_cover_what_the_training_steps_measured(lm_run):
    from compress.tasks.causal_lm.cost import estimate
    from compress.tasks.causal_lm.task import _decoder_shape, _teacher_shape

    recipe, out, _, _ = lm_run
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    for row in estimate(recipe, _decoder_shape(_teacher_shape(recipe.teacher))):  # export, quantize: every variant's
        steps = [v for k, v in stages.items() if row["stage"] in (k, k.split("/")[0]) and v.get("status") == "done"]
        measured = max(v["peak_rss_bytes"] for v in steps)
        assert measured < 2 * row["bytes"], (row, measured)


def test_check_prints_each_stages_memory_and_refuses_a_recipe_that_cannot_fit(text_data_dir, tmp_path):
    ok = write_lm_recipe(tmp_path / "ok.yaml", text_data_dir)
    proc = subprocess.run([sys.executable, "-m", "compress", "check", str(ok)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "estimated peak memory per stage" in proc.stdout
    assert "distill/student" in proc.stdout
    timed = proc.stdout.split("estimated training wall time on this machine")[1]
    assert "teacher " in timed and "distill/student" in timed and "all training" in timed and " s beside" in timed
    huge = {"architecture": {"hidden_size": 8192, "layers": 80, "heads": 64, "kv_heads": 8,
                             "intermediate_size": 28672}}  # fmt: skip
    big = write_lm_recipe(tmp_path / "big.yaml", text_data_dir, teacher=huge)
    proc = subprocess.run([sys.executable, "-m", "compress", "check", str(big)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "teacher: needs about" in proc.stderr and "teacher.gradient_checkpointing: true" in proc.stderr


def test_the_wall_time_estimate_counts_each_stages_steps_and_its_controls(text_data_dir, tmp_path):
    from compress.tasks.causal_lm.cost import DecoderShape, cut_shape, time_estimate

    prune = [
        {"name": "sparse", "sparsity": 0.5, "epochs": 0.5, "batch_size": 8},
        {"name": "cut", "method": "structured", "heads": 0.5, "ffn": 0.5, "epochs": 0.25, "batch_size": 8},
        {"name": "wanda", "sparsity": 0.5, "importance": "wanda", "epochs": 0, "batch_size": 8},
    ]
    recipe = load_recipe(write_lm_recipe(tmp_path / "r.yaml", text_data_dir, prune=prune,
                                         distill={"gradient_accumulation_steps": 2, "batch_size": 4}))  # fmt: skip
    t = DecoderShape(4, 32, 64, 4, 2, 8, 300, True)
    calls = []

    def seconds(student, teacher, batch):  # 1 s per sequence alone, 1.5 beside the teacher
        calls.append((student, teacher is not None, batch))
        return batch * (1.5 if teacher is not None else 1.0)

    rows = {r["stage"]: r for r in time_estimate(recipe, t, 160, seconds)}
    assert set(rows) == {"teacher", "distill/student", "prune/sparse", "prune/cut"}  # wanda does not train
    assert rows["teacher"]["seconds"] == 40 * 8  # 2 epochs of 160 blocks, batch 8: 40 steps
    # 1 epoch, 4 x 2 accumulated: 20 steps of 8 sequences beside the teacher, and the control's 20 alone
    assert rows["distill/student"]["seconds"] == 20 * 8 * 1.5 + 20 * 8
    assert rows["prune/sparse"]["seconds"] == 10 * 8 * 1.5  # unstructured: no control
    # the cut: 5 steps beside the teacher; its control trains as many blocks as the cut and its source (5 + 20)
    assert rows["prune/cut"]["seconds"] == 5 * 8 * 1.5 + 25 * 8
    cut = cut_shape(DecoderShape(2, 32, 64, 4, 2, 8, 300, True), recipe.prune[1])
    assert (cut.kv_heads, cut.heads, cut.ffn, cut.layers) == (1, 2, 32, 2) and (cut, True, 8) in calls


def test_memory_keys_lower_the_estimate():
    from compress.tasks.causal_lm.cost import DecoderShape, training_bytes

    s = DecoderShape(24, 896, 4864, 14, 2, 64, 151936, True)  # Qwen2.5-0.5B's shape
    assert 450e6 < s.params < 550e6
    plain = training_bytes(s, 8, 1024, "fp32", False)
    assert training_bytes(s, 8, 1024, "fp32", True) < plain / 2
    assert training_bytes(s, 8, 1024, "bf16", False) < plain
    assert training_bytes(s, 4, 1024, "fp32", False) < plain


def test_a_second_run_skips_every_step(lm_run):
    recipe, out, _, _ = lm_run
    logs: list[str] = []
    run_pipeline(recipe, out, log=logs.append)
    assert _ran(logs) == []


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_a_users_model_directory_runs_through_with_teacher_path(family, tiny_lm_dirs, text_data_dir, tmp_path):
    path = write_lm_recipe(
        tmp_path / "recipe.yaml",
        text_data_dir,
        teacher={"path": str(tiny_lm_dirs[family])},
        prune=[],
        quantize=[{"name": "int4", "block_size": 16, "accuracy_level": 0}],
    )
    report = run_pipeline(load_recipe(path), tmp_path / "run", log=lambda s: None)
    assert [v["name"] for v in report["variants"]][-2:] == ["student", "int4"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["teacher"]["metrics"]["trained"] is False
    assert json.loads((tmp_path / "run" / "distill" / "student" / "config.json").read_text())["model_type"] == family


def test_post_training_compression_of_a_users_model_needs_no_student(tiny_lm_dirs, text_data_dir, tmp_path):
    """configs/lm-ptq.yaml's path: teacher.path, no distill, the teacher quantized, measured and bundled."""
    from compress.tasks.causal_lm.bundle import bundle_lm

    path = write_lm_recipe(
        tmp_path / "recipe.yaml",
        text_data_dir,
        teacher={"path": str(tiny_lm_dirs["llama"])},
        distill=[],
        prune=[],
        quantize=[{"name": "int4", "source": "teacher", "block_size": 16, "accuracy_level": 0},
                  {"name": "int8", "source": "teacher", "method": "dynamic"}],  # fmt: skip
    )
    logs: list[str] = []
    report = run_pipeline(load_recipe(path), tmp_path / "run", log=logs.append)
    assert [v["name"] for v in report["variants"]][-2:] == ["int4", "int8"]
    assert not any(s.startswith(("distill", "prune")) for s in _ran(logs))
    assert not (tmp_path / "run" / "distill").exists()
    meta = bundle_lm(tmp_path / "run", "host", tmp_path / "bundle", max_perplexity_ratio=100.0, max_kl_to_teacher=100.0)
    assert meta["variant"] in ("int4", "int8", "teacher")
    assert (tmp_path / "bundle" / "generate.py").is_file()


@pytest.fixture(scope="module")
def lm_bundle(lm_run, tmp_path_factory):
    from compress.tasks.causal_lm.bundle import bundle_lm as bundle

    _, out, _, _ = lm_run
    target = tmp_path_factory.mktemp("lm_bundle") / "b"
    return target, bundle(out, "host", target, max_perplexity_ratio=100.0, max_kl_to_teacher=100.0)


def test_the_bundle_holds_what_a_device_needs_and_reproduces_the_measured_tokens(lm_bundle, lm_run):
    d, meta = lm_bundle
    names = {p.name for p in d.iterdir()}
    assert {"model.onnx", "model.ort", "tokenizer.json", "generate.py", "bundle.json", "manifest.json"} <= names
    assert meta["task"] == "causal-lm" and meta["context_window"] == 256 and meta["eos_token_ids"]
    assert meta["check"]["greedy_identical_ort"] == 1.0 and meta["check"]["greedy_identical_onnx"] == 1.0
    assert meta["check"]["prompts"] == 3
    assert meta["kv_cache"] == "copy"  # optimum's graph concatenates (GenAI's: tests/export/test_decode_loop.py)
    tree = ast.parse((d / "generate.py").read_text())
    top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # jinja2 only inside the chat template's class: a fresh venv with the three packages generates (test below)
    assert top - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "tokenizers", "jinja2"}
    assert meta["chat"] is None and not (d / "chat_template.jinja").exists()  # a tokenizer trained here has none
    # the other runtimes' forms: GenAI's needs GenAI's builder's graph (this run exports with optimum)
    genai, gguf = meta["runtimes"]["genai"], meta["runtimes"]["gguf"]
    assert not genai["shipped"] and "GenAI's builder" in genai["why"] and not (d / "genai_config.json").exists()
    ggufs = sorted(p.name for p in d.glob("*.gguf"))
    if gguf["shipped"]:  # llama.cpp installed (make anchors): kept only at the bound, listed and checksummed
        assert gguf["token_agreement"] >= gguf["min_agreement"]
        assert ggufs == [gguf["file"]] and gguf["file"] in meta["files"]
    else:  # not installed, or below the bound: no file left, and why
        assert ggufs == [] and gguf["why"]
        assert "token_agreement" not in gguf or gguf["token_agreement"] < gguf["min_agreement"]


CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _chat_bundle(lm_bundle, tmp_path):
    """The test bundle as it is made for a model whose tokenizer has a chat template."""
    import shutil

    from transformers import PreTrainedTokenizerFast

    from compress.tasks.causal_lm.bundle import _chat_template

    d, _ = lm_bundle
    artifact, b = tmp_path / "artifact", tmp_path / "chat-bundle"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token="<|endoftext|>")
    tok.chat_template = CHAT
    tok.save_pretrained(artifact)
    shutil.copytree(d, b)
    meta = json.loads((b / "bundle.json").read_text())
    meta["chat"] = _chat_template(artifact, b)
    (b / "bundle.json").write_text(json.dumps(meta))
    return b, artifact, tok


def test_a_chat_template_ships_checked_and_chats_keep_their_cache(lm_bundle, tmp_path):
    from compress.tasks.causal_lm.bundle import LMBundleError, _check_chat, load_generate_module

    b, artifact, tok = _chat_bundle(lm_bundle, tmp_path)
    assert (b / "chat_template.jinja").read_text() == CHAT
    assert _check_chat(b, artifact) == {"conversations_identical": 3, "refused_by_both": 0}
    module = load_generate_module(b)
    gen = module.Generator.from_bundle(b, model="onnx")
    conversation = module.Conversation(gen, system="Be brief.")
    first = conversation.say("The parser reads", 5, ignore_eos=True)
    second = conversation.say("and then the list", 5, ignore_eos=True)
    assert first["reused_tokens"] == 0 and second["reused_tokens"] >= first["prompt_tokens"]  # the cache was kept
    fresh = gen.generate(gen.chat_ids(conversation.messages[:-1]), 5, ignore_eos=True)  # no cache: the same tokens
    assert second["tokens"] == fresh["tokens"] and second["prompt_tokens"] == fresh["prompt_tokens"]
    want = tok.apply_chat_template(conversation.messages[:-1], add_generation_prompt=True, tokenize=True)
    assert gen.chat_ids(conversation.messages[:-1]) == list(want)
    meta = json.loads((b / "bundle.json").read_text())
    meta["chat"]["special_tokens"]["bos_token"] = "<s>"  # rendered otherwise than transformers: refused
    (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(LMBundleError, match="other tokens than transformers"):
        _check_chat(b, artifact)


def test_generate_py_chats_on_the_command_line_and_says_when_a_model_cannot(lm_bundle, tmp_path):
    b, _, tok = _chat_bundle(lm_bundle, tmp_path)
    run = [sys.executable, str(b / "generate.py")]
    out = subprocess.run([*run, "--chat", "The parser reads", "--system", "Be brief.", "--json", "--max-new-tokens",
                          "3"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The parser reads"}]
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert json.loads(out.stdout)["prompt_tokens"] == len(want)
    talk = subprocess.run([*run, "--interactive", "--max-new-tokens", "3"], input="hello\n\nthe list\n",
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert talk.returncode == 0 and talk.stdout.count("\n") >= 2, talk.stderr  # two replies (blank line skipped)
    d, _ = lm_bundle
    plain = subprocess.run([sys.executable, str(d / "generate.py"), "--chat", "hi"], capture_output=True, text=True)
    assert plain.returncode == 2 and "no chat template" in plain.stderr and "Traceback" not in plain.stderr
    lone = subprocess.run([*run, "--system", "x", "hi"], capture_output=True, text=True)
    assert lone.returncode == 2 and "--system applies to --chat" in lone.stderr


def test_generate_command_streams_and_refuses_bad_prompts(lm_bundle, capsys):
    from compress.cli import main

    d, _ = lm_bundle
    with pytest.raises(SystemExit) as e:
        main(["generate", str(d), "The parser reads", "--max-new-tokens", "6"])
    assert e.value.code == 0 and capsys.readouterr().out.strip()
    with pytest.raises(SystemExit) as e:
        main(["generate", str(d), ""])
    assert e.value.code == 2 and "empty prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["generate", str(d), "the list " * 400])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "context window is 256" in err and "Traceback" not in err


def test_a_fresh_venv_with_only_the_three_runtime_packages_generates_the_measured_tokens(lm_bundle, lm_run, tmp_path):
    d, meta = lm_bundle
    _, _, report, _ = lm_run
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *RUNTIME_PINS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0
    # generate.py from the command line, on text: prompts decoded from the recorded token ids.
    check = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import generate; "
        "g = generate.Generator.from_bundle(sys.argv[1]); "
        "p = json.loads(sys.argv[2]); "
        "print(json.dumps([list(g.stream(x, int(sys.argv[3]), ignore_eos=True)) for x in p]))"
    )
    prompts = report["settings"]["greedy_prompt_ids"]
    chosen = next(v for v in report["variants"] if v["name"] == meta["variant"])
    proc = subprocess.run(
        [str(py), "-c", check, str(d), json.dumps(prompts), str(chosen["greedy"]["new_tokens"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == chosen["greedy"]["tokens"]
    cli = subprocess.run(
        [str(py), str(d / "generate.py"), "Each thread", "--json", "--max-new-tokens", "5", "--seed", "1",
         "--temperature", "0.7"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    row = json.loads(cli.stdout)
    assert len(row["tokens"]) <= 5 and row["finish_reason"] in ("length", "end_of_text")
    assert np.isfinite(row["seconds"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"distill": {"layers": [0, 7]}}, "distill.layers = [0, 7]: the teacher has layers 0..3"),
        (
            {"distill": {"hidden_weight": 1.0, "hidden_layer_map": [[1, 9]]}},
            "distill.hidden_layer_map = [[1, 9]]: student indices go up to 2, teacher indices up to 4",
        ),
        ({"benchmark": {"prompt_lengths": [8, 250]}}, "benchmark.prompt_lengths = [8, 250]"),
        ({"benchmark": {"memory_contexts": [64, 250]}}, "benchmark.memory_contexts = [64, 250]: [250] is not"),
        ({"data": {"block_size": 512}}, "data.block_size = 512"),
        ({"prune": {"method": "structured", "heads": 0.25}}, "prune.0.heads = 0.25: removes no group"),
        ({"prune": {"schedule": "cubic", "rounds": 3}}, "prune.0.rounds applies to method 'structured'"),
        (
            {"prune": {"method": "structured", "ffn": 0.5, "schedule": "cubic", "every": 5}},
            "prune.0.every: a structured cut of a decoder changes its matrices' shapes",
        ),
        ({"prune": {"sparsity": 0.5, "trim_vocab": {"enabled": True}}}, "unknown key 'prune.trim_vocab'"),
        (
            {
                "teacher": {"architecture": {"family": "gpt2", "kv_heads": None}},
                "prune": {"method": "structured", "hidden": 0.25},
            },
            "prune.0.hidden: gpt2",
        ),
        ({"task": "translation"}, "task = 'translation'"),
        ({"distill": []}, "prune: a decoder is pruned from a distill variant"),
    ],
)
def test_check_rejects_what_run_would_reject_before_any_training(change, message, text_data_dir, tmp_path):
    path = write_lm_recipe(tmp_path / "r.yaml", text_data_dir, **change)
    proc = subprocess.run(
        [sys.executable, "-m", "compress", "check", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_check_names_a_bad_corpus_and_a_teacher_that_is_not_a_causal_lm(text_data_dir, tiny_classifier_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    for s in ("dev", "test"):
        (data / f"{s}.txt").write_text((text_data_dir / f"{s}.txt").read_text())
    bad = write_lm_recipe(tmp_path / "bad.yaml", data)
    proc = subprocess.run([sys.executable, "-m", "compress", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "train.txt" in proc.stderr and "binary file" in proc.stderr
    not_lm = write_lm_recipe(tmp_path / "bert.yaml", text_data_dir, teacher={"path": str(tiny_classifier_dir)})
    proc = subprocess.run([sys.executable, "-m", "compress", "check", str(not_lm)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a decoder-only causal LM" in proc.stderr


def test_a_model_whose_weights_live_outside_its_graph_ships_with_them_and_their_checksum(lm_run, tmp_path):
    import shutil

    from compress.manifest import hash_path
    from compress.tasks.causal_lm.bundle import bundle_lm
    from export.bundle_checks import sha256

    _, out, _, _ = lm_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # as a model over ONNX's 2 GiB is written: the weights in model.onnx.data beside the graph
    model_path = run / "quantize" / "int4" / "model.onnx"
    onnx.save(onnx.load(str(model_path)), str(model_path), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)  # fmt: skip
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["benchmark"]["inputs"]["quantize/int4"] = hash_path(run / "quantize" / "int4")
    (run / "manifest.json").write_text(json.dumps(manifest))
    d = tmp_path / "bundle"
    meta = bundle_lm(run, "host", d, "int4")
    from export.artifact import with_external_data

    assert with_external_data(d / "model.onnx") == [d / "model.onnx", d / "model.onnx.data"]
    assert (d / "model.onnx.data").stat().st_size > 10_000
    assert meta["files"]["model.onnx.data"] == sha256(d / "model.onnx.data")
    assert meta["check"]["greedy_identical_onnx"] == 1.0


def test_bundle_refuses_an_unmeasured_target_and_a_loose_choice_names_the_candidates(lm_run, tmp_path):
    from compress.tasks.causal_lm.bundle import bundle_lm as bundle
    from export.bundle_checks import BundleError

    _, out, _, _ = lm_run
    with pytest.raises(BundleError, match="target 'iot' was not measured by this run; measured: host"):
        bundle(out, "iot", tmp_path / "b")
    with pytest.raises(BundleError, match=r"no variant within 0.5x the teacher's dev perplexity"):
        bundle(out, "host", tmp_path / "c", max_perplexity_ratio=0.5)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_draft_ships_checked_to_change_no_token_and_generate_py_speculates_with_it(lm_run, tmp_path, capsys):
    import hashlib

    from compress.cli import main
    from compress.tasks.causal_lm.bundle import load_generate_module

    _, out, report, _ = lm_run
    d = tmp_path / "spec"
    with pytest.raises(SystemExit) as e:  # the student, with its structured cut proposing
        main(["bundle", str(out), "--target", "host", "--out", str(d), "--variant", "student",
              "--draft", "cut", "--draft-tokens", "3"])  # fmt: skip
    assert e.value.code == 0 and "Draft cut: greedy tokens identical" in capsys.readouterr().out
    meta = json.loads((d / "bundle.json").read_text())
    draft = meta["draft"]
    assert draft["variant"] == "cut" and draft["tokens"] == 3 and draft["kv_cache"] == "copy"
    check = draft["check"]
    assert check["greedy_identical"] == 1.0 and check["prompts"] == 3 and 0 <= check["acceptance"] <= 1
    assert check["tokens_per_s"]["model"] > 0 and check["speedup"] > 0 and 1 <= check["tokens_per_pass"] <= 4
    assert meta["files"]["draft/model.onnx"] == hashlib.sha256((d / "draft/model.onnx").read_bytes()).hexdigest()
    assert "Speculation: `draft/` holds `cut`" in (d / "README.md").read_text()
    # generate.py --draft: the model's own greedy tokens, and what the draft did
    by = {v["name"]: v for v in report["variants"]}
    prompt_ids, text = report["settings"]["greedy_prompt_ids"][0], "The parser reads"
    with pytest.raises(SystemExit) as e:
        main(["generate", str(d), text, "--json", "--draft", "--max-new-tokens", "8"])
    row = json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as e2:
        main(["generate", str(d), text, "--json", "--max-new-tokens", "8"])
    alone = json.loads(capsys.readouterr().out)
    assert e.value.code == e2.value.code == 0 and row["tokens"] == alone["tokens"]
    assert row["speculation"]["passes"] >= 1 and "speculation" not in alone
    spec = load_generate_module(d).Generator.from_bundle(d, draft=True)
    assert list(spec.stream(prompt_ids, 8, ignore_eos=True)) == by["student"]["greedy"]["tokens"][0][:8]
    for argv, message in (
        (["--temperature", "0.7"], "greedy decoding only"),
        (["--draft-tokens", "2"], "apply to --draft"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["generate", str(d), text, *(["--draft"] if "greedy" in message else []), *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_bundle_refuses_a_draft_it_cannot_use(lm_run, lm_bundle, tmp_path):
    from compress.tasks.causal_lm.bundle import bundle_lm as bundle
    from export.bundle_checks import BundleError

    _, out, _, _ = lm_run
    loose = {"max_perplexity_ratio": 100.0, "max_kl_to_teacher": 100.0}
    for draft, message in (
        ("nope", "--draft 'nope': no such variant"),
        ("teacher-onnx", "a draft must be an ONNX variant"),  # optimum's runtime: a baseline
        ("student", "is the variant being shipped"),
    ):
        with pytest.raises(BundleError, match=message):
            bundle(out, "host", tmp_path / "b", "student", draft=draft, **loose)
    with pytest.raises(BundleError, match="expected at least 1"):
        bundle(out, "host", tmp_path / "b", "student", draft="cut", draft_tokens=0, **loose)
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as e:  # a generate.py --draft on a bundle without one: a message
        from compress.cli import main

        main(["generate", str(lm_bundle[0]), "x", "--draft"])
    assert e.value.code == 2


def test_compare_two_lm_runs(lm_run, capsys):
    from compress.cli import main

    _, out, _, _ = lm_run
    with pytest.raises(SystemExit) as e:
        main(["compare", str(out), str(out)])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "dev ppl" in text and "tokens/s" in text and "(+0.0%)" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"teacher": {"architecture": {"family": "gpt2", "kv_heads": None}}, "export": {"backend": "genai"}},
            "export.backend = 'genai': ONNX Runtime GenAI's builder does not build model_type 'gpt2'",
        ),
        ({"export": {"backend": "genai"}}, "GroupQueryAttention on CPU takes multiples of 16"),
        (  # 1 of 2 key/value groups kept (2 heads of width 8) but all 32 hidden channels: the builder needs 16
            {"export": {"backend": "genai"}, "prune": {"method": "structured", "heads": 0.5}},
            "prune.0: keeps 2 heads of width 8 and a hidden size of 32; export.backend 'genai' needs hidden size = "
            "heads x width (16)",
        ),
    ],
)
def test_check_refuses_a_genai_export_the_builder_or_the_kernel_cannot_take(change, message, text_data_dir, tmp_path):
    path = write_lm_recipe(tmp_path / "r.yaml", text_data_dir, **change)
    proc = subprocess.run(
        [sys.executable, "-m", "compress", "check", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_full_context_stops_or_slides_as_asked_and_the_bundle_says_what_was_validated(lm_bundle):
    from compress.tasks.causal_lm.bundle import load_generate_module

    d, meta = lm_bundle
    assert meta["validated_context"] == {"perplexity_block_tokens": 32, "longest_timed_context": 16 + 8}
    module = load_generate_module(d)
    prompt = "The parser reads the list"
    n = len(module.Generator.from_bundle(d, model="onnx").encode(prompt))
    window = n + 6
    gen = module.Generator.from_bundle(d, model="onnx", max_context=window)
    assert gen.context_window == window
    stopped = gen.generate(prompt, 20, ignore_eos=True)
    assert stopped["finish_reason"] == "context_window" and len(stopped["tokens"]) == 6
    state: dict = {}
    slid = gen.generate(prompt, 20, ignore_eos=True, on_full="slide", state=state)
    assert len(slid["tokens"]) == 20 and slid["finish_reason"] == "length"
    assert slid["tokens"][:6] == stopped["tokens"]  # the same tokens until the window filled
    assert len(state["ids"]) < window  # the cache holds the latest part only
    with pytest.raises(module.PromptError, match=f"context window is {window}"):
        gen.generate("the list " * 20, 4)


def test_lm_verification_tells_a_near_tie_from_a_fault_by_this_machines_margin(lm_bundle):
    from compress.tasks.causal_lm.bundle import NEAR_TIE_LOGIT, compare_verification, load_generate_module

    d, meta = lm_bundle
    check = json.loads((d / "check.json").read_text())
    assert check["count"] == len(check["prompts"]) == meta["check"]["prompts"] and "check.json" in meta["files"]
    same = {m: [{"tokens": t} for t in rows] for m, rows in check["expected"].items()}
    assert compare_verification(d, check, same)["passed"]
    gen = load_generate_module(d).Generator.from_bundle(d, model="onnx")
    prompt, want = check["prompts"][0], check["expected"]["onnx"][0]
    z = gen.forward(np.asarray([prompt]))[0][0, -1]
    other = int(np.argsort(z)[-2])  # the runner-up of the first step
    bad = {**same, "onnx": [{"tokens": [other, *want[1:]], "divergence": {"step": 0, "expected": want[0],
                                                                             "got": other, "guest_margin": 0.0}},
                            *same["onnx"][1:]]}  # fmt: skip
    r = compare_verification(d, check, bad)
    margin = float(z[want[0]] - z[other])
    entry = (r["models"]["onnx"]["near_ties"] + r["models"]["onnx"]["faults"])[0]
    assert entry["x86_margin"] == pytest.approx(margin, abs=1e-4) and margin >= 0
    assert r["passed"] == (margin <= NEAR_TIE_LOGIT)
    assert compare_verification(d, check, bad, near_tie=margin + 1)["passed"]
    if margin > 0:
        assert not compare_verification(d, check, bad, near_tie=margin / 2)["passed"]


@pytest.mark.slow
def test_the_lm_bundle_verifies_on_emulated_arm64(lm_bundle, tmp_path):
    import shutil

    from compress.commands import verify_bundle_dir
    from tests.conftest import qemu_or_skip

    qemu_or_skip()
    d, _ = lm_bundle
    b = tmp_path / "b"
    shutil.copytree(d, b)
    result = verify_bundle_dir(b, cpus=["cortex-a76"], out=print)
    assert result["passed"], result
    onnx = result["cpus"]["cortex-a76"]["comparison"]["models"]["onnx"]
    assert onnx["identical"] + len(onnx["near_ties"]) == onnx["prompts"] == 3


def test_a_variant_runs_in_genai_only_as_genais_builder_exports_it(text_data_dir, tmp_path):
    from compress.errors import RecipeError

    with pytest.raises(RecipeError, match="export.backend: genai, not optimum"):
        load_recipe(write_lm_recipe(tmp_path / "a.yaml", text_data_dir, benchmark={"in_genai": ["int4"]},
                                    export={"backend": "optimum"}))  # fmt: skip
    with pytest.raises(RecipeError, match="'nope' is not a variant of this recipe"):
        load_recipe(write_lm_recipe(tmp_path / "b.yaml", text_data_dir, benchmark={"in_genai": ["nope"]}))


def test_the_same_model_in_other_runtimes_is_a_row_per_runtime_and_target_with_ratio_cpu_and_greedy():
    from compress.tasks.causal_lm.report import _same_model_section

    def t(rate, **more):
        return {"tokens_per_s": rate, "ttft_ms": {"16": {"p50": 2.0}}, "cpu_per_wall": 1.0, **more}

    greedy = {"tokens": [[1, 2], [3, 4], [5, 6]]}
    report = {
        "settings": {"ttft_headline_length": 16},
        "environment": {"targets": {"iot": {"intra_op_spinning": False}, "spin": {"intra_op_spinning": True}}},
        "variants": [
            {"name": "int8", "stage": "quantize", "runtime": "onnxruntime", "greedy": greedy,
             "targets": {"iot": t(900.0, tokens_per_s_ci=[880.0, 920.0]), "spin": t(1500.0)}},
            {"name": "int8-genai", "stage": "anchor", "runtime": "genai", "parent": "int8",
             "greedy": {"tokens": [[1, 2], [3, 9], [5, 6]]},
             "targets": {"iot": t(1000.0, vs_parent={"ratio": 0.9, "ci": [0.88, 0.93]}), "spin": t(1400.0)}},
            {"name": "int8-llama.cpp", "stage": "anchor", "runtime": "llama.cpp", "parent": "int8",
             "path": "/r/benchmark/gguf/student/student-q8_0.gguf", "greedy": greedy,
             "targets": {"iot": t(500.0), "spin": t(800.0, cpu_per_wall=1.97)}},
            {"name": "genai-int4", "stage": "anchor", "runtime": "genai", "parent": "teacher-torch",
             "targets": {"iot": t(1.0)}},
        ],
    }  # fmt: skip
    (sec,) = _same_model_section(report)
    assert [r[:3] for r in sec.rows] == [
        ["int8", "this project's loop", "iot"], ["", "GenAI's generator", "iot"], ["", "llama.cpp (Q8_0)", "iot"],
        ["int8", "this project's loop", "spin"], ["", "GenAI's generator", "spin"], ["", "llama.cpp (Q8_0)", "spin"],
    ]  # fmt: skip
    assert sec.rows[0][3:5] == ["900 [880, 920]", "1"] and sec.rows[1][3:5] == ["1000", "0.90x [0.88, 0.93]"]
    assert sec.rows[1][-1] == "2/3" and sec.rows[2][-1] == "3/3" and sec.rows[5][6] == "1.97"
    assert "iot off, spin on" in sec.paragraphs[0]
    assert _same_model_section({"variants": report["variants"][3:]}) == []


def test_same_model_ratios_pair_each_generation_of_our_loop_with_the_other_runtimes():
    from compress.tasks.causal_lm.suite import same_model_ratios

    class T:
        name = "iot"

    # two lengths x 2 generations of 3 steps each; GenAI takes 1.25x our time on every generation
    ours = {"32": [0.01, 0.01, 0.01, 0.02, 0.02, 0.02], "128": [0.03] * 6}
    res = {
        "ttft_s": {n: {"int8": [0.1, 0.1], "int8-genai": [0.1, 0.1]} for n in ("32", "128")},
        "step_s": {n: {"int8": ours[n], "int8-genai": [1.25 * x for x in ours[n]]} for n in ("32", "128")},
    }
    records = {
        "int8": {"stage": "quantize", "runtime": "onnxruntime", "parent": "student", "targets": {"iot": {}}},
        "int8-genai": {"stage": "anchor", "runtime": "genai", "parent": "int8", "targets": {"iot": {}}},
        "genai-int4": {"stage": "anchor", "runtime": "genai", "parent": "teacher", "targets": {"iot": {}}},
    }
    same_model_ratios(records, [T()], {"iot": res}, "iot")
    got = records["int8-genai"]["vs_parent"]
    assert got["ratio"] == pytest.approx(1.25) and got["ci"] == pytest.approx([1.25, 1.25]) and got["requests"] == 4
    assert "vs_parent" not in records["genai-int4"] and "vs_parent" not in records["int8"]


def test_a_random_weight_published_shape_goes_through_the_ptq_path_only_when_said_to(text_data_dir, tmp_path):
    """configs/lm-ptq-shapes.yaml's path on a cut-down Qwen2.5-0.5B shape (its 151,936-token vocabulary, one narrow
    layer): random weights fail the collapse gate unless `teacher.random_weights` says they are random; then export,
    int4 and benchmark run, and the gates say the collapse test was skipped."""
    from compress.errors import StageError
    from compress.tasks.causal_lm.shapes import build_random
    from tests.lm_fixtures import make_documents

    shape = tmp_path / "shape"
    small = {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": 256}  # fmt: skip
    build_random("qwen2.5-0.5b", shape, make_documents()["train"], overrides=small)
    recipe = dict(
        distill=[],
        prune=[],
        quantize=[{"name": "int4", "source": "teacher", "block_size": 16, "accuracy_level": 0}],
        benchmark={"baselines": []},  # the gates are under test, not optimum's export of a 152k vocabulary
    )
    refused = write_lm_recipe(tmp_path / "refused.yaml", text_data_dir, teacher={"path": str(shape)}, **recipe)
    with pytest.raises(StageError, match="collapsed"):
        run_pipeline(load_recipe(refused), tmp_path / "refused", log=lambda _: None)
    path = write_lm_recipe(
        tmp_path / "recipe.yaml", text_data_dir, teacher={"path": str(shape), "random_weights": True}, **recipe
    )
    report = run_pipeline(load_recipe(path), tmp_path / "run", log=lambda _: None)
    gate = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["quantize/int4"]["metrics"]["gate"]
    assert gate["passed"] and gate["collapse"] == {"skipped": "random weights"}
    int4 = next(v for v in report["variants"] if v["name"] == "int4")
    assert int4["params"] > 151936 * 64  # the published vocabulary's embedding is there


def test_a_torchrun_launch_trains_on_both_ranks_writes_one_run_and_matches_one_process(lm_run, tmp_path):
    """`torchrun --nproc_per_node 2 -m compress run RECIPE` (gloo on CPU): the teacher and the student train as one
    DDP job over both ranks at batch 4 each, every other step runs on rank 0 alone, one manifest is written; the
    models are the one-process run's (lm_run, batch 8: the same global batch) to within float summation order
    (gradients averaged over ranks, 1 thread per rank against 2), which Adam's normalised steps carry through 138
    steps: the same step count, dev perplexity within 0.5%, every tensor within 5% relative L2 (measured: 0.2% and
    2.3%)."""
    from safetensors.torch import load_file

    recipe, one, _, _ = lm_run
    data = recipe.data.train.parent
    path = write_lm_recipe(
        tmp_path / "recipe.yaml",
        data,
        teacher={"batch_size": 4},
        distill={"batch_size": 4},
        prune=[],
        quantize=[{"name": "int8", "method": "dynamic"}],
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "compress", "run", str(path)]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in manifest["plan"])
    assert done.stdout.count("[1/") == 2  # one rank logs: "running" and "done" of step 1, once
    alone = json.loads((one / "manifest.json").read_text())
    for step in ("teacher", "distill/student"):
        mine, theirs_m = manifest["stages"][step]["metrics"], alone["stages"][step]["metrics"]
        assert mine["runtime"]["world_size"] == 2
        assert mine["train_steps"] == theirs_m["train_steps"]  # global batches of 8, not each rank's 4 alone
        ours, theirs = load_file(out / step / "model.safetensors"), load_file(one / step / "model.safetensors")
        worst = max(float((ours[k] - theirs[k]).norm() / theirs[k].norm()) for k in theirs)
        assert worst < 0.05, f"{step}: a tensor {worst:.1%} (relative L2) from the one-process run's"
        assert mine["dev_perplexity_torch"] == pytest.approx(theirs_m["dev_perplexity_torch"], rel=5e-3)
    assert not list(out.glob("**/edge-compress-rank*"))  # the other rank wrote nothing here
