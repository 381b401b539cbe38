"""Vocabulary trimming: keep only the wordpieces the task's training text uses.

MiniLM's 30522 x 384 word-embedding matrix is 11.7M of its 22.7M parameters; SST-2's training sentences use a
small fraction of those rows. Trimming keeps the rows of:
- the special tokens,
- every wordpiece used at least `min_frequency` times by the *training* texts (never dev/test: what the
  deployed model meets later is unknown, and measuring on dev/test what was tuned on them would flatter it),
- optionally the first `keep_top` ids of the vocabulary (BERT-style vocabularies list frequent pieces first),
- optionally every single-character piece (`a`, `##a`, ...), or only the ASCII ones, so that an unseen word
  still splits into characters instead of becoming [UNK] (WordPiece gives [UNK] to a whole word it cannot
  segment). BERT's uncased vocabulary holds about 1,900 one-character pieces, mostly CJK and other scripts
  that the (lower-casing, accent-stripping) normalizer leaves rare in English text;
- optionally, up to `size` pieces in all, the vocabulary's most frequent remaining pieces (its lowest ids,
  skipping `[unused...]` placeholders). This is the floor that matters on new text: on SST-2, 37.5% of dev
  sentences hold a word whose pieces the train split never used; each such word is re-segmented into smaller
  pieces and loses the embedding the teacher learned for it. Filling a 15,000-piece budget this way (2.03x
  fewer rows than MiniLM's 30,522) cut that share to 30.5% and the dev-accuracy cost of trimming a 3-layer
  student from 0.57 to 0.23 points (the `vocab_trim` study).

The new tokenizer is the old one with a smaller WordPiece vocabulary and every special-token id renumbered
(normalizer, pre-tokenizer, post-processor and decoder unchanged). Greedy longest-match-first WordPiece on a
sub-vocabulary picks the same pieces for any word whose original pieces are all kept (the longest match at
each position is still there and nothing longer was added), so such words tokenize identically, up to the id
renumbering, and the trimmed model computes exactly what the untrimmed one did on them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from compress.config import _Config


class TrimVocabConfig(_Config):
    """Which vocabulary rows survive (recipe section `distill.trim_vocab`)."""

    enabled: bool = False
    min_frequency: int = Field(default=1, ge=1, description="keep pieces used at least this often in train")
    keep_top: int = Field(default=0, ge=0, description="also keep the first N ids of the vocabulary")
    keep_chars: bool | Literal["ascii"] = Field(
        default=True, description="also keep single-character pieces (fewer [UNK]); 'ascii': only ASCII ones"
    )
    size: int | None = Field(
        default=None, ge=1, description="fill up to this many pieces with the most frequent (lowest-id) others"
    )


@dataclass
class TrimResult:
    model: object
    tokenizer: object
    kept_ids: list[int]  # old id of each new id, in order
    metrics: dict = field(default_factory=dict)


def _wordpiece_state(tokenizer) -> dict:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = state["model"]["type"]
    if kind != "WordPiece":
        raise ValueError(
            f"vocabulary trimming supports WordPiece tokenizers (BERT, DistilBERT, ELECTRA, MiniLM); "
            f"this {type(tokenizer).__name__} uses {kind}"
        )
    return state


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]


def token_counts(tokenizer, texts: list[str]) -> np.ndarray:
    """How often each id of the vocabulary occurs in the tokenized `texts` (no special tokens added)."""
    ids = [i for seq in _token_ids(tokenizer, texts) for i in seq]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(tokenizer))


def kept_token_ids(
    tokenizer,
    texts: list[str],
    *,
    min_frequency: int = 1,
    keep_top: int = 0,
    keep_chars: bool | str = True,
    size: int | None = None,
) -> list[int]:
    """Sorted ids of the vocabulary rows to keep for `texts` (see the module docstring).

    When the pieces `texts` need (with the special tokens and characters) already number `size` or more, all of
    them are kept and nothing is added: `size` is a floor to fill, never a reason to drop a used piece.
    """
    state = _wordpiece_state(tokenizer)
    vocab: dict[str, int] = state["model"]["vocab"]
    prefix = state["model"]["continuing_subword_prefix"]
    counts = token_counts(tokenizer, texts)
    keep = set(np.flatnonzero(counts >= min_frequency).tolist())
    keep |= set(tokenizer.all_special_ids)
    keep |= {t["id"] for t in state["added_tokens"]}
    keep |= {i for i in range(min(keep_top, len(vocab)))}
    if keep_chars:
        chars = {
            tok: i
            for tok, i in vocab.items()
            if len(tok) == 1 or (tok.startswith(prefix) and len(tok) == len(prefix) + 1)
        }
        keep |= {i for tok, i in chars.items() if keep_chars is True or tok[-1].isascii()}
    if size is not None and len(keep) < size:
        # BERT-family WordPiece vocabularies are written most frequent first (after the placeholders).
        for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            if len(keep) >= size:
                break
            if i not in keep and not (tok.startswith("[unused") or tok.startswith("<unused")):
                keep.add(i)
    return sorted(keep)


def _remap_special_ids(node, new_id: dict[int, int], token_id: dict[str, int]) -> None:
    """Renumber the special-token ids held by a post-processor (Template, Bert, Roberta or a Sequence of them)."""
    if isinstance(node, dict):
        for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: [token, id]
            if isinstance(node.get(key), list) and len(node[key]) == 2:
                node[key] = [node[key][0], token_id[node[key][0]]]
        if isinstance(node.get("special_tokens"), dict):  # TemplateProcessing
            for spec in node["special_tokens"].values():
                spec["ids"] = [token_id[t] for t in spec["tokens"]]
        for v in node.values():
            if isinstance(v, dict | list):
                _remap_special_ids(v, new_id, token_id)
    elif isinstance(node, list):
        for v in node:
            _remap_special_ids(v, new_id, token_id)


def trim_tokenizer(tokenizer, kept_ids: list[int]):
    """A new fast tokenizer of the same class whose vocabulary is `kept_ids` (old ids), renumbered 0..n-1.

    Rewritten through the tokenizer's JSON serialisation (its documented format) rather than by rebuilding
    each component with the `tokenizers` API: every component is kept exactly, and the places that hold
    special-token ids (added tokens, post-processor) are renumbered in one pass.
    """
    state = _wordpiece_state(tokenizer)
    new_id = {old: new for new, old in enumerate(kept_ids)}
    vocab = state["model"]["vocab"]
    state["model"]["vocab"] = {tok: new_id[i] for tok, i in vocab.items() if i in new_id}
    if state["model"]["unk_token"] not in state["model"]["vocab"]:
        raise ValueError(f"trim_tokenizer: the unknown token {state['model']['unk_token']!r} must be kept")
    for t in state["added_tokens"]:
        t["id"] = new_id[t["id"]]
    token_id = {**state["model"]["vocab"], **{t["content"]: t["id"] for t in state["added_tokens"]}}
    _remap_special_ids(state.get("post_processor"), new_id, token_id)
    state["truncation"] = state["padding"] = None  # the HF wrapper sets these per call
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(state))
    # As transformers' own `train_new_from_iterator` does: same class, same init settings, new backend.
    kwargs = {
        k: v
        for k, v in tokenizer.init_kwargs.items()
        if k not in ("vocab_file", "tokenizer_file", "added_tokens_decoder", "name_or_path", "tokenizer_object")
    }
    return type(tokenizer)(tokenizer_object=backend, **kwargs)


def trim_embeddings(model, kept_ids: list[int]):
    """A copy of `model` whose input embedding holds only the rows `kept_ids`, in that order.

    Token ids in the config (pad, bos, eos, ...) are renumbered; one whose row is dropped becomes None.
    """
    import torch  # here, not at the top: the recipe imports this module's config without torch
    from torch import nn

    if model.get_output_embeddings() is not None:
        raise ValueError("trim_embeddings: models with an output (LM) embedding are not supported")
    model = copy.deepcopy(model)
    old = model.get_input_embeddings()
    new_id = {o: n for n, o in enumerate(kept_ids)}
    pad = new_id.get(old.padding_idx) if old.padding_idx is not None else None
    emb = nn.Embedding(len(kept_ids), old.embedding_dim, padding_idx=pad)
    with torch.no_grad():
        emb.weight.copy_(old.weight[torch.as_tensor(kept_ids, dtype=torch.long)])
    emb.to(old.weight.device)
    model.set_input_embeddings(emb)
    model.config.vocab_size = len(kept_ids)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(model.config, key, None)
        if value is not None:
            setattr(model.config, key, new_id.get(value))
    return model


def unk_rate(tokenizer, texts: list[str]) -> float:
    """Share of the tokens of `texts` (special tokens not added) that are the unknown token."""
    ids = [i for seq in _token_ids(tokenizer, texts) for i in seq]
    return float(np.mean(np.asarray(ids) == tokenizer.unk_token_id)) if ids else 0.0


def share_not_kept(tokenizer, kept_ids: list[int], texts: list[str]) -> float:
    """Share of the original tokens of `texts` whose piece was dropped (each is re-segmented or [UNK] now)."""
    ids = np.asarray([i for seq in _token_ids(tokenizer, texts) for i in seq], dtype=np.int64)
    return float(np.mean(~np.isin(ids, np.asarray(kept_ids)))) if ids.size else 0.0


def changed_share(original, trimmed, kept_ids: list[int], texts: list[str]) -> float:
    """Share of `texts` whose trimmed tokenization, mapped back to old ids, differs from the original one."""
    if not texts:
        return 0.0
    old_of = np.asarray(kept_ids)
    before, after = _token_ids(original, texts), _token_ids(trimmed, texts)
    return float(np.mean([list(old_of[a]) != b for a, b in zip(after, before, strict=True)]))


def trim_vocab(
    model,
    tokenizer,
    texts: list[str],
    config: TrimVocabConfig,
    *,
    eval_texts: dict[str, list[str]] | None = None,
) -> TrimResult:
    """Trim `model`'s input embedding and `tokenizer` to the pieces `texts` (the train split) needs.

    Neither input is modified.

    Args:
        model: a sequence classifier whose tokenizer is WordPiece.
        tokenizer: its fast tokenizer.
        texts: the training texts that decide which pieces stay.
        config: thresholds (see `TrimVocabConfig`).
        eval_texts: named splits (e.g. dev, test) on which only the effect is measured.

    Returns:
        The trimmed model and tokenizer, the kept old ids, and metrics: vocabulary and embedding sizes before
        and after, and per eval split the [UNK] rate before and after, the share of its original tokens whose
        piece was dropped, and the share of sentences tokenized differently.

    Raises:
        ValueError: a tokenizer that is not WordPiece, or a model with an LM head.
    """
    kept = kept_token_ids(
        tokenizer,
        texts,
        min_frequency=config.min_frequency,
        keep_top=config.keep_top,
        keep_chars=config.keep_chars,
        size=config.size,
    )
    new_tokenizer = trim_tokenizer(tokenizer, kept)
    new_model = trim_embeddings(model, kept)
    before = model.get_input_embeddings().weight
    metrics = {
        "vocab_size_before": len(tokenizer),
        "vocab_size_after": len(new_tokenizer),
        "embedding_params_before": before.numel(),
        "embedding_params_after": new_model.get_input_embeddings().weight.numel(),
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in new_model.parameters()),
    }
    for name, split in (eval_texts or {}).items():
        metrics[f"{name}_unk_rate_before"] = unk_rate(tokenizer, split)
        metrics[f"{name}_unk_rate_after"] = unk_rate(new_tokenizer, split)
        metrics[f"{name}_tokens_not_kept"] = share_not_kept(tokenizer, kept, split)
        metrics[f"{name}_sentences_changed"] = changed_share(tokenizer, new_tokenizer, kept, split)
    return TrimResult(new_model, new_tokenizer, kept, metrics)
