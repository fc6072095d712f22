"""Roam (pretrain): your own markdown notes, one document per `.md` file.

Local only: `data.sources.roam` when set (`--source roam=PATH`), else `data.roam_dir`
(`--roam-dir`, default `data/.roam-data/`), searched recursively. Val is carved by
`split_of(<path relative to the notes dir>)`, so a note keeps its side when others are added.

    src = make_source("roam", load_settings(overrides={"data": {"roam_dir": "~/notes"}}))
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ngpt.settings import Settings
from ngpt.sources.base import Document, Source, SourceDataError, Split, local_files, only
from ngpt.sources.tables import carve_tagged, read_text


class Roam(Source):
    name = "roam"
    kind = "pretrain"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = Path(settings.data.sources.roam or settings.data.roam_dir).expanduser()

    @property
    def origin(self) -> str:
        return f"local {self.path}"

    def _files(self) -> list[Path]:
        if not self.path.exists():
            raise SourceDataError(
                f"Source 'roam': notes directory {self.path} does not exist. Point it at a folder of .md notes "
                "with --roam-dir PATH (data.roam_dir) or --source roam=PATH (data.sources.roam)."
            )
        return local_files(self.name, self.path, (".md",))

    def check(self) -> None:
        self._files()

    def iter_tagged(self) -> Iterator[tuple[Split, Document]]:
        def keyed() -> Iterator[tuple[str, Document]]:
            for f in self._files():
                rel = f.name if f == self.path else f.relative_to(self.path).as_posix()
                text = read_text(self.name, f)
                if text.strip():
                    yield rel, Document(str(f), text)

        return carve_tagged(keyed(), self.settings.data.val_fraction, self.settings.data.seed)

    def iter_split(self, split: Split) -> Iterator[Document]:
        return only(self.iter_tagged(), split)
