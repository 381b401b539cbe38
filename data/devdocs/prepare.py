#!/usr/bin/env python3
"""Rebuild the developer-documentation corpus (train/dev/test .jsonl.gz) from three pinned Debian packages.

    python data/devdocs/prepare.py                   # runs `apt-get download PACKAGE=VERSION` for each package
    python data/devdocs/prepare.py --debs DIR        # or use copies of the packages you already have in DIR

Each package's sha256 is checked, so the output is byte-for-byte the committed files. Standard library only:
a .deb is read as an ar archive, its data.tar.xz with tarfile, no dpkg needed.

What it takes (README.md beside this file says why):
- Python 3.11's documentation: the reStructuredText sources (`html/_sources/**/*.rst.txt`), turned into plain
  text by data/pydocs/prepare.py's converter (the pages of the data/pydocs corpus, split the same way);
- Django 3.2's documentation and PostgreSQL 15's manual: their HTML pages (no sources are shipped), the page's
  content element only (no navigation, sidebars, scripts or permalink marks), block elements as paragraphs,
  code blocks kept verbatim.
Every page is one document, `{"source": "django/topics/db/queries.html", "text": ...}`; a page goes to test
(3%), dev (3%) or train by a hash of its source path, so the split is stable and no page is cut in two.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import re
import subprocess
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("pydocs_prepare", HERE.parent / "pydocs" / "prepare.py")
pydocs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pydocs)

# package -> (version, sha256 of the .deb, corpus prefix, HTML root inside the package or None for reST sources)
PACKAGES = {
    "python3.11-doc": (
        "3.11.2-6+deb12u8",
        "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
        "python",
        None,
    ),
    "python-django-doc": (
        "3:3.2.25-0+deb12u3",
        "33319c8e45b95693603213442ccf9bcee933ef338488115203ad25a0e01c696f",
        "django",
        "./usr/share/doc/python-django-doc/html/",
    ),
    "postgresql-doc-15": (
        "15.18-0+deb12u1",
        "3c598277a463c44d672daa2c335deb8d8252e1852fb025fd4578ea2d9a1b90f0",
        "postgresql",
        "./usr/share/doc/postgresql-doc-15/html/",
    ),
}
# Each package's Debian copyright file (its licences), written beside the corpus as COPYING.<prefix>.
COPYRIGHT = {
    "python3.11-doc": "./usr/share/doc/python3.11-doc/copyright",
    "python-django-doc": "./usr/share/doc/python-django-doc/copyright",
    "postgresql-doc-15": "./usr/share/doc/postgresql-doc-15/copyright",
}
# What the script writes, byte for byte: checked after writing (the splits are not kept in git: the train split is
# over 5 MB; `make devdocs` or the teacher's recipe target builds them from the pinned packages).
OUTPUT_SHA256 = {
    "train.jsonl.gz": "02298c7f350f9cac8f71668a3229ede277593804d20b2d2dfb4e7354a0a83d9b",
    "dev.jsonl.gz": "964efab0e8c119b4ab1e84ca0019dfff89cd0d3228b813382c0bc8958e8617ed",
    "test.jsonl.gz": "cc74a6ca13a6a24c84bae86c8e3cf1b4f542d504e9c807c17e693d357a996efa",
}
MIN_CHARS = 200  # pages shorter than this hold only navigation or a table of contents

# The element that holds a page's text, per package: (tag, attribute, value), the first match.
CONTENT = {
    "django": ("div", "class", "yui-g"),
    "postgresql": ("body", None, None),
}
# Pages that are not running text: indexes, the search page, release notes lists, licence and copyright pages.
SKIP_PAGES = {
    "django": ("genindex.html", "search.html", "py-modindex.html", "contents.html", "index.html", "_modules/"),
    "postgresql": ("bookindex.html", "index.html", "legalnotice.html", "release-", "biblio.html"),
}
_BLOCK = {
    "p", "div", "section", "pre", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "tr", "blockquote", "br", "hr", "figure", "figcaption", "caption", "title",
}  # fmt: skip
_VOID = {"br", "hr", "img", "meta", "link", "input", "wbr", "area", "base", "col", "source"}
_DROP = {"script", "style", "noscript", "head"}
_DROP_CLASSES = {"headerlink", "navheader", "navfooter", "nav", "toc", "sidebar", "toctree-wrapper", "footnote"}


class _PageText(HTMLParser):
    """The text a reader sees in the page's content element: blocks separated by blank lines, <pre> verbatim."""

    def __init__(self, content: tuple[str, str | None, str | None]):
        super().__init__(convert_charrefs=True)
        self.content = content
        self.depth = 0  # > 0 inside the content element
        self.drop = 0  # > 0 inside an element whose text is dropped
        self.pre = 0
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, opened content, opened drop)
        self.parts: list[str] = []

    def _matches_content(self, tag: str, attrs: dict) -> bool:
        want_tag, key, value = self.content
        if tag != want_tag:
            return False
        return key is None or value in (attrs.get(key) or "").split()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in _VOID:
            if self.depth and not self.drop and tag in ("br", "hr"):
                self.parts.append("\n")
            return
        opens_content = self.depth == 0 and self._matches_content(tag, attrs)
        classes = set((attrs.get("class") or "").split())
        opens_drop = tag in _DROP or bool(classes & _DROP_CLASSES) or attrs.get("role") == "navigation"
        self.stack.append((tag, opens_content, opens_drop))
        self.depth += opens_content or (self.depth > 0)
        self.drop += opens_drop
        if tag == "pre":
            self.pre += 1
        if self.depth and tag in _BLOCK:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag, attrs):  # XHTML's <a ... />: opened and closed at once
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in _VOID or all(open_tag != tag for open_tag, _, _ in self.stack):
            return  # a stray end tag
        # close up to the matching tag (HTML leaves some elements unclosed)
        while self.stack:
            open_tag, opened_content, opened_drop = self.stack.pop()
            if self.depth:
                self.depth -= 1
            self.drop -= opened_drop
            if open_tag == "pre":
                self.pre -= 1
            if self.depth and open_tag in _BLOCK:
                self.parts.append("\n\n")
            if open_tag == tag:
                break

    def handle_data(self, data):
        if not self.depth or self.drop:
            return
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        text = "".join(self.parts).replace("\u00b6", "").replace("\u00a0", " ")
        paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", text)]
        out = []
        for p in paragraphs:
            lines = [line.rstrip() for line in p.splitlines()]
            if any(line.strip() for line in lines):
                # verbatim blocks keep their indentation; running text is stripped
                out.append("\n".join(lines) if len(lines) > 1 else lines[0].strip())
        return "\n\n".join(out).strip()


