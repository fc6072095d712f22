"""FineWeb-Edu (pretrain): educational web pages, read as one stream.

Hub: `HuggingFaceFW/fineweb-edu`, config `sample-10BT` (about 10B tokens), always streamed, so
nothing is downloaded up front. The dataset has one split; the cache builder takes
`data.fineweb_val_tokens` tokens for val from the start of the stream, then
`data.fineweb_train_tokens` for train from what follows (see `token_budgets`).

Local copies (`--source fineweb_edu=PATH`): parquet / jsonl / json files with at least a `text`
column (the hub's columns are text, id, dump, url, file_path, language, language_score,
token_count, score, int_score), read in sorted file order.

    src = make_source("fineweb_edu", settings); next(src.iter_stream()).ref   # the row's id
"""

from __future__ import annotations

from collections.abc import Iterator

from ngpt.sources.base import Document
from ngpt.sources.tables import HubOrLocal, hub_rows, table_rows


class FinewebEdu(HubOrLocal):
    name = "fineweb_edu"
    kind = "pretrain"
    streamed = True
    required_columns = ("text",)

    def token_budgets(self) -> dict[str, int | None]:
        return {"val": self.settings.data.fineweb_val_tokens, "train": self.settings.data.fineweb_train_tokens}

    def iter_stream(self) -> Iterator[Document]:
        if self.path is None:
            rows = ((f"{self.hub} row {i}", row) for i, row in enumerate(hub_rows(self.hub, "train")))
        else:
            rows = ((f"{f} row {i}", row) for f in self._files() for i, row in table_rows(self.name, f, ("text", "id")))
        for where, row in rows:
            if row["text"]:
                yield Document(str(row.get("id") or where), row["text"])
