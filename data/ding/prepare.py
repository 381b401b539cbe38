#!/usr/bin/env python3
"""Rebuild the German->English translation corpus (train/dev/test .jsonl.gz) from Debian's trans-de-en (Ding).

    python data/ding/prepare.py                   # runs `apt-get download trans-de-en=VERSION` first
    python data/ding/prepare.py --debs DIR        # or use a copy of the package you already have in DIR

The package's sha256 is checked, and so are the three files written, so the output is byte-for-byte the committed
files. Standard library only: the .deb is read as an ar archive, its data.tar.xz with tarfile, no dpkg needed.

What it takes (README.md beside this file says why): the Ding German-English dictionary (`/usr/share/trans/de-en`),
one entry a line, `German :: English`; ` | ` separates an entry's senses (sub-entries, examples), aligned one to
one on both sides; `; ` separates variants (synonyms) within a sense. Every aligned sense gives a pair for each of
its first four German variants with each of its first four English variants (a list of twenty slang synonyms would
otherwise pair each with each), with the dictionary's annotations removed: `{f}` `{vt}` (grammar), `[ugs.]`
`[Br.]` (usage labels), `<...>` (search keys), `/.../` (abbreviations), `~...` (cross references) and `(...)`
(explanations and optional words). Kept: German variants of 3 words or more, or sentences (2 words or more ending
in . ! or ?); on both sides, only text that reads as running text (no alternatives written with `/`, no `…`
placeholders, no brackets left, no control characters) of 40 words or fewer; German not equal to English. Left
out: the rows of a verb entry that only inflect it (participles "stopping", "stopped"; one-word finite forms
"stops"). Exact duplicate pairs are written once, in dictionary order. `{"source": German, "target": English}`,
one pair a line.

Split: pairs that share a German or an English text (compared without case and final punctuation) are joined
into one group (union-find), and a group goes to test (1.5%), dev (1.5%) or train by a hash of its smallest German
text, so the split is stable and no dev or test source, nor target, is seen in training.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "trans-de-en"
VERSION = "1.9-6"
SHA256 = "45f6b4cf1c434776fba6811d7bc522efabb5425c43ba8afd0e289bf9e2e53df4"
DICTIONARY = "./usr/share/trans/de-en"
COPYRIGHT = "./usr/share/doc/trans-de-en/copyright"  # the package's Debian copyright file, written as COPYING.ding
# What the script writes, byte for byte: checked after writing.
OUTPUT_SHA256 = {
    "train.jsonl.gz": "da464a0ad1fa863a03b69a042c84c7211d6c9b15f5b4befb35d017401e4cb6f7",
    "dev.jsonl.gz": "3aeef1fb143534cd87ac0558daaf8b19bf2db74f59cafe991d3bd124cd6ceeea",
    "test.jsonl.gz": "44d60709fddbbaf2aa8c808a99b231352e56ee4cf8e9c62b25f486097a9ab2da",
}
MIN_WORDS = 3  # German phrases shorter than this are dictionary words, not phrases (sentences: 2)
MAX_WORDS = 40
MAX_VARIANTS = 4  # of a sense, on each side: the first four German times the first four English at most
SPLIT_PER_MILLE = {"test": 15, "dev": 15}  # the rest is train

_ANNOTATIONS = [
    re.compile(r"\{[^{}]*\}"),  # {f} {pl} {vt} {dealt; dealt}
    re.compile(r"\[[^\[\]]*\]"),  # [ugs.] [Br.] [jur.]
    re.compile(r"<[^<>]*>"),  # <Aalmolch>: spellings to search by
    re.compile(r"(?<!\S)/[^/\s][^/]*/(?!\S)"),  # /IFP/ /bu.; bsh./: abbreviations
    re.compile(r"(?<!\S)~\S+"),  # ~Prozesskostenhilfe: see also
]
_PARENS = re.compile(r"\s*\([^()]*\)")
_LEFTOVER = re.compile(r"[()\[\]{}<>/~…|]|\.\.\.|[\x00-\x1f\x7f-\x9f]")
_VERB = re.compile(r"\{v[tir]?\}")
_OPEN, _CLOSE = "([{<", ")]}>"


def _split(text: str, sep: str) -> list[str]:
    """`text` cut at `sep` outside brackets (`{dealt; dealt}` holds a `; ` that is not a separator)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    parts.append(text[start:])
    return parts


def clean(text: str) -> str:
    """One variant without the dictionary's annotations, whitespace normalised."""
    for pattern in _ANNOTATIONS:
        text = pattern.sub(" ", text)
    while True:  # innermost parentheses first: "(in (a) way)"
        stripped = _PARENS.sub("", text)
        if stripped == text:
            break
        text = stripped
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" (?=[,.!?;:])", "", text)


def _is_sentence(text: str) -> bool:
    return bool(text) and text[-1] in ".!?" and len(text.split()) >= 2


def _readable(text: str) -> bool:
    """One side is running text: not empty, nothing left that is not (alternatives with `/`, `…` placeholders,
    brackets, control characters), not too long."""
    return bool(text) and not _LEFTOVER.search(text) and len(text.split()) <= MAX_WORDS


def _phrase_or_sentence(de: str) -> bool:
    return len(de.split()) >= MIN_WORDS or _is_sentence(de)


