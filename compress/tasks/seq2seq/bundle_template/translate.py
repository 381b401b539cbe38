#!/usr/bin/env python3
"""Translate (or summarize: whatever the model was trained to write) with the encoder-decoder model in this
directory. Needs only onnxruntime, tokenizers and numpy.

    python translate.py "Das Haus ist groß."                       # one input, greedy
    python translate.py --file inputs.txt                          # one output line per input line
    python translate.py --file inputs.txt --json --beams 4         # beam search; one JSON line per input
    python translate.py "..." --max-length 64 --threads 2

The encoder reads each input once; the decoder (one ONNX file with two branches, as optimum's exporter merges
them) computes the cross-attention keys and values of the encoder's output at its first step and keeps them,
with its own self-attention keys and values, as its cache: every later step costs one position. Inputs are
decoded one at a time (`--batch-size N` pads N together: faster, but a dynamic-int8 model quantizes activations
with one scale per batch, so its outputs can change with the batch); greedy by default, beam search with
`--beams N` (scores normalised by length).

An empty input line gets an empty output (with --json an error field), never a traceback. Runs on Python 3.8+.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:  # pragma: no cover - exercised only without the dependencies
    sys.stderr.write(f"translate.py: {e}; install them with: pip install onnxruntime tokenizers numpy\n")
    raise SystemExit(2) from None

ENCODER, DECODER, SETTINGS = "encoder_model", "decoder_model_merged", "seq2seq.json"


def _session(path: Path, threads: int, spinning: bool = False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    spin = "1" if spinning else "0"  # off: as the pipeline measures a device target
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def model_file(model_dir: Path, stem: str) -> Path:
    """The model file `stem` of a directory: `.onnx`, else ONNX Runtime's mobile `.ort`."""
    for suffix in (".onnx", ".ort"):
        if (model_dir / f"{stem}{suffix}").is_file():
            return model_dir / f"{stem}{suffix}"
    raise FileNotFoundError(f"{model_dir}: no {stem}.onnx or {stem}.ort")


