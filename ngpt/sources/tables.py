"""Reading helpers the sources share: hub ids, local tables, schema checks, split carving.

Hub datasets are streamed with `datasets.load_dataset(..., streaming=True)`. Local files in the
hub's schema are streamed too, but read directly: parquet in record batches with pyarrow (the
library `datasets` reads parquet with), JSON Lines line by line; only a .json file that is one
array or object goes through `datasets`. Rows come out alike either way ({column: value}, a
missing column read as None), nothing is materialised in memory and no arrow cache is written.
(Reading runs in the one process that feeds the tokenizer workers: `datasets` would add seconds of
imports and ~10 µs of machinery per row there.) Schema checks read only a parquet footer or the
first JSON row, so `Source.check()` stays fast.

    files = local_files("dolly15k", path, TABLE_EXTS)
    for f in files: check_columns("dolly15k", f, ("instruction", "context", "response"))
    for i, row in table_rows("dolly15k", files[0], ("instruction", "context", "response")): ...
    for split, doc in carve_tagged(((key, doc) for key, doc in keyed_docs), 0.05, seed=1337): ...
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from ngpt.settings import Settings
from ngpt.sources.base import Source, SourceDataError, Split, hub_check, local_files, split_of
from ngpt.tokenizer import describe_char, first_surrogate

TABLE_EXTS: tuple[str, ...] = (".parquet", ".jsonl", ".json")
T = TypeVar("T")

# A file belongs to a split when its path (relative to the given directory) names one as a whole
# word: wiki.train.raw, validation-00000-of-00001.parquet, test.jsonl — but not "contest.txt".
_SPLIT_WORD = re.compile(r"(?<![a-z])(train|valid|validation|test)(?![a-z])")


class HubOrLocal(Source):
    """A source read from the hub (`data.hub.<name>`) unless `data.sources.<name>` gives a local path.

    A local path holds files ending in `file_exts`; every table among them must have the columns
    `required_columns` (what `check()` verifies)."""

    file_exts: tuple[str, ...] = TABLE_EXTS
    required_columns: tuple[str, ...]

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path: str | None = getattr(settings.data.sources, self.name)
        self.hub: str = getattr(settings.data.hub, self.name)

    @property
    def origin(self) -> str:
        return f"local {self.path}" if self.path is not None else hub_origin(self.hub)

    def _files(self) -> list[Path]:
        return local_files(self.name, self.path, self.file_exts)

    def check(self) -> None:
        if self.path is None:
            self.check_hub()
            return
        self.check_files(self._files())

    def check_hub(self) -> None:
        hub_check(self.name, parse_hub(self.hub)[0])

    def check_files(self, files: list[Path]) -> None:
        """SourceDataError when a local table lacks a required column (text files have no schema)."""
        for f in files:
            if is_table(f):
                check_columns(self.name, f, self.required_columns)

    def carve_tagged(self, items: Iterable[tuple[str, T]]) -> Iterator[tuple[Split, T]]:
        return carve_tagged(items, self.settings.data.val_fraction, self.settings.data.seed)


class SplitFilesOrCarved(HubOrLocal):
    """A hub source with train/val splits whose local copy either names its splits in file names or
    holds one split that is carved into train/val (wikitext, oasst1)."""

    def check_files(self, files: list[Path]) -> None:
        super().check_files(files)
        # Some files named by split beside others named by none is an error: raise it now, not mid-build.
        split_files(self.name, self.path, files)

    def _carved(self, files: list[Path]) -> Iterator[tuple[Split, object]]:
        raise NotImplementedError

    def iter_tagged(self) -> Iterator[tuple[Split, object]]:
        if self.path is not None:
            files = self._files()
            if split_files(self.name, self.path, files) is None:
                yield from self._carved(files)
                return
        yield from super().iter_tagged()  # separate hub splits or split files: nothing is read twice

def parse_hub(spec: str) -> tuple[str, str | None]:
    """'repo' or 'repo:config' → (repo, config or None)."""
    repo, _, config = spec.partition(":")
    return repo, config or None


def hub_origin(spec: str) -> str:
    repo, config = parse_hub(spec)
    return f"hub {repo}" + (f" ({config})" if config else "")


def hub_rows(spec: str, split: str) -> Iterator[dict]:
    """Rows of one hub split, streamed (nothing downloaded up front, nothing materialised)."""
    from datasets import load_dataset  # slow import; only paid when data is actually read

    repo, config = parse_hub(spec)
    yield from load_dataset(repo, config, split=split, streaming=True)


def is_table(path: Path) -> bool:
    return path.name.endswith(TABLE_EXTS)


def _first_line(file: Path) -> str | None:
    """The first non-blank line of a text file (None when there is none)."""
    with open(file, encoding="utf-8-sig", errors="replace") as f:
        return next((line for line in f if line.strip()), None)


def _json_object(line: str | None) -> dict | None:
    """`line` parsed when it is one JSON object (the first line of a JSON Lines file), else None."""
    try:
        row = json.loads(line) if line is not None else None
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def table_columns(name: str, file: Path) -> list[str]:
    """Column names of a parquet file (its schema) or a json/jsonl file (its first row)."""
    if file.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(file).names)
        except Exception as e:  # pyarrow reports a broken footer as several exception types
            raise SourceDataError(f"Source '{name}': {file} is not a readable parquet file ({e}).") from None
    first = _first_line(file)
    if first is None:
        raise SourceDataError(f"Source '{name}': {file} is empty.")
    if (row := _json_object(first)) is not None:
        return list(row)
    # A .json array or a pretty-printed object spans lines: let `datasets` parse it and take row 0.
    row = next(_datasets_rows(name, file), (0, None))[1]
    if not isinstance(row, dict):
        raise SourceDataError(f"Source '{name}': {file} holds no JSON object rows.")
    return list(row)


def check_columns(name: str, file: Path, required: tuple[str, ...]) -> None:
    """SourceDataError naming the file, the expected and the found columns when one is missing."""
    found = table_columns(name, file)
    missing = [c for c in required if c not in found]
    if missing:
        raise SourceDataError(
            f"Source '{name}': {file} is not in the expected schema: missing column(s) {', '.join(missing)}. "
            f"Expected columns: {', '.join(required)}; found: {', '.join(found) or '(none)'}."
        )


def table_rows(name: str, file: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(row index, {column: value} for `columns`) of a local parquet/json/jsonl file, streamed.

    A column a row lacks reads as None (as with `datasets`); blank JSON lines are not rows. Read
    errors name the file and the row (and the line, for JSON Lines)."""
    if file.name.endswith(".parquet"):
        rows = _parquet_rows(name, file, columns)
    elif _json_object(_first_line(file)) is not None:
        rows = _json_lines_rows(name, file, columns)
    else:
        rows = ((i, {c: row.get(c) for c in columns}) for i, row in _datasets_rows(name, file))
    yield from rows


