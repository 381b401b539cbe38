"""The training loop under torchrun: 2 gloo processes on CPU stay in sync and match one process.

Run as a script (`torchrun ... test_distributed.py OUT`), this file is the worker each rank executes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PER_DEVICE_BATCH = 4
EPOCHS = 2


def _run_training(work: Path, batch_size: int, dropout: float = 0.0) -> dict:
    """Distil-train the tiny student of `work` (written by the test) and return what the test compares.

    The Trainer's collator is wrapped so that every rank records the examples of each batch it trains on.
    """
    import numpy as np

    import compress.training as training
    from compress.distributed import describe_runtime
    from compress.modeling import load_classifier
    from compress.tasks.classification.data import Split, encode

    spec = json.loads((work / "task.json").read_text())
    model, tokenizer = load_classifier(work / "model")  # dropout is off in its config
    if dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
    logits = np.load(work / "teacher_logits.npy")
    dataset = encode(tokenizer, Split(spec["texts"], spec["labels"]), 32, teacher_logits=logits)
    index = {tuple(ids): i for i, ids in enumerate(dataset.encodings["input_ids"])}
    seen: list[list[int]] = []

    class Recording(training.PadCollator):
        def __call__(self, features):
            seen.append(sorted(index[tuple(f["input_ids"])] for f in features))
            return super().__call__(features)

    original, training.PadCollator = training.PadCollator, Recording
    args = training.training_args(
        work / "trainer", epochs=EPOCHS, batch_size=batch_size, learning_rate=5e-3, seed=0, warmup_ratio=0.0
    )
    try:
        training.train(model, tokenizer, dataset, args, {"temperature": 2.0, "alpha": 0.5})
    finally:
        training.PadCollator = original
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "batches": seen,
        "runtime": describe_runtime(),
        "group_by_length": args.group_by_length,
        "process_group": torch.distributed.is_initialized() and torch.distributed.get_world_size(),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    }


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    result = _run_training(Path(out), PER_DEVICE_BATCH)
    # Again with dropout: its random draws differ between ranks (their batches have different shapes), which
    # must not desynchronise the ranks' shuffling in later epochs.
    result["batches_with_dropout"] = _run_training(Path(out), PER_DEVICE_BATCH, dropout=0.1)["batches"]
    torch.save(result, Path(out) / f"rank{os.environ['RANK']}.pt")


@pytest.fixture
def work(tmp_path, tiny_base_dir) -> Path:
    """A tiny classifier without dropout, 32 sentences of varied length and fixed 'teacher' logits."""
    import numpy as np
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tests.conftest import make_corpus

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        tiny_base_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_base_dir).save_pretrained(tmp_path / "model")
    # Sentences cut to different lengths, so that length grouping has something to group; all distinct, so
    # that a batch's token ids name its examples.
    texts, labels = [], []
    for t, y in (row for rows in make_corpus().values() for row in rows):
        cut = " ".join(t.split()[: 3 + len(texts) % 4])
        if cut not in texts and len(texts) < 32:
            texts.append(cut)
            labels.append(int(y))
    assert len(texts) == 32
    (tmp_path / "task.json").write_text(json.dumps({"texts": texts, "labels": labels}))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "teacher_logits.npy", rng.normal(size=(32, 2)).astype(np.float32) * 2)
    return tmp_path


def test_device_settings_on_this_machine():
    from compress.distributed import device_settings

    s = device_settings()
    if torch.cuda.is_available():
        assert not s["use_cpu"] and (s["bf16"] or s["fp16"])
    else:
        # Without use_cpu, a torchrun launch on CPU would set up no process group at all (see the module).
        assert s["use_cpu"] and not s["bf16"] and not s["fp16"] and s["ddp_backend"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo/CPU path; CUDA machines run nccl")
def test_two_gloo_ranks_stay_in_sync_and_match_one_process_with_the_same_global_batch(work):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(work)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(work / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # A real process group, gloo, on CPU: the loop took the DDP path with no code change.
    for r in ranks:
        assert r["process_group"] == 2 and r["backend"] == "gloo"
        assert r["runtime"] == {"world_size": 2, "device": "cpu", "precision": "fp32", "backend": "gloo"}
    # Every rank ends with identical weights.
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0)

    single = _run_training(work, 2 * PER_DEVICE_BATCH)
    assert single["process_group"] is False
    # Each global step of the pair is one single-process batch split in two: the ranks see disjoint halves,
    # and the length-grouped order (one LengthGroupedSampler, batches dealt out by accelerate) is kept.
    b0, b1, b = ranks[0]["batches"], ranks[1]["batches"], single["batches"]
    assert len(b0) == len(b1) == len(b) == EPOCHS * 32 // (2 * PER_DEVICE_BATCH)
    for x, y, z in zip(b0, b1, b, strict=True):
        assert not set(x) & set(y) and sorted(x + y) == z
    # With dropout on, every epoch still deals each example to exactly one rank once.
    d0, d1 = ranks[0]["batches_with_dropout"], ranks[1]["batches_with_dropout"]
    per_epoch = len(d0) // EPOCHS
    for e in range(EPOCHS):
        epoch = [i for batch in d0[e * per_epoch : (e + 1) * per_epoch] + d1[e * per_epoch : (e + 1) * per_epoch]
                 for i in batch]  # fmt: skip
        assert sorted(epoch) == list(range(32)), f"epoch {e}"
    # Same global batch of 8, gradients averaged over the ranks: the same model, up to float summation order.
    diff = max((s0[k].float() - single["state"][k].float()).abs().max().item() for k in s0)
    moved = max((s0[k].float() - _initial(work)[k].float()).abs().max().item() for k in s0)
    assert moved > 1e-2 and diff < 1e-4, (diff, moved)


def _initial(work: Path) -> dict:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(work / "model").state_dict()


if __name__ == "__main__":
    _worker(sys.argv[1])
