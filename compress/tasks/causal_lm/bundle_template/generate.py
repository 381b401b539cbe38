#!/usr/bin/env python3
"""Generate text with the language model in this directory. Needs only onnxruntime, tokenizers and numpy.

    python generate.py "The os module provides"                 # greedy, tokens printed as they come
    python generate.py "def read_config(path):" --max-new-tokens 64 --temperature 0.8 --top-p 0.95 --seed 7
    python generate.py "Example:" --stop "\\n\\n"                 # stop at a blank line
    python generate.py --file prompts.txt --json                # one JSON line per prompt line

The model keeps its key/value cache between steps: the prompt is read once (prefill), then each new token costs
one step over one position. Decoding is greedy by default; `--temperature` above 0 samples, narrowed by
`--top-k` and `--top-p`, reproducibly with `--seed`. Generation ends at the end-of-text token, a stop string,
`--max-new-tokens`, or the model's context window.

An empty prompt, or one that fills the context window, gets a one-line message (exit status 2; with --file a
JSON error line for that prompt), never a traceback. Runs on Python 3.8 or later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
except ImportError as e:  # pragma: no cover - exercised only without the dependencies
    sys.stderr.write(f"generate.py: {e}; install them with: pip install onnxruntime tokenizers numpy\n")
    raise SystemExit(2) from None


class PromptError(ValueError):
    """A prompt that cannot be continued (empty, or as long as the context window)."""


def session_for(model_path: Path, threads: int = 1):
    """An ONNX Runtime CPU session: `threads` intra-op threads, and no spinning (a phone should not burn a core
    busy-waiting between tokens)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


class Generator:
    """A decoder-only ONNX model with its KV cache, and its tokenizer.

    Args:
        model_path: the ONNX (or .ort) decoder, exported with past key/values inputs (optimum's
            text-generation-with-past): inputs `input_ids`, `attention_mask`, `position_ids` (when present),
            `past_key_values.N.key/value`; outputs `logits`, `present.N.key/value`.
        tokenizer_file: `tokenizer.json`.
        context_window: tokens the model attends to at most (prompt plus generated).
        eos_token_ids: tokens that end a generation.
        threads: intra-op threads (ignored when `session` is given).
        session: an ONNX Runtime session to use instead of making one.
    """

    def __init__(self, model_path, tokenizer_file, context_window, eos_token_ids=(), threads=1, session=None):
        self.model_path = Path(model_path)
        self.session = session if session is not None else session_for(self.model_path, threads)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.context_window = int(context_window)
        self.eos_token_ids = {int(t) for t in eos_token_ids}
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = set(inputs)
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self._past_shape = {}
        for n in self.past_names:
            shape = inputs[n].shape  # (batch, kv heads, past length, head dim); the heads and width are fixed
            self._past_shape[n] = (int(shape[1]), int(shape[3]))
        past_type = inputs[self.past_names[0]].type if self.past_names else "tensor(float)"
        self._past_dtype = np.float16 if "float16" in past_type else np.float32

    @classmethod
    def from_bundle(cls, bundle_dir=HERE, model="auto", threads=None) -> Generator:
        """The generator of a bundle directory (reads bundle.json)."""
        d = Path(bundle_dir)
        meta = json.loads((d / "bundle.json").read_text(encoding="utf-8"))
        if model == "auto":
            model = "ort" if (d / "model.ort").is_file() else "onnx"
        return cls(
            d / f"model.{model}",
            d / "tokenizer.json",
            meta["context_window"],
            meta.get("eos_token_ids", []),
            threads=int(threads or meta.get("threads") or 1),
        )

    # ---- the model ----

    def empty_cache(self, batch: int = 1) -> dict:
        return {n: np.zeros((batch, h, 0, w), dtype=self._past_dtype) for n, (h, w) in self._past_shape.items()}

    def forward(self, ids: np.ndarray, cache: dict | None = None, past: int = 0):
        """Logits (B, T, V) for `ids` (B, T) after `past` cached positions, and the cache extended by them."""
        ids = np.asarray(ids, dtype=np.int64)
        b, t = ids.shape
        feeds = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((b, past + t), dtype=np.int64)
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.broadcast_to(np.arange(past, past + t, dtype=np.int64), (b, t)).copy()
        feeds.update(cache if cache is not None else self.empty_cache(b))
        outputs = self.session.run(["logits", *self.present_names], feeds)
        new_cache = dict(zip(self.past_names, outputs[1:]))  # noqa: B905 - zip(strict=) needs Python 3.10
        return outputs[0], new_cache

    # ---- text ----

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def check_prompt(self, prompt_ids) -> None:
        """Raises PromptError for an empty prompt or one that leaves no room in the context window."""
        if len(prompt_ids) == 0:
            raise PromptError("empty prompt: give some text to continue")
        if len(prompt_ids) >= self.context_window:
            raise PromptError(
                f"the prompt is {len(prompt_ids)} tokens; the model's context window is {self.context_window} "
                "tokens, so nothing can follow it: shorten the prompt"
            )

    def stream(
        self,
        prompt_ids,
        max_new_tokens: int = 64,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        ignore_eos: bool = False,
    ):
        """Yield new token ids one at a time: greedy at temperature 0, else sampled (top-k, then top-p).

        Stops after `max_new_tokens`, at an end-of-text token (yielded, unless `ignore_eos`), or when the context
        window is full.
        """
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_prompt(prompt_ids)
        rng = np.random.default_rng(seed)
        logits, cache = self.forward(np.asarray([prompt_ids]))
        past = len(prompt_ids)
        for i in range(max_new_tokens):
            token = _choose(logits[0, -1], temperature, top_k, top_p, rng)
            yield token
            if (token in self.eos_token_ids and not ignore_eos) or i == max_new_tokens - 1:
                return
            if past + 1 >= self.context_window:
                return
            logits, cache = self.forward(np.asarray([[token]]), cache, past)
            past += 1

    def generate(self, prompt: str, max_new_tokens: int = 64, *, stop=(), on_text=None, **sampling) -> dict:
        """Continue `prompt`; returns {"text", "tokens", "finish_reason", "prompt_tokens"}.

        `on_text(piece)` receives the text as it grows (held back while a character is incomplete or a stop
        string may be starting).
        """
        ids = self.encode(prompt)
        self.check_prompt(ids)
        room = self.context_window - len(ids)
        limit = min(max_new_tokens, room)
        tokens, shown, reason = [], "", "length"
        for token in self.stream(ids, limit, **sampling):
            if token in self.eos_token_ids:
                reason = "end_of_text"
                break
            tokens.append(token)
            text = self.decode(tokens)
            cut = min((text.find(s) for s in stop if s and s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            safe = text if reason == "stop" else _safe_prefix(text, stop)
            if on_text is not None and len(safe) > len(shown):
                on_text(safe[len(shown) :])
                shown = safe
            if reason == "stop":
                break
        else:
            if limit < max_new_tokens:
                reason = "context_window"
        text = self.decode(tokens) if reason != "stop" else text
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown) :])
        return {"text": text, "tokens": tokens, "finish_reason": reason, "prompt_tokens": len(ids)}


def _layer_order(name: str):
    parts = name.split(".")
    return (int(parts[1]), parts[2]) if len(parts) > 2 and parts[1].isdigit() else (0, name)


def _choose(logits, temperature: float, top_k: int, top_p: float, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < top_p  # the smallest set whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def _safe_prefix(text: str, stop) -> str:
    """`text` minus what may still change: an incomplete character, or the start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold] if hold else text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", nargs="*", help="texts to continue")
    p.add_argument("--file", default=None, help="one prompt per line ('-': standard input)")
    p.add_argument("--bundle", default=str(HERE), help=argparse.SUPPRESS)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the bundle's generation setting")
    p.add_argument("--temperature", type=float, default=None, help="0: greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float, default=None, help="sample among the likeliest tokens holding this mass")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--stop", action="append", default=[], help="stop at this text (repeatable; \\n for newline)")
    p.add_argument("--json", action="store_true", help="one JSON line per prompt instead of streamed text")
    p.add_argument("--model", choices=["auto", "ort", "onnx"], default="auto")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    try:
        meta = json.loads((Path(a.bundle) / "bundle.json").read_text(encoding="utf-8"))
        gen = Generator.from_bundle(a.bundle, a.model, a.threads)
    except (OSError, ValueError, KeyError) as e:
        sys.stderr.write(f"generate.py: not a usable bundle at {a.bundle}: {e}\n")
        return 2
    defaults = meta.get("generation", {})
    sampling = {
        "temperature": a.temperature if a.temperature is not None else defaults.get("temperature", 0.0),
        "top_k": a.top_k if a.top_k is not None else defaults.get("top_k", 0),
        "top_p": a.top_p if a.top_p is not None else defaults.get("top_p", 1.0),
        "seed": a.seed,
    }
    max_new = a.max_new_tokens if a.max_new_tokens is not None else defaults.get("max_new_tokens", 64)
    if max_new < 1 or sampling["temperature"] < 0 or not 0 < sampling["top_p"] <= 1 or sampling["top_k"] < 0:
        sys.stderr.write(
            "generate.py: need --max-new-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0\n"
        )
        return 2
    stop = [s.encode("utf-8").decode("unicode_escape") for s in a.stop]
    if a.file is not None:
        try:
            raw = sys.stdin.buffer.read() if a.file == "-" else Path(a.file).read_bytes()
        except OSError as e:
            sys.stderr.write(f"generate.py: cannot read {a.file}: {e.strerror}\n")
            return 2
        prompts = raw.decode("utf-8", errors="replace").splitlines()
        as_json = True
    else:
        prompts, as_json = a.prompts, a.json
        if not prompts:
            sys.stderr.write('generate.py: give a prompt, e.g. python generate.py "The os module provides"\n')
            return 2
    status = 0
    for n, prompt in enumerate(prompts, 1):
        t0 = time.perf_counter()
        try:
            if as_json:
                out = gen.generate(prompt, max_new, stop=stop, **sampling)
                out = {"input": n, **out, "seconds": round(time.perf_counter() - t0, 4)}
                print(json.dumps(out, ensure_ascii=False), flush=True)
            else:
                gen.generate(prompt, max_new, stop=stop, on_text=lambda s: print(s, end="", flush=True), **sampling)
                print(flush=True)
        except PromptError as e:
            status = 2 if not as_json else max(status, 1)
            if as_json:
                print(json.dumps({"input": n, "error": str(e)}), flush=True)
            else:
                sys.stderr.write(f"generate.py: {e}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
