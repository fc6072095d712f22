"""`ngpt cache build / build-all / validate` end to end on tiny hub-schema fixtures (no network).

    pytest tests/test_cache_cli.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fixtures import write_all_sources
from ngpt.cli.main import main
from ngpt.tokcache import PretrainReader, SFTReader

EXPECTED = [("pretrain", "wikitext"), ("pretrain", "fineweb_edu"), ("pretrain", "roam"),
            ("sft", "dolly15k"), ("sft", "oasst1"), ("sft", "primer")]


def ngpt(*args: str) -> int:
    """Exit code of `ngpt ARGS` (click exits 0 via SystemExit on success; main exits 1 on user errors)."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def flat(text: str) -> str:
    """Rich output without whitespace and box lines, so wrapped table cells and panels still match."""
    return "".join(text.replace("│", " ").replace("┃", " ").split())


def write_config(tmp_path: Path, tok_path: Path, **data) -> Path:
    cfg = {"data": {"cache_dir": str(tmp_path / "cache"), "shard_bytes": 1024, "workers": 1, **data},
           "tokenizer": {"model_path": str(tok_path)}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_build_all_builds_and_validates_every_needed_cache(tmp_path, tiny_tokenizer, tiny_tokenizer_path, capsys):
    sources = {name: str(path) for name, path in write_all_sources(tmp_path / "src").items()}
    config = write_config(tmp_path, tiny_tokenizer_path, sources=sources)
    # The fixture stream is tiny: a small val budget leaves the rest of it for train.
    assert ngpt("cache", "build-all", "--config", config, "--fineweb-val-tokens", "100") == 0
    out = flat(capsys.readouterr().out)
    assert "Cachebuildplan" in out and "val100" in out and "thentrain" in out
    cache = tmp_path / "cache"
    for phase, name in EXPECTED:  # the default mixes + roam (its notes dir exists)
        assert (cache / phase / name / "meta.json").is_file(), (phase, name)
        for split in ("train", "val"):
            assert (cache / phase / name / split / "shard_00000.bin").is_file()
    assert sorted(p.name for p in cache.rglob("*") if p.name.startswith(".")) == []  # no temp dirs left
    assert not (cache / "pretrain" / "gutenberg").exists()  # not in any mix
    meta = json.loads((cache / "pretrain" / "fineweb_edu" / "meta.json").read_text())
    assert meta["splits"]["val"]["num_tokens"] == 100 and meta["build"]["origin"] == f"local {sources['fineweb_edu']}"

    xy = PretrainReader.open(cache, "wikitext", "train", tiny_tokenizer).sample(np.random.default_rng(0), 2, 16)
    assert xy.shape == (2, 17)
    ids, labels = SFTReader.open(cache, "oasst1", "train", tiny_tokenizer).example(0)
    assert ids.shape == labels.shape and (labels != -100).any()

    assert ngpt("cache", "validate", "--config", config, "--deep") == 0
    assert capsys.readouterr().out.count(" ok ") == 10  # 5 caches the mixes need × 2 splits


def test_build_all_offline_with_default_mix_fails_before_writing(tmp_path, tiny_tokenizer_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/primer.jsonl here either
    config = write_config(tmp_path, tiny_tokenizer_path)
    assert ngpt("cache", "build-all", "--config", config) == 1
    err = flat(capsys.readouterr().err)
    for name in ("wikitext", "fineweb_edu", "dolly15k", "oasst1", "primer"):
        assert f"-{name}:" in err
    assert "--sourcefineweb_edu=PATH" in err and "nothingwaswritten" in err
    assert not (tmp_path / "cache").exists()


def test_build_one_source_then_validate_catches_a_truncated_shard(tmp_path, tiny_tokenizer_path, capsys):
    src = write_all_sources(tmp_path / "src")
    config = write_config(tmp_path, tiny_tokenizer_path, mix_pretrain={"gutenberg": 1.0}, val_pretrain_source="gutenberg")
    assert ngpt("cache", "build", "gutenberg", "--config", config, "--source", f"gutenberg={src['gutenberg']}",
                "--shard-bytes", "2048", "--workers", "2") == 0
    meta = json.loads((tmp_path / "cache" / "pretrain" / "gutenberg" / "meta.json").read_text())
    assert meta["build"]["shard_bytes"] == 2048 and len(meta["splits"]["train"]["shards"]) > 1
    capsys.readouterr()
    assert ngpt("cache", "validate", "--config", config, "--phase", "pretrain") == 0
    out = capsys.readouterr().out
    assert "ok" in out and "failed validation" not in out

    shard = tmp_path / "cache" / "pretrain" / "gutenberg" / "train" / "shard_00001.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    assert ngpt("cache", "validate", "--config", config, "--phase", "pretrain") == 1
    out = flat(capsys.readouterr().out)
    assert "shard_00001.bin:expected2,048bytes,found100bytes" in out and "failedvalidation" in out


def test_validate_without_caches_lists_missing_paths(tmp_path, tiny_tokenizer_path, capsys):
    config = write_config(tmp_path, tiny_tokenizer_path, mix_sft={"primer": 1.0})
    assert ngpt("cache", "validate", "--config", config, "--phase", "sft") == 1
    err = flat(capsys.readouterr().err)
    assert "FileNotFoundError" in err and "sft/primer/meta.json" in err and "ngptcachebuild-all" in err


def test_flags_reach_the_settings(tmp_path, tiny_tokenizer_path, capsys):
    config = write_config(tmp_path, tiny_tokenizer_path)
    args = ("--shard-bytes", "4096", "--workers", "3", "--seed", "7", "--fineweb-train-tokens", "5000", "--roam-dir", "notes")
    assert ngpt("cache", "build", "wikitext", "--config", config, *args, "--print-config") == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert (data["shard_bytes"], data["workers"], data["seed"], data["fineweb_train_tokens"], data["roam_dir"]) == (
        4096, 3, 7, 5000, "notes")
    assert ngpt("cache", "build", "wiki", "--config", config) == 1
    assert "Unknownsource'wiki'" in flat(capsys.readouterr().err)
