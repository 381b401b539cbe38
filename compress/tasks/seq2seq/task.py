"""The seq2seq task (`task: seq2seq`): an encoder-decoder model that writes an output text for an input text
(translation, summarization; T5, BART, Marian families).

Data are source/target pairs (`compress.tasks.seq2seq.data`); the teacher is the user's model or one trained here
with its own tokenizer; students keep some of the teacher's encoder and decoder layers and learn its token
distributions and the references (`compress.tasks.seq2seq.training`); the export is an encoder and a merged
decoder with its cache, checked step by step against PyTorch (`compress.tasks.seq2seq.export`); quantization
is dynamic int8 or weight-only int4/int8 (`compress.tasks.seq2seq.quantize`); quality is chrF (higher is better)
of greedy outputs, measured on the ONNX artifact through the loop the bundle ships.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compress.errors import RecipeError
from compress.stage import RunContext, Step, TaskBase, built_variants, save_results
from compress.tasks.seq2seq.config import Seq2SeqRecipe


class Seq2SeqTask(TaskBase):
    """Stages of `task: seq2seq` (see `compress.tasks.Task`)."""

    name = "seq2seq"
    recipe_class = Seq2SeqRecipe
    metric = "chrf"
    higher_is_better = True

    def load_data(self, recipe: Seq2SeqRecipe):
        from compress.tasks.seq2seq.data import load_pair_data

        return load_pair_data(recipe.data, recipe.seed)

    def summary(self, data) -> str:
        test = f", {len(data.test)} test" if data.test is not None else ""
        return f"{len(data.train)} train pairs, {len(data.holdout)} held out, {len(data.dev)} dev{test}"

    def load_model(self, model_dir: Path):
        from compress.tasks.seq2seq.model import load_seq2seq

        return load_seq2seq(model_dir, str(model_dir))

    def preflight(self, recipe: Seq2SeqRecipe) -> None:
        """The students' layers against the teacher's depth, from its config alone (no weights loaded)."""
        from compress.architectures import encoder_decoder_of

        t = recipe.teacher
        if t.path is not None:
            from transformers import AutoModelForSeq2SeqLM

            from compress.modeling import check_model_dir

            config = check_model_dir(t.path, AutoModelForSeq2SeqLM, "teacher.path")
            fam = encoder_decoder_of(config, "teacher.path")
            depth = {
                "encoder": getattr(config, fam.encoder_depth_key),
                "decoder": getattr(config, fam.decoder_depth_key),
            }
        else:
            depth = {"encoder": t.architecture.encoder_layers, "decoder": t.architecture.decoder_layers}
        for i, d in enumerate(recipe.distill):
            for stack in ("encoder", "decoder"):
                chosen = getattr(d, f"{stack}_layers") or []
                bad = [x for x in chosen if x >= depth[stack]]
                if bad:
                    raise RecipeError(
                        f"distill.{i}.{stack}_layers: layer {bad[0]} does not exist (the teacher's {stack} has "
                        f"{depth[stack]} layers)"
                    )

    # ---- stages ----

    def teacher(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.seq2seq.model import (
            count_parameters,
            layer_counts,
            load_seq2seq,
            new_model,
            train_tokenizer,
        )
        from compress.tasks.seq2seq.training import MIN_SOURCE_GAP, source_gap, train_seq2seq

        r, data = ctx.recipe, ctx.data
        cfg = r.teacher
        metrics: dict = {}
        if cfg.path is not None:
            model, tokenizer = load_seq2seq(cfg.path)
            metrics["source"] = str(cfg.path)
        else:
            torch.manual_seed(r.seed)
            arch = cfg.architecture
            ctx.log(f"    training a {arch.family} tokenizer ({cfg.tokenizer.vocab_size} tokens) on the train pairs")
            tokenizer = train_tokenizer(data.train.sources + data.train.targets, arch.family, cfg.tokenizer.vocab_size)
            model = new_model(arch, tokenizer, max(r.data.max_source_length, r.data.max_target_length))
            ctx.log(f"    training the teacher ({count_parameters(model):,} parameters) on {len(data.train):,} pairs")
            history = train_seq2seq(
                model,
                tokenizer,
                data.train,
                cfg,
                r.data,
                out_dir=out / "_trainer",
                seed=r.seed,
                label_smoothing=cfg.label_smoothing,
            )
            metrics["train_loss"] = _last(history, "train_loss")
            metrics["train_steps"] = _last(history, "step")
            metrics["loss_curve"] = [{"step": h["step"], "epoch": round(h["epoch"], 3), "loss": round(h["loss"], 4)}
                                     for h in history if "loss" in h]  # fmt: skip
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        metrics.update(params=count_parameters(model), **layer_counts(model))
        figures, outputs = self._held_out(ctx, model, tokenizer)
        metrics.update(figures)
        metrics["gate"] = self._gate(outputs, metrics["holdout_chrf_torch"], None, None, None)
        held = data.holdout if len(data.holdout) else data.dev
        gap = source_gap(model, tokenizer, held, r.data.source_prefix, r.data.max_source_length,
                         r.data.max_target_length)  # fmt: skip
        metrics["source_gap_nats"] = round(gap, 4)
        if gap < MIN_SOURCE_GAP and cfg.path is None:  # a user's model is used as it is: measured, not gated
            metrics["gate"]["passed"] = False
            metrics["gate"]["reasons"] = [*metrics["gate"]["reasons"], (
                f"does not read its input: held-out loss with each source swapped for another pair's is only "
                f"{gap:.4f} nats/token above the loss with the right ones (at least {MIN_SOURCE_GAP} expected)")]
        ctx.log(f"    teacher: held-out chrF {metrics['holdout_chrf_torch']:.2f} ({metrics['params']:,} parameters), "
                f"source gap {gap:.3f} nats/token")  # fmt: skip
        return metrics

    def distill(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.seq2seq.model import build_student, count_parameters, default_layers, layer_counts
        from compress.tasks.seq2seq.training import train_seq2seq

        r, cfg = ctx.recipe, step.config
        teacher, tokenizer = ctx.load("teacher")
        decoder = cfg.decoder_layers or default_layers(layer_counts(teacher)["decoder_layers"])
        student = build_student(teacher, cfg.encoder_layers, decoder, f"distill.{step.name}")
        torch.manual_seed(r.seed)
        history = train_seq2seq(
            student,
            tokenizer,
            ctx.data.train,
            cfg,
            r.data,
            out_dir=out / "_trainer",
            seed=r.seed,
            teacher=teacher,
            alpha=cfg.alpha,
            temperature=cfg.temperature,
        )
        student.save_pretrained(out)
        tokenizer.save_pretrained(out)
        metrics = {
            "params": count_parameters(student),
            **layer_counts(student),
            "train_loss": _last(history, "train_loss"),
            "train_steps": _last(history, "step"),
        }
        figures, outputs = self._held_out(ctx, student, tokenizer)
        metrics.update(figures)
        parent_score = ctx.metrics("teacher").get("holdout_chrf_torch")
        metrics["gate"] = self._gate(outputs, metrics["holdout_chrf_torch"], "teacher", parent_score, cfg.max_chrf_drop)
        ctx.log(
            f"    {step.name}: held-out chrF {metrics['holdout_chrf_torch']:.2f} ({metrics['params']:,} parameters)"
        )
        return metrics

    def prune(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.seq2seq.model import count_parameters, layer_counts
        from compress.tasks.seq2seq.prune import prune_seq2seq

        r, cfg = ctx.recipe, step.config
        source = r.source_of(cfg)
        student, tokenizer = ctx.load(source)
        teacher, _ = ctx.load("teacher")
        model, metrics = prune_seq2seq(
            student, tokenizer, teacher, cfg, ctx.data, r.data, seed=r.seed, work_dir=out / "_trainer",
            measure=lambda m: self._held_out(ctx, m, tokenizer)[0],
        )  # fmt: skip
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        metrics.update(params=count_parameters(model), **layer_counts(model))
        figures, outputs = self._held_out(ctx, model, tokenizer)
        metrics.update(figures)
        parent_score = ctx.metrics(r.model_step(source)).get("holdout_chrf_torch")
        metrics["gate"] = self._gate(outputs, metrics["holdout_chrf_torch"], source, parent_score, cfg.max_chrf_drop)
        ctx.log(
            f"    {step.name}: {metrics['sparsity_prunable']:.1%} of the projections zero, held-out chrF "
            f"{metrics['holdout_chrf_torch']:.2f} (its source {source}: {parent_score:.2f})"
        )
        return metrics

    def export(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.seq2seq.export import check_export, export_seq2seq

        r = ctx.recipe
        model, tokenizer = ctx.load(step.name)
        export_seq2seq(ctx.model_dir(step.name), out, model, tokenizer, r.data, r.export.opset)
        check = check_export(model, tokenizer, out, ctx.data.dev.sources[: r.export.inputs], r.data, r.export.atol)
        ctx.log(
            f"    {step.name}: {check['identical_outputs']}/{check['inputs']} greedy outputs identical to PyTorch's, "
            f"max logit difference {check['max_abs_logit_diff']:.1e}"
        )
        return {"check": check, "size_bytes": _onnx_bytes(out)}

    def quantize(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.seq2seq.quantize import quantize_seq2seq

        r, cfg = ctx.recipe, step.config
        source = r.source_of(cfg)
        src_dir = ctx.out(f"export/{source}")
        metrics = quantize_seq2seq(src_dir, out, cfg)
        _, tokenizer = ctx.load(source)
        figures, outputs = self._held_out(ctx, None, tokenizer, onnx_dir=out)
        parent, _ = self._held_out(ctx, None, tokenizer, onnx_dir=src_dir)
        metrics.update(figures, parent_holdout_chrf_onnx=parent["holdout_chrf_onnx"])
        metrics["gate"] = self._gate(
            outputs, figures["holdout_chrf_onnx"], f"{source} (ONNX)", parent["holdout_chrf_onnx"], cfg.max_chrf_drop
        )
        ctx.log(
            f"    {step.name}: held-out chrF {metrics['holdout_chrf_onnx']:.2f} (its source {source}: "
            f"{parent['holdout_chrf_onnx']:.2f}), {metrics['size_bytes'] / 1e6:.1f} MB"
        )
        return metrics

    def benchmark(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.seq2seq.suite import run_suite

        variants = built_variants(ctx)
        artifacts = {v.name: ctx.out(v.artifact) for v in variants}
        artifacts["teacher-onnx"] = ctx.out("export/teacher")
        results = run_suite(ctx, variants, artifacts, out)
        return save_results(ctx, step, out, results, artifacts)

    # ---- helpers ----

    @staticmethod
    def _held_out(ctx: RunContext, model, tokenizer, onnx_dir: Path | None = None) -> tuple[dict, list[str]]:
        """chrF and BLEU of greedy outputs on the held-out slice (dev when nothing is held out), and the outputs:
        PyTorch's, or ONNX Runtime's for `onnx_dir`."""
        from compress.tasks.seq2seq.model import greedy_outputs, quality
        from compress.tasks.seq2seq.runtime import onnx_outputs, texts

        r, data = ctx.recipe, ctx.data
        split = data.holdout if len(data.holdout) else data.dev
        if onnx_dir is None:
            ids = greedy_outputs(
                model,
                tokenizer,
                [r.data.source_prefix + s for s in split.sources],
                r.data.max_target_length,
                r.data.max_source_length,
            )
        else:
            ids = onnx_outputs(onnx_dir, tokenizer, split.sources, r.data, threads=torch.get_num_threads())
        outputs = texts(tokenizer, ids)
        q = quality(outputs, split.targets)
        runtime = "torch" if onnx_dir is None else "onnx"
        return {f"holdout_chrf_{runtime}": q["chrf"], f"holdout_bleu_{runtime}": q["bleu"]}, outputs

    @staticmethod
    def _gate(outputs: list[str], score: float, parent, parent_score, max_drop) -> dict:
        from compress.gate import generation_gate

        return generation_gate(
            outputs, score, metric="chrf", parent=parent, parent_score=parent_score, max_drop=max_drop
        ).to_dict()

    # ---- report, compare, bundle ----

    def report_module(self):
        from compress.tasks.seq2seq import report

        return report

    bundle_rules = {"max_chrf_drop": 1.0}

    def bundle_function(self):
        from compress.tasks.seq2seq.bundle import write_bundle

        return write_bundle

    def verify_function(self):
        from compress.tasks.seq2seq.bundle import verify

        return verify

    def bundle_message(self, meta: dict, out_dir: Path) -> str:
        from compress.tasks.seq2seq.bundle import bundle_message

        return bundle_message(meta, out_dir)


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def _onnx_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file() and f.name.endswith((".onnx", ".onnx_data")))


TASK = Seq2SeqTask()
