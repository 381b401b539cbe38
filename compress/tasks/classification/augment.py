"""Data augmentation for task-specific distillation: more inputs, labelled by the teacher.

A small student learns the teacher's function better from more inputs than the labelled set holds (Tang et
al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"; TinyBERT's
augmentation, Jiao et al. 2020). Each augmented copy of a training text is made word by word (words are split
on whitespace and put back with single spaces):

- with probability `mask`, the word becomes the tokenizer's mask token;
- else with probability `replace`, the word becomes one of its `neighbours` nearest words in the teacher's
  input-embedding space (cosine, whole-word vocabulary pieces only). TinyBERT asks a masked language model
  for replacements; a classifier fine-tuned from an encoder has no MLM head left, while its word embeddings
  are what the student starts from and need no download;
- then with probability `ngram`, the copy is cut to a random span of 1 to `max_ngram` words.

A copy identical to its source is dropped. The teacher scores every copy (soft targets, cached like the
originals') and its arg-max is the copy's hard label, so a replacement that flips the sentiment is labelled
as the teacher reads it. Only train texts are augmented; dev, test and the held-out slice are never touched.
"""

from __future__ import annotations

import numpy as np

from compress.tasks.classification.config import AugmentConfig


def _whole_words(vocab: dict[str, int]) -> tuple[list[str], np.ndarray]:
    words = sorted((w for w in vocab if w.isalpha() and len(w) > 1), key=vocab.__getitem__)
    return words, np.asarray([vocab[w] for w in words], dtype=np.int64)


def word_neighbours(
    vocab: dict[str, int], embeddings: np.ndarray, words: set[str], k: int, chunk: int = 2048
) -> dict[str, list[str]]:
    """The `k` nearest whole-word vocabulary entries of each of `words`, by cosine of their embedding rows.

    Args:
        vocab: piece -> id, as in a WordPiece vocabulary (pieces with a `##` prefix are never candidates).
        embeddings: (V, H) input-embedding matrix.
        words: the words to find neighbours for; those that are not a whole-word piece get none.
        k: neighbours per word (fewer when the vocabulary has fewer words).
        chunk: rows scored at a time, to bound memory.

    Returns:
        word -> its neighbours, nearest first, the word itself excluded.
    """
    cand, ids = _whole_words(vocab)
    if len(cand) < 2:
        return {}
    e = embeddings[ids].astype(np.float32)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    index = {w: i for i, w in enumerate(cand)}
    queries = sorted(w for w in words if w in index)
    k = min(k, len(cand) - 1)
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        rows = np.asarray([index[w] for w in q])
        sim = e[rows] @ e.T
        sim[np.arange(len(q)), rows] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(sim, top, axis=1).argsort(axis=1)[:, ::-1]
        for w, nearest in zip(q, np.take_along_axis(top, order, axis=1), strict=True):
            out[w] = [cand[j] for j in nearest]
    return out


def augment_texts(
    texts: list[str],
    config: AugmentConfig,
    *,
    mask_token: str | None,
    neighbours: dict[str, list[str]],
    seed: int,
) -> tuple[list[str], list[int]]:
    """`config.copies` augmented copies of each text (see the module docstring); copies equal to their source are
    left out.

    Args:
        texts: the training texts.
        config: probabilities and sizes.
        mask_token: the tokenizer's mask token; None switches masking off.
        neighbours: word -> replacement candidates (`word_neighbours`); words are looked up lower-cased.
        seed: seeds the random choices, so the same inputs give the same copies.

    Returns:
        The copies and, for each, the index of the text it was made from.
    """
    rng = np.random.default_rng(seed)
    out, source = [], []
    for _ in range(config.copies):
        for i, text in enumerate(texts):
            words = text.split()
            if not words:
                continue
            new = []
            for w in words:
                u = rng.random()
                cands = neighbours.get(w.lower())
                if mask_token is not None and u < config.mask:
                    new.append(mask_token)
                elif cands and u < config.mask + config.replace:
                    new.append(cands[rng.integers(len(cands))])
                else:
                    new.append(w)
            if rng.random() < config.ngram and len(new) > 1:
                n = int(rng.integers(1, min(config.max_ngram, len(new)) + 1))
                start = int(rng.integers(0, len(new) - n + 1))
                new = new[start : start + n]
            aug = " ".join(new)
            if aug != " ".join(words):
                out.append(aug)
                source.append(i)
    return out, source


def augment_split(teacher, tokenizer, texts: list[str], config: AugmentConfig, *, seed: int, max_length: int):
    """Augmented copies of `texts` with the teacher's logits and arg-max labels.

    Returns:
        (copies, index of each copy's source text, teacher arg-max labels, teacher logits (N, C) float32).
    """
    from compress.tasks.classification.data import Split, encode
    from compress.training import predict_logits

    vocab = tokenizer.get_vocab()
    emb = teacher.get_input_embeddings().weight.detach().cpu().numpy()
    used = {w.lower() for t in texts for w in t.split()}
    nearest = word_neighbours(vocab, emb, used, config.neighbours) if config.replace > 0 else {}
    copies, source = augment_texts(texts, config, mask_token=tokenizer.mask_token, neighbours=nearest, seed=seed)
    if not copies:
        return [], [], [], np.zeros((0, teacher.config.num_labels), dtype=np.float32)
    encoded = encode(tokenizer, Split(copies, [0] * len(copies)), max_length)
    logits = predict_logits(teacher, tokenizer, encoded, desc="teacher on augmented copies")
    return copies, source, logits.argmax(-1).tolist(), logits


def augment_train(
    teacher, tokenizer, train, teacher_logits: np.ndarray, config: AugmentConfig, *, seed: int, max_length: int
):
    """`train` (a `data.Split`) with `augment_split`'s copies appended, the teacher's logits of the
    copies appended to `teacher_logits`, and a record of what was added (the distill and prune stages' shared
    use of augmentation).

    Returns:
        (the augmented Split, (N + copies, C) float32 logits, metrics: the settings, copies made and the share of
        copies the teacher labels unlike their source text).
    """
    from compress.tasks.classification.data import Split

    copies, source, labels, logits = augment_split(
        teacher, tokenizer, train.texts, config, seed=seed, max_length=max_length
    )
    flipped = float(np.mean(np.asarray(labels) != np.asarray(train.labels)[source])) if copies else 0.0
    return (
        Split(train.texts + copies, train.labels + labels),
        np.concatenate([teacher_logits, logits]).astype(np.float32),
        {**config.model_dump(), "examples": len(copies), "label_differs_from_source": flipped},
    )
