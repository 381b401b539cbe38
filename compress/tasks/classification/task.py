"""The classification task: an encoder that labels a text (the BERT family; SST-2 + MiniLM by default).

Data are TSV/CSV/JSONL rows of a text and a label (`compress.tasks.classification.data`); the teacher's logits on
train are cached
once and every student and pruned model learns from them (`compress.tasks.classification.distill`,
`compress.tasks.classification.prune`); quality is
accuracy, measured on the ONNX artifact one sentence per call; the benchmark times single sentences
(`compress.tasks.classification.suite`).
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np

from compress.errors import RecipeError
from compress.stage import RunContext, Step, TaskBase, built_variants, save_results
from compress.tasks.classification.config import Recipe


class ClassificationTask(TaskBase):
    """Stages of `task: classification` (see `compress.tasks.Task`)."""

    name = "classification"
    recipe_class = Recipe
    metric = "accuracy"
    higher_is_better = True
    export_task = "text-classification"

    def load_data(self, recipe: Recipe):
        from compress.tasks.classification.data import load_task_data

        return load_task_data(recipe.data)

    def summary(self, data) -> str:
        return f"{len(data.train.texts)} train / {len(data.dev.texts)} dev examples, labels {data.label_names}"

    def load_model(self, model_dir: Path):
        from compress.modeling import load_classifier

        return load_classifier(model_dir)

    @staticmethod
    def teacher_logits(ctx: RunContext) -> np.ndarray:
        return np.load(ctx.out("teacher") / "train_logits.npy")

    def preflight(self, recipe: Recipe) -> None:
        """Checks that need the teacher's config, done before any step runs (not 20 minutes into one): its
        directory (config, weights of its shapes), and every student, prune pattern and benchmark length
        against it."""
        from transformers import AutoModel, AutoModelForSequenceClassification

        from compress.architectures import family_of, ffn_width
        from compress.modeling import base_model_dir, check_layer_map, check_model_dir

        t = recipe.teacher
        key = "teacher.path" if t.path is not None else "teacher.base"
        teacher_dir = t.path or base_model_dir(t.base)
        auto = AutoModelForSequenceClassification if t.path is not None else AutoModel
        config = check_model_dir(teacher_dir, auto, key)
        family_of(config, key)
        n, hidden = int(config.num_hidden_layers), int(config.hidden_size)
        heads, ffn = int(config.num_attention_heads), ffn_width(config)
        widths = {}
        for i, d in enumerate(recipe.distill):
            k = "distill" if len(recipe.distill) == 1 else f"distill.{i}"
            if any(layer >= n for layer in d.layers):
                raise RecipeError(f"{k}.layers = {list(d.layers)}: the teacher has layers 0..{n - 1}")
            # (student, teacher) maps: hidden states count the embeddings as 0, attention maps count layers
            if d.hidden_layer_map:
                check_layer_map(k, "hidden_layer_map", d.hidden_layer_map, len(d.layers), n)
            if d.attention_layer_map:
                check_layer_map(k, "attention_layer_map", d.attention_layer_map, len(d.layers) - 1, n - 1)
            if d.heads is not None and d.hidden_size is None and d.heads > heads:
                raise RecipeError(f"{k}.heads = {d.heads}: the teacher has {heads} heads per layer")
            if d.intermediate_size is not None and d.intermediate_size > ffn:
                raise RecipeError(f"{k}.intermediate_size = {d.intermediate_size}: the teacher's FFN is {ffn} wide")
            if d.hidden_size is not None:
                if d.hidden_size > hidden:
                    raise RecipeError(f"{k}.hidden_size = {d.hidden_size}: the teacher's hidden size is {hidden}")
                h = d.heads or heads
                if d.hidden_size % h:
                    raise RecipeError(f"{k}.hidden_size = {d.hidden_size}: not a multiple of its {h} attention heads")
            widths[d.name] = (d.hidden_size or hidden, d.intermediate_size or ffn)
        for i, p in enumerate(recipe.prune):
            if p.method != "n:m":
                continue
            m = p.nm[1]
            src = recipe.source_of(p)
            bad = [w for w in widths.get(src, (hidden, ffn)) if w % m]
            if bad:
                raise RecipeError(
                    f"prune.{i}.nm = {list(p.nm)}: groups of {m} must divide the layer widths of {src} "
                    f"{list(widths.get(src, (hidden, ffn)))}; {bad[0]} is not a multiple of {m}"
                )
        limit = getattr(config, "max_position_embeddings", None)
        too_long = [x for x in recipe.benchmark.lengths if isinstance(x, int) and limit and x > limit]
        if too_long:
            raise RecipeError(
                f"benchmark.lengths = {list(recipe.benchmark.lengths)}: {too_long} exceed the teacher's "
                f"{limit} positions"
            )
        if limit and recipe.data.max_length > limit:
            raise RecipeError(f"data.max_length = {recipe.data.max_length}: the teacher has {limit} positions")

    def teacher(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.classification.teacher import train_teacher

        r = ctx.recipe
        res = train_teacher(r.teacher, ctx.data, seed=r.seed, max_length=r.data.max_length, work_dir=out / "_trainer")
        res.model.save_pretrained(out)
        res.tokenizer.save_pretrained(out)
        np.save(out / "train_logits.npy", res.train_logits)
        split = _holdout(ctx)
        res.metrics["gate"] = _gate(split, _torch_predictions(res.model, res.tokenizer, split, r.data.max_length))
        return res.metrics

    def distill(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.classification.distill import distill

        r = ctx.recipe
        teacher, tokenizer = ctx.load("teacher")
        res = distill(
            teacher,
            tokenizer,
            self.teacher_logits(ctx),
            step.config,
            ctx.data,
            seed=r.seed,
            max_length=r.data.max_length,
            work_dir=out / "_trainer",
            log=ctx.log,
        )
        res.model.save_pretrained(out)
        res.tokenizer.save_pretrained(out)  # the trimmed tokenizer when trim_vocab is on
        split, n = _holdout(ctx), r.data.max_length
        res.metrics["gate"] = _gate(
            split,
            _torch_predictions(res.model, res.tokenizer, split, n),
            "teacher",
            _torch_predictions(teacher, tokenizer, split, n),
            step.config.max_drop,
        )
        return res.metrics

    def prune(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.classification.prune import prune

        r = ctx.recipe
        student, tokenizer = ctx.load(r.source_of(step.config))
        source_model, source_tokenizer, vocab_metrics = student, tokenizer, None
        if step.config.trim_vocab.enabled:
            # Trim first and let the prune fine-tune recover from both changes at once: trimming an already
            # pruned student leaves nothing to adapt to the re-segmented words (README: vocabulary trimming).
            from compress.vocab import trim_vocab

            evals = {"dev": ctx.data.dev.texts}
            trimmed = trim_vocab(student, tokenizer, ctx.data.train.texts, step.config.trim_vocab, eval_texts=evals)
            student, tokenizer, vocab_metrics = trimmed.model, trimmed.tokenizer, trimmed.metrics
            ctx.log(
                f"    vocabulary {vocab_metrics['vocab_size_before']:,} -> {vocab_metrics['vocab_size_after']:,} "
                f"pieces before pruning; dev sentences tokenized differently: "
                f"{vocab_metrics['dev_sentences_changed']:.1%}"
            )
        data, teacher_logits, augment_metrics = ctx.data, self.teacher_logits(ctx), None
        if step.config.augment.copies > 0:
            # Copies with words the train split never uses: with a trimmed vocabulary they are re-segmented, so
            # the fine-tune also learns the segmentations that new text will bring.
            data, teacher_logits, augment_metrics = _augmented(ctx, step.config.augment, teacher_logits)
        res = prune(
            student,
            tokenizer,
            teacher_logits,
            step.config,
            data,
            seed=r.seed,
            max_length=r.data.max_length,
            work_dir=out / "_trainer",
        )
        res.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if vocab_metrics is not None:
            res.metrics["vocab"] = vocab_metrics
        if augment_metrics is not None:
            res.metrics["augment"] = augment_metrics
        split, n, source = _holdout(ctx), r.data.max_length, r.source_of(step.config)
        res.metrics["gate"] = _gate(
            split,
            _torch_predictions(res.model, tokenizer, split, n),
            source,
            _torch_predictions(source_model, source_tokenizer, split, n),
            step.config.max_drop,
        )
        return res.metrics

    def export(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from compress.tasks.classification.export import export_onnx

        r = ctx.recipe
        return export_onnx(ctx.model_dir(step.name), out, step.config, ctx.data.dev.texts, max_length=r.data.max_length)

    def quantize(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from transformers import AutoTokenizer

        from compress.calibration import calibration_feeds, model_input_names
        from compress.tasks.classification.quantize import quantize
        from export.runtime import accuracy_evaluator

        q, r, src = step.config, ctx.recipe, ctx.out(step.inputs[0])
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
        holdout = ctx.data.holdout or ctx.data.dev  # dev only when the recipe holds nothing out of train
        evaluate = accuracy_evaluator(tokenizer, holdout.texts, holdout.labels, r.data.max_length)
        gate_split = _holdout(ctx)

        calibration = None
        if q.method == "static" or q.max_accuracy_drop is not None:
            texts = ctx.data.train.texts[: q.calibration_examples]
            calibration = calibration_feeds(tokenizer, texts, r.data.max_length, model_input_names(src / "model.onnx"))
        latency_feeds = None
        if q.select == "measure":  # held-out requests, one sentence each, to time the measured candidates
            names = model_input_names(src / "model.onnx")
            latency_feeds = calibration_feeds(tokenizer, holdout.texts[:64], r.data.max_length, names)
        from compress.sensitivity import AccuracyBudgetError

        try:
            metrics = quantize(
                src,
                out,
                q,
                calibration,
                evaluate=evaluate,
                check_texts=ctx.data.dev.texts[:256],
                max_length=r.data.max_length,
                latency_feeds=latency_feeds,
            )
        except AccuracyBudgetError as e:
            # Never ship an over-budget model: this variant gets no artifact, the run goes on without it, and the
            # report says so. Its float32 source stays the model to deploy.
            ctx.log(
                f"    {step.id}: no int8 model within quantize.max_accuracy_drop = {q.max_accuracy_drop}; not shipped"
            )
            return {
                "shipped": False,
                "reason": str(e),
                "max_accuracy_drop": q.max_accuracy_drop,
                "source": step.inputs[0],
                "gate": {
                    "passed": False,
                    "metric": "accuracy",
                    "bound": f"max_accuracy_drop {q.max_accuracy_drop}",
                    "reasons": [f"no int8 model within the budget: {e}"],
                },  # fmt: skip
            }
        n = r.data.max_length
        metrics["gate"] = _gate(
            gate_split,
            _onnx_predictions(out / "model.onnx", tokenizer, gate_split, n),
            r.source_of(q),
            _onnx_predictions(src / "model.onnx", tokenizer, gate_split, n),
            q.max_accuracy_drop if q.max_accuracy_drop is not None else q.max_drop,
        )
        return metrics

    # ---- the report, compare and bundle ----

    def report_module(self):
        from compress.tasks.classification import report

        return report

    def verify_function(self):
        from compress.tasks.classification.bundle import verify

        return verify

    def bundle_function(self):
        from compress.tasks.classification.bundle import bundle

        return bundle

    bundle_rules = {"max_accuracy_drop": 0.01}  # vs the teacher's dev accuracy

    def bundle_message(self, meta: dict, out_dir: Path) -> str:
        check = meta["check"]
        return (
            f"{out_dir}: {meta['variant']} for target {meta['target']} ({meta['threads']} thread(s)); "
            f"{meta['selection']}. .ort vs .onnx label agreement {check['ort_vs_onnx_label_agreement']:.3f} on "
            f'{check["texts"]} texts.\ntry: python {Path(out_dir) / "predict.py"} "some text"'
        )

    def benchmark(self, ctx: RunContext, step: Step, out: Path) -> dict:
        from benchmarks.baselines import optimum_dynamic_int8
        from compress.tasks.classification.suite import Variant, benchmark

        r = ctx.recipe

        def onnx(name: str, stage: str, parent: str | None, artifact: str, model: str) -> Variant:
            m = ctx.metrics(r.model_step(model))
            d = ctx.out(artifact)
            return Variant(name, stage, "onnxruntime", parent, d / "model.onnx", d, m["params"], m["layers"])

        t = ctx.metrics("teacher")
        # What a user would get from optimum alone: the teacher, dynamic int8 with optimum's AVX2 preset.
        optimum_int8 = out / "teacher-int8-optimum"
        optimum_dynamic_int8(ctx.out("export/teacher"), optimum_int8)
        variants = [
            Variant(
                "teacher-torch",
                "baseline",
                "torch",
                None,
                ctx.out("teacher"),
                ctx.out("teacher"),
                t["params"],
                t["layers"],
            ),
            onnx("teacher-onnx", "baseline", "teacher-torch", "export/teacher", "teacher"),
            Variant(
                "teacher-int8-optimum",
                "baseline",
                "onnxruntime",
                "teacher-onnx",
                optimum_int8 / "model.onnx",
                optimum_int8,
                t["params"],
                t["layers"],
            ),
        ]
        variants += [onnx(*astuple(b)) for b in built_variants(ctx)]
        results = benchmark(
            variants,
            ctx.data,
            step.config,
            max_length=r.data.max_length,
            reference="teacher-torch",
            work_dir=out,
            log=ctx.log,
        )
        dirs = {v.name: v.tokenizer_dir for v in variants if v.runtime == "onnxruntime"}
        results = save_results(ctx, step, out, results, dirs)
        return {v["name"]: {"accuracy": v["accuracy"], "p50_ms": v["latency_ms"]["p50"]} for v in results["variants"]}


# ---- quality gates (compress.gate), on the held-out slice of train ----


MIN_GATE_EXAMPLES = 32  # below this, one or two examples decide "collapsed": the gate reads train examples too


def _augmented(ctx: RunContext, config, teacher_logits: np.ndarray):
    """The task data with teacher-labelled augmented copies added to train (`augment.augment_train`)."""
    import dataclasses

    from compress.tasks.classification.augment import augment_train

    teacher, teacher_tokenizer = ctx.load("teacher")
    train, logits, metrics = augment_train(
        teacher,
        teacher_tokenizer,
        ctx.data.train,
        teacher_logits,
        config,
        seed=ctx.recipe.seed,
        max_length=ctx.recipe.data.max_length,
    )
    ctx.log(
        f"    augmented: {metrics['examples']:,} teacher-labelled copies of {len(ctx.data.train.texts):,} train texts"
    )
    return dataclasses.replace(ctx.data, train=train), logits, metrics


def _holdout(ctx: RunContext):
    """The split the gates read: the held-out slice of train (dev only when the recipe holds nothing out), topped
    up with train examples when it is too small to tell a collapse from chance (a collapsed model gives one label
    to those as well)."""
    from compress.tasks.classification.data import Split

    split = ctx.data.holdout or ctx.data.dev
    if len(split.labels) >= MIN_GATE_EXAMPLES:
        return split
    train, k = ctx.data.train, MIN_GATE_EXAMPLES * 4
    return Split(split.texts + train.texts[:k], split.labels + train.labels[:k])


def _torch_predictions(model, tokenizer, split, max_length: int) -> np.ndarray:
    from compress.tasks.classification.data import encode
    from compress.training import predict_logits

    return predict_logits(model, tokenizer, encode(tokenizer, split, max_length), desc="held-out").argmax(-1)


def _onnx_predictions(path: Path, tokenizer, split, max_length: int) -> np.ndarray:
    """One sentence per call, as the benchmark and a device run it (dynamic int8 scales each call)."""
    from export.runtime import OrtClassifier, tokenize_each

    clf = OrtClassifier(path, threads=2)
    return np.array([int(clf(r)[0].argmax()) for r in tokenize_each(tokenizer, split.texts, max_length)])


def _gate(split, predictions, parent=None, parent_predictions=None, max_drop=None) -> dict:
    from compress.gate import classifier_gate

    labels = np.asarray(split.labels)
    parent_accuracy = (
        float((np.asarray(parent_predictions) == labels).mean()) if parent_predictions is not None else None
    )
    verdict = classifier_gate(predictions, labels, parent=parent, parent_accuracy=parent_accuracy, max_drop=max_drop)
    return {**verdict.to_dict(), "examples": len(labels)}


TASK = ClassificationTask()
