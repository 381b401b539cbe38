"""The causal-LM task: a decoder-only model that continues a text (GPT-2, Llama, Mistral, Qwen2 families).

Data are plain-text documents packed into token blocks (`compress.tasks.causal_lm.data`); the teacher is the user's
model, one
trained further, or one pretrained here on the corpus (`compress.tasks.causal_lm.teacher`); students learn the teacher's
next-token distributions (`compress.tasks.causal_lm.distill`); pruning is unstructured or n:m
(`compress.tasks.causal_lm.prune`); the
export carries the KV cache and is checked step by step against PyTorch (`compress.tasks.causal_lm.export`);
quantization is
dynamic int8 or weight-only int4/int8 (`compress.tasks.causal_lm.quantize`); quality is perplexity (lower is better),
measured on the ONNX artifact; the benchmark times what a device feels: time to first token and decode speed
(`compress.tasks.causal_lm.suite`).
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np

from compress.errors import RecipeError
from compress.stage import RunContext, Step, TaskBase, built_variants, save_results
from compress.tasks.causal_lm.config import CausalLMRecipe

_PREDICTIONS = "dev_predictions.npz"  # the teacher's greedy next tokens on the dev blocks
_UNIGRAM = "unigram_log_probs.npy"  # the train split's unigram model: the collapse bound of every gate
_HELDOUT_BLOCKS = 16  # held-out blocks scored by quantization choices


class CausalLMTask(TaskBase):
    """Stages of `task: causal-lm` (see `compress.tasks.Task`)."""

    name = "causal-lm"
    recipe_class = CausalLMRecipe
    metric = "perplexity"
    higher_is_better = False
    export_task = "text-generation-with-past"

    def load_data(self, recipe: CausalLMRecipe):
        from compress.tasks.causal_lm.data import load_text_data

        return load_text_data(recipe.data)

    def summary(self, data) -> str:
        chars = sum(len(d) for d in data.train)
        test = f", {len(data.test)} test" if data.test is not None else ""
        return (
            f"{len(data.train)} train documents ({chars:,} characters), {len(data.holdout)} held out, "
            f"{len(data.dev)} dev{test}"
        )

    def load_model(self, model_dir: Path):
        from compress.tasks.causal_lm.model import load_causal_lm

        return load_causal_lm(model_dir, str(model_dir))

    def load_tokenizer(self, model_dir: Path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    # ---- checks before anything runs ----

    def preflight(self, recipe: CausalLMRecipe) -> None:
        """Everything that depends on the teacher's shape, from its config alone (no weights loaded)."""
        shape = _teacher_shape(recipe.teacher)
        _check_cuts(recipe, shape)
        if recipe.export.backend == "genai":
            from types import SimpleNamespace

            from compress.tasks.causal_lm.genai import check_supported

            check_supported(shape.config)
            for d in recipe.distill:
                if d.hidden_size is not None:
                    check_supported(SimpleNamespace(model_type=shape.config.model_type, hidden_size=d.hidden_size,
                                                    num_attention_heads=shape.config.num_attention_heads))  # fmt: skip
        data = recipe.data
        if data.block_size > shape.window:
            raise RecipeError(
                f"data.block_size = {data.block_size}: the teacher's context window is {shape.window} tokens"
            )
        _check_students(recipe, shape)
        _check_windows(recipe, shape.window)
        _check_memory(recipe, shape)

    def costs(self, recipe: CausalLMRecipe, data=None) -> list[str]:
        """`check`'s lines: each stage's estimated peak memory against this machine's and, given the data, each
        training stage's wall time from steps measured here."""
        from compress.tasks.causal_lm.cost import gib, machine_memory_bytes

        total = machine_memory_bytes()
        shape = _teacher_shape(recipe.teacher)
        lines = [f"  {c['stage']:<24} ~{gib(c['bytes']):>9}  {c['basis']}"
                 for c in _check_memory(recipe, shape)]  # fmt: skip
        head = f"estimated peak memory per stage (this machine: {gib(total) if total else 'unknown'}):"
        return [head, *lines, *(_time_lines(recipe, shape, data) if data is not None else [])]

    # ---- stages ----

    def teacher(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.causal_lm.teacher import train_teacher_lm

        r = ctx.recipe
        res = train_teacher_lm(r.teacher, ctx.data, r.data, seed=r.seed, work_dir=out / "_trainer", log=ctx.log)
        res.model.generation_config.eos_token_id = res.tokenizer.eos_token_id
        res.model.generation_config.pad_token_id = res.tokenizer.pad_token_id or res.tokenizer.eos_token_id
        res.model.save_pretrained(out)
        res.tokenizer.save_pretrained(out)
        np.savez(out / _PREDICTIONS, *res.dev_predictions)
        from compress.gate import unigram_log_probs
        from compress.tasks.causal_lm.data import token_stream

        log_probs = unigram_log_probs(
            token_stream(res.tokenizer, ctx.data.train, r.data.max_train_tokens), len(res.tokenizer)
        )
        np.save(out / _UNIGRAM, log_probs)
        res.metrics["gate"] = self._gate(ctx, res.metrics, log_probs, res.tokenizer)
        ctx.log(
            f"    teacher: dev perplexity {res.metrics['dev_perplexity_torch']:.3f} "
            f"({res.metrics['params']:,} params, {res.metrics['train_tokens']:,} training tokens)"
        )
        return res.metrics

    @staticmethod
    def unigram(ctx: RunContext, tokenizer) -> np.ndarray:
        """The train split's unigram log probabilities (saved by the teacher step; computed when a teacher step
        from before the gates existed lacks them)."""
        path = ctx.out("teacher") / _UNIGRAM
        if path.is_file():
            return np.load(path)
        from compress.gate import unigram_log_probs
        from compress.tasks.causal_lm.data import token_stream

        return unigram_log_probs(
            token_stream(tokenizer, ctx.data.train, ctx.recipe.data.max_train_tokens), len(tokenizer)
        )

    @staticmethod
    def teacher_predictions(ctx: RunContext) -> list[np.ndarray]:
        with np.load(ctx.out("teacher") / _PREDICTIONS) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]

    def distill(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.causal_lm.distill import distill_lm

        r = ctx.recipe
        teacher, tokenizer = ctx.load("teacher")
        res = distill_lm(
            teacher,
            tokenizer,
            step.config,
            ctx.data,
            r.data,
            seed=r.seed,
            work_dir=out / "_trainer",
            teacher_predictions=self.teacher_predictions(ctx),
            log=ctx.log,
            cache_dir=ctx.run_dir / "_cache",
        )
        res.model.generation_config = teacher.generation_config
        res.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        res.metrics["gate"] = self._gate(
            ctx, res.metrics, None, tokenizer, "teacher", ctx.metrics("teacher"), step.config.max_perplexity_ratio
        )
        if step.config.control:
            res.metrics["control"] = self._control(ctx, res.model, tokenizer, step.config, res.metrics, out)
        ctx.log(
            f"    {step.name}: dev perplexity {res.metrics['dev_perplexity_torch']:.3f}, agreement with the teacher "
            f"{res.metrics['dev_agreement_with_teacher_torch']:.1%}"
        )
        return res.metrics

    def prune(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.causal_lm.prune import prune_lm

        r = ctx.recipe
        student, tokenizer = ctx.load(r.source_of(step.config))
        teacher, _ = ctx.load("teacher")
        res = prune_lm(
            student,
            tokenizer,
            teacher,
            step.config,
            ctx.data,
            r.data,
            seed=r.seed,
            work_dir=out / "_trainer",
            teacher_predictions=self.teacher_predictions(ctx),
        )
        res.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        source = r.source_of(step.config)
        res.metrics["gate"] = self._gate(
            ctx,
            res.metrics,
            None,
            tokenizer,
            source,
            ctx.metrics(r.model_step(source)),
            step.config.max_perplexity_ratio,
        )
        if step.config.method == "structured" and step.config.control:
            lineage = res.metrics["train_blocks_seen"]
            if source != "teacher":  # the student's own training is part of the cut's
                lineage += ctx.metrics(r.model_step(source)).get("train_blocks_seen") or 0
            res.metrics["control"] = self._control(
                ctx, res.model, tokenizer, step.config, {**res.metrics, "train_blocks_seen": lineage}, out
            )
        return res.metrics

    @staticmethod
    def _control(ctx: RunContext, model, tokenizer, config, metrics: dict, out: Path) -> dict:
        """The equal-training control of a student or cut (`compress.tasks.causal_lm.control`), and the variant's
        held-out and dev perplexity as ratios to it."""
        from compress.tasks.causal_lm.control import train_control
        from compress.tasks.causal_lm.model import memory_args

        control = train_control(
            model,
            tokenizer,
            ctx.data,
            ctx.recipe.data,
            blocks=metrics["train_blocks_seen"],
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_ratio=getattr(config, "warmup_ratio", 0.0),
            weight_decay=getattr(config, "weight_decay", 0.0),
            seed=ctx.recipe.seed,
            work_dir=out / "_control",
            memory=memory_args(config),
            log=ctx.log,
        )
        for key in ("holdout", "dev"):
            mine, theirs = metrics.get(f"{key}_perplexity_torch"), control.get(f"{key}_perplexity_torch")
            control[f"{key}_perplexity_ratio"] = mine / theirs if mine and theirs else None
        ctx.log(
            f"    control ({control['train_steps']:,} steps, no teacher): dev perplexity "
            f"{control['dev_perplexity_torch']:.3f}; the variant's is {control['dev_perplexity_ratio']:.3f}x that"
        )
        return control

    def _gate(self, ctx: RunContext, metrics: dict, log_probs, tokenizer, parent=None, parent_metrics=None, ratio=None):
        """The LM gate on the held-out slice (dev when the recipe holds nothing out): collapse against the unigram
        model of train, and the perplexity ratio to the parent (`compress.gate.lm_gate`)."""
        from compress.gate import lm_gate, unigram_perplexity
        from compress.tasks.causal_lm.data import eval_blocks

        key = "holdout" if ctx.data.holdout else "dev"
        if log_probs is None:
            log_probs = self.unigram(ctx, tokenizer)
        blocks = eval_blocks(tokenizer, getattr(ctx.data, key), ctx.recipe.data, key)
        parent_value = (parent_metrics or {}).get(f"{key}_perplexity_torch")
        return lm_gate(
            metrics[f"{key}_perplexity_torch"],
            unigram=None if ctx.recipe.teacher.random_weights else unigram_perplexity(log_probs, blocks),
            parent=parent,
            parent_perplexity=parent_value,
            max_ratio=ratio,
        ).to_dict()

    def export(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.causal_lm.data import prompts_from
        from compress.tasks.causal_lm.export import export_causal_lm

        e = step.config
        tokenizer = ctx.tokenizer(step.name)
        prompts = prompts_from(tokenizer, ctx.data.dev, e.prompts, e.prompt_tokens, ctx.recipe.data.max_eval_tokens)
        return export_causal_lm(ctx.model_dir(step.name), out, e, prompts)

    def heldout_nll(self, ctx: RunContext, artifact_dir: Path):
        """ONNX file -> mean NLL per token on the first held-out (else dev) blocks, through ONNX Runtime."""
        from compress.tasks.causal_lm.data import eval_blocks
        from compress.tasks.causal_lm.export import generator_for

        tokenizer = ctx.tokenizer("teacher")
        docs, key = (ctx.data.holdout, "holdout") if ctx.data.holdout else (ctx.data.dev, "dev")
        blocks = eval_blocks(tokenizer, docs, ctx.recipe.data, key)[:_HELDOUT_BLOCKS]

        def nll(path: Path) -> float:
            gen = generator_for(artifact_dir, threads=2, session=_session(path))
            total, count = onnx_nll(gen, blocks)
            return total / count

        return nll, blocks

    def quantize(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.causal_lm.data import prompts_from
        from compress.tasks.causal_lm.quantize import PerplexityBudgetError, quantize_lm

        q, src, r = step.config, ctx.out(step.inputs[0]), ctx.recipe
        nll, blocks = self.heldout_nll(ctx, src)
        tokenizer = ctx.tokenizer("teacher")
        prompt = prompts_from(tokenizer, ctx.data.dev, 1, 32, ctx.recipe.data.max_eval_tokens)[0]
        calibration = None
        weight_only_gptq = q.method == "weight-only" and q.algorithm == "gptq"
        if weight_only_gptq or (q.method == "dynamic" and q.max_perplexity_ratio is not None):
            from compress.tasks.causal_lm.export import generator_for

            gen = generator_for(src)  # for the graph's input names and cache shapes
            calibration = [decoder_feeds(gen, b[None, :]) for b in blocks[: q.calibration_blocks]]
            del gen  # its session holds the float model's weights: not through the whole quantization
        from compress.gate import lm_gate, unigram_perplexity

        try:
            metrics = quantize_lm(
                src, out, q, heldout_nll=nll, timing_prompt=prompt, calibration=calibration, log=ctx.log
            )
        except PerplexityBudgetError as e:
            ctx.log(f"    {step.id}: not within quantize.max_perplexity_ratio = {q.max_perplexity_ratio}; not shipped")
            return {
                "shipped": False,
                "reason": str(e),
                "max_perplexity_ratio": q.max_perplexity_ratio,
                "gate": {
                    "passed": False,
                    "metric": "perplexity",
                    "bound": f"max_perplexity_ratio {q.max_perplexity_ratio}",
                    "reasons": [str(e)],
                },  # fmt: skip
            }
        tokenizer = ctx.tokenizer("teacher")
        unigram = None if r.teacher.random_weights else unigram_perplexity(self.unigram(ctx, tokenizer), blocks)
        metrics["gate"] = lm_gate(
            metrics["holdout_perplexity"],
            unigram=unigram,
            parent=r.source_of(q),
            parent_perplexity=metrics["holdout_perplexity_fp32"],
            max_ratio=q.max_perplexity_ratio,
        ).to_dict()
        return metrics

    # ---- the report, compare and bundle ----

    def report_module(self):
        from compress.tasks.causal_lm import report

        return report

    def verify_function(self):
        from compress.tasks.causal_lm.bundle import verify

        return verify

    def bundle_function(self):
        from compress.tasks.causal_lm.bundle import bundle_lm

        return bundle_lm

    # vs the teacher on dev: perplexity ratio, and KL(teacher || variant) in nats per token; a draft variant that
    # speculates for the shipped one (none by default) and its proposals per pass; the model's forms for other
    # runtimes (None: GenAI and GGUF, where their tools are installed)
    bundle_rules = {"max_perplexity_ratio": 1.25, "max_kl_to_teacher": 0.5, "draft": None, "draft_tokens": 4,
                    "forms": None}  # fmt: skip

    def bundle_message(self, meta: dict, out_dir: Path) -> str:
        return (
            f"{out_dir}: {meta['variant']} for target {meta['target']} ({meta['threads']} thread(s)); "
            f"{meta['selection']}. Greedy tokens identical to the pipeline's on {meta['check']['prompts']} "
            "prompts."
            + (
                f" Draft {meta['draft']['variant']}: greedy tokens identical, "
                f"{meta['draft']['check']['acceptance']:.0%} of its proposals kept, "
                f"{meta['draft']['check']['speedup']:.2f}x the tokens/s without it."
                if meta.get("draft")
                else ""
            )
            + f'\ntry: python {Path(out_dir) / "generate.py"} "The os module provides"'
        )

    def benchmark(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from benchmarks.baselines import optimum_dynamic_int8
        from compress.hardware import in_fresh_process
        from compress.tasks.causal_lm.suite import LMVariant, benchmark_lm

        r = ctx.recipe

        def ours(name: str, stage: str, parent: str | None, artifact: str, model: str) -> LMVariant:
            m = ctx.metrics(r.model_step(model))
            d = ctx.out(artifact)
            return LMVariant(name, stage, "onnxruntime", parent, d / "model.onnx", d, m["params"], m["layers"])

        t = ctx.metrics("teacher")
        teacher_dir, export_dir = ctx.out("teacher"), ctx.out("export/teacher")
        wanted = step.config.baselines
        if "optimum" in wanted and r.export.backend != "optimum":  # optimum's own export, whatever ours is
            from compress.tasks.causal_lm.data import prompts_from
            from compress.tasks.causal_lm.export import export_causal_lm

            e = r.export.model_copy(update={"backend": "optimum"})
            tokenizer = ctx.tokenizer("teacher")
            prompts = prompts_from(tokenizer, ctx.data.dev, e.prompts, e.prompt_tokens, r.data.max_eval_tokens)
            export_dir = out / "teacher-onnx"
            # In a process of its own: torch's ONNX exporter keeps what it traced (12 GB after a 1B model's export,
            # measured), which this process would carry through every measurement that follows.
            in_fresh_process(export_causal_lm, teacher_dir, export_dir, e, prompts)
        variants = [
            LMVariant("teacher-torch", "baseline", "torch", None, teacher_dir, teacher_dir, t["params"], t["layers"])
        ]
        if "optimum" in wanted:
            variants.append(
                LMVariant(
                    "teacher-onnx",
                    "baseline",
                    "optimum",
                    "teacher-torch",
                    export_dir,
                    export_dir,
                    t["params"],
                    t["layers"],
                )  # fmt: skip
            )
        if "optimum-int8" in wanted:
            optimum_int8 = out / "teacher-int8-optimum"
            in_fresh_process(optimum_dynamic_int8, export_dir, optimum_int8)
            variants.append(
                LMVariant(
                    "teacher-int8-optimum",
                    "baseline",
                    "optimum",
                    "teacher-onnx",
                    optimum_int8,
                    optimum_int8,
                    t["params"],
                    t["layers"],
                )  # fmt: skip
            )
        built_ours = built_variants(ctx)
        variants += [ours(*astuple(b)) for b in built_ours]
        same_file = _same_file_in_genai(step.config.in_genai, variants, ctx.log)
        variants += same_file["variants"]
        in_llama_cpp = _same_model_in_llama_cpp(step.config.in_llama_cpp, built_ours, variants, ctx, out / "gguf")
        variants += in_llama_cpp["variants"]
        same_file["unavailable"] += in_llama_cpp["unavailable"]
        anchors = {"built": {}, "unavailable": []}
        if step.config.anchors:
            from compress.tasks.causal_lm.anchors import build_anchors

            built, unavailable = build_anchors(step.config.anchors, teacher_dir, out / "anchors", log=ctx.log)
            anchors = {"built": built, "unavailable": unavailable}
            for name in step.config.anchors:
                if name in built:
                    path = Path(built[name]["path"])
                    variants.append(
                        LMVariant(
                            name,
                            "anchor",
                            built[name]["runtime"],
                            "teacher-torch",
                            path,
                            teacher_dir,
                            t["params"],
                            t["layers"],
                        )  # fmt: skip
                    )
        anchors["unavailable"] += same_file["unavailable"]
        results = benchmark_lm(
            variants,
            ctx.data,
            r.data,
            step.config,
            reference="teacher-torch",
            work_dir=out,
            log=ctx.log,
            anchors=anchors,
        )
        dirs = {v.name: v.model_dir for v in variants if v.runtime == "onnxruntime"}
        results = save_results(ctx, step, out, results, dirs)
        return {
            v["name"]: {"perplexity": v["perplexity"], "tokens_per_s": v.get("tokens_per_s")}
            for v in results["variants"]
        }


def _teacher_shape(t):
    """The teacher's family and sizes, from its config (teacher.path / base) or the recipe's architecture; `config`
    holds them under a transformers config's names, for the helpers that read a config."""
    from types import SimpleNamespace

    from compress.architectures import family_of, ffn_width, head_dim, kv_heads
    from compress.tasks.causal_lm.model import check_causal_lm_dir, context_window

    source = t.path or t.base
    if source is not None:
        from transformers import AutoModelForCausalLM

        from compress.modeling import check_model_dir

        key = "teacher.path" if t.path is not None else "teacher.base"
        check_causal_lm_dir(source, key)
        config = check_model_dir(source, AutoModelForCausalLM, key)
        family = family_of(config, key).name
        layers, hidden, ffn = int(config.num_hidden_layers), int(config.hidden_size), ffn_width(config)
        window, groups = context_window(config), kv_heads(config)
        n_heads, width = int(config.num_attention_heads), head_dim(config)
        vocab, tied = int(config.vocab_size), bool(getattr(config, "tie_word_embeddings", True))
    else:
        a = t.architecture
        layers, hidden, window = a.layers, a.hidden_size, a.max_positions
        ffn = a.intermediate_size or 4 * a.hidden_size
        family, groups = a.family, (a.kv_heads or a.heads) if a.family != "gpt2" else a.heads
        n_heads, width = a.heads, a.hidden_size // a.heads
        vocab, tied = t.tokenizer.vocab_size, a.tie_embeddings
        config = SimpleNamespace(
            model_type=family, hidden_size=hidden, num_attention_heads=n_heads, num_key_value_heads=groups,
            intermediate_size=ffn, n_inner=ffn,
        )  # fmt: skip
    return SimpleNamespace(family=family, layers=layers, hidden=hidden, ffn=ffn, window=window, groups=groups,
                           n_heads=n_heads, width=width, vocab=vocab, tied=tied, config=config)  # fmt: skip


def _decoder_shape(shape):
    from compress.tasks.causal_lm.cost import DecoderShape

    return DecoderShape(shape.layers, shape.hidden, shape.ffn, shape.n_heads, shape.groups, shape.width,
                        shape.vocab, shape.tied, gated=shape.family != "gpt2")  # fmt: skip


def _same_file_in_genai(names: list[str], variants: list, log) -> dict:
    """`benchmark.in_genai`: rows NAME-genai, each our variant's own model file run by GenAI's generator, when
    that runtime is installed and runs it ({"variants", "unavailable": [{name, reason}]}, as the anchors')."""
    from compress.tasks.causal_lm.anchors import check_runs
    from compress.tasks.causal_lm.suite import LMVariant

    by_name, out, unavailable = {v.name: v for v in variants}, [], []
    for name in names:
        if name not in by_name:  # gated, or not built: nothing to run
            continue
        v = by_name[name]
        try:
            check_runs("genai", v.model_dir)
        except Exception as e:  # noqa: BLE001 - a missing runtime or one that cannot run the file: the reason
            reason = f"{type(e).__name__}: {str(e).strip()[:300]}"
            unavailable.append({"name": f"{name}-genai", "reason": reason})
            log(f"    {name}-genai: not measured: {reason}")
            continue
        out.append(LMVariant(f"{name}-genai", "anchor", "genai", name, v.model_dir, v.model_dir, v.params, v.layers))
    return {"variants": out, "unavailable": unavailable}


def _same_model_in_llama_cpp(names: list[str], built: list, variants: list, ctx, out: Path) -> dict:
    """`benchmark.in_llama_cpp`: rows NAME-llama.cpp, each our variant as llama.cpp runs it: its float model
    converted by llama.cpp's own script and quantized by llama.cpp to the nearest type (`forms.gguf_type`, as the
    bundle's GGUF form), when llama.cpp is installed and runs it ({"variants", "unavailable"}, as the anchors')."""
    from compress.tasks.causal_lm.anchors import build_gguf, check_runs
    from compress.tasks.causal_lm.forms import gguf_type
    from compress.tasks.causal_lm.suite import LMVariant

    r = ctx.recipe
    by_name, made, unavailable = {v.name: v for v in variants}, [], []
    entries = {q.name: q.model_dump() for q in r.quantize}
    for b in built:
        if b.name not in names or b.name not in by_name:  # gated, or not built: nothing to run
            continue
        v, kind = by_name[b.name], gguf_type(entries.get(b.name))
        try:
            # one conversion per float model, shared by the variants made from it
            rec = build_gguf(ctx.out(r.model_step(b.model)), out / b.model, [kind], stem=b.model)[kind]
            check_runs("llama.cpp", rec["path"])
        except Exception as e:  # noqa: BLE001 - no llama.cpp, or one that cannot convert or run it: the reason
            reason = f"{type(e).__name__}: {str(e).strip()[:300]}"
            unavailable.append({"name": f"{b.name}-llama.cpp", "reason": reason})
            ctx.log(f"    {b.name}-llama.cpp: not measured: {reason}")
            continue
        ctx.log(f"    {b.name}-llama.cpp: {kind.upper()} built from {r.model_step(b.model)} in {rec['build_s']:.1f} s")
        made.append(LMVariant(f"{b.name}-llama.cpp", "anchor", "llama.cpp", b.name, Path(rec["path"]), v.model_dir,
                              v.params, v.layers))  # fmt: skip
    return {"variants": made, "unavailable": unavailable}


def _train_blocks(recipe: CausalLMRecipe, data) -> tuple[int, str]:
    """Training blocks in the train split, estimated from its characters and the teacher's tokenizer on a sample
    (a teacher trained here has no tokenizer yet: 4 characters a token is assumed)."""
    chars = sum(len(d) for d in data.train)
    source = recipe.teacher.path or recipe.teacher.base
    if source is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        sample, taken = [], 0
        for doc in data.train:
            sample.append(doc[: 200_000 - taken])
            taken += len(sample[-1])
            if taken >= 200_000:
                break
        tokens = sum(len(ids) for ids in tok(sample, add_special_tokens=False)["input_ids"])
        per_token, how = taken / max(1, tokens), "characters per token measured on a sample"
    else:
        per_token, how = 4.0, "4 characters a token assumed (the tokenizer is trained by the run)"
    tokens = int(chars / per_token)
    if recipe.data.max_train_tokens is not None:
        tokens = min(tokens, recipe.data.max_train_tokens)
    return max(1, tokens // recipe.data.block_size), f"{tokens:,} train tokens ({per_token:.2f} {how})"


def _time_lines(recipe: CausalLMRecipe, shape, data) -> list[str]:
    """Each training stage's wall time on this machine, from training steps of its shape timed here."""
    import torch

    from compress.tasks.causal_lm.cost import time_estimate
    from compress.tasks.causal_lm.timing import step_seconds

    n_blocks, basis = _train_blocks(recipe, data)
    measured: dict = {}

    def seconds(student, teacher, batch: int) -> float:
        key = (student, teacher, batch)
        if key not in measured:
            measured[key] = step_seconds(student, teacher, batch, recipe.data.block_size)
        return measured[key]

    rows = time_estimate(recipe, _decoder_shape(shape), n_blocks, seconds)
    if not rows:
        return []
    total = sum(r["seconds"] for r in rows)
    return [
        f"estimated training wall time on this machine ({torch.get_num_threads()} threads; steps of each shape "
        f"timed here on {basis}; evaluation, export and benchmark not counted):",
        *(f"  {r['stage']:<24} ~{r['seconds'] / 60:>7.1f} min  {r['basis']}" for r in rows),
        f"  {'all training':<24} ~{total / 60:>7.1f} min",
    ]


def _check_memory(recipe: CausalLMRecipe, shape) -> list[dict]:
    """Each stage's estimated peak memory (`compress.tasks.causal_lm.cost`); a stage that cannot fit in this
    machine's memory is refused, naming the keys that lower it."""
    from compress.tasks.causal_lm.cost import estimate, gib, machine_memory_bytes

    costs = estimate(recipe, _decoder_shape(shape))
    total = machine_memory_bytes()
    for c in costs if total else []:
        if c["bytes"] > total:
            section = c["stage"].split("/")[0]
            fix = (
                f"set {section}.gradient_checkpointing: true, {section}.precision: bf16, or a smaller "
                f"{section}.batch_size (with gradient_accumulation_steps to keep the step's batch)"
                if section in ("teacher", "distill", "prune")
                else "use a machine with more memory"
            )
            raise RecipeError(
                f"{c['stage']}: needs about {gib(c['bytes'])} ({c['basis']}), this machine has {gib(total)}: {fix}"
            )
    return costs


def _check_cuts(recipe: CausalLMRecipe, shape) -> None:
    """Each structured cut keeps something of every structure, and what it keeps the export backend can build."""
    from compress.decoder_structured import kept_counts

    for i, p in enumerate(recipe.prune):
        if p.method != "structured":
            continue
        if shape.family == "gpt2" and (p.heads or p.hidden):
            what = "heads" if p.heads else "hidden"
            raise RecipeError(
                f"prune.{i}.{what}: gpt2 fuses Q, K and V and ties head width to the hidden size, so only its "
                "FFN can be cut (prune.ffn)"
            )
        keep_groups, _, kept_hidden = kept_counts(
            shape.config, heads=p.heads, ffn=p.ffn, hidden=p.hidden, key=f"prune.{i}"
        )
        kept_heads = keep_groups * (shape.n_heads // shape.groups)
        if recipe.export.backend == "genai" and kept_heads * shape.width != kept_hidden:
            # The builder takes the head width as hidden size / heads; a cut that breaks the equality builds no
            # graph (seen: "The hidden size (256) is not a multiple of ... heads (6)").
            raise RecipeError(
                f"prune.{i}: keeps {kept_heads} heads of width {shape.width} and a hidden size of {kept_hidden}; "
                f"export.backend 'genai' needs hidden size = heads x width ({kept_heads * shape.width}): cut "
                "prune.hidden in proportion to prune.heads, or use backend 'optimum'"
            )


def _check_students(recipe: CausalLMRecipe, shape) -> None:
    """Each student's layers, layer map, widths and teacher-written prompts fit the teacher."""
    from compress.modeling import check_layer_map

    layers, ffn, hidden = shape.layers, shape.ffn, shape.hidden
    for i, d in enumerate(recipe.distill):
        key = "distill" if len(recipe.distill) == 1 else f"distill.{i}"
        if d.num_layers is not None:
            if d.num_layers >= layers:
                raise RecipeError(
                    f"{key}.num_layers = {d.num_layers}: the teacher has {layers} layers; a student keeps fewer"
                )
        elif any(layer >= layers for layer in d.layers):
            raise RecipeError(f"{key}.layers = {list(d.layers)}: the teacher has layers 0..{layers - 1}")
        if d.hidden_layer_map:  # (student, teacher) hidden states, the embeddings as 0
            kept = d.num_layers if d.num_layers is not None else len(d.layers)
            check_layer_map(key, "hidden_layer_map", d.hidden_layer_map, kept, layers)
        if d.generated_sequences and d.generation_prompt_tokens >= recipe.data.block_size:
            raise RecipeError(
                f"{key}.generation_prompt_tokens = {d.generation_prompt_tokens}: the teacher writes blocks of "
                f"data.block_size = {recipe.data.block_size} tokens; the prompt must be shorter"
            )
        if d.intermediate_size is not None and d.intermediate_size > ffn:
            raise RecipeError(f"{key}.intermediate_size = {d.intermediate_size}: the teacher's FFN is {ffn} wide")
        if d.hidden_size is not None and d.hidden_size > hidden:
            raise RecipeError(f"{key}.hidden_size = {d.hidden_size}: the teacher's hidden size is {hidden}")


def _check_windows(recipe: CausalLMRecipe, window: int) -> None:
    """The export check's and the benchmark's prompts plus new tokens fit the teacher's context window."""
    e, b = recipe.export, recipe.benchmark
    if e.prompt_tokens + e.new_tokens > window:
        raise RecipeError(
            f"export.prompt_tokens + export.new_tokens = {e.prompt_tokens + e.new_tokens}: beyond the "
            f"teacher's context window of {window} tokens"
        )
    too_long = [n for n in b.prompt_lengths if n + b.new_tokens > window]
    if too_long:
        raise RecipeError(
            f"benchmark.prompt_lengths = {b.prompt_lengths}: {too_long} plus benchmark.new_tokens = "
            f"{b.new_tokens} exceed the teacher's context window of {window} tokens"
        )
    if b.memory_context + b.new_tokens > window:
        raise RecipeError(
            f"benchmark.memory_context = {b.memory_context} plus benchmark.new_tokens = {b.new_tokens} exceed "
            f"the teacher's context window of {window} tokens"
        )
    too_long = [n for n in b.memory_contexts if n < 1 or n + b.new_tokens > window]
    if too_long:
        raise RecipeError(
            f"benchmark.memory_contexts = {b.memory_contexts}: {too_long} is not a prompt length from 1 to the "
            f"teacher's context window of {window} tokens less benchmark.new_tokens = {b.new_tokens}"
        )


def _session(path: Path):
    from export.session import ort_session

    return ort_session(path, 2)


def decoder_feeds(gen, ids: np.ndarray) -> dict:
    """The feeds of one forward pass over `ids` (B, T) with an empty cache: calibration and sensitivity inputs."""
    b, t = ids.shape
    feeds = {"input_ids": np.asarray(ids, dtype=np.int64)}
    if "attention_mask" in gen.input_names:
        feeds["attention_mask"] = np.ones((b, t), dtype=np.int64)
    if "position_ids" in gen.input_names:
        feeds["position_ids"] = np.broadcast_to(np.arange(t, dtype=np.int64), (b, t)).copy()
    feeds.update(gen.empty_cache(b))
    return feeds


def onnx_nll(gen, blocks, batch_size: int = 4) -> tuple[float, int]:
    """Summed NLL and predicted-token count of an ONNX decoder over `blocks` (blocks of one length batched)."""
    total, count = 0.0, 0
    by_length: dict[int, list[np.ndarray]] = {}
    for b in blocks:
        by_length.setdefault(len(b), []).append(b)
    for same in by_length.values():
        for k in range(0, len(same), batch_size):
            ids = np.stack(same[k : k + batch_size])
            logits, _ = gen.forward(ids)
            total += float(-_log_softmax_at(logits[:, :-1], ids[:, 1:]).sum())
            count += int(ids[:, 1:].size)
    return total, count


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) at each position of (B, T, V) logits, a block at a time in float32: no full-vocabulary
    float64 copy of the batch (4 blocks of 256 tokens at a 152k vocabulary would be 1.2 GB each)."""
    from compress.tasks.causal_lm.suite import log_softmax

    out = np.empty(targets.shape, np.float64)
    for r in range(len(logits)):
        out[r] = np.take_along_axis(log_softmax(logits[r]), targets[r][..., None], -1)[..., 0]
    return out


__all__ = ["CausalLMTask", "decoder_feeds", "onnx_nll"]


TASK = CausalLMTask()
