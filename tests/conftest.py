"""Shared fixtures: a synthetic sentiment task and tiny BERT models built in code (never downloaded)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

# A bag-of-words task: the label is decided by which sentiment words a sentence holds, so even a tiny
# randomly initialised BERT learns it in a few epochs.
POSITIVE = ["good", "great", "excellent", "wonderful", "lovely", "superb", "delightful", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "dull", "horrible"]
SUBJECTS = ["the movie", "this film", "the plot", "the story", "the acting", "the music", "it"]
LINKS = ["was", "is", "felt", "seemed"]
ADVERBS = ["very", "really", "quite", "truly", "so"]
SIZES = {"train": 64, "dev": 32, "test": 32}

TINY_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)


def pytest_configure(config):
    # transformers' attention-mask code warns on every ONNX trace; the export check measures what matters.
    config.addinivalue_line("filterwarnings", "ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spin-waiting made
    # one training step of the tiny BERT take 1.6 s instead of 13 ms.
    import torch

    torch.set_num_threads(1)


def make_corpus(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Balanced, distinct sentences: 'the plot was very good and lovely' -> '1'."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    total = sum(SIZES.values())
    while len(rows) < total:
        label = len(rows) % 2  # alternate: every split is balanced
        words = POSITIVE if label else NEGATIVE
        a, b = rng.sample(words, 2)
        text = f"{rng.choice(SUBJECTS)} {rng.choice(LINKS)} {rng.choice(ADVERBS)} {a} and {b}"
        if text not in seen:
            seen.add(text)
            rows.append((text, str(label)))
    out, start = {}, 0
    for split, n in SIZES.items():
        out[split] = rows[start : start + n]
        start += n
    return out


def corpus_words(corpus: dict[str, list[tuple[str, str]]]) -> list[str]:
    return sorted({w for rows in corpus.values() for text, _ in rows for w in text.split()})


@pytest.fixture
def tiny_corpus() -> dict[str, list[tuple[str, str]]]:
    """train/dev/test lists of (text, label) with labels '0'/'1'; 64/32/32 rows, deterministic."""
    return make_corpus()


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("label\tsentence\n" + "".join(f"{label}\t{text}\n" for text, label in rows))
    return path


def write_tiny_data(d: Path, corpus: dict[str, list[tuple[str, str]]] | None = None) -> Path:
    """Write train.tsv, dev.tsv and test.tsv of `corpus` (default: the tiny corpus) into a new dir `d`."""
    d.mkdir(parents=True)
    for split, rows in (corpus or make_corpus()).items():
        write_tsv(d / f"{split}.tsv", rows)
    return d


@pytest.fixture
def tiny_data_dir(tmp_path, tiny_corpus) -> Path:
    """tmp_path/data holding train.tsv, dev.tsv and test.tsv (header `label<TAB>sentence`)."""
    return write_tiny_data(tmp_path / "data", tiny_corpus)


def _tiny_tokenizer(work_dir: Path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *corpus_words(make_corpus())]
    vocab_file = work_dir / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A randomly initialised 4-layer BertModel (hidden 32) and its fast tokenizer, both save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("tiny_base")
    tokenizer = _tiny_tokenizer(tmp_path_factory.mktemp("vocab"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), **TINY_CONFIG))
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    assert (d / "tokenizer.json").is_file()
    return d


def _load_tiny_classifier(base_dir: Path):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        base_dir, num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1}, local_files_only=True
    )
    return model, AutoTokenizer.from_pretrained(base_dir, local_files_only=True)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, tiny_base_dir) -> Path:
    """The tiny base encoder with a randomly initialised 2-label head (id2label {0: '0', 1: '1'})."""
    d = tmp_path_factory.mktemp("tiny_classifier")
    model, tokenizer = _load_tiny_classifier(tiny_base_dir)
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def trained_classifier_dir(tmp_path_factory, tiny_base_dir) -> Path:
    """The tiny classifier fine-tuned on the tiny train split, so its logits have real margins.

    A random head gives near-tied logits, on which label agreement between fp32 and int8 says nothing.
    A plain loop rather than the Trainer keeps this fixture independent of the code under test.
    """
    import torch

    d = tmp_path_factory.mktemp("trained_classifier")
    model, tokenizer = _load_tiny_classifier(tiny_base_dir)
    rows = make_corpus()["train"]
    texts, labels = [t for t, _ in rows], torch.tensor([int(y) for _, y in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(15):
        for idx in torch.randperm(len(texts), generator=gen).split(16):
            batch = tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
            loss = model(**batch, labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory, trained_classifier_dir) -> Path:
    """`trained_classifier_dir` exported by `export_onnx` (model.onnx, config.json, tokenizer files)."""
    from compress.tasks.classification.config import ExportConfig
    from compress.tasks.classification.export import export_onnx

    out = tmp_path_factory.mktemp("tiny_onnx")
    texts = [t for t, _ in make_corpus()["dev"]]
    export_onnx(trained_classifier_dir, out, ExportConfig(check_examples=32), texts, max_length=64)
    return out


def write_tiny_recipe(path: Path, data_dir: Path, base_dir: Path, **overrides: dict) -> Path:
    """Write the tiny recipe to `path`; each keyword names a section and updates (not replaces) its keys.

    A plain function as well as the `write_recipe` fixture, for fixtures wider than function scope.
    """
    tree = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "train": str(data_dir / "train.tsv"),
            "dev": str(data_dir / "dev.tsv"),
            "test": str(data_dir / "test.tsv"),
            "max_length": 32,
        },
        # Measured with seeds 0-2: 4 epochs at 5e-3 bring the tiny teacher to 1.0 dev accuracy (3 epochs
        # at the default 1e-4, or at 3e-3, leave it at chance); student and pruned models reach 1.0 too.
        "teacher": {"base": str(base_dir), "epochs": 4, "batch_size": 8, "learning_rate": 5e-3},
        "distill": {"layers": [0, 2], "epochs": 3, "batch_size": 8, "learning_rate": 3e-3},
        "prune": {"sparsity": 0.5, "epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
        "export": {"check_examples": 32},
        "benchmark": {
            "targets": ["mobile"],
            "lengths": ["real"],
            "batch_sizes": [],
            "requests": 16,
            "warmup": 2,
            "latency_examples": 16,
            "ort_format": False,
            "bootstrap_resamples": 100,
            "memory": False,
        },
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(tree.get(section), dict):
            tree[section].update(values)
        else:
            tree[section] = values
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture
def write_recipe(tmp_path, tiny_data_dir, tiny_base_dir):
    """A factory: `write_recipe(prune={"sparsity": 0.3}, ...)` writes tmp_path/recipe.yaml, returns the path.

    Each keyword names a recipe section and updates (not replaces) that section's keys.
    """

    def write(**overrides: dict) -> Path:
        return write_tiny_recipe(tmp_path / "recipe.yaml", tiny_data_dir, tiny_base_dir, **overrides)

    return write


# ---- causal LM (tests/lm_fixtures.py) ----


@pytest.fixture(scope="session")
def text_data_dir(tmp_path_factory) -> Path:
    """train.txt, dev.txt, test.txt of the tiny synthetic corpus (one document per line)."""
    from tests.lm_fixtures import write_text_data

    return write_text_data(tmp_path_factory.mktemp("lm") / "data")


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny trained GPT-2, Llama and Qwen2 model directories (save_pretrained, with a tokenizer)."""
    from tests.lm_fixtures import save_tiny_causal_lm

    root = tmp_path_factory.mktemp("tiny_lms")
    return {f: save_tiny_causal_lm(root / f, f) for f in ("gpt2", "llama", "qwen2")}


@pytest.fixture(scope="session")
def tiny_lm_exports(tmp_path_factory, tiny_lm_dirs) -> dict[str, Path]:
    """Each tiny decoder exported by `export_causal_lm` (its check passed), per family."""
    from compress.tasks.causal_lm.config import LMExportConfig
    from compress.tasks.causal_lm.data import prompts_from
    from compress.tasks.causal_lm.export import export_causal_lm
    from tests.lm_fixtures import make_documents, tiny_tokenizer

    root = tmp_path_factory.mktemp("lm_onnx")
    prompts = prompts_from(tiny_tokenizer(), make_documents()["dev"], 3, 10)
    out = {}
    for family, d in tiny_lm_dirs.items():
        out[family] = root / family
        export_causal_lm(d, out[family], LMExportConfig(new_tokens=8), prompts)
    return out


def qemu_or_skip() -> None:
    """Skip the calling test, with the emulator's own one-line reason, where QEMU user-mode arm64 is missing."""
    from export.emulate import EmulationError, find_qemu

    try:
        find_qemu()
    except EmulationError as e:
        pytest.skip(str(e))
