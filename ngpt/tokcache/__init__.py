"""Token caches: sharded uint16/uint32 id files with meta.json, built atomically, read with memmap.

    ngpt cache build-all             # every cache the configured mixes need, then validate
    ngpt cache validate --deep       # sizes, tokenizer, ids < vocab, SFT offsets/masks, every token

Modules: layout (paths, meta.json), writer (shards), encode_pool (parallel tokenizing), build (one
source, atomically), plan (preflight + plan table), reader (memmap readers), validate (checks).
"""

from ngpt.tokcache.build import build_source
from ngpt.tokcache.layout import FORMAT_VERSION, dtype_for_vocab, needed_caches, read_meta, source_dir
from ngpt.tokcache.plan import PreflightError, build_caches, caches_to_build, preflight
from ngpt.tokcache.reader import PretrainReader, SFTReader
from ngpt.tokcache.validate import CacheRow, validate
from ngpt.tokcache.writer import SplitWriter

__all__ = [
    "FORMAT_VERSION",
    "CacheRow",
    "PreflightError",
    "PretrainReader",
    "SFTReader",
    "SplitWriter",
    "build_caches",
    "caches_to_build",
    "build_source",
    "dtype_for_vocab",
    "needed_caches",
    "preflight",
    "read_meta",
    "source_dir",
    "validate",
]
