"""A deployment bundle of a seq2seq model: one directory with everything a device needs to translate (or
summarize) text.

    encoder_model.onnx  decoder_model_merged.onnx  tokenizer.json (+ the tokenizer's other files)  seq2seq.json
    bundle.json  manifest.json (the run's)  translate.py  README.md

`translate.py` needs only onnxruntime, tokenizers and numpy; it is the loop the pipeline measured
(`compress/tasks/seq2seq/bundle_template/translate.py`). Before the bundle is written, that file, run from the
bundle directory with its own tokenizer, must reproduce the benchmark's outputs for the first dev inputs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from compress.manifest import atomic_dir, library_versions
from compress.targets import BASELINES
from export.bundle_checks import BundleError, choose_variant, load_bundle_script, measured_artifact, open_run, sha256

TEMPLATE = Path(__file__).resolve().parent / "bundle_template" / "translate.py"
SPEED_TIE = 0.05  # speeds this close to the fastest are one speed on a shared machine
CHECK_INPUTS = 20  # dev inputs whose outputs the bundle must reproduce
MODEL_FILES = ("encoder_model.onnx", "decoder_model_merged.onnx")


class Seq2SeqBundleError(BundleError):
    """A run that cannot be bundled as asked, or a bundle that does not reproduce the measured outputs."""


def select_variant(report: dict, target: str, *, max_chrf_drop: float = 1.0) -> tuple[dict, str]:
    """The variant to ship to `target`: among the deployable ONNX variants whose dev chrF is at most
    `max_chrf_drop` points below the PyTorch teacher's, the fastest (sentences/s on `target`); speeds within 5% of
    the fastest count as ties, and among them the smallest download (gzip size) wins.

    Raises:
        Seq2SeqBundleError: no deployable variant, or none within the bound (names each with its chrF).
    """
    variants = report["variants"]
    deployable = [v for v in variants if v["runtime"] == "onnxruntime" and v["name"] not in BASELINES]
    if not deployable:
        raise Seq2SeqBundleError("the report has no deployable ONNX variant (only baselines)")
    ref = next(v for v in variants if v["name"] == "teacher-torch")
    floor = ref["dev_chrf"] - max_chrf_drop
    ok = [v for v in deployable if v["dev_chrf"] >= floor - 1e-9]
    if not ok:
        listed = ", ".join(f"{v['name']} ({v['dev_chrf']:.2f})" for v in deployable)
        raise Seq2SeqBundleError(
            f"no variant within {max_chrf_drop:g} chrF points of the teacher's dev chrF {ref['dev_chrf']:.2f}: "
            f"{listed}; name one with --variant, or loosen the rule (--max-chrf-drop)"
        )

    def speed(v: dict) -> float:
        return v["targets"][target]["sentences_per_s"]

    fastest = max(speed(v) for v in ok)
    ties = [v for v in ok if speed(v) >= fastest * (1 - SPEED_TIE)]
    best = min(ties, key=lambda v: v.get("size_gzip_bytes") or 0)
    why = (
        f"fastest on target {target} ({speed(best):.1f} sentences/s"
        + (f"; {len(ties)} within {SPEED_TIE:.0%} of the fastest, the smallest of them" if len(ties) > 1 else "")
        + f") among the {len(ok)} deployable variant(s) within {max_chrf_drop:g} chrF points of the teacher "
        f"({best['dev_chrf']:.2f} vs {ref['dev_chrf']:.2f})"
    )
    return best, why


def _expected(run_dir: Path, name: str, n: int) -> list[dict]:
    path = Path(run_dir) / "benchmark" / "outputs" / f"{name}.dev.jsonl"
    if not path.is_file():
        raise Seq2SeqBundleError(f"{path}: the benchmark's outputs for {name} are missing; run the pipeline again")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def _module(bundle_dir: Path):
    return load_bundle_script(bundle_dir, "translate.py", "translation bundle")


def check_bundle(bundle_dir: Path, expected: list[dict], threads: int) -> dict:
    """Run the bundle's own `translate.py` (its Translator and tokenizer) on the expected inputs; every output
    must equal the benchmark's.

    Raises:
        Seq2SeqBundleError: an output differs (names the first).
    """
    module = _module(bundle_dir)
    translator = module.Translator(bundle_dir, threads)
    tok = module._tokenizer(bundle_dir, translator.settings)
    prefix = translator.settings.get("source_prefix", "")
    max_length = int(translator.settings["max_target_length"])
    ids = [tok.encode(prefix + e["input"]).ids for e in expected]
    outs = [translator.greedy([x], max_length)[0] for x in ids]
    got = [tok.decode(o, skip_special_tokens=True) for o in outs]
    differ = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e["output"]]
    if differ:
        i = differ[0]
        raise Seq2SeqBundleError(
            f"the bundle's translate.py does not reproduce the benchmark: {len(differ)}/{len(expected)} outputs "
            f"differ; first, input {i} {expected[i]['input'][:60]!r}: {got[i][:60]!r} vs {expected[i]['output'][:60]!r}"
        )
    # what `verify` replays on other CPUs: the input and output ids
    (bundle_dir / "check.json").write_text(
        json.dumps({"inputs": ids, "expected": {"onnx": outs}, "max_length": max_length})
    )
    return {"inputs": len(expected), "identical_outputs": len(expected)}


def write_bundle(
    run_dir: Path,
    target: str,
    out_dir: Path,
    variant: str | None = None,
    *,
    max_chrf_drop: float = 1.0,
    force: bool = False,
) -> dict:
    """Write the bundle of a seq2seq run (see the module docstring); returns its metadata (bundle.json)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    report, manifest = open_run(run_dir, out_dir, force, variant)
    chosen, why, threads = choose_variant(
        report, run_dir, target, variant, lambda r, t: select_variant(r, t, max_chrf_drop=max_chrf_drop)
    )
    if not chosen.get("artifact"):
        raise Seq2SeqBundleError(f"variant {chosen['name']!r}: the report does not name its artifact directory")
    artifact_dir = measured_artifact(run_dir, manifest, chosen["artifact"])
    expected = _expected(run_dir, chosen["name"], CHECK_INPUTS)
    with atomic_dir(out_dir) as tmp:
        for f in artifact_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        shutil.copy2(run_dir / "manifest.json", tmp / "manifest.json")
        shutil.copy2(TEMPLATE, tmp / "translate.py")
        check = check_bundle(tmp, expected, threads)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        meta = {
            "format": 1,
            "task": "seq2seq",
            "run": report["run"],
            "variant": chosen["name"],
            "target": target,
            "threads": threads,
            "selection": why,
            "figures": {
                k: chosen.get(k)
                for k in ("dev_chrf", "dev_bleu", "test_chrf", "test_bleu", "size_bytes", "size_gzip_bytes", "params")
            }
            | {"sentences_per_s": chosen["targets"][target]["sentences_per_s"]},
            "check": check,
            "check_inputs": expected,
            "files": {name: sha256(tmp / name) for name in files},
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "README.md").write_text(_readme(meta))
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


