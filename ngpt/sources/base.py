"""What every data source is: a named generator of documents (pretrain) or conversations (SFT).

A source reads either the Hugging Face hub (what a user with a network gets by default) or a local
file/directory in the hub's own schema (air-gapped machines and tests; same code path after
loading). `check()` is cheap and runs before anything is written, so a missing path or an
unreachable hub fails the command up front with a message that says how to fix it.

Splits are "train" and "val". A source with one split of its own carves val deterministically
(`split_of`: a hash of a stable key, so the same document always lands on the same side).
`iter_tagged()` gives both splits in one read, each item tagged with its split (what the cache
builder uses: a source that carves val reads and prepares its data once, not once per split);
`iter_split(split)` gives the same items of one split, in the same order.
A *streamed* source (fineweb-edu) has one endless stream instead: the cache builder takes its
val budget of tokens from the start of the stream, then its train budget from what follows.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

SPLITS: tuple[str, ...] = ("train", "val")
Split = Literal["train", "val"]
T = TypeVar("T")


@dataclass(frozen=True)
class Document:
    """Plain text for pretraining; `ref` says where it came from (for error messages)."""

    ref: str
    text: str


@dataclass(frozen=True)
class Conversation:
    """Messages [{"role": system|user|assistant, "content": str}, ...] for SFT."""

    ref: str
    messages: list[dict] = field(hash=False)


class SourceUnavailable(RuntimeError):
    """The hub could not be reached for a source that has no local path."""


class SourceDataError(ValueError):
    """A local path is missing, empty, or not in the hub's schema (names the file and the fix)."""


class Source(ABC):
    name: str
    kind: Literal["pretrain", "sft"]
    streamed: bool = False

    @property
    @abstractmethod
    def origin(self) -> str:
        """Where the data comes from, for plan tables: 'hub <id>' or 'local <path>'."""

    @abstractmethod
    def check(self) -> None:
        """Fail fast (SourceUnavailable / SourceDataError) if the data cannot be read."""

    def iter_split(self, split: Split) -> Iterator[Document | Conversation]:
        """Documents or conversations of one split, in a deterministic order."""
        raise NotImplementedError(f"source {self.name} is streamed; use iter_stream()")

    def iter_tagged(self) -> Iterator[tuple[Split, Document | Conversation]]:
        """(split, item) for the items of both splits; filtered by split, the same items in the same
        order as iter_split. This default reads train, then val; sources that carve val override it
        to read their data once."""
        for split in SPLITS:
            yield from ((split, item) for item in self.iter_split(split))

    def iter_stream(self) -> Iterator[Document]:
        """Streamed sources only: one deterministic stream; the builder cuts val then train from it."""
        raise NotImplementedError(f"source {self.name} is not streamed; use iter_split()")

    def token_budgets(self) -> dict[str, int | None]:
        """Tokens to take per split (None = everything)."""
        return {s: None for s in SPLITS}


def only(tagged: Iterable[tuple[Split, T]], split: Split) -> Iterator[T]:
    """The items of one split from (split, item) pairs."""
    return (item for side, item in tagged if side == split)


def split_of(key: str, val_fraction: float, seed: int = 0) -> Split:
    """Deterministic train/val assignment of one item by the hash of a stable key."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def offline_hint(name: str) -> str:
    return (
        f"Give a local copy in the hub's schema instead: `--source {name}=PATH`, or "
        f'"data": {{"sources": {{"{name}": "PATH"}}}} in a --config file, or NGPT_DATA__SOURCES__{name.upper()}=PATH.'
    )


def hub_check(name: str, repo_id: str, timeout: float = 10.0) -> None:
    """Raise SourceUnavailable quickly when the hub dataset `repo_id` cannot be reached."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    if offline:
        raise SourceUnavailable(
            f"Source '{name}' needs the Hugging Face hub dataset {repo_id}, but {', '.join(offline)} is set. "
            + offline_hint(name)
        )
    try:
        from huggingface_hub import HfApi

        HfApi(endpoint=endpoint).dataset_info(repo_id, timeout=timeout)
    except Exception as e:  # network errors come as many types (DNS, TLS, HTTP); all mean "not reachable"
        raise SourceUnavailable(
            f"Source '{name}' could not reach the Hugging Face hub dataset {repo_id} at {endpoint} "
            f"({type(e).__name__}: {str(e)[:200]}). " + offline_hint(name)
        ) from None


def local_files(name: str, path: str | Path, exts: tuple[str, ...]) -> list[Path]:
    """The data files at `path` (a file, or a directory searched recursively), sorted; errors name the path."""
    p = Path(path)
    if not p.exists():
        raise SourceDataError(
            f"Source '{name}': local path {p} does not exist. Fix the path given by --source {name}=PATH "
            f"or data.sources.{name} (expected a file or directory of {', '.join(exts)})."
        )
    if p.is_file():
        files = [p]
    else:
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(exts) and not f.name.startswith("."))
    if not files:
        raise SourceDataError(f"Source '{name}': no {', '.join(exts)} files under {p}.")
    return files
