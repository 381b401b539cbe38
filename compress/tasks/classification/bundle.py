"""A deployment bundle: one directory with everything a phone-class device needs to classify text.

    model.onnx  model.ort  required_operators.config  tokenizer.json  labels.json  bundle.json
    manifest.json (the run's)  predict.py  README.md

`predict.py` needs only onnxruntime, tokenizers and numpy: no torch, no transformers. `predict(bundle_dir,
texts)` runs that same file, so the library, the `edge-compress predict` command and the device give the same
answers.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import ModuleType

from compress.manifest import atomic_dir, library_versions
from compress.targets import BASELINES
from export.artifact import Artifact, copy_model, with_external_data
from export.bundle_checks import BundleError, choose_variant, load_bundle_script, measured_artifact, open_run, sha256

TEMPLATE = Path(__file__).resolve().parent / "bundle_template" / "predict.py"
SAMPLE_TEXTS = [
    "a gripping, beautifully acted film",
    "two hours I will not get back",
    "it was fine, I suppose",
    "",
]


def _legacy_step(variant: dict, run_dir: Path) -> str:
    """The step directory of a variant in a report written before reports named it: the last two parts of its
    recorded path's directory (`export/<name>` or `quantize/<name>`), looked up inside `run_dir`."""
    parent = Path(variant["path"]).parent
    step = "/".join(parent.parts[-2:])
    if not (Path(run_dir) / step).is_dir():
        raise BundleError(f"{variant['path']}: no {step} in {run_dir}")
    return step


def _target_p50(v: dict, target: str) -> float:
    lat = v.get("targets", {}).get(target, {}).get("latency_ms", {})
    return (lat.get("real") or v["latency_ms"])["p50"]


def select_variant(report: dict, target: str, *, max_accuracy_drop: float = 0.01) -> tuple[dict, str]:
    """The variant to ship to `target`: the fastest there among the deployable ONNX variants whose dev accuracy
    is within `max_accuracy_drop` of the teacher's.

    Returns:
        The report's variant record and a sentence saying why it was chosen.

    Raises:
        BundleError: no deployable variant, or none within the accuracy budget (names the candidates).
    """
    variants = report["variants"]
    deployable = [v for v in variants if v["runtime"] == "onnxruntime" and v["name"] not in BASELINES]
    if not deployable:
        raise BundleError("the report has no deployable ONNX variant (only baselines)")
    by = {v["name"]: v for v in variants}
    ref = by.get(report.get("reference") or "", by.get("teacher-onnx", by.get("teacher-torch")))
    floor = ref["accuracy"] - max_accuracy_drop if ref else -1.0
    ok = [v for v in deployable if v["accuracy"] >= floor - 1e-9]  # 0.805 - 0.01 is 0.79499... in floats
    if not ok:
        listed = ", ".join(f"{v['name']} ({v['accuracy']:.4f})" for v in deployable)
        raise BundleError(
            f"no variant within {max_accuracy_drop:.3f} of the teacher's dev accuracy {ref['accuracy']:.4f}: "
            f"{listed}; name one with variant= / --variant, or allow a larger drop"
        )
    best = min(ok, key=lambda v: _target_p50(v, target))
    why = (
        f"fastest p50 on target {target} ({_target_p50(best, target):.2f} ms) among the {len(ok)} deployable "
        f"variant(s) within {max_accuracy_drop:.3f} of the teacher's dev accuracy "
        f"({best['accuracy']:.4f} vs {ref['accuracy']:.4f})"
        if ref
        else f"fastest p50 on target {target} among {len(ok)} deployable variant(s)"
    )
    return best, why


def _labels(model_dir: Path) -> list[str]:
    cfg = json.loads((model_dir / "config.json").read_text())
    id2label = cfg.get("id2label") or {}
    if not id2label:
        raise BundleError(f"{model_dir / 'config.json'}: no id2label, so the labels are unknown")
    return [id2label[k] for k in sorted(id2label, key=int)]




