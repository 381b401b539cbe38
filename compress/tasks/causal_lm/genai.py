"""A decoder exported by ONNX Runtime GenAI's model builder (`onnxruntime_genai.models.builder`).

optimum exports the transformers graph op by op: rotary embeddings, the causal mask and attention as dozens of
small nodes per layer, which on a CPU cost more per generated token than the matrix products of a small model.
GenAI's builder writes the graph ONNX Runtime's CPU kernels are built for: `GroupQueryAttention` (rotary
embedding, cache append and attention in one kernel), `SkipSimplifiedLayerNormalization` (residual add and
RMSNorm), fused QKV and gate/up projections: 15 nodes per Llama layer instead of ~90. Its inputs and outputs are
those of optimum's export (`input_ids`, `attention_mask`, `past_key_values.N.key/value` -> `logits`,
`present.N.key/value`; no `position_ids`: positions come from the mask), so this project's decoder loop, its
checks, quantizers and bundles take it as they take any other.

The builder imports transformers >= 5, which optimum-onnx refuses, so it runs from a venv of its own
(`.venv-anchor-builder`, made by `make anchors`; or `$EDGE_COMPRESS_ANCHOR_BUILDER`, a python). Two things are
done to its output here: the cache tensors' head width, a named dimension in the builder's graph, is written as
the number it is (the decoder loop reads the cache shape from the graph, as optimum's export states it), and the
weights are moved from `model.onnx.data` into `model.onnx` (one file, as the rest of the pipeline expects).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from compress.errors import RecipeError, StageError

ROOT = Path(__file__).resolve().parents[3]  # the checkout
# model_type -> supported by the builder (its architecture list), among the families of compress.architectures.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "granite", "olmo")
SETUP_HINT = "run `make anchors` to install it"


class BuilderError(StageError):
    """The GenAI model builder failed on a model."""


def builder_python() -> Path:
    """The python of the builder's venv."""
    env = os.environ.get("EDGE_COMPRESS_ANCHOR_BUILDER")
    return Path(env) if env else ROOT / ".venv-anchor-builder" / "bin" / "python"


def check_supported(config, key: str = "export.backend") -> None:
    """Refuse, before anything trains, a model the builder or ONNX Runtime's CPU attention kernel cannot take.

    Raises:
        RecipeError: no builder venv, a model type the builder does not build, or a head width that is not a
            multiple of 16 (`GroupQueryAttention` on CPU).
    """
    from compress.architectures import head_dim

    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        raise RecipeError(
            f"{key} = 'genai': ONNX Runtime GenAI's builder does not build model_type {kind!r}; it builds "
            f"{', '.join(SUPPORTED)} (use backend 'optimum')"
        )
    if head_dim(config) % 16:
        raise RecipeError(
            f"{key} = 'genai': attention heads of width {head_dim(config)}; ONNX Runtime's GroupQueryAttention on "
            "CPU takes multiples of 16 (use backend 'optimum')"
        )
    if not builder_python().exists():
        raise RecipeError(f"{key} = 'genai': no GenAI model builder at {builder_python()}; {SETUP_HINT}")


def build(model_dir: Path, out_dir: Path, precision: str = "fp32", timeout: int = 3600) -> dict:
    """Run the builder on a Hugging Face model directory into `out_dir` (created), for CPU.

    Returns:
        The command as run and the builder's versions.

    Raises:
        BuilderError: the builder failed (its last line of output).
    """
    py = builder_python()
    out_dir = Path(out_dir)
    cache = out_dir / "_builder_cache"
    cmd = [str(py), "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out_dir)]
    cmd += ["-p", precision, "-e", "cpu", "-c", str(cache)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    except subprocess.TimeoutExpired as e:
        raise BuilderError(f"GenAI model builder: no result after {timeout} s for {model_dir}") from e
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
        raise BuilderError(
            f"GenAI model builder failed on {model_dir}: {lines[-1][:300] if lines else proc.returncode}"
        )
    versions = subprocess.run(
        [str(py), "-c", "import onnxruntime_genai as g, transformers as t; print(g.__version__, t.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "builder": {"onnxruntime-genai": versions[0] if versions else None, "transformers": versions[1:2]},
    }


def self_contained(model_path: Path, head_width: int) -> None:
    """Rewrite the builder's model in place: the cache's head width as a number, the weights inside the file
    (beside it in `model.onnx.data` when they exceed what one ONNX protobuf holds)."""
    import onnx

    from export.artifact import INLINE_LIMIT_BYTES, save_model, tensor_bytes

    model_path = Path(model_path)
    model = onnx.load(str(model_path))  # reads model.onnx.data too
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            dim = value.type.tensor_type.shape.dim[3]
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = head_width
    data = model_path.with_name(model_path.name + ".data")
    if tensor_bytes(model) >= INLINE_LIMIT_BYTES:  # over ONNX's 2 GiB: graph and weights rewritten side by side
        save_model(model, model_path)  # (the model is in memory: its old data file can go)
        return
    tmp = model_path.with_name(model_path.name + ".tmp")
    onnx.save(model, str(tmp))  # one file, which a model under ONNX's 2 GB limit can be
    os.replace(tmp, model_path)
    data.unlink(missing_ok=True)