VERIFY_GUEST = r"""
def main(bundle_dir, check_file, out_file):
    sys.path.insert(0, str(bundle_dir))
    import translate

    check = json.loads(check_file.read_text(encoding="utf-8"))
    tr = translate.Translator(bundle_dir, threads=1)
    rows = []
    for ids, want in zip(check["inputs"], check["expected"]["onnx"]):
        got = tr.greedy([ids], check["max_length"])[0]
        row = {"tokens": got}
        k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if k is not None:
            z = tr.forced_logits(ids, want[:k])
            row["divergence"] = {"step": k, "expected": int(want[k]), "got": int(got[k]),
                                 "guest_margin": float(z[got[k]] - z[want[k]])}
        rows.append(row)
    out_file.write_text(json.dumps({"onnx": rows}))
"""
# An output token may differ from x86's only where x86's own top two were this close in logit (a near-tie: the
# other CPU's rounding may pick either); anywhere else a different token is a fault.
NEAR_TIE_LOGIT = 0.1


def compare_verification(bundle_dir: Path, check: dict, result: dict, near_tie: float = NEAR_TIE_LOGIT) -> dict:
    """The guest's greedy outputs against the ones recorded at bundle time; at each first divergence, x86's logit
    margin between the recorded token and the guest's, computed here by the bundle's own translate.py, tells a
    near-tie from a fault."""
    translator = None
    same, ties, faults = 0, [], []
    for i, (ids, want, row) in enumerate(zip(check["inputs"], check["expected"]["onnx"], result.get("onnx") or [],
                                             strict=True)):  # fmt: skip
        div = row.get("divergence")
        if div is None and row["tokens"] == want:
            same += 1
            continue
        if div is None:  # one output is a prefix of the other: a fault (the end token was not a near-tie here)
            faults.append({"input": i, "reason": f"{len(row['tokens'])} tokens instead of {len(want)}"})
            continue
        translator = translator or _module(Path(bundle_dir)).Translator(bundle_dir, 1)
        z = translator.forced_logits(ids, want[: div["step"]])
        entry = {"input": i, **div, "x86_margin": float(z[div["expected"]] - z[div["got"]])}
        (ties if entry["x86_margin"] <= near_tie else faults).append(entry)
    ok = not faults
    summary = f"onnx: {same}/{len(check['inputs'])} greedy outputs identical, {len(ties)} near-tie(s)"
    return {"models": {"onnx": {"inputs": len(check["inputs"]), "identical": same, "near_ties": ties,
                                "faults": faults, "passed": ok}},
            "near_tie_logit": near_tie, "passed": ok, "summary": summary}  # fmt: skip