def _sample_texts(manifest: dict, n: int = 32) -> list[str]:
    """A few dev sentences of the run (when its data file is still there) plus fixed ones, for the check."""
    texts = list(SAMPLE_TEXTS)
    try:
        from compress.tasks.classification.config import DataConfig
        from compress.tasks.classification.data import load_task_data

        texts += load_task_data(DataConfig(**manifest["recipe"]["data"])).dev.texts[:n]
    except Exception:  # noqa: BLE001 - the data may have moved; the fixed sentences still check the files
        pass
    return texts


def load_predict_module(bundle_dir: Path) -> ModuleType:
    """The bundle's own `predict.py`, imported as a module (what runs on the device)."""
    return load_bundle_script(bundle_dir, "predict.py")


def predict(bundle_dir: Path, texts: list[str], *, model: str = "auto", threads: int | None = None) -> list[dict]:
    """Classify `texts` with a bundle, through the bundle's own predict.py.

    Returns:
        One dict per text: label, label_id, scores (softmax over the labels), truncated; or error.
    """
    module = load_predict_module(Path(bundle_dir))
    return module.Classifier(bundle_dir, model=model, threads=threads).classify(list(texts))


def _readme(meta: dict) -> str:
    return f"""# {meta["variant"]} for target {meta["target"]}

From run `{meta["run"]}`. {meta["selection"]}.

```bash
pip install onnxruntime tokenizers numpy     # nothing else: no torch, no transformers
python predict.py "a gripping, beautifully acted film"
python predict.py --file texts.txt           # one text per line; one JSON line out per line in
```

{_model_lines(meta)}
- `tokenizer.json`: the tokenizer (Hugging Face `tokenizers`); texts are cut to {meta["max_length"]} tokens.
- `labels.json`: label names in output order. `bundle.json`: what this is, figures measured for it, checksums.
- `manifest.json`: the run that produced the model (recipe, per-stage hashes, versions).
"""


def _model_lines(meta: dict) -> str:
    ort_line = (
        "- `model.ort`: ONNX Runtime's mobile format (for onnxruntime-android / -ios / minimal builds). "
        "`required_operators.config` lists the operators a\n  minimal ONNX Runtime build needs "
        "(`build.sh --include_ops_by_config required_operators.config`)."
    )
    if meta.get("default_model") == "onnx":
        onnx_line = (
            "- `model.onnx` + `model.onnx.data`: what `predict.py` loads by default (`--model ort` for the .ort): "
            "the graph\n  optimized offline, the weights in a side file that ONNX Runtime memory-maps, which "
            "takes less memory\n  than loading model.ort (measured in the run's report)."
        )
    else:
        onnx_line = "- `model.onnx`: the ONNX model; `predict.py` uses model.ort by default, `--model onnx` this one."
    return onnx_line + "\n" + ort_line


def _copy_files(tmp: Path, model_dir: Path, run_dir: Path, target: str) -> tuple[bool, dict, list[str]]:
    """Write model, .ort, tokenizer, labels, manifest, predict.py into `tmp`; returns (external data?, conv, labels)."""
    from export.mobile import convert_to_ort

    copy_model(model_dir / "model.onnx", tmp, "model.onnx")
    external = len(with_external_data(tmp / "model.onnx")) > 1
    conv = convert_to_ort(tmp / "model.onnx", tmp, target_platform="arm" if target in ("mobile", "iot") else None)
    shutil.copy2(model_dir / "tokenizer.json", tmp / "tokenizer.json")
    labels = _labels(model_dir)
    (tmp / "labels.json").write_text(json.dumps(labels, ensure_ascii=False) + "\n")
    shutil.copy2(run_dir / "manifest.json", tmp / "manifest.json")
    shutil.copy2(TEMPLATE, tmp / "predict.py")
    return external, conv, labels


