"""Primer (SFT): ngpt's own small chat jsonl (`data/primer.jsonl`, made by `ngpt primer generate`).

Local only: `data.sources.primer` (`--source primer=PATH`, a file or a directory of .jsonl). Each
line is {"messages": [{"role": ..., "content": ...}, ...]}, checked by
`chat_format.read_chat_jsonl`. `check()` validates every line (the file is small), so a bad line
fails the command before anything is written. Val is carved by `split_of("<file name>:<line>")`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ngpt.chat_format import ChatFormatError, read_chat_jsonl
from ngpt.settings import Settings
from ngpt.sources.base import Conversation, Source, SourceDataError, Split, local_files, only
from ngpt.sources.tables import carve_tagged


class Primer(Source):
    name = "primer"
    kind = "sft"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = settings.data.sources.primer

    @property
    def origin(self) -> str:
        return f"local {self.path}"

    def _conversations(self) -> Iterator[tuple[str, Conversation]]:
        if self.path is None:
            raise SourceDataError(
                "Source 'primer' has no hub dataset: give its jsonl with --source primer=PATH "
                "(data.sources.primer), e.g. data/primer.jsonl from `ngpt primer generate`."
            )
        if not Path(self.path).exists():
            raise SourceDataError(
                f"Source 'primer': {self.path} does not exist. Create it with `ngpt primer generate`, "
                "or point --source primer=PATH (data.sources.primer) at a chat jsonl file."
            )
        for f in local_files(self.name, self.path, (".jsonl",)):
            try:
                for lineno, messages in read_chat_jsonl(f):
                    yield f"{f.name}:{lineno}", Conversation(f"{f}:{lineno}", messages)
            except ChatFormatError as e:
                raise SourceDataError(f"Source 'primer': {e}") from None

    def check(self) -> None:
        if sum(1 for _ in self._conversations()) == 0:  # reads every line: a bad one fails here
            raise SourceDataError(f"Source 'primer': {self.path} holds no conversations; run `ngpt primer generate`.")

    def iter_tagged(self) -> Iterator[tuple[Split, Conversation]]:
        return carve_tagged(self._conversations(), self.settings.data.val_fraction, self.settings.data.seed)

    def iter_split(self, split: Split) -> Iterator[Conversation]:
        return only(self.iter_tagged(), split)
