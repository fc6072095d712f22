"""databricks-dolly-15k (SFT): human-written instruction / answer pairs.

Hub: `databricks/databricks-dolly-15k` (one split, `train`). Local (`--source dolly15k=PATH`):
jsonl / json / parquet rows with `instruction`, `context`, `response`; `category` is optional
(the first GitHub release has none). Each row becomes one exchange:

    user:      instruction, plus "\\n\\n" + context when the context is not empty
    assistant: response

Rows with an empty instruction or response teach nothing and are skipped. Val is carved by row
index (`split_of(str(i))`, counted across files in sorted order), so the hub file and a local copy
of it split alike.
"""

from __future__ import annotations

from collections.abc import Iterator

from ngpt.sources.base import Conversation, Split, only
from ngpt.sources.tables import HubOrLocal, hub_rows, table_rows

COLUMNS = ("instruction", "context", "response")


def to_messages(row: dict) -> list[dict] | None:
    instruction, context, response = ((row.get(c) or "").strip() for c in COLUMNS)
    if not instruction or not response:
        return None
    user = f"{instruction}\n\n{context}" if context else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": response}]


class Dolly15k(HubOrLocal):
    name = "dolly15k"
    kind = "sft"
    required_columns = COLUMNS

    def _rows(self) -> Iterator[tuple[str, dict]]:
        if self.path is None:
            yield from ((f"{self.hub} row {i}", row) for i, row in enumerate(hub_rows(self.hub, "train")))
        else:
            yield from ((f"{f} row {i}", row) for f in self._files() for i, row in table_rows(self.name, f, COLUMNS + ("category",)))

    def iter_tagged(self) -> Iterator[tuple[Split, Conversation]]:
        def keyed() -> Iterator[tuple[str, Conversation]]:
            for n, (where, row) in enumerate(self._rows()):
                messages = to_messages(row)
                if messages is not None:
                    yield str(n), Conversation(where + (f" ({row['category']})" if row.get("category") else ""), messages)

        return self.carve_tagged(keyed())

    def iter_split(self, split: Split) -> Iterator[Conversation]:
        return only(self.iter_tagged(), split)
