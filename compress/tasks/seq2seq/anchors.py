"""What a user would ship instead of a student: the teacher in CTranslate2 at int8, the strongest CPU runtime for
encoder-decoder translation models (OpenNMT's; what on-device and server translation tools such as
LibreTranslate run), converted by its own converter from the teacher's Hugging Face directory.

The runtime is optional (`pip install -e ".[ctranslate2]"`, `make run-s2s` installs it); without it the anchor is
reported as unavailable, with the reason, and the run goes on.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

CT2_INT8 = "teacher-ct2-int8"
VOCABULARY = "shared_vocabulary.json"


# Keys CTranslate2's loaders read that transformers' own configs no longer write, with the value the transformers
# model class always has: BART in transformers is post-norm whatever its config says (`normalize_before` is a
# fairseq key that original BART checkpoints carry and a BartConfig made in code lacks).
ARCHITECTURE_KEYS = {"bart": {"normalize_before": False}}


def _as_ct2_reads_it(teacher_dir: Path, tmp: Path) -> Path:
    """`teacher_dir`, or a view of it in `tmp` (links to its files) whose config.json has the keys the converter
    reads for its model type; the teacher's own directory is never written."""
    config = json.loads((teacher_dir / "config.json").read_text(encoding="utf-8"))
    missing = {k: v for k, v in ARCHITECTURE_KEYS.get(config.get("model_type"), {}).items() if k not in config}
    if not missing:
        return teacher_dir
    view = tmp / teacher_dir.name
    view.mkdir()
    for f in teacher_dir.iterdir():
        if f.name != "config.json":
            (view / f.name).symlink_to(f.resolve())
    (view / "config.json").write_text(json.dumps({**config, **missing}, indent=2) + "\n", encoding="utf-8")
    return view


def build_ct2(teacher_dir: Path, out: Path) -> dict:
    """Convert the teacher to CTranslate2 with int8 weights into `out`; returns {path, build_s} or {reason}."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as e:
        return {"reason": f'ctranslate2 is not installed ({e}); pip install -e ".[ctranslate2]"'}
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            TransformersConverter(str(_as_ct2_reads_it(Path(teacher_dir), Path(tmp)))).convert(
                str(out), quantization="int8", force=True
            )
    except Exception as e:  # noqa: BLE001 - a model its converter refuses is reported, not a failed run
        return {"reason": f"CTranslate2's converter refused the teacher: {type(e).__name__}: {str(e)[:200]}"}
    if not (out / VOCABULARY).is_file():
        return {"reason": f"CTranslate2's converter wrote no {VOCABULARY} (a vocabulary per side is not read here)"}
    return {"path": str(out), "build_s": round(time.perf_counter() - t0, 2)}


class CT2Translator:
    """Greedy decoding of token ids with a CTranslate2 model (int8 compute), one input at a time."""

    def __init__(self, path: str | Path, threads: int, max_length: int):
        import ctranslate2

        self.translator = ctranslate2.Translator(str(path), device="cpu", compute_type="int8",
                                                 intra_threads=threads, inter_threads=1)  # fmt: skip
        self.vocab = json.loads((Path(path) / VOCABULARY).read_text(encoding="utf-8"))
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.max_length = max_length

    def greedy(self, ids: list[int]) -> list[int]:
        res = self.translator.translate_batch([[self.vocab[i] for i in ids]], beam_size=1,
                                              max_decoding_length=self.max_length)  # fmt: skip
        return [self.index[t] for t in res[0].hypotheses[0]]
