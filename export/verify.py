"""A bundle checked on emulated arm64 CPUs (`export.emulate`): its own script, on the check inputs it recorded,
against what it computed on this machine when it was made.

Task-neutral: the task's bundle module gives the guest script (run as `python3.11 SCRIPT BUNDLE CHECK OUT`,
writing its results as JSON to OUT) and compares the results with the bundle's record; this module runs it on each
CPU model after a known-answer test of that CPU model, and times nothing that could be read as a speed
(emulation is 30-400x slower than a device).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export.emulate import CPUS, EmulationError, Guest

# Known-answer tolerances, relative to the largest reference output: an int8 GEMM differs from x86's only in the
# order of float additions after the integer product (seen: below 1e-5); 4-bit MatMulNBits with int8 compute
# (accuracy level 4) differs by quantizing its activations (seen: 7e-3 to 1.4e-2). A broken kernel is far off
# (QEMU 7.2's SME path: labels wrong on a third of sentences).
INT8_TOLERANCE = 1e-3
INT4_TOLERANCE = 5e-2

# The guest's side of a run: the known-answer models first, then the task's check of the bundle (the task's
# script defines `main(bundle_dir, check_file, out_file)`), in one process: importing ONNX Runtime under emulation
# takes a minute.
_GUEST_HEAD = r'''
import json, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort


def known_answer(work):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for name in json.loads((work / "models.json").read_text()):
        x = np.load(work / f"{name}.input.npy")
        s = ort.InferenceSession(str(work / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
        np.save(work / f"{name}.guest.npy", s.run(None, {s.get_inputs()[0].name: x})[0])


def main(bundle_dir, check_file, out_file):  # replaced by the task's
    pass
'''

_GUEST_TAIL = r'''

if __name__ == "__main__":
    known_answer(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        main(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
'''


def _known_answer_models(work: Path) -> dict[str, float]:
    """Small models with the kernels bundles use (dynamic int8 MatMul, 4-bit MatMulNBits at accuracy levels 0
    and 4), their inputs and their outputs on this machine, written into `work`; returns each one's tolerance."""
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # the quantizers log each step and advise pre-processing on the root logger
    try:
        return _write_known_answer_models(work)
    finally:
        root.setLevel(level)


def _write_known_answer_models(work: Path) -> dict[str, float]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from export.session import ort_session

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 128)).astype(np.float32) / 16
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "known_answer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 128])],
        [numpy_helper.from_array(w, "w")],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(fp32, work / "fp32.onnx")
    quantize_dynamic(work / "fp32.onnx", work / "int8.onnx", weight_type=QuantType.QInt8)
    tolerances = {"int8": INT8_TOLERANCE}
    for level in (0, 4):
        q = MatMulNBitsQuantizer(onnx.load(work / "fp32.onnx"), block_size=32, is_symmetric=False,
                                 accuracy_level=level)  # fmt: skip
        q.process()
        q.model.save_model_to_file(str(work / f"int4-level{level}.onnx"))
        tolerances[f"int4-level{level}"] = INT4_TOLERANCE
    x = rng.standard_normal((16, 256)).astype(np.float32)
    for name in tolerances:
        np.save(work / f"{name}.input.npy", x)
        s = ort_session(work / f"{name}.onnx", threads=1)
        np.save(work / f"{name}.host.npy", s.run(None, {s.get_inputs()[0].name: x})[0])
    (work / "models.json").write_text(json.dumps(list(tolerances)))
    return tolerances


def known_answer_check(guest: Guest, cpu: str, work: Path | None = None) -> dict:
    """The emulated `cpu` computes int8 and int4 matrix products as this machine does, within the tolerances.

    Raises:
        EmulationError: it does not (a configuration known to compute wrongly: one line with the fix), or the
            guest cannot run ONNX Runtime at all.
    """
    with tempfile.TemporaryDirectory() as d:
        work = Path(work or d)
        tolerances = _known_answer_models(work)
        t0 = time.perf_counter()
        _run_guest(guest, cpu, work, "")
        return {**_compare_known_answer(guest, cpu, work, tolerances), "wall_s": round(time.perf_counter() - t0, 1)}


def _run_guest(guest: Guest, cpu: str, work: Path, task_script: str, *args: str) -> None:
    script = work / "guest.py"
    script.write_text(_GUEST_HEAD + task_script + _GUEST_TAIL)
    r = guest.run(cpu, script, str(work), *args, timeout=3600)
    if r.returncode != 0:
        raise EmulationError(
            f"the guest failed on emulated {cpu} (QEMU {guest.qemu_version}, exit {r.returncode}): "
            f"{(r.stderr.strip().splitlines() or ['no message'])[-1][:200]}"
        )


