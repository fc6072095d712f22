"""WikiText (pretrain): Wikipedia articles rebuilt from the line rows of the raw dataset.

Hub: `Salesforce/wikitext`, config `wikitext-103-raw-v1`; its train / validation splits are our
train / val. Each hub row is one line of the raw text: blank lines are "", other rows keep their
leading space and trailing newline, articles open with a top-level heading " = Title = " and
contain sub-headings " = = Section = = ". Rows are joined into one Document per article.

Local copies (`--source wikitext=PATH`, a file or a directory): parquet / jsonl / json with a
`text` column, or `.raw` / `.txt` files whose lines are the rows. File names choose splits
(train, valid/validation, else test as val); a path with one split only, e.g. the shared test
split, is carved into train/val by article title (`split_of`).

    src = make_source("wikitext", load_settings(overrides={"data": {"sources": {"wikitext": "wiki.test.raw"}}}))
    for doc in src.iter_split("val"): print(doc.ref)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ngpt.sources.base import Document, Split, only
from ngpt.sources.tables import TABLE_EXTS, SplitFilesOrCarved, hub_rows, is_table, split_files, table_rows, text_lines

# " = Title = " opens an article; " = = Section = = " (a title starting with "=") does not.
TOP_HEADING = re.compile(r"^ = ([^=].*?) = $")
HUB_SPLITS = {"train": "train", "val": "validation"}
TEXT_EXTS = (".raw", ".txt")


def articles(rows: Iterable[str], where: str) -> Iterator[tuple[str, Document]]:
    """(key, Document) per article; a blank row ("") becomes the blank line it was in the raw text."""
    title: str | None = None
    lines: list[str] = []

    def article() -> tuple[str, Document] | None:
        text = "".join(line or "\n" for line in lines).strip("\n")
        if not text.strip():
            return None
        if title is None:  # text before the first heading of a file
            return f"{Path(where).name}:preamble", Document(f"{where} rows before the first heading", text)
        return title, Document(f"{where} article '{title}'", text)

    for row in rows:
        heading = TOP_HEADING.match(row.rstrip("\n"))
        if heading:
            if (done := article()) is not None:
                yield done
            title, lines = heading[1], []
        lines.append(row)
    if (done := article()) is not None:
        yield done


def file_rows(file: Path) -> Iterator[str]:
    if is_table(file):
        return (row["text"] or "" for _, row in table_rows("wikitext", file, ("text",)))
    # Raw files hold blank lines as " \n"; the hub rows hold them as "" (same join rule then).
    return (line if line.strip() else "" for line in text_lines("wikitext", file))


class WikiText(SplitFilesOrCarved):
    name = "wikitext"
    kind = "pretrain"

    file_exts = TABLE_EXTS + TEXT_EXTS
    required_columns = ("text",)

    def iter_split(self, split: Split) -> Iterator[Document]:
        if self.path is None:
            rows = (row["text"] for row in hub_rows(self.hub, HUB_SPLITS[split]))
            yield from (doc for _, doc in articles(rows, f"{self.hub} {HUB_SPLITS[split]}"))
            return
        files = self._files()
        by_split = split_files(self.name, self.path, files)
        if by_split is not None:
            for f in by_split[split]:
                yield from (doc for _, doc in articles(file_rows(f), str(f)))
            return
        yield from only(self._carved(files), split)

    def _carved(self, files: list[Path]) -> Iterator[tuple[Split, Document]]:
        """One split of rows in all `files`, carved into train/val by article title."""
        return self.carve_tagged(item for f in files for item in articles(file_rows(f), str(f)))