# Rows per parquet record batch: about this many bytes of data, so a batch of whole books stays
# small, a batch of one-line rows does not cost a Python round trip per handful of rows, and the
# first rows reach the tokenizers a few milliseconds after the start.
PARQUET_BATCH_BYTES = 1 << 20


def _parquet_rows(name: str, file: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    i = 0
    try:
        # Pages are read as needed (not a whole row group up front), and arrow's allocator gives
        # freed batches back to the OS: otherwise it kept tens of MB, and peak memory grew with
        # the size of the file (a build's peak: +35 % for 10x the rows; +9 % this way).
        pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=PARQUET_BATCH_BYTES)
        meta = pf.metadata
        data_bytes = sum(meta.row_group(k).total_byte_size for k in range(meta.num_row_groups))
        batch_rows = max(1, min(1 << 16, PARQUET_BATCH_BYTES * meta.num_rows // max(data_bytes, 1)))
        present = [c for c in columns if c in pf.schema_arrow.names]
        batches = pf.iter_batches(batch_size=batch_rows, columns=present)
        while (batch := next(batches, None)) is not None:
            values = {c: batch.column(c).to_pylist() for c in present}
            missing = [None] * batch.num_rows
            cols = [values.get(c, missing) for c in columns]
            del batch
            pa.default_memory_pool().release_unused()
            for row in zip(*cols):
                yield i, dict(zip(columns, row))
                i += 1
    except Exception as e:  # arrow reports a broken file as many types; all mean "this file is broken here"
        raise SourceDataError(f"Source '{name}': cannot read {file} near row {i}: {type(e).__name__}: {e}") from None


def _json_lines_rows(name: str, file: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    i = 0
    line_no = 1  # the line being read
    try:
        with open(file, encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"a JSON {type(row).__name__}, not an object")
                    values = {c: row.get(c) for c in columns}
                    check_text_values(name, f"{file}:{line_no} (row {i})", values)
                    yield i, values
                    i += 1
                line_no += 1
    except SourceDataError:
        raise
    except UnicodeDecodeError:  # surfaces while the reader decodes ahead: find the line itself
        line_no, where = bad_utf8_line(file)
        raise SourceDataError(
            f"Source '{name}': {file}:{line_no} (row {i}) is not valid UTF-8 ({where}); convert the file to UTF-8."
        ) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, a 4300+ digit integer, nesting past ~1000 levels
        why = "arrays/objects nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise SourceDataError(
            f"Source '{name}': cannot read {file} near line {line_no} (row {i}): {why}. "
            "Each line must be one JSON object, in UTF-8."
        ) from None


def check_text_values(name: str, where: str, values: dict) -> None:
    """SourceDataError naming `where` and the column when a string value holds a lone surrogate: a JSON
    "\\ud800" escape without its pair, which no tokenizer can encode (found here, not mid-tokenizing)."""
    for column, value in values.items():
        if isinstance(value, str) and (offset := first_surrogate(value)) is not None:
            raise SourceDataError(
                f"Source '{name}': {where}, column {column!r}, holds {describe_char(value, offset)}; a JSON "
                "\\uD800-\\uDFFF escape must be half of a high-low pair. Fix or drop that line."
            )


def bad_utf8_line(file: Path) -> tuple[int, str]:
    """(line number, "byte N of the line: 0xXX") of the first bytes in `file` that are not UTF-8."""
    with open(file, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return line_no, f"byte {e.start + 1} of the line: 0x{raw[e.start]:02X}"
    return line_no, "a character cut off at the end of the file"


def _datasets_rows(name: str, file: Path) -> Iterator[tuple[int, dict]]:
    """Rows of a .json file holding one array or object, parsed by `datasets`."""
    from datasets import load_dataset  # slow import; only paid for this rare layout

    rows = iter(load_dataset("json", data_files=str(file), split="train", streaming=True))
    i = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # arrow/json errors come as many types; all mean "this file is broken here"
            raise SourceDataError(f"Source '{name}': cannot read {file} near row {i}: {type(e).__name__}: {e}") from None
        yield i, row
        i += 1


def read_text(name: str, file: Path) -> str:
    """A UTF-8 text file with a BOM dropped and CRLF/CR line ends turned into LF."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SourceDataError(
            f"Source '{name}': {file}:{line} is not valid UTF-8 (byte {e.start} of the file: 0x{data[e.start]:02X}); "
            "convert it to UTF-8."
        ) from None
    text = text.removeprefix("\ufeff")
    if "\r" in text:  # a cheap scan first: replace() walks a wide (non-Latin-1) string slowly even when nothing matches
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def text_lines(name: str, file: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (newline kept, CRLF → LF, BOM dropped), streamed."""
    with open(file, encoding="utf-8-sig") as f:  # text mode turns CRLF into LF
        try:
            yield from f
        except UnicodeDecodeError:  # surfaces while the reader decodes ahead: find the line itself
            line_no, where = bad_utf8_line(file)
            raise SourceDataError(
                f"Source '{name}': {file}:{line_no} is not valid UTF-8 ({where}); convert it to UTF-8."
            ) from None


def split_files(name: str, root: str | Path, files: list[Path]) -> dict[Split, list[Path]] | None:
    """Files per split when the names say so (train + validation, or test when there is no
    validation); None when they do not (one split only, or unnamed files): then carve val."""
    root = Path(root)
    named: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for f in files:
        rel = f.relative_to(root).as_posix() if f != root else f.name
        words = set(_SPLIT_WORD.findall(rel.lower()))
        if "train" in words:
            named["train"].append(f)
        elif words & {"valid", "validation"}:
            named["val"].append(f)
        elif "test" in words:
            named["test"].append(f)
    val = named["val"] or named["test"]
    if not (named["train"] and val):
        return None
    unnamed = [f for f in files if f not in named["train"] + named["val"] + named["test"]]
    if unnamed:
        raise SourceDataError(
            f"Source '{name}': {root} holds train/validation files and also {', '.join(map(str, unnamed))}, whose name says no "
            "split. Rename it (train / validation / test) or move it out, so no data is silently left out."
        )
    return {"train": named["train"], "val": val}


def carve_tagged(items: Iterable[tuple[str, T]], val_fraction: float, seed: int) -> Iterator[tuple[Split, T]]:
    """(split, item) for every item, assigned by `split_of(key)`, in one streaming pass.

    With two or more items both splits are non-empty: when every item hashes to the same side, the
    last item goes to the other side (one item of look-ahead: only at the end is it known to be last).
    """
    sides_seen: set[str] = set()
    held: tuple[Split, T] | None = None
    for key, item in items:
        if held is not None:
            sides_seen.add(held[0])
            yield held
        held = (split_of(key, val_fraction, seed), item)
    if held is not None:
        side, item = held
        if sides_seen == {side}:
            side = "val" if side == "train" else "train"
        yield side, item