def _compare_known_answer(guest: Guest, cpu: str, work: Path, tolerances: dict[str, float]) -> dict:
    diffs = {}
    for name in tolerances:
        host, got = np.load(work / f"{name}.host.npy"), np.load(work / f"{name}.guest.npy")
        diffs[name] = float(np.abs(host - got).max() / max(1e-12, float(np.abs(host).max())))
    bad = {k: v for k, v in diffs.items() if v > tolerances[k]}
    if bad:
        fix = (
            "QEMU before 10 computes the SME int8 path wrongly: use --cpu max with QEMU 10 or later "
            "(Debian 12: bookworm-backports' qemu-user-static), or the other CPU models"
            if cpu == "max"
            else "this emulator computes ONNX Runtime's kernels wrongly for this CPU model; try another QEMU"
        )
        worst = max(bad, key=bad.get)
        raise EmulationError(
            f"emulated {cpu} (QEMU {guest.qemu_version}) fails the known-answer test: {worst} differs by "
            f"{bad[worst]:.2g} of its largest output (tolerance {tolerances[worst]:g}); {fix}"
        )
    return {"relative_max_diff": diffs}


def run_on_cpus(
    guest: Guest,
    bundle_dir: Path,
    guest_script: str,
    check: dict,
    cpus: list[str],
    compare: Callable[[dict], dict],
    progress: Callable[[str], None] = print,
) -> dict:
    """Run `guest_script` (defining `main(bundle_dir, check_file, out_file)`) on the bundle under each of `cpus`,
    after the known-answer test in the same process, and `compare` each result with the bundle's record.

    Returns:
        {"arch", "emulator", "environment", "cpus": {cpu: {"known_answer", "comparison", "emulated_wall_s"}},
        "passed"}; `comparison` is what `compare` returned (it holds "passed").
    """
    for cpu in cpus:
        if cpu not in CPUS:
            raise EmulationError(f"--cpu {cpu}: not a CPU model this tool describes; choose from {', '.join(CPUS)}")
    out = {
        "arch": "arm64",
        "emulator": f"qemu-aarch64 {guest.qemu_version} (user mode)",
        "environment": {
            "python": "3.11 (Debian 12 arm64)",
            "wheels": sorted(guest.record.get("wheels", {})),
            "release_signature": guest.record.get("packages", {}).get("release_signature"),
        },
        "cpus": {},
        "note": "emulated: times are the emulator's, never a device's speed",
    }
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        tolerances = _known_answer_models(work)
        check_file = work / "check.json"
        check_file.write_text(json.dumps(check))
        for cpu in cpus:
            progress(f"  {cpu} ({CPUS[cpu][0]}): known-answer test, then the bundle's own script")
            result_file = work / f"{cpu}.json"
            t0 = time.perf_counter()
            _run_guest(guest, cpu, work, guest_script, str(Path(bundle_dir).resolve()), str(check_file),
                       str(result_file))  # fmt: skip
            wall = time.perf_counter() - t0
            ka = _compare_known_answer(guest, cpu, work, tolerances)
            comparison = compare(json.loads(result_file.read_text()))
            out["cpus"][cpu] = {"known_answer": ka, "comparison": comparison, "emulated_wall_s": round(wall, 1)}
            progress(f"  {cpu}: {'agrees' if comparison['passed'] else 'DIFFERS'} ({comparison['summary']})")
    out["passed"] = all(c["comparison"]["passed"] for c in out["cpus"].values())
    return out


def verify_bundle(
    bundle_dir: Path,
    guest_script: str,
    compare: Callable[[dict, dict], dict],
    cpus: list[str],
    progress: Callable[[str], None] = print,
) -> dict:
    """`run_on_cpus` on a bundle's recorded check inputs (`check.json`), the arm64 environment built if needed;
    `compare(check, result)` is the task's comparison."""
    from export.emulate import ensure_guest

    bundle_dir = Path(bundle_dir)
    check_file = bundle_dir / "check.json"
    if not check_file.is_file():
        raise EmulationError(
            f"{bundle_dir}: no check.json (the inputs and results recorded at bundle time); bundle the run again"
        )
    check = json.loads(check_file.read_text(encoding="utf-8"))
    guest = ensure_guest(progress)
    return run_on_cpus(guest, bundle_dir, guest_script, check, cpus, lambda r: compare(check, r), progress)


__all__ = ["INT4_TOLERANCE", "INT8_TOLERANCE", "known_answer_check", "run_on_cpus", "verify_bundle"]
