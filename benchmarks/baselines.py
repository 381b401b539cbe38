"""Reference points made in the benchmark run itself: the teacher quantized by optimum's own recipe."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def optimum_dynamic_int8(onnx_dir: Path, out_dir: Path, file_names: tuple[str, ...] = ("model.onnx",)) -> dict:
    """The teacher quantized with optimum's stock dynamic int8 recipe, as a baseline for our quantize stage.

    `optimum.onnxruntime.ORTQuantizer` with `AutoQuantizationConfig.avx2(is_static=False)`, its defaults
    untouched (per-channel, symmetric uint8 weights, full range, every quantizable operator): what a user of
    optimum gets without tuning. Writes `out_dir/model.onnx` beside the tokenizer and config of `onnx_dir`.

    Args:
        onnx_dir: an exported model directory holding the `.onnx` files `file_names` (default: `model.onnx`).
        out_dir: where the quantized files go, under the same names (created).
        file_names: the graphs to quantize, each on its own (an encoder-decoder's encoder and decoders).

    Returns:
        The recipe's settings as optimum reports them.
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    qconfig = AutoQuantizationConfig.avx2(is_static=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in file_names:
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=name)
            quantizer.quantize(save_dir=tmp, quantization_config=qconfig)
            shutil.move(Path(tmp) / f"{Path(name).stem}_quantized.onnx", out_dir / name)
            shutil.move(Path(tmp) / "ort_config.json", out_dir / "ort_config.json")  # optimum's record of the recipe
    for f in onnx_dir.iterdir():  # tokenizer and config, as the export stage wrote them
        if f.is_file() and f.suffix != ".onnx" and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    return {
        "recipe": "optimum AutoQuantizationConfig.avx2(is_static=False)",
        "format": str(qconfig.format.name),
        "mode": str(qconfig.mode.name),
        "per_channel": qconfig.per_channel,
        "reduce_range": qconfig.reduce_range,
        "weights_dtype": str(qconfig.weights_dtype.name),
        "activations_dtype": str(qconfig.activations_dtype.name),
        "operators": [str(getattr(o, "value", o)) for o in qconfig.operators_to_quantize],
    }
