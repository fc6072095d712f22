"""OpenAssistant oasst1 (SFT): one conversation per message tree, along its best-ranked path.

oasst1 stores messages, not conversations: each row has a `parent_id`, and a prompt usually has
several alternative assistant replies that volunteers ranked (`rank` 0 = best). We rebuild each
tree from the parent links and take ONE thread per tree: from the root prompt, at each step the
reply with the lowest rank (unranked replies after ranked ones, ties broken by message_id). Taking
one thread, not every root-to-leaf path, keeps a popular prompt from being repeated many times
over, and the best-ranked replies are the answers humans preferred. Messages in another language
than `data.oasst_lang` ("*" = all) and deleted messages are dropped together with everything
below them. Roles map prompter → user and assistant → assistant; a thread strictly alternates,
starts with the user, and ends on an assistant turn (a trailing prompt is dropped; a tree with no
reply is skipped).

Hub: `OpenAssistant/oasst1`, splits train / validation. Local (`--source oasst1=PATH`): the
message rows (jsonl / json / parquet, the hub's columns); files named train / validation give the
splits, otherwise val is carved by `split_of(message_tree_id)`. This source holds the message
rows of a split in memory (trees need them all); oasst1 is small (~85k messages).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from ngpt.sources.base import Conversation, Split, only
from ngpt.sources.tables import SplitFilesOrCarved, hub_rows, split_files, table_rows

COLUMNS = ("message_id", "parent_id", "text", "role", "lang", "deleted", "rank", "message_tree_id")
HUB_SPLITS = {"train": "train", "val": "validation"}
ROLES = {"prompter": "user", "assistant": "assistant"}
NEXT_ROLE = {"prompter": "assistant", "assistant": "prompter"}


def _rank_key(msg: dict) -> tuple:
    return (msg["rank"] is None, msg["rank"] or 0, msg["message_id"])


def best_thread(root: dict, children: dict[str, list[dict]]) -> list[dict] | None:
    """Messages of the best-ranked path from `root`, or None when it has no assistant turn."""
    path: list[dict] = []
    node: dict | None = root if root["role"] == "prompter" else None
    while node is not None:
        path.append(node)
        replies = [c for c in children.get(node["message_id"], ()) if c["role"] == NEXT_ROLE[node["role"]]]
        node = min(replies, key=_rank_key, default=None)
    if path and path[-1]["role"] == "prompter":
        path.pop()
    if not path:
        return None
    return [{"role": ROLES[m["role"]], "content": m["text"]} for m in path]


def threads(rows: Iterable[dict], lang: str) -> Iterator[tuple[str, list[dict]]]:
    """(message_tree_id, messages) per tree with an answered prompt, roots in the order they appear."""
    roots: list[dict] = []
    children: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["deleted"] or (lang != "*" and row["lang"] != lang):
            continue  # its subtree is never reached from a root, so it goes too
        msg = {c: row[c] for c in ("message_id", "parent_id", "text", "role", "rank", "message_tree_id")}
        if msg["parent_id"] is None:
            roots.append(msg)
        else:
            children[msg["parent_id"]].append(msg)
    for root in roots:
        if (messages := best_thread(root, children)) is not None:
            yield root["message_tree_id"], messages


class Oasst1(SplitFilesOrCarved):
    name = "oasst1"
    kind = "sft"
    required_columns = COLUMNS

    def _conversations(self, rows: Iterable[dict], where: str) -> Iterator[tuple[str, Conversation]]:
        for tree_id, messages in threads(rows, self.settings.data.oasst_lang):
            yield tree_id, Conversation(f"{where} tree {tree_id}", messages)

    def iter_split(self, split: Split) -> Iterator[Conversation]:
        if self.path is None:
            rows = hub_rows(self.hub, HUB_SPLITS[split])
            yield from (conv for _, conv in self._conversations(rows, f"{self.hub} {HUB_SPLITS[split]}"))
            return
        files = self._files()
        by_split = split_files(self.name, self.path, files)
        if by_split is not None:
            rows = (row for f in by_split[split] for _, row in table_rows(self.name, f, COLUMNS))
            yield from (conv for _, conv in self._conversations(rows, self.path))
            return
        yield from only(self._carved(files), split)

    def _carved(self, files: list[Path]) -> Iterator[tuple[Split, Conversation]]:
        """The message trees in all `files`, carved into train/val by message_tree_id."""
        rows = (row for f in files for _, row in table_rows(self.name, f, COLUMNS))
        return self.carve_tagged(self._conversations(rows, self.path))
