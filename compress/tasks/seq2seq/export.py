"""Export a seq2seq model to ONNX as the bundle runs it: `encoder_model.onnx` and `decoder_model_merged.onnx`
(optimum's exporter: the decoder's first step and its cached steps in one file with two branches, weights
shared), with `seq2seq.json` (the decoding settings) and the tokenizer beside them.

The export is checked against PyTorch before it counts: on dev inputs, ONNX Runtime's greedy outputs
(`bundle_template/translate.py`, the loop the bundle ships) equal PyTorch's `generate`, and the logits of every
decoding step are within `atol` of PyTorch's on the same decoder inputs. A failed check fails the step.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from compress.errors import StageError

FILES = ("encoder_model.onnx", "decoder_model_merged.onnx")
# The decoder's two graphs before merging, kept under `parts/` for quantization: ONNX Runtime's quantizers do not
# reach weights used inside the merged file's branches, so each graph is quantized and the two merged again.
PARTS = ("decoder_model.onnx", "decoder_with_past_model.onnx")
SETTINGS = "seq2seq.json"


def write_settings(out: Path, model, data_cfg) -> dict:
    """The decoding settings the ONNX loop needs (`seq2seq.json`)."""
    c = model.config
    settings = {
        "model_type": c.model_type,
        "decoder_start_token_id": int(c.decoder_start_token_id),
        "eos_token_id": int(c.eos_token_id),
        "pad_token_id": int(c.pad_token_id),
        "source_prefix": data_cfg.source_prefix,
        "max_source_length": data_cfg.max_source_length,
        "max_target_length": data_cfg.max_target_length,
    }
    (out / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    return settings


def export_seq2seq(model_dir: Path, out: Path, model, tokenizer, data_cfg, opset: int) -> None:
    """optimum's export of the model directory `model_dir` into `out`: the encoder, the merged decoder, the
    decoding settings and the tokenizer."""
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        main_export(
            str(model_dir),
            output=tmp,
            task="text2text-generation-with-past",
            opset=opset,
            do_validation=False,
            device="cpu",
        )  # validated below, on real inputs
        for name in FILES:
            if not (Path(tmp) / name).is_file():
                raise StageError(
                    f"export: optimum wrote no {name} (files: {sorted(p.name for p in Path(tmp).iterdir())})"
                )
        (out / "parts").mkdir()
        for f in Path(tmp).iterdir():  # the files and their external data, if any
            if f.name in FILES or f.name.endswith((".onnx_data", ".data")):
                shutil.move(str(f), out / f.name)
            elif f.name in PARTS:
                shutil.move(str(f), out / "parts" / f.name)
    write_settings(out, model, data_cfg)
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)  # with the two files, what optimum's ORTModelForSeq2SeqLM loads
    model.generation_config.save_pretrained(out)


@torch.inference_mode()
def check_export(model, tokenizer, onnx_dir: Path, sources: list[str], data_cfg, atol: float) -> dict:
    """Greedy outputs of ONNX Runtime against PyTorch's on `sources`, and the largest logit difference along the
    way. Raises `StageError` when an output differs or a logit is off by more than `atol`."""
    from compress.tasks.seq2seq.bundle_template.translate import Translator
    from compress.tasks.seq2seq.model import greedy_outputs

    translator = Translator(onnx_dir, threads=torch.get_num_threads())
    max_len = data_cfg.max_target_length
    reference = greedy_outputs(
        model, tokenizer, [data_cfg.source_prefix + s for s in sources], max_len, data_cfg.max_source_length
    )
    worst, differ = 0.0, []
    for n, (src, ref) in enumerate(zip(sources, reference, strict=True)):
        ids = tokenizer(data_cfg.source_prefix + src, truncation=True, max_length=data_cfg.max_source_length)
        steps: list[np.ndarray] = []
        got = translator.greedy([ids["input_ids"]], max_len, logits_out=steps)[0]
        if got != ref:
            differ.append(n)
        decoder_in = [model.config.decoder_start_token_id, *got][: len(steps)]
        logits = (
            model(
                input_ids=torch.tensor([ids["input_ids"]]),
                attention_mask=torch.tensor([ids["attention_mask"]]),
                decoder_input_ids=torch.tensor([decoder_in]),
            )
            .logits[0]
            .numpy()
        )
        worst = max(worst, float(np.abs(np.concatenate(steps, 0) - logits).max()))
    metrics = {"inputs": len(sources), "identical_outputs": len(sources) - len(differ), "max_abs_logit_diff": worst}
    if differ or worst > atol:
        first = f"input {differ[0]}'s greedy output differs" if differ else "outputs identical"
        raise StageError(
            f"export check failed: {first}; {len(differ)}/{len(sources)} outputs differ, max logit difference "
            f"{worst:.2e} (export.atol = {atol})"
        )
    return metrics