def _metadata(
    report: dict,
    chosen: dict,
    target: str,
    *,
    threads,
    why: str,
    max_length: int,
    labels: list[str],
    inputs: list[str],
    conv: dict,
    graph_optimized,
    external: bool,
) -> dict:
    """The bundle's metadata: what was chosen and why, its inputs and labels, figures measured for it."""
    return {
        "format": 1,
        "run": report.get("run"),
        "variant": chosen["name"],
        "target": target,
        "threads": threads,
        "selection": why,
        "max_length": max_length,
        "labels": labels,
        "inputs": inputs,
        "measured": {
            k: chosen.get(k)
            for k in ("accuracy", "accuracy_test", "agreement_with_teacher", "size_bytes", "size_gzip_bytes")
        }
        | {
            "p50_ms_on_target": _target_p50(chosen, target),
            "cpu": report.get("environment", {}).get("cpu", {}).get("model"),
            "isa": [k for k, on in report.get("environment", {}).get("cpu", {}).get("isa", {}).items() if on],
            "mobile_usability": chosen.get("ort", {}).get("mobile_usability", {}).get("verdict"),
        },
        "ort_conversion": {k: conv[k] for k in ("target_platform", "optimization_style")},
        # model.onnx's graph was optimized offline: predict.py loads it with ONNX Runtime's optimizations off.
        "graph_optimized": graph_optimized,
        # What predict.py loads by default: the form the benchmark measured. With its weights memory-mapped
        # from model.onnx.data, model.onnx loads in less memory than model.ort, which ONNX Runtime reads
        # whole; model.ort stays for mobile packages and minimal builds, which load only that format.
        "default_model": "onnx" if external else "ort",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {k: v for k, v in library_versions().items() if k in ("onnxruntime", "onnx", "tokenizers")},
    }


def _check(tmp: Path, manifest: dict, labels: list[str]) -> dict:
    """How far model.ort and model.onnx agree on sample sentences, through the bundle's predict.py; the sentences
    and both files' results are kept in check.json (what `edge-compress verify` compares another CPU with)."""
    texts = _sample_texts(manifest)
    via_ort, via_onnx = predict(tmp, texts, model="ort"), predict(tmp, texts, model="onnx")
    record = {
        "task": "classification",
        "count": len(texts),
        "texts": texts,
        "expected": {
            m: [{"label_id": r.get("label_id"), "scores": r.get("scores")} for r in rows]
            for m, rows in (("ort", via_ort), ("onnx", via_onnx))
        },
    }
    (tmp / "check.json").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    diffs = [
        abs(a["scores"][lab] - b["scores"][lab])
        for a, b in zip(via_ort, via_onnx, strict=True)
        if "scores" in a and "scores" in b
        for lab in labels
    ]
    return {
        "texts": len(texts),
        "ort_vs_onnx_label_agreement": sum(
            a.get("label") == b.get("label") for a, b in zip(via_ort, via_onnx, strict=True)
        )
        / len(texts),
        "ort_vs_onnx_max_score_diff": max(diffs) if diffs else None,
    }


# What runs in the emulated arm64 guest (`export.verify`): the bundle's own predict.py on the recorded texts.
VERIFY_GUEST = r'''
def main(bundle_dir, check_file, out_file):
    sys.path.insert(0, str(bundle_dir))
    import predict

    check = json.loads(check_file.read_text(encoding="utf-8"))
    out = {}
    for model in check["expected"]:
        rows = predict.Classifier(bundle_dir, model=model, threads=1).classify(check["texts"])
        out[model] = [{"label_id": r.get("label_id"), "scores": r.get("scores")} for r in rows]
    out_file.write_text(json.dumps(out))
'''
# A label may differ from x86's only where x86's own two candidates were this close (a near-tie), and no score by
# more than this: int8 kernels differ between architectures (seen on QEMU's Cortex-A72: 2.6e-2).
SCORE_TOLERANCE = 0.06


