#!/usr/bin/env python3
"""Rebuild the vendored Python-documentation corpus (train/dev/test .jsonl.gz) from Debian's python3.11-doc.

    python data/pydocs/prepare.py                 # runs `apt-get download python3.11-doc=VERSION` first
    python data/pydocs/prepare.py --deb FILE.deb  # or use a copy of the package you already have

The package's sha256 is checked, so the output is byte-for-byte the committed files. Standard library only:
the .deb is read as an ar archive, its data.tar.xz with tarfile, no dpkg needed.

What it does: every reStructuredText source page of the documentation (`html/_sources/**/*.rst.txt`, the text
Sphinx renders into docs.python.org) becomes one document, with the markup turned into the plain text a reader
sees: roles (`:func:`len``) become their text, section underlines, link targets, index entries and tables of
contents are dropped, directives keep their content (notes, examples, code). Documents go to test (3%), dev
(3%) or train by a hash of their path, so the split is stable and no page is cut in two.
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

PACKAGE = "python3.11-doc"
VERSION = "3.11.2-6+deb12u8"
SHA256 = "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"
SOURCES = "./usr/share/doc/python3.11/html/_sources/"
SKIP = ("license.rst.txt", "copyright.rst.txt", "contents.rst.txt", "includes/")
HERE = Path(__file__).resolve().parent

# Directives whose content is not running text (or is navigation): dropped with their indented block.
DROP_DIRECTIVES = {
    "index",
    "toctree",
    "highlight",
    "sectionauthor",
    "moduleauthor",
    "module",
    "currentmodule",
    "only",
    "raw",
    "image",
    "figure",
    "literalinclude",
    "include",
    "tabularcolumns",
    "productionlist",
    "csv-table",
    "list-table",
    "impl-detail",
    "audit-event",
    "audit-event-table",
    "limited-api-list",
    "c:namespace",
}
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_COMMENT_OR_TARGET = re.compile(r"^(\s*)\.\.(\s|$)")
_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+:.])\1{2,}\s*$")
_TABLE_BORDER = re.compile(r"^\s*[+|]?[-=+|: ]*[-=]{3,}[-=+|: ]*$")
_ROLE = re.compile(r":[\w:.-]+:`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")
_REF = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``([^`]+)``")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPH = re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])")
_OPTION = re.compile(r"^\s*:[\w-]+:(\s.*)?$")


def _role_text(m: re.Match) -> str:
    text = m.group(1)
    explicit = re.match(r"(.*?)\s*<([^>]*)>$", text, flags=re.S)
    if explicit and explicit.group(1):
        return explicit.group(1)
    if explicit:
        text = explicit.group(2)
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return text


def inline(line: str) -> str:
    """reST inline markup to the text a reader sees."""
    line = _ROLE.sub(_role_text, line)
    line = _LINK.sub(r"\1", line)
    line = _LITERAL.sub(r"\1", line)
    line = _REF.sub(r"\1", line)
    line = _STRONG.sub(r"\1", line)
    line = _EMPH.sub(r"\1", line)
    return line.replace("\\ ", "").replace("|version|", "3.11").replace("|release|", "3.11.2")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


# How Sphinx words the version directives.
VERSION_WORDS = {
    "versionadded": "New in version {}.",
    "versionchanged": "Changed in version {}:",
    "deprecated": "Deprecated since version {}:",
    "deprecated-removed": "Deprecated since version {}:",
}


def _heading(name: str, argument: str) -> str:
    if name in VERSION_WORDS:
        version, _, rest = argument.partition(" ")
        return VERSION_WORDS[name].format(version.strip()) + (" " + rest.strip() if rest.strip() else "")
    return argument


def to_text(rst: str) -> str:
    """One documentation page: reST source -> plain text, paragraphs separated by blank lines."""
    lines = rst.replace("\t", "    ").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if m or _COMMENT_OR_TARGET.match(line):
            base = _indent(line)
            name = m.group(2) if m else None
            keep_body = name is not None and name not in DROP_DIRECTIVES
            i += 1
            body: list[str] = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                if not (not body and _OPTION.match(lines[i])):  # options come first, before the content
                    body.append(lines[i])
                i += 1
            if keep_body:
                head = _heading(name, m.group(3).strip()) if m.group(3) else ""
                if head:  # e.g. `.. function:: len(s)` keeps `len(s)`
                    out.append(" " * base + inline(head))
                content = [b for b in body if b.strip()]
                if content:
                    cut = min(_indent(b) for b in content)
                    inner = to_text("\n".join(b[cut:] for b in body))
                    out.extend((" " * (base + 3) + x if x else "") for x in inner.splitlines())
                out.append("")
            continue
        if _UNDERLINE.match(line) or _TABLE_BORDER.match(line):
            i += 1
            continue
        text = line.rstrip()
        if text.endswith("::"):  # Sphinx: "Example::" reads "Example:", "Example. ::" reads "Example."
            text = text[:-3].rstrip() if text.endswith(" ::") or text.strip() == "::" else text[:-1]
        out.append(inline(text))
        i += 1
    text = "\n".join(x.rstrip() for x in out)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


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


def read_pages(deb: Path) -> dict[str, str]:
    """Source page path (relative to _sources) -> its reST text."""
    members = _members(deb)
    tar_name = next(n for n in members if n.startswith("data.tar"))
    pages = {}
    with tarfile.open(fileobj=io.BytesIO(members[tar_name])) as tar:
        for info in tar:
            if info.isfile() and info.name.startswith(SOURCES) and info.name.endswith(".rst.txt"):
                rel = info.name[len(SOURCES) :]
                if not rel.startswith(SKIP) and rel not in SKIP:
                    pages[rel] = tar.extractfile(info).read().decode("utf-8")
    return pages


def split_of(rel: str) -> str:
    bucket = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 100
    return "test" if bucket < 3 else "dev" if bucket < 6 else "train"


def _write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    raw = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    with path.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deb", type=Path, default=None, help=f"{PACKAGE}_{VERSION}_all.deb (default: apt-get download)")
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        deb = a.deb
        if deb is None:
            subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=tmp, check=True)
            deb = next(Path(tmp).glob("*.deb"))
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"{deb}: sha256 {digest}, expected {SHA256} ({PACKAGE} {VERSION})")
        pages = read_pages(deb)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for rel in sorted(pages):
        text = to_text(pages[rel])
        if len(text) >= 200:  # stubs that only hold a table of contents
            splits[split_of(rel)].append({"source": rel.removesuffix(".txt"), "text": text})
    a.out.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        _write_jsonl_gz(a.out / f"{name}.jsonl.gz", docs)
        chars = sum(len(d["text"]) for d in docs)
        words = sum(len(d["text"].split()) for d in docs)
        print(f"{name}: {len(docs)} documents, {chars:,} characters, {words:,} words")


if __name__ == "__main__":
    main()
