"""What a user would ship instead of this project's student: the same teacher, compressed by the tools people use,
run by those tools' own runtimes, and measured by the same harness as every variant (`compress.tasks.causal_lm.suite`).

- `genai-int4`: ONNX Runtime GenAI's model builder (`onnxruntime_genai.models.builder -p int4 -e cpu`, its
  defaults: symmetric int4 blocks of 32, `accuracy_level` 4 on CPU), generated with GenAI's `Generator`.
- `llama.cpp-q8_0`, `llama.cpp-q4_k_m`: llama.cpp's `convert_hf_to_gguf.py` to GGUF (f32, then Q8_0 / Q4_K_M
  through llama.cpp's own `llama_model_quantize`), run by llama.cpp through `llama-cpp-python`.

Where each tool comes from (`make anchors`; versions pinned in `pyproject.toml`'s `anchors` extra and in
`compress/tasks/causal_lm/anchor-builder.txt`):
- the runtimes, `onnxruntime-genai` and `llama-cpp-python` (built from its source archive: PyPI ships no CPU
  wheel), go into the project's venv;
- GenAI's model builder imports transformers >= 5, which optimum-onnx (the project's exporter) does not accept,
  so the builder runs from a venv of its own, `.venv-anchor-builder` (or `$EDGE_COMPRESS_ANCHOR_BUILDER`, a
  python);
- `convert_hf_to_gguf.py` and its `gguf-py` are taken from the same llama-cpp-python source archive, into
  `.anchors/llama.cpp` (or `$EDGE_COMPRESS_LLAMA_CPP_DIR`), and run with the project's python.

An anchor that cannot be built or loaded here is not dropped: the benchmark records it with the reason and the
report shows it. The per-runtime generation loops below (`GenAIRunner`, `LlamaCppRunner`) are the only code that
touches these runtimes; quality, timing and memory all go through them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from compress.tasks.causal_lm.genai import SETUP_HINT, builder_python

ROOT = Path(__file__).resolve().parents[3]  # the checkout


class AnchorUnavailable(Exception):
    """An anchor that cannot be built or run here; the message says why."""


def llama_cpp_dir() -> Path:
    env = os.environ.get("EDGE_COMPRESS_LLAMA_CPP_DIR")
    return Path(env) if env else ROOT / ".anchors" / "llama.cpp"


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in (proc.stderr or proc.stdout or "").strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else f"exit status {proc.returncode}"


def _run(cmd: list[str], what: str, timeout: int = 3600, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AnchorUnavailable(f"{what}: no result after {timeout} s") from e
    if proc.returncode != 0:
        raise AnchorUnavailable(f"{what} failed: {_tail(proc)}")
    return time.perf_counter() - t0


def build_genai_int4(teacher_dir: Path, out: Path) -> dict:
    """The teacher through GenAI's model builder at int4 for CPU, with the builder's defaults."""
    from compress.tasks.causal_lm.genai import BuilderError, build

    py = builder_python()
    if not py.exists():
        raise AnchorUnavailable(f"ONNX Runtime GenAI's model builder: no builder environment at {py}; {SETUP_HINT}")
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as e:
        raise AnchorUnavailable(f"onnxruntime-genai is not installed in this environment; {SETUP_HINT}") from e
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        built = build(teacher_dir, tmp, "int4")
    except BuilderError as e:
        raise AnchorUnavailable(str(e)) from e
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    built["command"] = built["command"].replace(str(tmp), str(out))
    return {"path": str(out), **built, "build_s": seconds}


# llama.cpp's quantization types this project makes (llama_cpp.LLAMA_FTYPE_MOSTLY_<TYPE>)
GGUF_TYPES = ("q8_0", "q4_0", "q4_1", "q4_k_m")


def build_gguf(teacher_dir: Path, out_dir: Path, kinds: list[str], stem: str = "teacher") -> dict[str, dict]:
    """The model directory `teacher_dir` converted by llama.cpp's script to an f32 GGUF, then quantized by
    llama.cpp to each of `kinds` (`GGUF_TYPES`; "f32" is the conversion itself): `out_dir/STEM-KIND.gguf`."""
    src = llama_cpp_dir()
    script = src / "convert_hf_to_gguf.py"
    if not script.exists():
        raise AnchorUnavailable(f"llama.cpp: no convert_hf_to_gguf.py in {src}; {SETUP_HINT}")
    try:
        import llama_cpp
    except ImportError as e:
        raise AnchorUnavailable(f"llama-cpp-python is not installed in this environment; {SETUP_HINT}") from e
    out_dir.mkdir(parents=True, exist_ok=True)
    f32 = out_dir / f"{stem}-f32.gguf"
    if not f32.exists():
        tmp = f32.with_suffix(".tmp")
        cmd = [
            sys.executable,
            "-m",
            "compress.tasks.causal_lm.anchors",
            "convert",
            str(script),
            str(teacher_dir),
            str(tmp),
        ]
        _run(cmd, "llama.cpp convert_hf_to_gguf.py", env={**os.environ, "HF_HUB_OFFLINE": "1"})
        tmp.rename(f32)
    built = {}
    for kind in kinds:
        path = out_dir / f"{stem}-{kind}.gguf"
        if kind == "f32":
            built[kind] = {"path": str(f32), "command": "python convert_hf_to_gguf.py MODEL --outtype f32",
                           "build_s": 0.0, "builder": {"llama-cpp-python": llama_cpp.__version__}}  # fmt: skip
            continue
        t0 = time.perf_counter()
        # In a child process: llama.cpp prints a line per tensor to the terminal.
        _run(
            [sys.executable, "-m", "compress.tasks.causal_lm.anchors", "quantize", str(f32), str(path), kind],
            "llama.cpp quantize",
        )
        built[kind] = {
            "path": str(path),
            "command": f"python convert_hf_to_gguf.py MODEL --outtype f32; llama_model_quantize(f32, {kind.upper()})",
            "build_s": time.perf_counter() - t0,
            "builder": {"llama-cpp-python": llama_cpp.__version__},
        }
    return built


def _convert(script: str, model_dir: str, outfile: str) -> None:
    """Run llama.cpp's converter in this process (its `gguf-py` first on the path, as the script does itself).

    Our teacher's tokenizer is a byte-level BPE trained here, whose pre-tokenizer the script does not know by
    hash (it lists the tokenizers of published models and refuses others, asking for an entry). Its
    pre-tokenization is GPT-2's (tokenizers' ByteLevel with GPT-2's regex), so it is declared as "gpt-2", the
    script's own name for that rule; any other unknown tokenizer is still refused.
    """
    import importlib.util

    here = Path(script).parent
    sys.path[:0] = [str(here / "gguf-py"), str(here)]  # its gguf-py and its `conversion` package
    sys.argv = [script, model_dir, "--outfile", outfile, "--outtype", "f32"]
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = importlib.import_module("conversion.base")
    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            pre = json.loads((Path(model_dir) / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
            if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
                return "gpt-2"
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    module.main()


# ---- the runtimes ---------------------------------------------------------------------------------------------


class GenAIRunner:
    """A GenAI model directory (genai_config.json) run by onnxruntime-genai with `threads` intra-op threads,
    asked not to spin (as every variant's session; `spinning`: asked to). onnxruntime-genai 0.18 spins its worker
    thread either way (measured: CPU time 2.0x wall on 2 threads with the option and without): the benchmark
    records each generation's CPU time, so the report shows who spun."""

    def __init__(self, model_dir: Path | str, threads: int, spinning: bool = False):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(model_dir))
        spin = "1" if spinning else "0"
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "allow_spinning": spin}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.context = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]["context_length"]

    def _generator(self, max_length: int, min_length: int = 0):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, min_length=min_length, do_sample=False)
        return self.og.Generator(self.model, params)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """(B, T) token ids -> (B, T, V) logits, each row read from an empty cache."""
        out = []
        for row in np.asarray(ids):
            g = self._generator(len(row) + 1)
            g.append_tokens(row.astype(np.int32)[None, :])
            out.append(np.asarray(g.get_output("logits"))[0])
        return np.stack(out)

    def stream(self, prompt: list[int], new_tokens: int, slices: list[int] | None = None):
        """Greedy tokens after `prompt`, exactly `new_tokens` (end-of-text held back by GenAI's min_length). The
        prompt is appended whole, as a GenAI app does, or in `slices` (token counts), as another loop reads it."""
        total = len(prompt) + new_tokens
        g = self._generator(total, min_length=total)
        start = 0
        for n in slices or [len(prompt)]:
            g.append_tokens(np.asarray(prompt[start : start + n], dtype=np.int32)[None, :])
            start += n
        for _ in range(new_tokens):
            g.generate_next_token()
            yield int(g.get_next_tokens()[0])


