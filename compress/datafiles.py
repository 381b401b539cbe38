"""Reading a recipe's data files, for every task: the bytes as UTF-8 text, and JSON Lines as objects, each
mistake one line that names the file (`data.KEY = 'path'`), the line and what was expected."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from compress.errors import RecipeError


def where(path: Path, key: str) -> str:
    """How an error names a data file: the recipe key and the path."""
    return f"data.{key} = {str(path)!r}"


def read_text(path: Path, key: str) -> str:
    """The file as text: gzip-decompressed when its name ends in `.gz`, UTF-8 with a byte-order mark (Excel writes
    one) dropped. UTF-16, binary, unreadable or not-UTF-8 files are refused in one line."""
    at = where(path, key)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise RecipeError(f"{at}: cannot be read ({e.strerror})") from None
    if Path(path).name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise RecipeError(f"{at}: not a readable gzip file ({e})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RecipeError(f"{at}: UTF-16 text, a binary file to a UTF-8 reader; save it as UTF-8")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise RecipeError(f"{at}: a binary file (NUL byte at offset {nul}), expected UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(f"{at}: not UTF-8 text (byte {e.start}, line {line}); save it as UTF-8") from None


def jsonl_objects(text: str, at: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON Lines text; a line that is not a JSON object is
    refused naming it (`at`: the file, as `where` gives it)."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{at}: line {n} is not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise RecipeError(f"{at}: line {n} is not a JSON object")
        yield n, rec