class Translator:
    """Greedy and beam-search decoding of token ids with the encoder and merged decoder of `model_dir`.

    Args:
        model_dir: holds encoder_model.onnx (or .ort), decoder_model_merged.onnx (or .ort) and seq2seq.json
            (`decoder_start_token_id`, `eos_token_id`, `pad_token_id`, `max_target_length`).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, model_dir, threads: int = 1, encoder: Path | None = None, decoder: Path | None = None,
                 spinning: bool = False):  # fmt: skip
        model_dir = Path(model_dir)
        self.settings = json.loads((model_dir / SETTINGS).read_text(encoding="utf-8"))
        self.encoder = _session(encoder or model_file(model_dir, ENCODER), threads, spinning)
        self.decoder = _session(decoder or model_file(model_dir, DECODER), threads, spinning)
        self.start = int(self.settings["decoder_start_token_id"])
        self.eos = int(self.settings["eos_token_id"])
        self.pad = int(self.settings["pad_token_id"])
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present = {n: n.replace("past_key_values.", "present.") for n in self.past_names}
        first = inputs[self.past_names[0]].shape if self.past_names else [None, 1, None, 1]
        self.heads, self.head_dim = int(first[1]), int(first[3])
        self.output_names = [o.name for o in self.decoder.get_outputs()]

    def encode(self, batch: list[list[int]]):
        """The encoder's output and the padded attention mask of a batch of input ids."""
        width = max(len(x) for x in batch)
        ids = np.full((len(batch), width), self.pad, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for i, x in enumerate(batch):
            ids[i, : len(x)], mask[i, : len(x)] = x, 1
        names = {i.name for i in self.encoder.get_inputs()}
        feed = {"input_ids": ids, "attention_mask": mask}
        hidden = self.encoder.run(None, {k: v for k, v in feed.items() if k in names})[0]
        return hidden, mask

    def _step(self, tokens, hidden, mask, past):
        """One decoder step: logits of the last position (B, V) and the new cache. `past` None: the first step
        (the cross-attention keys and values are computed from `hidden`)."""
        b = tokens.shape[0]
        feed = {"input_ids": tokens, "encoder_hidden_states": hidden, "encoder_attention_mask": mask}
        if past is None:
            empty = np.zeros((b, self.heads, 0, self.head_dim), dtype=np.float32)
            feed.update({n: empty for n in self.past_names})
            feed["use_cache_branch"] = np.array([False])
        else:
            feed.update(past)
            feed["use_cache_branch"] = np.array([True])
        outs = dict(zip(self.output_names, self.decoder.run(None, feed)))  # noqa: B905 - the bundle runs on Python 3.8+ (no zip strict)
        new = {}
        for n in self.past_names:
            out = outs.get(self.present[n])
            # the cached branch may leave the cross-attention cache out or pass it back: keep the first one
            new[n] = past[n] if (past is not None and ".encoder." in n) else out
        return outs["logits"][:, -1, :], new

    def greedy(self, batch: list[list[int]], max_length: int, logits_out=None) -> list[list[int]]:
        """Greedy output ids of each input (no start token, cut before the end token); each step's logits (B, V)
        are appended to `logits_out` when it is a list (the export check compares them with PyTorch's)."""
        hidden, mask = self.encode(batch)
        b = len(batch)
        tokens = np.full((b, 1), self.start, dtype=np.int64)
        out: list[list[int]] = [[] for _ in range(b)]
        done = np.zeros(b, dtype=bool)
        past = None
        for _ in range(max_length):
            logits, past = self._step(tokens, hidden, mask, past)
            if logits_out is not None:
                logits_out.append(logits)
            nxt = logits.argmax(-1)
            for i in range(b):
                if not done[i]:
                    if nxt[i] == self.eos:
                        done[i] = True
                    else:
                        out[i].append(int(nxt[i]))
            if done.all():
                break
            tokens = np.where(done, self.pad, nxt).astype(np.int64)[:, None]
        return out

    def forced_logits(self, ids: list[int], prefix: list[int]):
        """The logits (V,) of the next output token after `prefix` (output ids without the start token): what a
        check compares where two CPUs chose different tokens."""
        hidden, mask = self.encode([ids])
        past, logits = None, None
        for tok in [self.start, *prefix]:
            logits, past = self._step(np.array([[tok]], dtype=np.int64), hidden, mask, past)
        return logits[0]

    def beam(self, ids: list[int], max_length: int, beams: int) -> list[int]:
        """Beam search over one input: the finished hypothesis of highest mean log-probability per token."""
        hidden, mask = self.encode([ids])
        hidden, mask = np.repeat(hidden, beams, 0), np.repeat(mask, beams, 0)
        seqs = [[] for _ in range(beams)]
        scores = np.zeros(beams)
        scores[1:] = -np.inf  # all beams start as one
        tokens = np.full((beams, 1), self.start, dtype=np.int64)
        finished: list[tuple[float, list[int]]] = []
        past = None
        for _ in range(max_length):
            logits, past = self._step(tokens, hidden, mask, past)
            logits = logits.astype(np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            total = (scores[:, None] + logp).ravel()
            top = np.argpartition(-total, 2 * beams)[: 2 * beams] if total.size > 2 * beams else np.arange(total.size)
            top = top[np.argsort(-total[top], kind="stable")]
            keep_rows, keep_tokens, keep_scores = [], [], []
            for flat in top:
                row, tok = divmod(int(flat), logp.shape[1])
                if not np.isfinite(total[flat]):
                    continue
                if tok == self.eos:
                    finished.append((total[flat] / (len(seqs[row]) + 1), seqs[row]))
                else:
                    keep_rows.append(row)
                    keep_tokens.append(tok)
                    keep_scores.append(total[flat])
                if len(keep_rows) == beams:
                    break
            best_open = max(keep_scores) / (len(seqs[0]) + 2) if keep_scores else -np.inf
            if len(finished) >= beams and max(f[0] for f in finished) >= best_open or not keep_rows:
                break
            seqs = [seqs[r] + [t] for r, t in zip(keep_rows, keep_tokens)]  # noqa: B905 - the bundle runs on Python 3.8+ (no zip strict)
            scores = np.array(keep_scores)
            past = {n: v[keep_rows] for n, v in past.items()}
            tokens = np.array(keep_tokens, dtype=np.int64)[:, None]
            hidden, mask = hidden[: len(keep_rows)], mask[: len(keep_rows)]
        if not finished:
            finished = [(s / max(len(q), 1), q) for s, q in zip(scores, seqs)]  # noqa: B905 - the bundle runs on Python 3.8+ (no zip strict)
        return max(finished, key=lambda f: f[0])[1]


def _tokenizer(model_dir: Path, settings: dict):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(int(settings["max_source_length"]))
    tok.no_padding()
    return tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text", nargs="?", help="one input (or use --file)")
    ap.add_argument("--file", type=Path, help="a UTF-8 file of inputs, one per line")
    ap.add_argument("--json", action="store_true", help="one JSON object per input")
    ap.add_argument("--beams", type=int, default=1, help="beam search width (1: greedy)")
    ap.add_argument("--max-length", type=int, default=None, help="output tokens at most (default: as trained)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="greedy: inputs decoded together (faster; a dynamic-int8 model's outputs then depend "
        "a little on the batch: it quantizes activations with one scale per batch)",
    )
    ap.add_argument("--bundle", type=Path, default=HERE, help="the bundle directory (default: this script's)")
    args = ap.parse_args(argv)
    if (args.text is None) == (args.file is None):
        ap.error("give one input text or --file")
    if args.beams < 1 or args.threads < 1 or args.batch_size < 1:
        ap.error("--beams, --threads and --batch-size must be at least 1")
    try:
        lines = [args.text] if args.file is None else args.file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        sys.stderr.write(f"translate.py: --file {args.file}: cannot be read as UTF-8 text ({e})\n")
        return 2
    translator = Translator(args.bundle, args.threads)
    settings = translator.settings
    tok = _tokenizer(args.bundle, settings)
    max_length = args.max_length or int(settings["max_target_length"])
    prefix = settings.get("source_prefix", "")
    ids = [tok.encode(prefix + line).ids if line.strip() else None for line in lines]
    outs: list[list[int] | None] = [None] * len(lines)
    todo = [i for i, x in enumerate(ids) if x is not None]
    if args.beams == 1:
        for s in range(0, len(todo), args.batch_size):
            chunk = todo[s : s + args.batch_size]
            for i, out in zip(chunk, translator.greedy([ids[i] for i in chunk], max_length)):  # noqa: B905 - the bundle runs on Python 3.8+ (no zip strict)
                outs[i] = out
    else:
        for i in todo:
            outs[i] = translator.beam(ids[i], max_length, args.beams)
    for line, out in zip(lines, outs):  # noqa: B905 - the bundle runs on Python 3.8+ (no zip strict)
        text = tok.decode(out, skip_special_tokens=True) if out is not None else ""
        if args.json:
            rec = {"input": line, "output": text} if out is not None else {"input": line, "error": "empty input"}
            print(json.dumps(rec, ensure_ascii=False))
        else:
            print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