def verify(bundle_dir: Path, cpus: list[str], progress=print) -> dict:
    """The bundle's translate.py on emulated arm64 CPUs against its recorded outputs (`export.verify`)."""
    from export.verify import verify_bundle

    return verify_bundle(bundle_dir, VERIFY_GUEST, lambda c, r: compare_verification(bundle_dir, c, r), cpus, progress)


def bundle_message(meta: dict, out_dir: Path) -> str:
    f = meta["figures"]
    return (
        f"bundle: {out_dir} ({meta['variant']} for {meta['target']}: dev chrF {f['dev_chrf']:.2f}, "
        f"{f['sentences_per_s']:.1f} sentences/s; {meta['check']['identical_outputs']}/{meta['check']['inputs']} "
        f'outputs identical to the benchmark\'s)\n  {meta["selection"]}\n  try: python {out_dir}/translate.py "..."'
    )


def _readme(meta: dict) -> str:
    f = meta["figures"]
    return f"""# {meta["variant"]} for target {meta["target"]}

From run `{meta["run"]}`. Chosen: {meta["selection"]}.

```bash
pip install onnxruntime tokenizers numpy        # nothing else: no torch, no transformers
python translate.py "an input text"             # greedy
python translate.py --file inputs.txt --json    # one JSON line per input line
python translate.py --file inputs.txt --beams 4 # beam search
```

Measured by the pipeline: dev chrF {f["dev_chrf"]:.2f}, BLEU {f["dev_bleu"]:.2f}; {f["sentences_per_s"]:.1f}
sentences/s on target {meta["target"]} ({meta["threads"]} thread(s), one input at a time, greedy). Before this
bundle was written, its `translate.py` reproduced the benchmark's outputs for {meta["check"]["inputs"]} dev inputs
(`check_inputs` in bundle.json). `bundle.json` also holds the checksum of every file; `manifest.json` is the run
that produced the model.
"""