def _inflection_rows(de_senses: list[str], en_senses: list[str]) -> set[int]:
    """The rows of a verb entry that only inflect its verb.

    Ding writes a verb as: infinitive | present participle | past participle | finite forms (3rd person present,
    past, perfect...) | phrases and examples. Left out: rows 1 and 2 when row 1 is a participle ("stopping",
    "stopped"), and then any later row whose English is one word ("stops", "stopped", "unobserving")."""
    if len(en_senses) < 3 or not _VERB.search(de_senses[0]):
        return set()
    first = [clean(_split(en, "; ")[0]) for en in en_senses]
    if not first[1].split(" ", 1)[0].endswith("ing") or _is_sentence(first[1]):
        return set()
    return {1, 2} | {i for i in range(3, len(first)) if " " not in first[i] and not _is_sentence(first[i])}


def pairs(dictionary: str) -> list[tuple[str, str]]:
    """The kept (German, English) pairs, in dictionary order, each once."""
    out: dict[tuple[str, str], None] = {}
    for line in dictionary.splitlines():
        if line.startswith("#") or " :: " not in line:
            continue
        de_side, en_side = line.split(" :: ", 1)
        de_senses, en_senses = _split(de_side, " | "), _split(en_side, " | ")
        if len(de_senses) != len(en_senses):
            continue
        skip = _inflection_rows(de_senses, en_senses)
        for i, (de_sense, en_sense) in enumerate(zip(de_senses, en_senses, strict=True)):
            if i in skip:
                continue
            de_variants = [v for v in map(clean, _split(de_sense, "; ")) if _readable(v) and _phrase_or_sentence(v)]
            en_variants = [v for v in map(clean, _split(en_sense, "; ")) if _readable(v)]
            # Ding lists the usual variants first; a long list of synonyms (slang) would pair each with each
            for de in de_variants[:MAX_VARIANTS]:
                for en in en_variants[:MAX_VARIANTS]:
                    if de != en:
                        out[(de, en)] = None
    return list(out)


def _key(text: str) -> str:
    return text.casefold().rstrip(".!?")


def split_of_pairs(kept: list[tuple[str, str]]) -> list[str]:
    """Each pair's split: a group of pairs linked by a shared German or English text falls as one."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for de, en in kept:
        a, b = find("de:" + _key(de)), find("en:" + _key(en))
        if a != b:
            parent[max(a, b)] = min(a, b)
    # a group is named by its smallest German text, so its split does not depend on the order of union
    name: dict[str, str] = {}
    for de, _ in kept:
        root = find("de:" + _key(de))
        name[root] = min(name.get(root, de), de)
    test, dev = SPLIT_PER_MILLE["test"], SPLIT_PER_MILLE["test"] + SPLIT_PER_MILLE["dev"]
    out = []
    for de, _ in kept:
        bucket = int(hashlib.sha256(name[find("de:" + _key(de))].encode("utf-8")).hexdigest(), 16) % 1000
        out.append("test" if bucket < test else "dev" if bucket < dev else "train")
    return out


def _members(deb: Path) -> dict[str, bytes]:
    """The files of an ar archive (a .deb): name -> bytes."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb}: not a .deb (ar) archive")
    pos, out = 8, {}
    while pos < len(data):
        header = data[pos : pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def read_package(deb: Path) -> tuple[str, bytes]:
    """The dictionary's text and the package's copyright file."""
    members = _members(deb)
    tar_name = next(n for n in members if n.startswith("data.tar"))
    with tarfile.open(fileobj=io.BytesIO(members[tar_name])) as tar:
        dictionary = tar.extractfile(DICTIONARY).read().decode("utf-8")
        copyright_ = tar.extractfile(COPYRIGHT).read()
    return dictionary, copyright_


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with path.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(raw)


def _deb_path(debs: Path | None, tmp: Path) -> Path:
    if debs is not None:
        found = sorted(debs.glob(f"{PACKAGE}_{VERSION}_*.deb"))
        if not found:
            raise SystemExit(f"{debs}: no {PACKAGE}_{VERSION}_*.deb in it")
        return found[0]
    subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=tmp, check=True)
    return next(tmp.glob(f"{PACKAGE}_*.deb"))


def build(debs: Path | None) -> tuple[dict[str, list[dict]], bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        deb = _deb_path(debs, Path(tmp))
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"{deb}: sha256 {digest}, expected {SHA256} ({PACKAGE} {VERSION})")
        dictionary, copyright_ = read_package(deb)
    print(f"{PACKAGE} {VERSION}: sha256 {digest}")
    kept = pairs(dictionary)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for (de, en), split in zip(kept, split_of_pairs(kept), strict=True):
        splits[split].append({"source": de, "target": en})
    return splits, copyright_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--debs", type=Path, help=f"a folder holding {PACKAGE}_{VERSION}_all.deb (else apt-get download)")
    ap.add_argument("--out", type=Path, default=HERE, help="where the files go (default: beside this)")
    args = ap.parse_args()
    splits, copyright_ = build(args.debs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "COPYING.ding").write_bytes(copyright_)
    for name, rows in splits.items():
        _write_jsonl_gz(args.out / f"{name}.jsonl.gz", rows)
        sources = len({r["source"] for r in rows})
        chars = [sum(len(r[k]) for r in rows) for k in ("source", "target")]
        words = [sum(len(r[k].split()) for r in rows) for k in ("source", "target")]
        print(
            f"{name}: {len(rows):,} pairs ({sources:,} distinct sources), characters {chars[0]:,} de / {chars[1]:,} en,"
            f" words {words[0]:,} de / {words[1]:,} en"
        )
    for name, expected in OUTPUT_SHA256.items():
        digest = hashlib.sha256((args.out / name).read_bytes()).hexdigest()
        if digest != expected:
            raise SystemExit(f"{args.out / name}: sha256 {digest}, expected {expected} (not the published corpus)")


if __name__ == "__main__":
    main()
