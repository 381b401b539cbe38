"""Measurement in a fresh process: the child's environment and limits, running a worker module, and what the
child really ran under.

A fresh process per target (or per model) means one measurement's thread pools, arenas and warmed caches do
not carry into the next. Every task's benchmark worker starts the same way: `run_worker` writes the job to a
JSON file and runs `python -m MODULE JOB.json` with the target's thread environment; the worker's `main`
calls `apply_limits` before importing numerical libraries and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: workers run `-m` modules from here
EMULATION_NOTE = (
    "Targets emulate device classes on this CPU (thread count, intra-op spinning off unless a target turns it on, "
    "core pinning, "
    "address-space cap); they are not measurements on those devices."
)


def thread_env(threads: int, spinning: bool = False) -> dict[str, str]:
    """Environment for a child process: OpenMP (PyTorch's and llama.cpp's thread pools) sized and told not to spin.

    With `spinning`, OpenMP keeps its own default policy (libgomp: a short spin, about 300,000 iterations, before a
    thread sleeps), what PyTorch and llama.cpp do out of the box; not ACTIVE, whose threads spin for seconds after
    their work ends and would take a core from the next variant timed in the same process."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if not spinning:
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # the OpenMP counterpart of ORT's allow_spinning=0
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    return env


def apply_limits(cpus: list[int] | None, memory_limit_bytes: int | None) -> None:
    """Pin this process to `cpus` and cap its address space; call before importing numerical libraries,
    whose thread pools size themselves from the affinity mask at import."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if memory_limit_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))


def process_facts(runners: dict) -> dict:
    """What the worker actually ran under, read back from the process and the sessions (not the spec).

    Args:
        runners: variant -> callable; those with a `session` attribute are ONNX Runtime sessions.
    """
    facts: dict = {"affinity": sorted(os.sched_getaffinity(0)), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    sessions = [r.session for r in runners.values() if hasattr(r, "session")]
    if sessions:
        so = sessions[0].get_session_options()
        facts["ort_intra_op_threads"] = so.intra_op_num_threads
        facts["ort_allow_spinning"] = so.get_session_config_entry("session.intra_op.allow_spinning")
    if "torch" in sys.modules:
        facts["torch_threads"] = sys.modules["torch"].get_num_threads()
    return facts


def run_worker(module: str, target, spec: dict, what: str = "benchmark worker") -> dict:
    """Run `python -m module SPEC.json` for one target in a fresh process; return its last JSON line.

    Args:
        module: the worker module (its `main` reads the spec, applies the limits, prints one JSON line).
        target: a resolved `compress.targets.Target`: its threads and cores go into the spec and environment.
        spec: the job; `threads` and `cpus` are added.

    Returns:
        The worker's result with `wall_s` (the whole process, seconds) added.

    Raises:
        RuntimeError: the worker failed; the message holds the last lines of its stderr.
    """
    spinning = bool(getattr(target, "spinning", False))
    cpus = list(target.cpus) if target.cpus is not None else None
    spec = {"threads": target.threads, "cpus": cpus, "spinning": spinning, **spec}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", module, str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=thread_env(target.threads, spinning),
        )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{what} for target {target.name!r} failed: {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def read_spec() -> dict:
    """In a worker's `main`: the spec file named on the command line, with the target's cores applied."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    apply_limits(spec["cpus"], None)
    return spec


def environment(targets: list, primary: str, per_target: dict, cpu: dict | None = None) -> dict:
    """What every benchmark's results record of where they were measured: the CPU (model, ISA), the primary
    target's threads, library versions, and each target's settings with what its worker really ran under.

    Args:
        targets: the resolved `compress.targets.Target`s measured.
        per_target: target name -> the worker's result (its `process` facts and `wall_s`).
        cpu: `compress.hardware.cpu_info()`, when the caller has it already.
    """
    from compress.hardware import cpu_info
    from compress.manifest import library_versions

    return {
        "cpu": cpu if cpu is not None else cpu_info(),
        "threads": next(t for t in targets if t.name == primary).threads,
        "execution_provider": "CPUExecutionProvider",
        "versions": library_versions(),
        "targets": {
            t.name: {
                **t.describe(),
                "process": per_target[t.name]["process"],
                "worker_wall_s": per_target[t.name]["wall_s"],
            }
            for t in targets
        },
        "emulation": EMULATION_NOTE,
    }
