"""Seq2seq models: loading a user's directory, the tokenizer and model of a teacher trained here, a student of
teacher layers (shrink and fine-tune), greedy outputs from PyTorch, and the quality figures (chrF, BLEU)."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.architectures import encoder_decoder_of
from compress.errors import RecipeError
from compress.modeling import check_model_dir
from compress.tasks.seq2seq.config import Seq2SeqArchitectureConfig

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"


def load_seq2seq(model_dir: Path, what: str = "teacher.path"):
    """A seq2seq LM and its tokenizer from a local directory, checked first (config, weights, family).

    Raises:
        RecipeError: not a readable model directory, not an encoder-decoder the architecture table describes,
            or no tokenizer beside it.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    config = check_model_dir(model_dir, AutoModelForSeq2SeqLM, what)
    encoder_decoder_of(config, what)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RecipeError(f"{what} = {str(model_dir)!r}: no usable tokenizer ({first})") from None
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return model, tokenizer


def train_tokenizer(texts: list[str], family: str, vocab_size: int):
    """A tokenizer trained on `texts` (both sides of the train pairs) for a teacher trained here: T5's kind (a
    SentencePiece unigram model, `T5TokenizerFast`) or BART's (byte-level BPE, `BartTokenizerFast`)."""
    if family == "t5":
        from tokenizers import SentencePieceUnigramTokenizer
        from transformers import T5TokenizerFast

        spm = SentencePieceUnigramTokenizer()
        spm.train_from_iterator(
            texts, vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], unk_token=UNK, show_progress=False
        )
        from tokenizers.processors import TemplateProcessing

        spm._tokenizer.post_processor = TemplateProcessing(
            single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)]
        )
        return T5TokenizerFast(
            tokenizer_object=spm._tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK, extra_ids=0
        )
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import BartTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, special_tokens=[BOS, PAD, EOS, UNK, "<mask>"], show_progress=False
    )
    bpe._tokenizer.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}", special_tokens=[(BOS, 0), (EOS, 2)]
    )
    return BartTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=BOS, pad_token=PAD, eos_token=EOS, unk_token=UNK, mask_token="<mask>"
    )


def new_model(arch: Seq2SeqArchitectureConfig, tokenizer, max_length: int):
    """A randomly initialised encoder-decoder of `arch`'s shape for `tokenizer`."""
    vocab = len(tokenizer)
    if arch.family == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        config = T5Config(
            vocab_size=vocab,
            d_model=arch.d_model,
            d_kv=arch.d_model // arch.heads,
            d_ff=arch.ffn,
            num_layers=arch.encoder_layers,
            num_decoder_layers=arch.decoder_layers,
            num_heads=arch.heads,
            feed_forward_proj="relu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        return T5ForConditionalGeneration(config)
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=vocab,
        d_model=arch.d_model,
        encoder_layers=arch.encoder_layers,
        decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.heads,
        decoder_attention_heads=arch.heads,
        encoder_ffn_dim=arch.ffn,
        decoder_ffn_dim=arch.ffn,
        max_position_embeddings=max(max_length + 2, 64),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    return BartForConditionalGeneration(config)


def default_layers(n: int) -> list[int]:
    """The decoder layers a student keeps by default: every other one from the first (DistilBART's alternating
    layers)."""
    return list(range(0, n, 2))


def build_student(teacher, encoder_layers: list[int] | None, decoder_layers: list[int] | None, what: str):
    """A copy of `teacher` keeping the named encoder and decoder layers (shrink-and-fine-tune's initialisation):
    the embeddings, head and norms are the teacher's, each kept layer its teacher layer's weights, and what only
    a stack's first layer owns (T5's relative position bias) is the teacher's first layer's.

    Raises:
        RecipeError: a layer index beyond the teacher's depth.
    """
    import copy

    fam = encoder_decoder_of(teacher, what)
    keep = {"encoder": encoder_layers, "decoder": decoder_layers}
    student = copy.deepcopy(teacher)
    base = student.base_model
    for stack, family, depth_key in fam.stacks():
        layers = base.get_submodule(family.layers)
        chosen = keep[stack] if keep[stack] is not None else list(range(len(layers)))
        bad = [i for i in chosen if i >= len(layers)]
        if bad:
            raise RecipeError(f"{what}.{stack}_layers: layer {bad[0]} does not exist (the teacher has {len(layers)})")
        first = layers[0]
        kept = torch.nn.ModuleList([layers[i] for i in chosen])
        for path in fam.first_layer_only:
            if chosen[0] != 0:  # the new first layer takes the bias the teacher's first layer owns
                owner, _, attr = path.rpartition(".")
                kept[0].get_submodule(owner).has_relative_attention_bias = True
                setattr(kept[0].get_submodule(owner), attr, first.get_submodule(path))
        parent, _, attr = family.layers.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, attr, kept)
        for i, layer in enumerate(kept):  # the KV cache slot of each layer follows its new position
            for m in layer.modules():
                if hasattr(m, "layer_idx"):
                    m.layer_idx = i
        setattr(student.config, depth_key, len(chosen))
    return student


def layer_counts(model) -> dict:
    """Encoder and decoder depth of a model."""
    fam = encoder_decoder_of(model)
    return {f"{stack}_layers": len(model.base_model.get_submodule(f.layers)) for stack, f, _ in fam.stacks()}


def count_parameters(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.inference_mode()
def greedy_outputs(
    model, tokenizer, sources: list[str], max_length: int, max_source_length: int, batch_size: int = 32
) -> list[list[int]]:
    """The greedy output token ids (without the start and end tokens) of each source, in order: plain greedy
    decoding, as the ONNX loop does it (a model's own generation settings, such as BART's forced end token or a
    no-repeat rule, are not applied)."""
    plain = plain_greedy(model.config, max_length)
    if hasattr(model, "eval"):  # optimum's ORTModel has no train mode
        model.eval()
    outs: list[list[int]] = [[] for _ in sources]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [sources[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=max_source_length
        )
        gen = model.generate(**enc, generation_config=plain, use_model_defaults=False)
        for i, row in zip(idx, gen.tolist(), strict=True):
            outs[i] = strip_special(row, model.config)
    return outs


def plain_greedy(config, max_length: int):
    """transformers' generation settings of plain greedy decoding for a model `config`: its start, end and
    padding tokens and nothing else of its own generation config (no forced tokens, no repetition rules), as the
    ONNX loop decodes; pass with `use_model_defaults=False`."""
    from transformers import GenerationConfig

    return GenerationConfig(decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id, max_new_tokens=max_length, num_beams=1,
                            do_sample=False)  # fmt: skip


def strip_special(ids: list[int], config) -> list[int]:
    """Output ids without the decoder's start token, and cut at the first end token (padding after it)."""
    start = config.decoder_start_token_id
    if ids and ids[0] == start:
        ids = ids[1:]
    eos = config.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


def quality(hypotheses: list[str], references: list[str]) -> dict:
    """chrF (character n-gram F-score, sacrebleu's defaults: chrF2) and BLEU (13a tokenization) in points."""
    import sacrebleu

    return {
        "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 3),
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 3),
    }
