"""The commands that work on finished runs and bundles: `compare`, `bundle`, `predict`, `generate` and `verify`
(beside `run` and `check`).

`add_subparsers` registers them on the CLI's subparsers and `dispatch` runs one; each is also a function.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

COMMANDS = ("compare", "bundle", "predict", "generate", "translate", "verify")


class CommandError(ValueError):
    """A problem the user can fix (a missing report, a bad bundle directory); shown as one line."""


def _report(path: Path) -> dict:
    path = Path(path)
    f = path / "report.json" if path.is_dir() else path
    if not f.is_file():
        raise CommandError(f"{path}: no report.json (give a run directory or its report.json)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CommandError(f"{f}: not valid JSON ({e.msg})") from None


def _task_of(report: dict, where: Path):
    from compress.tasks import DEFAULT_TASK, TASKS, task_for

    name = report.get("task", DEFAULT_TASK)  # reports written before they named their task are of the default
    if name not in TASKS:
        raise CommandError(f"{where}: a report of task {name!r}, which this version does not know")
    return task_for(name)


def compare(run_a: Path, run_b: Path, *, as_json: bool = False, out: Callable[[str], None] = print) -> dict:
    """Print what changed from run A to run B: variants matched by name; the task's quality, speed, size and
    memory figures side by side.

    Args:
        run_a, run_b: run directories (or their report.json files) of the same task.
        as_json: print the comparison as JSON instead of a table.

    Returns:
        The comparison (`benchmarks.report.compare_reports`).
    """
    from benchmarks.report import compare_reports

    a, b = _report(run_a), _report(run_b)
    task = _task_of(a, run_a)
    if _task_of(b, run_b) is not task:
        raise CommandError(
            f"the runs are of different tasks ({task.name} vs {_task_of(b, run_b).name}): nothing to compare"
        )
    cmp = compare_reports(a, b, task.compare_row)
    out(json.dumps(cmp, indent=2) if as_json else task.render_comparison(cmp).rstrip("\n"))
    return cmp


def bundle_run(
    run_dir: Path,
    target: str,
    out_dir: Path,
    variant: str | None = None,
    *,
    rule: dict | None = None,
    force: bool = False,
    verify: str | None = None,
    verify_cpus: list[str] | None = None,
    out: Callable[[str], None] = print,
) -> dict:
    """Write a deployment bundle for `target` from a finished run, as the run's task bundles it.

    Args:
        rule: options of the task's rule for the default variant (`Task.bundle_rules`, for example
            `{"max_accuracy_drop": 0.02}`); an option of another task's rule is refused.
        verify: an architecture ("arm64") to run the bundle on, emulated, before it is written
            (`verify_bundle_dir`); a bundle that differs is not written.
    """
    if verify is not None:
        return _bundle_verified(run_dir, target, out_dir, variant, rule, force, verify, verify_cpus, out)
    from export.bundle_checks import BundleError

    task = _task_of(_report(run_dir), run_dir)
    rule = {k: v for k, v in (rule or {}).items() if v is not None}
    foreign = sorted(set(rule) - set(task.bundle_rules))
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        mine = ", ".join("--" + k.replace("_", "-") for k in task.bundle_rules)
        raise CommandError(f"{flags}: not an option of a {task.name} run's bundle; its rule takes {mine}")
    try:
        meta = task.bundle(run_dir, target, out_dir, variant, rule=rule, force=force)
    except BundleError as e:
        raise CommandError(str(e)) from None
    out(task.bundle_message(meta, out_dir))
    return meta


def _bundle_verified(run_dir, target, out_dir, variant, rule, force, arch, cpus, out) -> dict:
    """`bundle_run` into a directory beside `out_dir`, `verify_bundle_dir` on it, then moved into place."""
    import shutil
    import tempfile

    from export.bundle_checks import BundleError, check_out_dir

    out_dir = Path(out_dir)
    try:
        check_out_dir(Path(run_dir), out_dir, force)
    except BundleError as e:
        raise CommandError(str(e)) from None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.verifying-", dir=out_dir.parent))
    try:
        meta = bundle_run(run_dir, target, staging / "b", variant, rule=rule, out=lambda s: None)
        result = verify_bundle_dir(staging / "b", arch, cpus, out=out)  # the report is told once it is in place
        if not result["passed"]:
            raise CommandError(f"the bundle computes otherwise on emulated {arch} (see above); not writing {out_dir}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (staging / "b").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta["verification"] = result
    out(f"{out_dir}: written, verified on emulated {arch}")
    _report_verification(Path(run_dir), out_dir, meta, result, out)
    return meta


def _report_verification(run_dir: Path, bundle_dir: Path, meta: dict, result: dict, out: Callable[[str], None]):
    """Record a bundle's verification with its run and render the run's report again with it."""
    from benchmarks.report import record_verification, rewrite_report

    report = _run_of_bundle(run_dir, bundle_dir, meta)
    record_verification(run_dir, bundle_dir, meta, result)
    rewrite_report(run_dir, _task_of(report, run_dir).report_sections)
    out(f"{run_dir / 'report.md'}: verification recorded")


def _run_of_bundle(run_dir: Path, bundle_dir: Path, meta: dict) -> dict:
    """The report of the run `meta` (a bundle.json) was made from; a one-line error when `run_dir` is not it."""
    report = _report(run_dir)
    if report.get("run") != meta.get("run"):
        raise CommandError(
            f"--run {run_dir}: {bundle_dir} was made from run {meta.get('run')!r}, not from this one "
            f"({report.get('run')!r})"
        )
    return report


def verify_bundle_dir(
    bundle_dir: Path,
    arch: str = "arm64",
    cpus: list[str] | None = None,
    *,
    run_dir: Path | None = None,
    out: Callable[[str], None] = print,
) -> dict:
    """Run a bundle's own script on emulated CPUs of `arch` against the results it recorded here
    (`export.verify`); the result goes into its bundle.json under "verification" and, with `run_dir` (the run
    it was made from), into that run's report.

    Returns:
        The verification ({"passed", "cpus": {cpu: ...}, ...}).
    """
    from compress.manifest import write_json_atomic
    from compress.tasks import DEFAULT_TASK, TASKS, task_for
    from export.emulate import DEFAULT_CPUS, EmulationError

    bundle_dir = Path(bundle_dir)
    meta_file = bundle_dir / "bundle.json"
    if not meta_file.is_file():
        raise CommandError(f"{bundle_dir}: not a bundle (no bundle.json)")
    if arch != "arm64":
        raise CommandError(
            f"--arch {arch}: only arm64 is emulated here (ONNX Runtime publishes no 32-bit ARM or RISC-V wheels)"
        )
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if run_dir is not None:
        _run_of_bundle(Path(run_dir), bundle_dir, meta)  # before minutes of emulation
    name = meta.get("task", DEFAULT_TASK)
    if name not in TASKS:
        raise CommandError(f"{meta_file}: a bundle of task {name!r}, which this version does not know")
    cpus = list(cpus or DEFAULT_CPUS)
    out(f"{bundle_dir}: {meta.get('variant')} on emulated arm64 ({', '.join(cpus)})")
    try:
        result = task_for(name).verify_function()(bundle_dir, cpus, out)
    except EmulationError as e:
        raise CommandError(str(e)) from None
    meta["verification"] = result
    write_json_atomic(meta_file, meta)
    out(f"{bundle_dir}: {'verified' if result['passed'] else 'DIFFERS from this machine'} on {', '.join(cpus)}")
    if run_dir is not None:
        _report_verification(Path(run_dir), bundle_dir, meta, result, out)
    return result


def predict_texts(
    bundle_dir: Path, texts: list[str], *, file: str | None = None, model: str = "auto", threads: int | None = None
) -> int:
    """Classify with a bundle exactly as `python BUNDLE/predict.py` does (it runs that file's `main`).

    Returns:
        predict.py's exit status: 0 all classified, 1 some inputs gave an error line, 2 unusable input.
    """
    from export.bundle_checks import BundleError, load_bundle_script

    try:
        module = load_bundle_script(Path(bundle_dir), "predict.py")
    except BundleError as e:
        raise CommandError(str(e)) from None
    argv = [*texts, "--bundle", str(bundle_dir), "--model", model]
    if file is not None:
        argv += ["--file", file]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return module.main(argv)


def generate_texts(bundle_dir: Path, argv: list[str]) -> int:
    """Generate with a language-model bundle exactly as `python BUNDLE/generate.py ...` does (runs its `main`).

    Returns:
        generate.py's exit status: 0 done, 1 some prompts gave an error line (--file), 2 unusable input.
    """
    from export.bundle_checks import BundleError, load_bundle_script

    try:
        module = load_bundle_script(Path(bundle_dir), "generate.py", "language-model bundle")
    except BundleError as e:
        raise CommandError(str(e)) from None
    return module.main([*argv, "--bundle", str(bundle_dir)])


def translate_texts(bundle_dir: Path, argv: list[str]) -> int:
    """Translate with an encoder-decoder bundle exactly as `python BUNDLE/translate.py ...` does (runs its `main`)."""
    from export.bundle_checks import BundleError, load_bundle_script

    try:
        module = load_bundle_script(Path(bundle_dir), "translate.py", "translation bundle")
    except BundleError as e:
        raise CommandError(str(e)) from None
    return module.main([*argv, "--bundle", str(bundle_dir)])


def add_subparsers(sub: argparse._SubParsersAction) -> None:
    """Register `compare`, `bundle` and `predict` on the CLI's subparsers."""
    c = sub.add_parser(
        "compare",
        help="show what changed between two runs' reports (accuracy, latency, size, memory per variant)",
        description="Compare two runs: variants matched by name; B's figures relative to A's. "
        "Example: edge-compress compare runs/a runs/b",
    )
    c.add_argument("run_a", type=Path, help="run directory (or its report.json)")
    c.add_argument("run_b", type=Path)
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")

    b = sub.add_parser(
        "bundle",
        help="package a run's model for a device: model.onnx + .ort, tokenizer, labels, predict.py",
        description="Write a directory that classifies text with only onnxruntime, tokenizers and numpy "
        "installed. Without --variant, the fastest variant on the target within --max-accuracy-drop of the "
        "teacher's dev accuracy is chosen. Example: edge-compress bundle runs/sst2-minilm --target mobile --out phone/",
    )
    b.add_argument("run_dir", type=Path, help="a finished run directory (holds report.json)")
    b.add_argument("--target", default="mobile", help="host, mobile or iot (default: mobile)")
    b.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    b.add_argument("--variant", default=None, help="variant to ship (default: chosen from the report)")
    # The rules' options of the tasks whose runs can be bundled (`Task.bundle_rules`); each run takes its own.
    b.add_argument("--max-accuracy-drop", type=float, default=None, help="vs the teacher's dev accuracy (default 0.01)")
    b.add_argument(
        "--max-perplexity-ratio", type=float, default=None, help="vs the teacher's dev perplexity (default 1.25)"
    )
    b.add_argument(
        "--max-kl-to-teacher",
        type=float,
        default=None,
        help="KL(teacher || variant) on dev, nats per token (default 0.5)",
    )
    b.add_argument("--max-chrf-drop", type=float, default=None, help="vs the teacher's dev chrF, points (default 1)")
    b.add_argument("--draft", default=None, metavar="VARIANT",
                   help="language models: carry this smaller variant to speculate for the shipped one")  # fmt: skip
    b.add_argument("--draft-tokens", type=int, default=None, help="with --draft: proposals per pass (default 4)")
    b.add_argument("--forms", default=None, metavar="LIST",
                   help="language models: also as genai, gguf (default: both, where installed), or none")  # fmt: skip
    b.add_argument("--force", action="store_true", help="replace a bundle already at --out (never anything else)")
    b.add_argument("--verify", default=None, metavar="ARCH", help="arm64: run it emulated first (see verify)")
    b.add_argument("--verify-cpu", dest="verify_cpus", action="append", default=None, help="with --verify")

    p = sub.add_parser(
        "predict",
        help="classify text with a bundle (one JSON line per input)",
        description='Same as `python BUNDLE/predict.py ...`. Example: edge-compress predict phone/ "a fine film"',
    )
    p.add_argument("bundle_dir", type=Path)
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", default=None, help="one text per line ('-': standard input)")
    p.add_argument("--model", choices=["auto", "ort", "onnx"], default="auto")
    p.add_argument("--threads", type=int, default=None)

    g = sub.add_parser(
        "generate",
        help="continue a prompt with a language-model bundle (streams tokens)",
        description='Same as `python BUNDLE/generate.py ...`. Example: edge-compress generate phone/ "The os module" '
        "--max-new-tokens 40. Options: --max-new-tokens, --temperature, --top-k, --top-p, --seed, --stop, --file, "
        "--json, --model, --threads.",
        add_help=True,
    )
    g.add_argument("bundle_dir", type=Path)
    g.add_argument("rest", nargs=argparse.REMAINDER, help="prompts and generate.py options")

    t = sub.add_parser(
        "translate",
        help="translate (or summarize) text with an encoder-decoder bundle",
        description='Same as `python BUNDLE/translate.py ...`. Example: edge-compress translate phone/ "Das Haus" '
        "--beams 4. Options: --file, --json, --beams, --max-length, --threads, --batch-size.",
    )
    t.add_argument("bundle_dir", type=Path)
    t.add_argument("rest", nargs=argparse.REMAINDER, help="inputs and translate.py options")

    v = sub.add_parser(
        "verify",
        help="run a bundle on emulated arm64 CPUs and compare with what it computed here",
        description="Runs the bundle's own predict.py / generate.py under QEMU on emulated arm64 CPU models, on "
        "the inputs it recorded when it was made, and compares labels and scores, or greedy tokens. Needs "
        "qemu-user-static; builds an arm64 Python environment once (about 250 MB, cached). Example: "
        "edge-compress verify phone/ --cpu cortex-a53 --cpu cortex-a76",
    )
    v.add_argument("bundle_dir", type=Path)
    v.add_argument("--arch", default="arm64", help="arm64 (the only one emulated)")
    v.add_argument("--cpu", dest="cpus", action="append", default=None,
                   help="CPU model (repeatable): cortex-a53, cortex-a72, cortex-a76, neoverse-n1, max; "
                   "default: all but max")  # fmt: skip
    v.add_argument("--run", dest="run_dir", type=Path, default=None,
                   help="the run directory the bundle was made from: the result goes into its report too "
                   "(bundle --verify does this itself)")  # fmt: skip


def dispatch(args: argparse.Namespace) -> int:
    """Run the command `args` names; returns the exit status. A `CommandError` becomes one line, status 2."""
    try:
        if args.command == "compare":
            compare(args.run_a, args.run_b, as_json=args.json)
            return 0
        if args.command == "bundle":
            bundle_run(
                args.run_dir,
                args.target,
                args.out,
                args.variant,
                rule={
                    "max_accuracy_drop": args.max_accuracy_drop,
                    "max_perplexity_ratio": args.max_perplexity_ratio,
                    "max_kl_to_teacher": args.max_kl_to_teacher,
                    "max_chrf_drop": args.max_chrf_drop,
                    "draft": args.draft,
                    "draft_tokens": args.draft_tokens,
                    "forms": args.forms,
                },
                force=args.force,
                verify=args.verify,
                verify_cpus=args.verify_cpus,
            )
            return 0
        if args.command == "predict":
            return predict_texts(args.bundle_dir, args.texts, file=args.file, model=args.model, threads=args.threads)
        if args.command == "generate":
            return generate_texts(args.bundle_dir, list(args.rest))
        if args.command == "translate":
            return translate_texts(args.bundle_dir, list(args.rest))
        if args.command == "verify":
            result = verify_bundle_dir(args.bundle_dir, args.arch, args.cpus, run_dir=args.run_dir)
            return 0 if result["passed"] else 1
    except CommandError as e:
        print(f"edge-compress: error: {e}", file=sys.stderr)
        return 2
    raise ValueError(f"not a command of this module: {args.command}")