def compare_verification(check: dict, result: dict, tolerance: float = SCORE_TOLERANCE) -> dict:
    """The guest's labels and scores against the ones recorded at bundle time, per model file."""
    per_model, passed, worst = {}, True, 0.0
    for model, expected in check["expected"].items():
        got = result.get(model) or []
        same, ties, diffs, unexplained = 0, 0, [], []
        for i, (want, have) in enumerate(zip(expected, got, strict=True)):
            if want.get("scores") is None or have.get("scores") is None:
                same += want.get("label_id") == have.get("label_id")
                continue
            diffs += [abs(want["scores"][k] - have["scores"][k]) for k in want["scores"]]
            if want["label_id"] == have["label_id"]:
                same += 1
                continue
            top = sorted(want["scores"].values(), reverse=True)
            if top[0] - top[1] <= tolerance:
                ties += 1
            else:
                unexplained.append(i)
        largest = max(diffs, default=0.0)
        worst = max(worst, largest)
        ok = not unexplained and largest <= tolerance
        passed &= ok
        per_model[model] = {"inputs": len(expected), "labels_identical": same, "near_ties": ties,
                            "unexplained": unexplained, "max_score_diff": largest, "passed": ok}  # fmt: skip
    summary = ", ".join(
        f"{m}: {r['labels_identical']}/{r['inputs']} labels, max score diff {r['max_score_diff']:.1e}"
        for m, r in per_model.items()
    )
    return {"models": per_model, "score_tolerance": tolerance, "max_score_diff": worst, "passed": passed,
            "summary": summary}  # fmt: skip


def verify(bundle_dir: Path, cpus: list[str], progress=print) -> dict:
    """The bundle's predict.py on emulated arm64 CPUs against its recorded labels and scores (`export.verify`)."""
    from export.verify import verify_bundle

    return verify_bundle(bundle_dir, VERIFY_GUEST, compare_verification, cpus, progress)


def bundle(
    run_dir: Path,
    target: str,
    out_dir: Path,
    variant: str | None = None,
    *,
    max_accuracy_drop: float = 0.01,
    force: bool = False,
) -> dict:
    """Write a deployment bundle for `target` from a finished run.

    Args:
        run_dir: a run directory holding report.json and manifest.json.
        target: a target name (`host`, `mobile`, `iot`, or one the run measured); sets the session's thread
            count and the .ort conversion (ARM-friendly int8 fusions for mobile and iot).
        out_dir: the bundle directory (replaced atomically if it exists).
        variant: the variant to ship; default: `select_variant` (fastest on the target within
            `max_accuracy_drop` of the teacher's accuracy).

    Returns:
        The bundle's metadata (also written to `out_dir/bundle.json`), including a check that model.ort and
        model.onnx give the same labels on sample sentences.

    Raises:
        BundleError: a missing report, an unknown variant or target, a variant that is not ONNX.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    report, manifest = open_run(run_dir, out_dir, force, variant)
    chosen, why, threads = choose_variant(
        report, run_dir, target, variant, lambda r, t: select_variant(r, t, max_accuracy_drop=max_accuracy_drop)
    )
    step_id = chosen.get("artifact") or _legacy_step(chosen, run_dir)
    model_dir = measured_artifact(run_dir, manifest, step_id)  # inside the run directory given, as measured
    max_length = int(manifest.get("recipe", {}).get("data", {}).get("max_length", 128))

    artifact = Artifact.read(model_dir)
    with atomic_dir(out_dir) as tmp:
        external, conv, labels = _copy_files(tmp, model_dir, run_dir, target)
        import onnx

        graph = onnx.load(str(tmp / "model.onnx"), load_external_data=False).graph
        meta = _metadata(
            report,
            chosen,
            target,
            threads=threads,
            why=why,
            max_length=max_length,
            labels=labels,
            inputs=[i.name for i in graph.input],
            conv=conv,
            graph_optimized=artifact.graph_optimized,
            external=external,
        )
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        # The shipped files must agree: the .ort conversion against the ONNX model, through predict.py itself.
        meta["check"] = _check(tmp, manifest, labels)
        (tmp / "README.md").write_text(_readme(meta))
        meta["files"] = {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.is_file() and f.name != "bundle.json"}
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta
