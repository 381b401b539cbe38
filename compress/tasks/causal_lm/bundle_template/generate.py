#!/usr/bin/env python3
"""Generate text with the language model in this directory. Needs only onnxruntime, tokenizers and numpy.

    python generate.py "The os module provides"                 # greedy, tokens printed as they come
    python generate.py "def read_config(path):" --max-new-tokens 64 --temperature 0.8 --top-p 0.95 --seed 7
    python generate.py "Example:" --stop "\\n\\n"                 # stop at a blank line
    python generate.py --file prompts.txt --json                # one JSON line per prompt line
    python generate.py --chat "How do I open a file?" --system "Answer briefly."   # the model's chat template
    python generate.py --interactive                            # a multi-turn chat on standard input

The model keeps its key/value cache between steps: the prompt is read once (prefill), then each new token costs
one step over one position. A graph whose attention appends to its cache in place (ONNX Runtime's
`GroupQueryAttention`, as GenAI's builder writes it) gets one preallocated buffer per layer, bound as both its
past and its present through ONNX Runtime's I/O binding: a step writes only its own keys and values, never copies
the cache (the buffers grow by doubling, up to the context). Any other graph gets its cache back as ONNX Runtime
values and passes them on without a copy through NumPy.

Decoding is greedy by default; `--temperature` above 0 samples, narrowed by `--top-k` and `--top-p`,
reproducibly with `--seed`. Generation ends at the end-of-text token, a stop string,
`--max-new-tokens`, or when the context is full (the model's window, or `--max-context`): `--on-full stop` (the
default) ends there, `--on-full slide` keeps the latest half of the context, reads it again into a fresh cache
and goes on (the model then no longer sees the beginning). bundle.json's `validated_context` says how long a
context the figures were measured at; beyond it the model was never checked.

`--draft` decodes greedily with speculation, where the bundle carries a draft model (a smaller student on the same
tokenizer, in `draft/`): the draft proposes `--draft-tokens` tokens one at a time, the model reads them all in one
pass and keeps those it would have chosen itself, then adds its own next token. The tokens are the model's own
greedy tokens (bundle.json's `draft.check` says on how many prompts that was checked, the share of proposals kept
and the tokens/s with and without the draft); only the work per token changes.

`--chat` and `--interactive` wrap each prompt as a user message in the model's own chat template (when its
tokenizer has one; needs jinja2), rendered as transformers' `apply_chat_template` renders it, so an
instruction-tuned model is prompted as it was trained. `--interactive` keeps the conversation and the model's
cache between turns: each turn runs the model only on the tokens after what the cache already holds.

An empty prompt, or one that fills the context window, gets a one-line message (exit status 2; with --file a
JSON error line for that prompt), never a traceback. Runs on Python 3.8 or later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
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
    """A prompt that cannot be continued (empty, or as long as the context window), or a chat the model's
    template cannot render."""


class ChatTemplate:
    """A model's chat template (Jinja), rendered as transformers' `apply_chat_template` renders it: a sandboxed
    environment with trim_blocks and lstrip_blocks, the loop-controls extension, its `tojson`, `raise_exception`
    and `strftime_now`, the tokenizer's special tokens (bos_token, eos_token, ...) as variables, and `tools` and
    `documents` None. Written here because the bundle runs without transformers; the bundle step checks that
    the two render the same tokens.

    Args:
        source: the template's text (`chat_template.jinja`).
        special_tokens: the tokenizer's special tokens map (name -> text), as transformers passes them.
    """

    def __init__(self, source: str, special_tokens=None):
        try:
            import jinja2
            from jinja2 import nodes
            from jinja2.ext import Extension, loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise PromptError("the chat template needs jinja2: pip install jinja2") from None

        class Generation(Extension):
            """`{% generation %}...{% endgeneration %}` marks assistant text (for training masks): rendered as is."""

            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
                return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

            def _body(self, caller):
                return caller()

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._errors = (jinja2.exceptions.TemplateError,)
        self.template = env.from_string(source)
        self.special_tokens = dict(special_tokens or {})

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """The conversation `messages` ([{"role", "content"}, ...]) as the model's prompt text."""
        try:
            return self.template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except self._errors as e:
            raise PromptError(f"the model's chat template refuses this conversation: {e}") from None


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
        kv_cache: "in-place" (one buffer per layer the graph writes into: `GroupQueryAttention`), "copy" (the
            graph returns a longer cache each step: optimum's export), or "auto": in place when the graph accepts
            it (checked on the first step: a graph that concatenates refuses a present bound to its past).
    """

    cache_start = 256  # positions an in-place cache starts with (then doubled as it fills)

    def __init__(self, model_path, tokenizer_file, context_window, eos_token_ids=(), threads=1, session=None,
                 chat_template=None, max_context=None, bos_token_ids=(), kv_cache="auto", attention_heads=None,
                 prefill_scratch=1 << 18):  # fmt: skip
        if kv_cache not in ("auto", "in-place", "copy"):
            raise ValueError(f"kv_cache = {kv_cache!r}: expected 'auto', 'in-place' or 'copy'")
        self.kv_cache = kv_cache
        self.chat_template = chat_template  # a ChatTemplate, or None when the model has none
        self.bos_token_ids = [int(t) for t in bos_token_ids]  # what starts a plain prompt, as in training
        self.model_path = Path(model_path)
        self.session = session if session is not None else session_for(self.model_path, threads)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # tokens the model may hold (prompt plus generated): its window, or less when asked
        self.context_window = min(int(context_window), int(max_context or context_window))
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
        self._present_of = dict(zip(self.past_names, self.present_names))  # noqa: B905 - Python 3.8
        vocab = next((o.shape[-1] for o in self.session.get_outputs() if o.name == "logits"), None)
        # prompt tokens read per forward pass: their logits at most 8 MB (256 tokens at an 8k vocabulary, 64 from
        # a 32k one; at least 16)
        self.prefill_chunk = max(16, min(256, (1 << 21) // vocab)) if isinstance(vocab, int) else 256
        self.vocab = vocab if isinstance(vocab, int) else None
        # query heads (the scores a pass allocates are heads x slice x context); without the model's config, the
        # cache's key/value heads (fewer under grouped-query attention: the bound is then looser)
        kv_heads = max((h for h, _ in self._past_shape.values()), default=1)
        self.attention_heads = int(attention_heads or kv_heads)
        # floats a prefill pass may allocate beyond the cache (`slice_length`); 2^18 (1 MiB): on the default's
        # model the peak RSS then grows from 256 to 2,048 tokens of context by less than the cache (5.8 MiB
        # against 6.0), with 2^20 by 9.7 MB; a 1,920-token prompt's prefill took 108 against 86 ms, 128 tokens 2.8
        # against 2.9 (measured, one core)
        self.prefill_scratch = prefill_scratch
        self._reserve = 0  # positions to allocate an in-place cache for (`prefill`'s `reserve`)
        if not self.past_names:
            self.kv_cache = "copy"
        # one-token steps over an in-place cache (`_bind_step`): buffers ONNX Runtime reads and writes in place
        logits_type = next((o.type for o in self.session.get_outputs() if o.name == "logits"), "")
        self._step_ids = np.zeros((1, 1), dtype=np.int64)
        self._mask, self._position = "attention_mask" in self.input_names, "position_ids" in self.input_names
        self._step_logits = None
        if isinstance(vocab, int) and logits_type in _NUMPY_TYPES:
            self._step_logits = np.zeros((1, 1, vocab), dtype=_NUMPY_TYPES[logits_type])
            self._ones = np.ones((1, self.context_window), dtype=np.int64)
            self._positions = np.arange(self.context_window, dtype=np.int64)[None, :]
        self._run = _runner(self.session)
        self.draft = None  # a Generator on the same tokenizer that proposes tokens (`use_draft`)
        self.speculation = None  # the last speculative generation's counts (`_speculate`)

    def use_draft(self, draft: Generator, tokens: int = 4) -> None:
        """Decode greedily with `draft` proposing `tokens` tokens per pass of this model (see `_speculate`).

        Raises:
            ValueError: a draft with another vocabulary (its proposals would be other tokens), or `tokens` < 1.
        """
        if int(tokens) < 1:
            raise ValueError(f"draft tokens = {tokens}: expected at least 1")
        mine = self.tokenizer.get_vocab(with_added_tokens=True)
        theirs = draft.tokenizer.get_vocab(with_added_tokens=True)
        if mine != theirs:
            raise ValueError(
                f"the draft's tokenizer is not the model's ({len(theirs)} against {len(mine)} tokens, or other ids): "
                "a draft must share the model's vocabulary"
            )
        self.draft, self.draft_tokens = draft, int(tokens)
        self.context_window = min(self.context_window, draft.context_window)

    @classmethod
    def from_bundle(cls, bundle_dir=HERE, model="auto", threads=None, max_context=None, draft=False) -> Generator:
        """The generator of a bundle directory (reads bundle.json); with `draft`, speculating with the bundle's
        draft model (`use_draft`; ValueError where the bundle has none)."""
        d = Path(bundle_dir)
        meta = json.loads((d / "bundle.json").read_text(encoding="utf-8"))
        if model == "auto":
            model = "ort" if (d / "model.ort").is_file() else "onnx"
        chat = meta.get("chat") or {}
        template = None
        if chat.get("template"):  # read here, compiled (jinja2 imported) only when a chat is asked for
            template = _LazyTemplate((d / chat["template"]).read_text(encoding="utf-8"), chat.get("special_tokens"))
        threads = int(threads or meta.get("threads") or 1)
        gen = cls(
            d / f"model.{model}",
            d / "tokenizer.json",
            meta["context_window"],
            meta.get("eos_token_ids", []),
            threads=threads,
            chat_template=template,
            max_context=max_context,
            bos_token_ids=meta.get("bos_token_ids", []),
            kv_cache=meta.get("kv_cache", "auto"),
            attention_heads=meta.get("attention_heads"),
        )
        if draft:
            spec = meta.get("draft")
            if not spec:
                raise ValueError("this bundle carries no draft model (bundle it with `edge-compress bundle --draft`)")
            path = d / spec["model"]
            if model == "ort" and path.with_suffix(".ort").is_file():
                path = path.with_suffix(".ort")
            small = cls(path, d / "tokenizer.json", spec.get("context_window", meta["context_window"]),
                        threads=threads, max_context=max_context, kv_cache=spec.get("kv_cache", "auto"))  # fmt: skip
            gen.use_draft(small, spec.get("tokens", 4))
        return gen

    # ---- the model ----

    def empty_cache(self, batch: int = 1) -> dict:
        """NumPy arrays of an empty cache, by input name (for a plain `session.run`)."""
        return {n: np.zeros((batch, h, 0, w), dtype=self._past_dtype) for n, (h, w) in self._past_shape.items()}

    def forward(self, ids: np.ndarray, cache: KVCache | None = None, past: int = 0):
        """Logits (B, T, V) for `ids` (B, T) after `past` cached positions, and the cache extended by them (a
        `KVCache`; pass it back with the next step's ids)."""
        ids = np.asarray(ids, dtype=np.int64)
        if cache is not None and cache.in_place or cache is None and ids.shape[0] == 1 and self.kv_cache != "copy":
            try:
                return self._forward_in_place(ids, cache, past)
            except Exception:  # noqa: BLE001 - ONNX Runtime raises its own types; only "auto"'s first step lands here
                if cache is not None or self.kv_cache == "in-place":
                    raise
                self.kv_cache = "copy"  # the graph concatenates its cache: its present is longer than its past
        return self._forward_copy(ids, cache, past)

    def step(self, token: int, cache: KVCache, past: int):
        """`forward` of one token after `past` cached positions, for decode loops: over an in-place cache its
        logits are a view of a buffer the next step overwrites (no copy per token); use them before the next.

        This is the decode loop's per-token cost at the runtime's limit: the token, its position and its logits
        live in buffers allocated once, which ONNX Runtime reads and writes in place (bound to their memory once
        per cache); per step only the attention mask's length changes (a view of one buffer of ones)."""
        b = cache.binding  # made by the cache's first in-place pass
        if b is None or self._step_logits is None or past + 1 > cache.capacity:
            return (
                self._forward_in_place(np.asarray([[token]], dtype=np.int64), cache, past, view=True)
                if cache.in_place and self._step_logits is not None
                else self.forward(np.asarray([[token]]), cache, past)
            )
        logits = self._bind_step(b, token, past)
        self._run(b.io)
        cache.length = past + 1
        return logits, cache

    def prefill(self, ids, cache: KVCache | None = None, past: int = 0, reserve: int = 0):
        """`forward` over a prompt's tokens in slices (`slice_length`: what a prompt costs in memory beyond the
        cache is one slice's logits and attention scores; at a 152k vocabulary a 2,048-token prompt read at once
        would return 1.2 GB of logits); the last slice's logits and the cache. `reserve`: the positions the
        generation will hold in all (prompt and new tokens), so an in-place cache is allocated at that size once
        instead of growing (each growth holds the old buffer and the new one at the same time)."""
        ids = [int(t) for t in ids]
        logits, start = None, 0
        self._reserve = min(int(reserve), self.context_window)
        try:
            for n in self.prefill_slices(len(ids), past):
                logits, cache = self.forward(np.asarray([ids[start : start + n]]), cache, past + start)
                start += n
        finally:
            self._reserve = 0
        return logits, cache

    def prefill_slices(self, tokens: int, past: int = 0) -> list[int]:
        """The lengths of the passes `prefill` reads `tokens` prompt tokens in, after `past` cached positions."""
        out, start = [], 0
        while start < tokens:
            out.append(self.slice_length(past + start, tokens - start))
            start += out[-1]
        return out

    def slice_length(self, past: int, left: int) -> int:
        """Tokens the next prefill pass reads after `past` cached positions, of `left` still to read: at most
        `prefill_chunk`, and few enough that what the pass allocates beyond the cache, its logits (slice x
        vocabulary) and its attention scores (heads x slice x context), stays within `prefill_scratch` floats
        (at least 16 tokens a pass). A long context is then read in shorter slices, so the memory a generation
        needs grows with its context by the cache, not by the prompt's scratch."""
        n = min(self.prefill_chunk, left)
        if self.prefill_scratch and self.vocab:
            per_token = self.vocab + self.attention_heads * (past + n)
            n = min(n, max(16, self.prefill_scratch // per_token))
        return max(1, n)

    def _feeds(self, io, ids: np.ndarray, past: int) -> None:
        b, t = ids.shape
        io.bind_cpu_input("input_ids", ids)
        if "attention_mask" in self.input_names:
            io.bind_cpu_input("attention_mask", np.ones((b, past + t), dtype=np.int64))
        if "position_ids" in self.input_names:
            io.bind_cpu_input("position_ids", np.broadcast_to(np.arange(past, past + t, dtype=np.int64), (b, t)).copy())

    def _forward_in_place(self, ids: np.ndarray, cache: KVCache | None, past: int, view: bool = False):
        need = past + ids.shape[1]
        if cache is None:  # room for what the generation will hold, when known (`prefill`'s `reserve`)
            cache = KVCache.allocate(self, _capacity(max(need, self._reserve), self.context_window, self.cache_start))
        elif need > cache.capacity:
            cache = cache.grown(_capacity(max(need, self._reserve), self.context_window, self.cache_start))
        b = cache.binding
        if b is None:  # a new buffer: its past and present bound once, for every step until it grows
            b = cache.binding = _Binding(self.session.io_binding())
            b.io.bind_output("logits", "cpu")  # first: get_outputs() lists outputs in the order they were bound
            for name in self.past_names:  # one buffer: the kernel reads the first `past` positions, writes the rest
                b.io.bind_ortvalue_input(name, cache.values[name])
                b.io.bind_ortvalue_output(self._present_of[name], cache.values[name])
        if ids.shape[1] == 1 and self._step_logits is not None:
            logits = self._bind_step(b, int(ids[0, 0]), past)
        else:
            # logits sized by this call (ONNX Runtime would reuse the last call's, of another length)
            b.io.bind_output("logits", "cpu")
            b.step = False
            self._feeds(b.io, ids, past)
            logits = None
        if self.kv_cache == "auto":  # the probe: a graph that concatenates refuses the shared buffer, which
            quiet = ort.RunOptions()  # ONNX Runtime would log as an error before we fall back to copying
            quiet.log_severity_level = 4
            self.session.run_with_iobinding(b.io, quiet)
            self.kv_cache = "in-place"
        else:
            self._run(b.io)
        cache.length = need
        if logits is None:
            return b.io.get_outputs()[0].numpy(), cache
        return (logits if view else logits.copy()), cache

    def _bind_step(self, b: _Binding, token: int, past: int):
        """Bind a one-token step after `past` positions (see `step`) and return the array its logits will be
        written to; the next step's overwrite them."""
        if not b.step:
            b.io.bind_cpu_input("input_ids", self._step_ids)
            out = self._step_logits
            b.io.bind_output("logits", "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
            b.step = True
        self._step_ids[0, 0] = token
        if self._mask:
            b.io.bind_cpu_input("attention_mask", self._ones[:, : past + 1])
        if self._position:
            b.io.bind_cpu_input("position_ids", self._positions[:, past : past + 1])
        return self._step_logits

    def _forward_copy(self, ids: np.ndarray, cache: KVCache | None, past: int):
        io = self.session.io_binding()
        self._feeds(io, ids, past)
        if cache is None:
            for name, empty in self.empty_cache(ids.shape[0]).items():
                io.bind_cpu_input(name, empty)
        else:
            for name in self.past_names:
                io.bind_ortvalue_input(name, cache.values[name])
        io.bind_output("logits", "cpu")
        for name in self.present_names:
            io.bind_output(name, "cpu")
        self.session.run_with_iobinding(io)
        out = io.get_outputs()
        values = dict(zip(self.past_names, out[1:]))  # noqa: B905 - Python 3.8
        return out[0].numpy(), KVCache(values, past + ids.shape[1], in_place=False)

    # ---- text ----

    def encode(self, text: str) -> list[int]:
        """A plain prompt's tokens: the model's BOS first when its tokenizer adds one (bundle.json's
        `bos_token_ids`), as the documents it was trained and measured on began."""
        return self.bos_token_ids + self.tokenizer.encode(text, add_special_tokens=False).ids

    def chat_ids(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """The token ids of a conversation rendered by the model's chat template (its special tokens are in the
        rendered text, so none are added), as transformers' `apply_chat_template(..., tokenize=True)`."""
        if self.chat_template is None:
            raise PromptError("this model's tokenizer has no chat template: give plain text to continue instead")
        text = self.chat_template.render(messages, add_generation_prompt)
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
        state: dict | None = None,
        on_full: str = "stop",
    ):
        """Yield new token ids one at a time: greedy at temperature 0, else sampled (top-k, then top-p).

        Stops after `max_new_tokens`, at an end-of-text token (yielded, unless `ignore_eos`), or when the context
        window is full (`on_full` "stop"); with `on_full` "slide" the latest half of the context is read again
        into a fresh cache and generation goes on.

        `state`: a dict holding {"ids": tokens, "cache": their cache} from an earlier call (a conversation's
        previous turns) is reused for the longest prefix it shares with `prompt_ids`, so only what follows is
        run; when the generation ends it holds the tokens now in the cache and that cache.
        """
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_prompt(prompt_ids)
        if self.draft is not None:
            if temperature > 0 or state is not None or on_full != "stop":
                raise PromptError("a draft model speculates greedy decoding only: no --temperature, "
                                  "--interactive or --on-full slide with --draft")  # fmt: skip
            yield from self._speculate(prompt_ids, max_new_tokens, ignore_eos)
            return
        rng = np.random.default_rng(seed)
        keep, cache = _reusable(state, prompt_ids)
        logits, cache = self.prefill(prompt_ids[keep:], cache, keep, reserve=len(prompt_ids) + max_new_tokens)
        in_cache = list(prompt_ids)
        past = len(prompt_ids)
        try:
            for i in range(max_new_tokens):
                token = _choose(logits[0, -1], temperature, top_k, top_p, rng)
                yield token
                if (token in self.eos_token_ids and not ignore_eos) or i == max_new_tokens - 1:
                    return
                if past + 1 >= self.context_window:
                    if on_full != "slide":
                        return
                    in_cache = [*in_cache, token][-max(1, self.context_window // 2) :]
                    logits, cache = self.prefill(in_cache, reserve=self.context_window)
                    past = len(in_cache)
                    continue
                logits, cache = self.step(token, cache, past)
                in_cache.append(token)
                past += 1
        finally:
            if state is not None:
                state["ids"], state["cache"] = in_cache, cache

    def _speculate(self, prompt_ids, max_new_tokens: int, ignore_eos: bool):
        """Greedy decoding with speculation (Leviathan et al. 2023; Chen et al. 2023, greedy case): the draft
        proposes k tokens one by one; this model reads the last token and the k proposals in one pass; the
        proposals up to the first one it would not have chosen are kept, then its own choice there. Each pass
        yields 1 to k + 1 tokens, the same ones this model's greedy loop yields (up to rounding where the pass
        over k + 1 positions and a one-position step sum in another order); both caches are cut back to what was
        kept. `self.speculation` counts passes, proposals and proposals kept."""
        draft, k = self.draft, self.draft_tokens
        stats = self.speculation = {"passes": 0, "proposed": 0, "accepted": 0, "draft_steps": 0}
        logits, cache = self.prefill(prompt_ids, reserve=len(prompt_ids) + max_new_tokens + k)
        _, dcache = draft.prefill(prompt_ids, reserve=len(prompt_ids) + max_new_tokens + k)
        seq, dpast, made = list(prompt_ids), len(prompt_ids), 0  # the draft's cache holds seq[:dpast]
        token = int(np.argmax(logits[0, -1]))
        while True:  # invariant: this model's cache holds seq, `token` follows it
            seq.append(token)
            yield token
            made += 1
            if (token in self.eos_token_ids and not ignore_eos) or made >= max_new_tokens:
                return
            if len(seq) >= self.context_window:
                return
            past = len(seq) - 1
            n = min(k, max_new_tokens - made - 1, self.context_window - 1 - len(seq))
            if n < 1:  # no room for a proposal: one plain step
                logits, cache = self.step(token, cache, past)
                token = int(np.argmax(logits[0, -1]))
                continue
            dlogits, dcache = draft.forward(np.asarray([seq[dpast:]]), dcache, dpast)  # one or two tokens behind
            proposals = [int(np.argmax(dlogits[0, -1]))]
            for _ in range(n - 1):
                dlogits, dcache = draft.step(proposals[-1], dcache, len(seq) + len(proposals) - 1)
                proposals.append(int(np.argmax(dlogits[0, -1])))
            stats["draft_steps"] += n
            logits, cache = self.forward(np.asarray([[token, *proposals]]), cache, past)  # (1, n + 1, V)
            choice = logits[0].argmax(-1)
            kept = 0
            while kept < n and int(choice[kept]) == proposals[kept]:
                kept += 1
            stats["passes"] += 1
            stats["proposed"] += n
            stats["accepted"] += kept
            cache = cache.cut(len(seq) + kept)
            dpast = len(seq) + min(kept, n - 1)  # the last proposal never entered the draft's cache
            dcache = dcache.cut(dpast)
            for t in proposals[:kept]:
                seq.append(t)
                yield t
                made += 1
                if (t in self.eos_token_ids and not ignore_eos) or made >= max_new_tokens:
                    return
            token = int(choice[kept])

    def generate(self, prompt, max_new_tokens: int = 64, *, stop=(), on_text=None, **sampling) -> dict:
        """Continue `prompt` (text, or token ids); returns {"text", "tokens", "finish_reason", "prompt_tokens"}.

        `on_text(piece)` receives the text as it grows (held back while a character is incomplete or a stop
        string may be starting). `sampling`: `stream`'s keywords (temperature, top_k, top_p, seed, state).
        """
        if isinstance(prompt, str) and not prompt:
            raise PromptError("empty prompt: give some text to continue")
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        self.check_prompt(ids)
        room = self.context_window - len(ids) if sampling.get("on_full", "stop") == "stop" else max_new_tokens
        limit = min(max_new_tokens, room)
        stop = [x for x in stop if x]
        hold = max((len(x) for x in stop), default=1) - 1  # a stop string may start this far back
        tokens, text, shown, reason = [], "", 0, "length"
        detok = _Detokenizer(self)
        for token in self.stream(ids, limit, **sampling):
            if token in self.eos_token_ids:
                reason = "end_of_text"
                break
            tokens.append(token)
            piece = detok.add(token)
            if not piece:
                continue
            start = max(0, len(text) - hold)  # only text that can hold a new stop string is searched
            text += piece
            cut = min((i for i in (text.find(x, start) for x in stop) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            safe = len(text) if reason == "stop" else _safe_length(text, stop)
            if on_text is not None and safe > shown:
                on_text(text[shown:safe])
                shown = safe
            if reason == "stop":
                break
        else:
            if limit < max_new_tokens:
                reason = "context_window"
        if reason != "stop":
            text = self.decode(tokens)  # the whole decode once: what a complete character needs at the end
        if on_text is not None and len(text) > shown:
            on_text(text[shown:])
        return {"text": text, "tokens": tokens, "finish_reason": reason, "prompt_tokens": len(ids)}


class _Detokenizer:
    """Text of a growing token list, a piece per token, in bounded work: each step decodes only the tokens since
    the last complete piece and a few before them (transformers' TextStreamer and vLLM do the same), so the
    tokenizer's decoder sees the context a leading space or a byte fallback needs; nothing is returned while the
    text ends in an incomplete character."""

    def __init__(self, gen: Generator):
        self.gen, self.ids, self.prefix, self.read = gen, [], 0, 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self.gen.decode(self.ids[self.prefix : self.read])
        now = self.gen.decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before) :]


class Conversation:
    """A multi-turn chat with the model through its chat template, the cache kept between turns.

    Each turn renders the whole conversation (as the template defines it: a template may rewrite earlier turns)
    and runs the model only on the tokens after the longest prefix the cache already holds, so a turn costs its
    own tokens, not the conversation's.
    """

    def __init__(self, generator: Generator, system: str | None = None):
        if generator.chat_template is None:
            raise PromptError("this model's tokenizer has no chat template: give plain text to continue instead")
        self.generator = generator
        self.messages = [{"role": "system", "content": system}] if system else []
        self.state: dict = {}

    def say(self, text: str, max_new_tokens: int = 256, **kwargs) -> dict:
        """The model's reply to the user message `text` (`Generator.generate`'s result, plus "reused_tokens": the
        prompt tokens the cache already held); the reply joins the conversation."""
        messages = [*self.messages, {"role": "user", "content": text}]
        ids = self.generator.chat_ids(messages)
        reused = _reusable(self.state, ids)[0]
        out = self.generator.generate(ids, max_new_tokens, state=self.state, **kwargs)
        self.messages = [*messages, {"role": "assistant", "content": out["text"]}]
        return {**out, "reused_tokens": reused}


class _LazyTemplate:
    """A chat template compiled on first use: generating plain text never imports jinja2."""

    def __init__(self, source: str, special_tokens):
        self.source, self.special_tokens, self._compiled = source, special_tokens, None

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        if self._compiled is None:
            self._compiled = ChatTemplate(self.source, self.special_tokens)
        return self._compiled.render(messages, add_generation_prompt)


class KVCache:
    """The keys and values of the `length` tokens a generator has run, as ONNX Runtime values by past input name.

    In place: one buffer per input of `capacity` positions (batch 1), of which the first `length` hold tokens;
    the graph writes each step's keys and values after them. Else: each value holds exactly `length` positions.
    """

    def __init__(self, values: dict, length: int, in_place: bool, arrays: dict | None = None, binding=None):
        self.values, self.length, self.in_place = values, int(length), in_place
        self._arrays = arrays  # in place: the NumPy buffers the values wrap (kept alive with them)
        self.binding = binding  # in place: the `_Binding` of these buffers, made on the first step
        self._capacity = next(iter(arrays.values())).shape[2] if arrays else 0

    @property
    def capacity(self) -> int:
        """Positions the buffers hold (in place), else the tokens held."""
        return self._capacity if self._arrays else self.length

    @classmethod
    def allocate(cls, gen: Generator, capacity: int) -> KVCache:
        arrays = {n: np.zeros((1, h, capacity, w), dtype=gen._past_dtype) for n, (h, w) in gen._past_shape.items()}
        return cls(_wrap(arrays), 0, True, arrays)

    def grown(self, capacity: int) -> KVCache:
        """The same tokens in buffers of `capacity` positions (one copy; capacities double, so a generation
        copies its cache a logarithmic number of times)."""
        arrays = {}
        for name, old in self._arrays.items():
            new = np.zeros((1, old.shape[1], capacity, old.shape[3]), dtype=old.dtype)
            new[:, :, : self.length] = old[:, :, : self.length]
            arrays[name] = new
        return KVCache(_wrap(arrays), self.length, True, arrays)

    def cut(self, n: int) -> KVCache:
        """The cache of the first `n` tokens (in place: the same buffers, the rest to be overwritten)."""
        if self.in_place:
            return KVCache(self.values, n, True, self._arrays, self.binding)
        arrays = {k: np.ascontiguousarray(v.numpy()[:, :, :n]) for k, v in self.values.items()}
        return KVCache(_wrap(arrays), n, False, None)


def _runner(session):
    """`session.run_with_iobinding`, without its Python wrapper where this ONNX Runtime has the one we know: that
    wrapper checks WebGPU graph capture on every call, about 7 us a token on a CPU (3% of a 4,000 tokens/s model's
    step, measured); the compiled call it ends in is the same. Any other version: the public method."""
    inner = getattr(session, "_sess", None)
    if inner is None or not hasattr(inner, "run_with_iobinding") or not hasattr(session, "run_with_iobinding"):
        return session.run_with_iobinding
    run = inner.run_with_iobinding

    def fast(io):
        core = getattr(io, "_iobinding", None)
        if core is None:
            return session.run_with_iobinding(io)
        return run(core, None)

    return fast


class _Binding:
    """An ONNX Runtime I/O binding kept with a cache's buffers; `step`: bound for one-token steps."""

    def __init__(self, io):
        self.io, self.step = io, False


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _wrap(arrays: dict) -> dict:
    return {k: ort.OrtValue.ortvalue_from_numpy(a) for k, a in arrays.items()}


def _capacity(need: int, window: int, start: int = 256) -> int:
    """Positions to allocate for `need`: `start` doubled until it holds them, at most the context window."""
    cap = start
    while cap < need:
        cap *= 2
    return max(need, min(cap, window))


def _reusable(state, ids):
    """(tokens of `ids` whose cache `state` already holds, that cache cut to them): the longest common prefix,
    at least one token left to run."""
    if not state or state.get("cache") is None:
        return 0, None
    old = state["ids"]
    n = 0
    limit = min(len(old), len(ids) - 1)
    while n < limit and old[n] == ids[n]:
        n += 1
    if n == 0:
        return 0, None
    return n, state["cache"].cut(n)


def _layer_order(name: str):
    parts = name.split(".")
    return (int(parts[1]), parts[2]) if len(parts) > 2 and parts[1].isdigit() else (0, name)


def _choose(logits, temperature: float, top_k: int, top_p: float, rng) -> int:
    """The next token: argmax at temperature 0, else drawn from `_candidates`."""
    if temperature <= 0:
        return int(np.argmax(logits))
    tokens, mass = _candidates(logits, temperature, top_k, top_p)
    j = min(int(np.searchsorted(mass, rng.random() * mass[-1], side="right")), mass.size - 1)
    return int(tokens[j])


def _candidates(logits, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """(token ids, cumulative unnormalised probability) of what sampling may draw: softmax(logits / temperature)
    narrowed to the `top_k` likeliest, then to the fewest likeliest whose probability reaches `top_p`.

    Per token the work is a few passes over the vocabulary in float32 (no float64 copy, no full sort): top-k by
    partial selection, top-p by sorting only a candidate set that grows (64, 256, ...) until it holds the mass."""
    z = np.asarray(logits, dtype=np.float32).reshape(-1)
    ids = np.argpartition(z, -top_k)[-top_k:] if top_k and top_k < z.size else None
    if ids is not None:
        z = z[ids]
    p = np.exp((z - z.max()) / np.float32(temperature))
    if top_p >= 1.0:
        return (ids if ids is not None else np.arange(p.size)), np.cumsum(p, dtype=np.float64)
    goal = top_p * float(p.sum(dtype=np.float64))
    m = min(64, p.size)
    while True:
        cand = np.argpartition(p, p.size - m)[p.size - m :] if m < p.size else np.arange(p.size)
        cand = cand[np.argsort(-p[cand], kind="stable")]
        mass = np.cumsum(p[cand], dtype=np.float64)
        if mass[-1] >= goal or m == p.size:
            break
        m = min(p.size, m * 4)
    keep = max(1, int(np.count_nonzero(mass - p[cand] < goal)))  # the smallest prefix whose mass reaches top_p
    cand = cand[:keep]
    return (ids[cand] if ids is not None else cand), mass[:keep]


def _safe_length(text: str, stop) -> int:
    """How much of `text` cannot change any more: all but the start of a stop string at its end."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold


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
    p.add_argument("--chat", action="store_true", help="each prompt is a user message in the model's chat template")
    p.add_argument("--system", default=None, help="--chat, --interactive: a system message first")
    p.add_argument("--interactive", action="store_true", help="a multi-turn chat, one user message per input line")
    p.add_argument("--max-context", type=int, default=None, help="tokens held at most (default: the model's window)")
    p.add_argument("--on-full", choices=["stop", "slide"], default="stop", help="when the context is full")
    p.add_argument("--draft", action="store_true", help="greedy, with the bundle's draft model speculating")
    p.add_argument("--draft-tokens", type=int, default=None, help="--draft: tokens proposed per pass (bundle.json's)")
    p.add_argument("--stats", action="store_true", help="--draft: print the proposals kept to standard error")
    p.add_argument("--model", choices=["auto", "ort", "onnx"], default="auto")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    try:
        meta = json.loads((Path(a.bundle) / "bundle.json").read_text(encoding="utf-8"))
        gen = Generator.from_bundle(a.bundle, a.model, a.threads, a.max_context, draft=a.draft)
    except (OSError, ValueError, KeyError) as e:
        sys.stderr.write(f"generate.py: not a usable bundle at {a.bundle}: {e}\n")
        return 2
    if a.draft_tokens is not None or a.stats:
        if not a.draft or a.draft_tokens is not None and a.draft_tokens < 1:
            sys.stderr.write("generate.py: --draft-tokens (at least 1) and --stats apply to --draft\n")
            return 2
        if a.draft_tokens is not None:
            gen.draft_tokens = a.draft_tokens
    defaults = meta.get("generation", {})
    sampling = {
        "temperature": a.temperature if a.temperature is not None else defaults.get("temperature", 0.0),
        "top_k": a.top_k if a.top_k is not None else defaults.get("top_k", 0),
        "top_p": a.top_p if a.top_p is not None else defaults.get("top_p", 1.0),
        "seed": a.seed,
        "on_full": a.on_full,
    }
    max_new = a.max_new_tokens if a.max_new_tokens is not None else defaults.get("max_new_tokens", 64)
    if max_new < 1 or sampling["temperature"] < 0 or not 0 < sampling["top_p"] <= 1 or sampling["top_k"] < 0:
        sys.stderr.write(
            "generate.py: need --max-new-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0\n"
        )
        return 2
    if a.max_context is not None and a.max_context < 2:
        sys.stderr.write("generate.py: --max-context must be at least 2 tokens\n")
        return 2
    stop = [s.encode("utf-8").decode("unicode_escape") for s in a.stop]
    if (a.chat or a.interactive) and gen.chat_template is None:
        sys.stderr.write("generate.py: this model's tokenizer has no chat template; give plain text to continue\n")
        return 2
    if a.system is not None and not (a.chat or a.interactive):
        sys.stderr.write("generate.py: --system applies to --chat or --interactive\n")
        return 2
    if a.draft and (sampling["temperature"] > 0 or a.interactive or a.on_full != "stop"):
        sys.stderr.write("generate.py: --draft speculates greedy decoding only: no --temperature, --interactive "
                         "or --on-full slide with it\n")  # fmt: skip
        return 2
    if a.interactive:
        return _interactive(gen, a.system, max_new, stop, sampling)
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
    head = [{"role": "system", "content": a.system}] if a.system else []
    for n, prompt in enumerate(prompts, 1):
        t0 = time.perf_counter()
        try:
            if a.chat:
                prompt = gen.chat_ids([*head, {"role": "user", "content": prompt}])
            if as_json:
                out = gen.generate(prompt, max_new, stop=stop, **sampling)
                out = {"input": n, **out, "seconds": round(time.perf_counter() - t0, 4)}
                if gen.draft is not None:
                    out["speculation"] = gen.speculation
                print(json.dumps(out, ensure_ascii=False), flush=True)
            else:
                gen.generate(prompt, max_new, stop=stop, on_text=lambda s: print(s, end="", flush=True), **sampling)
                print(flush=True)
            if a.stats:
                sp = gen.speculation
                sys.stderr.write(f"draft: {sp['accepted']}/{sp['proposed']} proposals kept over {sp['passes']} passes "
                                 f"({time.perf_counter() - t0:.3f} s)\n")  # fmt: skip
        except PromptError as e:
            status = 2 if not as_json else max(status, 1)
            if as_json:
                print(json.dumps({"input": n, "error": str(e)}), flush=True)
            else:
                sys.stderr.write(f"generate.py: {e}\n")
    return status


def _interactive(gen: Generator, system, max_new: int, stop, sampling: dict) -> int:
    """A chat on standard input, one user message per line, replies streamed; the cache kept between turns."""
    conversation = Conversation(gen, system)
    if sys.stdin.isatty():
        sys.stderr.write("one message per line; end with Ctrl-D\n")
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        try:
            conversation.say(text, max_new, stop=stop, on_text=lambda s: print(s, end="", flush=True), **sampling)
            print(flush=True)
        except PromptError as e:  # the turn is dropped; the conversation so far stays
            sys.stderr.write(f"generate.py: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