def html_to_text(page: str, content: tuple[str, str | None, str | None]) -> str:
    parser = _PageText(content)
    parser.feed(page)
    parser.close()
    return parser.text()


def _copyright(deb: Path, name: str) -> bytes:
    members = pydocs._members(deb)
    tar_name = next(n for n in members if n.startswith("data.tar"))
    with tarfile.open(fileobj=io.BytesIO(members[tar_name])) as tar:
        member = tar.getmember(name)
        while member.issym():  # Debian links a doc package's copyright to its source's
            member = tar.getmember(str(Path(name).parent / member.linkname))
        return tar.extractfile(member).read()


def _pages(deb: Path, prefix: str, root: str | None) -> dict[str, str]:
    """One package's pages: path within the package's documentation -> plain text."""
    if root is None:  # Python: the reST sources, through data/pydocs's converter
        return {rel.removesuffix(".txt"): pydocs.to_text(rst) for rel, rst in pydocs.read_pages(deb).items()}
    members = pydocs._members(deb)
    tar_name = next(n for n in members if n.startswith("data.tar"))
    out = {}
    with tarfile.open(fileobj=io.BytesIO(members[tar_name])) as tar:
        for info in tar:
            if not (info.isfile() and info.name.startswith(root) and info.name.endswith(".html")):
                continue
            rel = info.name[len(root) :]
            if rel.startswith(SKIP_PAGES[prefix]) or rel.rsplit("/", 1)[-1] in SKIP_PAGES[prefix]:
                continue
            out[rel] = html_to_text(tar.extractfile(info).read().decode("utf-8"), CONTENT[prefix])
    return out


def _deb_path(package: str, version: str, debs: Path | None, tmp: Path) -> Path:
    if debs is not None:
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise SystemExit(f"{debs}: no {package}_*.deb in it")
        return found[0]
    subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=tmp, check=True)
    return next(tmp.glob(f"{package}_*.deb"))


def build(debs: Path | None) -> tuple[dict[str, list[dict]], dict[str, bytes]]:
    """The three splits' documents, and each package's copyright file (name -> bytes)."""
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    licences: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for package, (version, sha256, prefix, root) in PACKAGES.items():
            deb = _deb_path(package, version, debs, Path(tmp))
            digest = hashlib.sha256(deb.read_bytes()).hexdigest()
            if sha256 is not None and digest != sha256:
                raise SystemExit(f"{deb}: sha256 {digest}, expected {sha256} ({package} {version})")
            pages = _pages(deb, prefix, root)
            licences[f"COPYING.{prefix}"] = _copyright(deb, COPYRIGHT[package])
            kept = {src: text for src, text in pages.items() if len(text) >= MIN_CHARS}
            print(f"{package} {version}: sha256 {digest}, {len(kept)} pages of {len(pages)}")
            for rel in sorted(kept):
                # split by the path within the package: Python's pages fall as in data/pydocs
                split = pydocs.split_of(rel + ".txt" if root is None else rel)
                splits[split].append({"source": f"{prefix}/{rel}", "text": kept[rel]})
    return splits, licences


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--debs", type=Path, help="a folder holding the three .deb files (else apt-get download)")
    ap.add_argument("--out", type=Path, default=HERE, help="where the .jsonl.gz files go (default: beside this)")
    args = ap.parse_args()
    splits, licences = build(args.debs)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in licences.items():
        (args.out / name).write_bytes(text)
    for name, docs in splits.items():
        pydocs._write_jsonl_gz(args.out / f"{name}.jsonl.gz", docs)
        chars = sum(len(d["text"]) for d in docs)
        words = sum(len(d["text"].split()) for d in docs)
        print(f"{name}: {len(docs)} pages, {chars:,} characters, {words:,} words")
    for name, expected in OUTPUT_SHA256.items():
        digest = hashlib.sha256((args.out / name).read_bytes()).hexdigest()
        if digest != expected:
            raise SystemExit(f"{args.out / name}: sha256 {digest}, expected {expected} (not the published corpus)")


if __name__ == "__main__":
    main()
