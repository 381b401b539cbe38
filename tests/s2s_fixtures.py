"""Seq2seq test fixtures: a synthetic word-for-word translation task and tiny T5, BART and Marian models built
in code, each with its own tokenizer (never downloaded), trained a little so their outputs depend on the input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import yaml

WORDS = "haus katze hund rot blau gross klein sieht läuft der die das ein eine und".split()
ENGLISH = dict(zip(WORDS, "house cat dog red blue big small sees runs the the the a a and".split(), strict=True))


def make_pairs(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        s = [r.choice(WORDS) for _ in range(r.randint(2, 6))]
        out.append({"source": " ".join(s), "target": " ".join(ENGLISH[w] for w in s)})
    return out


def write_pairs(d: Path, train: int = 600, dev: int = 24, test: int = 24) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", train, 1), ("dev", dev, 2), ("test", test, 3)):
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for rec in make_pairs(n, seed):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return d


def write_s2s_recipe(path: Path, data_dir: Path, **sections) -> Path:
    recipe = {
        "name": "s2s-test",
        "task": "seq2seq",
        "data": {"train": str(data_dir / "train.jsonl"), "dev": str(data_dir / "dev.jsonl"),
                 "test": str(data_dir / "test.jsonl"),
                 "max_source_length": 24, "max_target_length": 16, "holdout_fraction": 0.05},
        "teacher": {"architecture": {"family": "t5", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
                                     "heads": 2, "ffn": 64},
                    "tokenizer": {"vocab_size": 300}, "epochs": 6, "batch_size": 32, "learning_rate": 5.0e-3},
        "distill": [{"name": "student", "decoder_layers": [1], "epochs": 1, "batch_size": 32,
                     "learning_rate": 3.0e-3, "max_chrf_drop": None}],
        "quantize": [{"name": "int8", "method": "dynamic", "max_chrf_drop": None},
                     {"name": "int4", "method": "weight-only", "bits": 4, "max_chrf_drop": None}],
        "benchmark": {"targets": ["host"], "sentences": 3, "runs": 1, "warmup": 0},
    }  # fmt: skip
    for k, v in sections.items():
        recipe[k] = {**recipe[k], **v} if isinstance(v, dict) and isinstance(recipe.get(k), dict) else v
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def _sentencepiece(work: Path, texts: list[str]) -> Path:
    import sentencepiece as spm

    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(work / "corpus.txt"), model_prefix=str(work / "spm"), vocab_size=48,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)  # fmt: skip
    return work / "spm.model"


def _train_briefly(model, tokenizer, steps: int = 60) -> None:
    """A plain loop (independent of the code under test) so greedy outputs depend on the input."""
    pairs = make_pairs(256, 9)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for step in range(steps):
        batch = pairs[(step * 16) % 256 : (step * 16) % 256 + 16]
        enc = tokenizer([p["source"] for p in batch], text_target=[p["target"] for p in batch], padding=True,
                        return_tensors="pt")  # fmt: skip
        labels = enc["labels"].masked_fill(enc["labels"] == tokenizer.pad_token_id, -100)
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def make_user_model(family: str, out: Path) -> Path:
    """A tiny trained seq2seq directory of `family` (t5, bart, marian) with its own kind of tokenizer."""
    torch.manual_seed(0)
    texts = [p["source"] for p in make_pairs(400, 5)] + [p["target"] for p in make_pairs(400, 5)]
    out.mkdir(parents=True, exist_ok=True)
    if family == "marian":
        from transformers import MarianConfig, MarianMTModel, MarianTokenizer

        spm_path = _sentencepiece(out.parent / f"{out.name}-spm", texts)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(spm_path))
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        work = out.parent / f"{out.name}-tok"
        work.mkdir(exist_ok=True)
        (work / "vocab.json").write_text(json.dumps(vocab))
        for name in ("source.spm", "target.spm"):
            (work / name).write_bytes(spm_path.read_bytes())
        tok = MarianTokenizer(str(work / "source.spm"), str(work / "target.spm"), str(work / "vocab.json"),
                              pad_token="<pad>", eos_token="</s>", unk_token="<unk>")  # fmt: skip
        config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)  # fmt: skip
        model = MarianMTModel(config)
    else:
        from compress.tasks.seq2seq.config import Seq2SeqArchitectureConfig
        from compress.tasks.seq2seq.model import new_model, train_tokenizer

        tok = train_tokenizer(texts, family, 300)
        arch = Seq2SeqArchitectureConfig(family=family, d_model=32, encoder_layers=2, decoder_layers=2, heads=2, ffn=64)
        model = new_model(arch, tok, 32)
    _train_briefly(model, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