# The cache a llama.cpp runner starts with, in tokens, when its caller does not size it (it grows on demand).
LLAMA_CPP_CONTEXT = 512


class LlamaCppRunner:
    """A GGUF file run by llama.cpp (llama-cpp-python's `Llama`), `threads` threads, greedy from its logits.

    Its KV cache holds `context` tokens (llama.cpp's `n_ctx`), sized like the other runtimes' caches: the caller
    gives prompt + new tokens (the speed worker: its longest prompt + new tokens); a request that needs more
    reloads the model with a cache that fits it (never during a timed generation that was sized for). Not the
    model's whole trained window (`n_ctx=0`), which would allocate a cache no other runtime holds. Its threads
    spin or sleep by OpenMP's `OMP_WAIT_POLICY` (llama-cpp-python's wheel is built with OpenMP), which the
    benchmark's workers set from the target.
    """

    def __init__(self, path: Path | str, threads: int, all_logits: bool = False, context: int = LLAMA_CPP_CONTEXT):
        self.path, self.threads, self.all_logits = str(path), threads, all_logits
        self.llm, self.context = None, 0
        self._load(context)

    def _load(self, context: int) -> None:
        from llama_cpp import Llama

        self.llm = None  # the old context's memory is freed before the new one is allocated
        self.llm = Llama(
            model_path=self.path,
            n_ctx=int(context),
            n_batch=min(4096, int(context)),
            n_threads=self.threads,
            n_threads_batch=self.threads,
            logits_all=self.all_logits,
            verbose=False,
        )
        self.context = int(self.llm.n_ctx())

    def _fit(self, tokens: int) -> None:
        if tokens > self.context:
            self._load(tokens)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        out = []
        ids = np.asarray(ids)
        self._fit(ids.shape[1])
        for row in ids:
            self.llm.reset()
            self.llm.eval(row.tolist())
            out.append(np.array(self.llm.scores[: len(row)], dtype=np.float32))
        return np.stack(out)

    def stream(self, prompt: list[int], new_tokens: int):
        self._fit(len(prompt) + new_tokens)
        llm = self.llm
        llm.reset()
        llm.eval(list(prompt))
        for i in range(new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            yield token
            if i + 1 < new_tokens:
                llm.eval([token])


def runner(runtime: str, path: Path | str, threads: int, *, all_logits: bool = False, context: int | None = None,
           spinning: bool = False):  # fmt: skip
    """The runner of an anchor's runtime ("genai": a model directory; "llama.cpp": a .gguf file, its cache sized
    to `context` tokens where given; `spinning`: what GenAI is asked, llama.cpp's follows OMP_WAIT_POLICY)."""
    if runtime == "genai":
        return GenAIRunner(path, threads, spinning)
    if runtime == "llama.cpp":
        return LlamaCppRunner(path, threads, all_logits=all_logits, context=context or LLAMA_CPP_CONTEXT)
    raise ValueError(f"not an anchor runtime: {runtime!r}")


def check_runs(runtime: str, path: Path | str) -> None:
    """Load `path` in its runtime and generate two tokens; whatever the runtime raises is the reason it cannot be
    measured (a model that builds but that its runtime cannot load is a finding too)."""
    r = runner(runtime, path, 1, context=8)
    list(r.stream([0, 1, 2], 2))


def weight_files(runtime: str, path: Path) -> list[Path]:
    path = Path(path)
    if runtime == "genai":
        return sorted(p for p in path.iterdir() if p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data"))
    return [path]


def build_anchors(names: list[str], teacher_dir: Path, out: Path, log=print) -> tuple[dict[str, dict], list[dict]]:
    """Build each anchor in `names` from the teacher into `out`. Returns (built: name -> {path, runtime,
    command, build_s, builder}, unavailable: [{name, reason}])."""
    built, unavailable = {}, []
    if "genai-int4" in names:
        try:
            built["genai-int4"] = {**build_genai_int4(teacher_dir, out / "genai-int4"), "runtime": "genai"}
            log(f"    anchor genai-int4: built in {built['genai-int4']['build_s']:.1f} s")
        except AnchorUnavailable as e:
            unavailable.append({"name": "genai-int4", "reason": str(e)})
            log(f"    anchor genai-int4: not measured: {e}")
    kinds = [n.split("-", 1)[1] for n in names if n.startswith("llama.cpp-")]
    if kinds:
        try:
            for kind, rec in build_gguf(teacher_dir, out / "llama.cpp", kinds).items():
                built[f"llama.cpp-{kind}"] = {**rec, "runtime": "llama.cpp"}
                log(f"    anchor llama.cpp-{kind}: built")
        except AnchorUnavailable as e:
            for kind in kinds:
                unavailable.append({"name": f"llama.cpp-{kind}", "reason": str(e)})
            log(f"    anchors llama.cpp: not measured: {e}")
    # A model that builds but that its runtime cannot load is a finding too.
    for name in list(built):
        try:
            check_runs(built[name]["runtime"], built[name]["path"])
        except Exception as e:  # noqa: BLE001 - whatever the runtime raises, it is the reason to report
            unavailable.append({"name": name, "reason": f"{type(e).__name__}: {str(e).strip()[:300]}"})
            log(f"    anchor {name}: built, but its runtime cannot run it: {e}")
            del built[name]
    return built, unavailable


LLAMA_CPP_PYTHON = "0.3.36"  # the same version as the `anchors` extra's runtime
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"


def fetch_llama_cpp(dest: Path) -> None:
    """llama.cpp's converter (`convert_hf_to_gguf.py`, its `conversion` package, `gguf-py`, the licence) from
    llama-cpp-python's source archive on PyPI, checked against its sha256, into `dest`."""
    import hashlib
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        cmd += [f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp]
        subprocess.run(cmd, check=True)
        archive = Path(tmp) / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != LLAMA_CPP_SDIST_SHA256:
            raise SystemExit(f"{archive.name}: sha256 {digest}, expected {LLAMA_CPP_SDIST_SHA256}")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
        staging = Path(tmp) / "llama.cpp"
        with tarfile.open(archive) as tar:
            members = [
                m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(wanted)
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(staging, members=members, filter="data")
        (staging / "SOURCE").write_text(
            f"llama-cpp-python {LLAMA_CPP_PYTHON} source archive from PyPI, sha256 {digest}, vendor/llama.cpp\n"
        )
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)


def _quantize_gguf(src: str, dst: str, kind: str) -> None:
    """llama.cpp's own quantizer (`llama_model_quantize`, what its `llama-quantize` tool calls)."""
    import llama_cpp

    types = {k: getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{k.upper()}") for k in GGUF_TYPES}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[kind]
    params.nthread = os.cpu_count() or 1
    tmp = dst + ".tmp"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize to {kind} returned {rc}")
    os.replace(tmp, dst)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "convert":
        _convert(*sys.argv[2:])
        return
    if len(sys.argv) == 5 and sys.argv[1] == "quantize":
        _quantize_gguf(*sys.argv[2:])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "fetch-llama-cpp":
        fetch_llama_cpp(Path(sys.argv[2]))
        return
    raise SystemExit(
        "usage: python -m compress.tasks.causal_lm.anchors convert SCRIPT MODEL_DIR OUTFILE | fetch-llama-cpp DEST"
    )


if __name__ == "__main__":
    main()
