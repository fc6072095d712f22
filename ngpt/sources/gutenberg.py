"""Project Gutenberg (pretrain): public-domain books, cut into documents of bounded size.

Hub: `manu/project_gutenberg`, split `en` (columns `id`, `text`; one row per book). Local
(`--source gutenberg=PATH`): a directory (or one file) of `.txt` books as gutenberg.org serves
them, or parquet / jsonl / json rows in the hub's schema.

Each book loses its UTF-8 BOM, gets LF line ends, and is cut to the text between the
`*** START OF THE/THIS PROJECT GUTENBERG EBOOK ... ***` and `*** END OF ...` markers when they are
there (the license boilerplate would otherwise be repeated in every book). The body is then cut at
blank lines into chunks of at most MAX_CHUNK_CHARS characters; val is carved by
`split_of("<book>:<chunk>")`, so one book contributes to both splits.

    src = make_source("gutenberg", load_settings(overrides={"data": {"sources": {"gutenberg": "books/"}}}))
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ngpt.sources.base import Document, Split, only
from ngpt.sources.tables import TABLE_EXTS, HubOrLocal, hub_rows, is_table, read_text, table_rows

MAX_CHUNK_CHARS = 20_000
HUB_SPLIT = "en"
# The marker may wrap onto a second line for long titles, hence [^*]* instead of ".*". Both are
# tried only where a line starts with "***" (`_marker`): a regex scan of a whole book with re.I is
# ten times slower than str.find, and reading runs in the one process that feeds the tokenizers.
START = re.compile(r"\*{3} *START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^*]*\*{3}[^\n]*", re.I)
END = re.compile(r"\*{3} *END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK", re.I)
BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def _marker(pattern: re.Pattern, text: str, pos: int = 0) -> re.Match | None:
    """The first match of `pattern` at the start of a line, at or after `pos`."""
    at = text.find("***", pos)
    while at != -1:
        if (at == 0 or text[at - 1] == "\n") and (found := pattern.match(text, at)):
            return found
        at = text.find("***", at + 3)
    return None


def strip_gutenberg(text: str) -> str:
    """The book body: BOM dropped, CRLF → LF, header and footer (when marked) cut off."""
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    start = _marker(START, text)
    begin = start.end() if start else 0
    end = _marker(END, text, begin)
    return text[begin : end.start() if end else len(text)].strip("\n")


def _pieces(paragraph: str, max_chars: int) -> Iterator[str]:
    """A paragraph longer than max_chars, cut at line ends (or hard, for a single huge line)."""
    if len(paragraph) <= max_chars:
        yield paragraph
        return
    piece = ""
    for line in paragraph.split("\n"):
        while len(line) > max_chars:
            if piece:
                yield piece
                piece = ""
            yield line[:max_chars]
            line = line[max_chars:]
        if piece and len(piece) + 1 + len(line) > max_chars:
            yield piece
            piece = ""
        piece = f"{piece}\n{line}" if piece else line
    if piece:
        yield piece


def chunk_text(body: str, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """Paragraphs (split at blank lines) packed greedily into chunks of at most max_chars."""
    chunks: list[str] = []
    current: list[str] = []  # pieces of the chunk being packed, joined by blank lines at the end
    size = 0  # len("\n\n".join(current))
    for paragraph in BLANK_LINES.split(body):
        if not paragraph or paragraph.isspace():
            continue
        for piece in _pieces(paragraph, max_chars):
            if current and size + 2 + len(piece) > max_chars:
                chunks.append("\n\n".join(current))
                current, size = [], 0
            size += len(piece) + (2 if current else 0)
            current.append(piece)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


class Gutenberg(HubOrLocal):
    name = "gutenberg"
    kind = "pretrain"

    file_exts = (".txt",) + TABLE_EXTS
    required_columns = ("text",)

    def _books(self) -> Iterator[tuple[str, str, str]]:
        """(book key, where for refs, raw text) per book, in a deterministic order."""
        if self.path is None:
            for i, row in enumerate(hub_rows(self.hub, HUB_SPLIT)):
                book = str(row.get("id") or i)
                yield book, f"{self.hub} {HUB_SPLIT} book {book}", row["text"] or ""
            return
        root = Path(self.path)
        for f in self._files():
            rel = f.name if f == root else f.relative_to(root).as_posix()
            if not is_table(f):
                yield rel, str(f), read_text(self.name, f)
                continue
            for i, row in table_rows(self.name, f, ("id", "text")):
                book = str(row.get("id") or f"{rel}:{i}")
                yield book, f"{f} row {i}", row["text"] or ""

    def iter_tagged(self) -> Iterator[tuple[Split, Document]]:
        def keyed() -> Iterator[tuple[str, Document]]:
            for book, where, text in self._books():
                for k, chunk in enumerate(chunk_text(strip_gutenberg(text))):
                    yield f"{book}:{k}", Document(f"{where} chunk {k}", chunk)

        return self.carve_tagged(keyed())

    def iter_split(self, split: Split) -> Iterator[Document]:
        return only(self.iter_tagged(), split)
