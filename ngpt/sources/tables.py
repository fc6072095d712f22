"""Reading helpers the sources share: hub ids, local tables, schema checks, split carving.

Hub datasets and local parquet / jsonl / json files both go through `datasets.load_dataset(...,
streaming=True)`, so a local copy in the hub's schema takes the same code path as the hub, nothing
is materialised in memory and no arrow cache is written. Schema checks read only a parquet footer
or the first JSON row, so `Source.check()` stays fast.

    files = local_files("dolly15k", path, TABLE_EXTS)
    for f in files: check_columns("dolly15k", f, ("instruction", "context", "response"))
    for i, row in table_rows("dolly15k", files[0]): ...
    train_docs = carve(((key, doc) for key, doc in keyed_docs), "train", 0.05, seed=1337)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from ngpt.settings import Settings
from ngpt.sources.base import Source, SourceDataError, Split, hub_check, split_of

TABLE_EXTS: tuple[str, ...] = (".parquet", ".jsonl", ".json")
T = TypeVar("T")

# A file belongs to a split when its path (relative to the given directory) names one as a whole
# word: wiki.train.raw, validation-00000-of-00001.parquet, test.jsonl — but not "contest.txt".
_SPLIT_WORD = re.compile(r"(?<![a-z])(train|valid|validation|test)(?![a-z])")


class HubOrLocal(Source):
    """A source read from the hub (`data.hub.<name>`) unless `data.sources.<name>` gives a local path."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path: str | None = getattr(settings.data.sources, self.name)
        self.hub: str = getattr(settings.data.hub, self.name)

    @property
    def origin(self) -> str:
        return f"local {self.path}" if self.path is not None else hub_origin(self.hub)

    def check_hub(self) -> None:
        hub_check(self.name, parse_hub(self.hub)[0])

    def carve(self, items: Iterable[tuple[str, T]], split: Split) -> Iterator[T]:
        return carve(items, split, self.settings.data.val_fraction, self.settings.data.seed)


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


def table_columns(name: str, file: Path) -> list[str]:
    """Column names of a parquet file (its schema) or a json/jsonl file (its first row)."""
    if file.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(file).names)
        except Exception as e:  # pyarrow reports a broken footer as several exception types
            raise SourceDataError(f"Source '{name}': {file} is not a readable parquet file ({e}).") from None
    with open(file, "rb") as f:
        first = next((line for line in f if line.strip()), None)
    if first is None:
        raise SourceDataError(f"Source '{name}': {file} is empty.")
    try:
        row = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        row = None
    if isinstance(row, dict):
        return list(row)
    # A .json array or a pretty-printed object spans lines: let `datasets` parse it and take row 0.
    row = next(table_rows(name, file), (0, None))[1]
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


def table_rows(name: str, file: Path) -> Iterator[tuple[int, dict]]:
    """(row index, row) of a local parquet/json/jsonl file, streamed; read errors name the file and row."""
    from datasets import load_dataset

    builder = "parquet" if file.name.endswith(".parquet") else "json"
    rows = iter(load_dataset(builder, data_files=str(file), split="train", streaming=True))
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
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceDataError(
            f"Source '{name}': {file} is not valid UTF-8 (byte {e.start}); convert it to UTF-8."
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def text_lines(name: str, file: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (newline kept, CRLF → LF, BOM dropped), streamed."""
    with open(file, encoding="utf-8-sig") as f:  # text mode turns CRLF into LF
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):
                yield line
        except UnicodeDecodeError as e:
            raise SourceDataError(
                f"Source '{name}': {file} is not valid UTF-8 (near line {lineno + 1}, {e.reason}); convert it to UTF-8."
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


def carve(items: Iterable[tuple[str, T]], split: Split, val_fraction: float, seed: int) -> Iterator[T]:
    """The items of `split`, assigned by `split_of(key)`, in one streaming pass.

    With two or more items both splits are non-empty: when every item hashes to the same side, the
    last item goes to the other side. Each pass sees every key, so train and val passes agree.
    """
    sides_seen: set[str] = set()
    held: tuple[str, T] | None = None  # one item of look-ahead: we only know the last item at the end
    for key, item in items:
        if held is not None:
            sides_seen.add(held[0])
            if held[0] == split:
                yield held[1]
        held = (split_of(key, val_fraction, seed), item)
    if held is not None:
        side, item = held
        if sides_seen == {side}:
            side = "val" if side == "train" else "train"
        if side == split:
            yield item
