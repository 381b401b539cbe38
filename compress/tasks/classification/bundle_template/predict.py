#!/usr/bin/env python3
"""Classify text with the model in this directory. Needs only onnxruntime, tokenizers and numpy.

    python predict.py "a gripping, beautifully acted film" "two hours I will not get back"
    python predict.py --file texts.txt          # one text per line; "-" reads standard input

Prints one JSON line per input, in input order:
    {"input": 1, "label": "1", "label_id": 1, "scores": {"0": 0.02, "1": 0.98}, "truncated": false}
or, for an input that cannot be classified (empty text, invalid UTF-8 bytes in the file, ...):
    {"input": 2, "error": "empty text"}
`input` is the argument's position or the file's line number, from 1. Exit status: 0 when every input was
classified, 1 when some gave an error line, 2 when the bundle or the command line is unusable.

Texts longer than the model's maximum length are cut to it ("truncated": true), as during training.
Runs on Python 3.8 or later.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_CHARS = 1_000_000  # a longer line is cut before tokenization; the model sees max_length tokens anyway
CHUNK = 64  # lines read and classified at a time in --file mode
WORD_TOKENS = 128  # more pieces than one word can split into (WordPiece makes [UNK] of words over 100 characters)

try:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
except ImportError as e:  # pragma: no cover - exercised only without the dependencies
    sys.stderr.write(f"predict.py: {e}; install them with: pip install onnxruntime tokenizers numpy\n")
    raise SystemExit(2) from None


class Classifier:
    """The bundle's tokenizer and model. `classify(texts)` gives one result or error dict per text."""

    def __init__(self, bundle_dir: Path | str = HERE, model: str = "auto", threads: int | None = None):
        d = Path(bundle_dir)
        meta = json.loads((d / "bundle.json").read_text(encoding="utf-8"))
        self.labels = json.loads((d / "labels.json").read_text(encoding="utf-8"))
        self.max_length = int(meta["max_length"])
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = pad if pad is not None else 0
        if model == "auto":
            model = meta.get("default_model") or ("ort" if (d / "model.ort").is_file() else "onnx")
        self.model_path = d / f"model.{model}"
        so = ort.SessionOptions()
        if model == "onnx" and meta.get("graph_optimized"):  # optimized offline: optimizing again costs memory
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = int(threads or meta.get("threads") or 1)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # A phone should not burn a core busy-waiting between requests.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _encode(self, text) -> tuple[object | None, str | None]:
        if not isinstance(text, str):
            return None, f"expected text, got {type(text).__name__}"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: undecodable bytes on the command line
            return None, f"not valid UTF-8 (undecodable byte at character {e.start})"
        if not text.strip():
            return None, "empty text"
        enc = self._encode_prefix(text[:MAX_CHARS])
        if sum(1 for s in enc.special_tokens_mask if not s) == 0:
            return None, "nothing to classify: no tokens left after normalization (only control characters?)"
        return enc, None

    def _encode_prefix(self, text: str):
        """The encoding of `text` cut to max_length tokens, tokenizing only as much of it as that needs.

        The first window is 64 characters per token. The window's cut can change only the tokens of the word it
        falls in; once the window yields over WORD_TOKENS more tokens than are kept, that word lies wholly in the
        cut-off part and the kept tokens are those of the whole text. Otherwise (long whitespace runs, say) the
        window doubles. The cost no longer grows with the text.
        """
        window = 64 * self.max_length
        while True:
            enc = self.tokenizer.encode(text[:window])
            beyond = sum(len(o.ids) for o in enc.overflowing)
            if window >= len(text) or beyond > WORD_TOKENS:
                return enc
            window *= 2

    def _run(self, encs: list) -> np.ndarray:
        # (B, T) padded to the longest; the attention mask hides the padding.
        width = max(len(e.ids) for e in encs)

        def pad(rows, value):
            return np.asarray([r + [value] * (width - len(r)) for r in rows], dtype=np.int64)

        feeds = {
            "input_ids": pad([e.ids for e in encs], self.pad_id),
            "attention_mask": pad([e.attention_mask for e in encs], 0),
            "token_type_ids": pad([e.type_ids for e in encs], 0),
        }
        logits = self.session.run(None, {k: feeds[k] for k in self.input_names})[0].astype(np.float64)
        z = np.exp(logits - logits.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    def classify(self, texts: list, batch_size: int = 1) -> list[dict]:
        """One dict per text: label, label_id, scores (softmax), truncated; or error.

        batch_size 1 (the default) runs each text alone: the answer for a text never depends on the others.
        A dynamic int8 model scales its activations per batch, so in a batch its scores (and, rarely, its
        label) shift with the batch's other texts; larger batches are faster on long files.
        """
        out: list[dict] = [{} for _ in texts]
        ok = []
        for i, t in enumerate(texts):
            enc, err = self._encode(t)
            if err is not None:
                out[i] = {"error": err}
            else:
                ok.append((i, enc, len(t) > MAX_CHARS or bool(enc.overflowing)))
        ok.sort(key=lambda x: len(x[1].ids))  # similar lengths together: less padding
        for start in range(0, len(ok), batch_size):
            group = ok[start : start + batch_size]
            try:
                probs = self._run([e for _, e, _ in group])
            except Exception:  # noqa: BLE001 - one bad batch must not take the others down: retry one by one
                probs = None
            for k, (i, enc, truncated) in enumerate(group):
                try:
                    p = probs[k] if probs is not None else self._run([enc])[0]
                except Exception as e:  # noqa: BLE001 - reported on this input's line
                    out[i] = {"error": f"inference failed: {type(e).__name__}: {e}"}
                    continue
                j = int(p.argmax())
                out[i] = {
                    "label": self.labels[j],
                    "label_id": j,
                    "scores": {lab: round(float(x), 6) for lab, x in zip(self.labels, p)},  # noqa: B905 (py3.8+)
                    "truncated": truncated,
                }
        return out


def read_lines(stream):
    """(line number, text or None, error or None) for each line of a binary stream, split on b"\\n" only
    (Unicode line separators inside a text stay in it), a trailing "\\r" removed."""
    for n, raw in enumerate(stream, 1):
        raw = raw.rstrip(b"\n")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            yield n, raw.decode("utf-8"), None
        except UnicodeDecodeError as e:
            bad = raw[e.start : e.start + 4]
            yield n, None, f"invalid UTF-8 at byte {e.start} ({bad!r}); save the file as UTF-8"


def _emit(number: int, result: dict) -> None:
    sys.stdout.write(json.dumps({"input": number, **result}, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="a UTF-8 file with one text per line ('-': standard input)")
    p.add_argument(
        "--model",
        choices=["auto", "ort", "onnx"],
        default="auto",
        help="default: the bundle's (bundle.json default_model), else model.ort if present",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the bundle's target)")
    p.add_argument("--batch-size", type=int, default=1, help="texts per model call (default 1: each alone)")
    p.add_argument("--bundle", default=str(HERE), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if bool(a.texts) == bool(a.file):
        p.print_usage(sys.stderr)
        sys.stderr.write("predict.py: give texts as arguments or --file, not both and not neither\n")
        return 2
    if a.batch_size < 1 or (a.threads is not None and a.threads < 1):
        sys.stderr.write("predict.py: --batch-size and --threads must be at least 1\n")
        return 2
    try:
        clf = Classifier(a.bundle, model=a.model, threads=a.threads)
    except Exception as e:  # noqa: BLE001 - a broken bundle: say so in one line
        sys.stderr.write(f"predict.py: cannot load the bundle in {a.bundle}: {type(e).__name__}: {e}\n")
        return 2
    failed = False
    if a.texts:
        for n, r in enumerate(clf.classify(a.texts, a.batch_size), 1):
            failed |= "error" in r
            _emit(n, r)
        return int(failed)
    try:
        stream = sys.stdin.buffer if a.file == "-" else open(a.file, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        sys.stderr.write(f"predict.py: cannot read {a.file}: {e.strerror}\n")
        return 2
    with stream:
        chunk: list = []
        for item in read_lines(stream):
            chunk.append(item)
            if len(chunk) == CHUNK:
                failed |= _classify_chunk(clf, chunk, a.batch_size)
                chunk = []
        failed |= _classify_chunk(clf, chunk, a.batch_size)
    return int(failed)


def _classify_chunk(clf: Classifier, chunk: list, batch_size: int) -> bool:
    good = [(n, t) for n, t, err in chunk if err is None]
    results = dict(zip([n for n, _ in good], clf.classify([t for _, t in good], batch_size)))  # noqa: B905 (py3.8+)
    failed = False
    for n, _, err in chunk:
        r = {"error": err} if err is not None else results[n]
        failed |= "error" in r
        _emit(n, r)
    sys.stdout.flush()
    return failed


if __name__ == "__main__":
    sys.exit(main())
