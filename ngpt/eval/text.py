"""The token stream `ngpt eval bpb` scores: text files and folders, or a split of a pretrain cache.

    ids, docs = text_stream(tok, ["notes.txt", "../shared/data/gutenberg"])   # each file one document
    ids = cache_stream(tok, "data/cache", "wikitext", "val")                   # as training reads it

Documents are joined as the caches join them: encode(text) + <|eot|>, one after the other, so bits
per byte on a cache split and on the same text given as files agree. A folder is every file under
it (sorted, hidden ones skipped); each file must be UTF-8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ngpt.tokenizer import Tokenizer


class TextError(ValueError):
    """A text to score is missing or is not UTF-8 text; the message names the file and line."""


def text_files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise TextError(f"--text {p} is a folder with no files in it")
            files += found
        else:
            raise TextError(f"--text {p} does not exist; pass text files or folders of them")
    if not files:
        raise TextError("no text to score: pass --text FILE|DIR (repeatable), --cache SOURCE, or set eval.text")
    return files


def read_document(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TextError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02X} at offset {e.start}); "
                        "convert it to UTF-8, or leave it out of --text") from None
    return text


def text_stream(tok: Tokenizer, paths: list[str | Path]) -> tuple[torch.Tensor, int]:
    """(ids of every file as a document + <|eot|>, number of documents)."""
    ids: list[int] = []
    files = text_files(paths)
    for f in files:
        ids += tok.encode(read_document(f)) + [tok.eot_id]
    return torch.tensor(ids, dtype=torch.long), len(files)


def cache_stream(tok: Tokenizer, cache_dir: str | Path, source: str, split: str) -> tuple[torch.Tensor, int]:
    """(every token of a pretrain cache split, in order, number of documents); the cache must use `tok`."""
    from ngpt.tokcache.reader import PretrainReader

    try:
        reader = PretrainReader.open(cache_dir, source, split, tok)
    except ValueError as e:
        if "tokenizer" in str(e):
            raise TextError(f"the checkpoint's tokenizer ({tok.sha256[:16]}) is not the one the {source} cache was built "
                            f"with: {e}. Score text with --text, or rebuild the cache with the checkpoint's tokenizer") from None
        raise
    ids = np.concatenate([np.asarray(t, dtype=np.int64) for t in reader.tokens])
    return torch.from_numpy(ids), reader.num_documents
