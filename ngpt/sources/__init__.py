"""The data sources by name, and their text for tokenizer training.

Pretrain sources (Documents): wikitext, fineweb_edu (streamed), gutenberg, roam.
SFT sources (Conversations): dolly15k, oasst1, primer. See each module's docstring for its hub id,
local schema and how val is carved; base.py for the Source API.

    from ngpt.sources import make_source, iter_texts
    src = make_source("wikitext", settings); src.check()
    for ref, text in iter_texts(src): ...
"""

from __future__ import annotations

from collections.abc import Iterator

from ngpt.settings import ALL_SOURCES, Settings
from ngpt.sources.base import Conversation, Source, Split
from ngpt.sources.dolly15k import Dolly15k
from ngpt.sources.fineweb_edu import FinewebEdu
from ngpt.sources.gutenberg import Gutenberg
from ngpt.sources.oasst1 import Oasst1
from ngpt.sources.primer import Primer
from ngpt.sources.roam import Roam
from ngpt.sources.wikitext import WikiText

SOURCES: dict[str, type[Source]] = {
    cls.name: cls for cls in (WikiText, FinewebEdu, Gutenberg, Roam, Dolly15k, Oasst1, Primer)
}
assert tuple(SOURCES) == ALL_SOURCES, "the registry must list exactly settings.ALL_SOURCES"


def make_source(name: str, settings: Settings) -> Source:
    """The source called `name`, reading from the paths/hub ids in `settings`."""
    if name not in SOURCES:
        raise ValueError(f"Unknown source '{name}'. Valid sources: {', '.join(SOURCES)}")
    return SOURCES[name](settings)


def iter_texts(source: Source, split: Split = "train") -> Iterator[tuple[str, str]]:
    """(ref, text) per item, for tokenizer training: documents as they are (a streamed source gives
    its one stream), conversations as their message contents joined by newlines."""
    items = source.iter_stream() if source.streamed else source.iter_split(split)
    for item in items:
        if isinstance(item, Conversation):
            yield item.ref, "\n".join(m["content"] for m in item.messages)
        else:
            yield item.ref, item.text
