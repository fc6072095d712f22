"""Settings: defaults, merge order, mix rules, unknown keys, env vars, --print-config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ngpt.settings import SettingsError, deep_merge, load_settings, parse_source_flags


def write(tmp_path, obj, name="c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def test_defaults_match_the_issue():
    s = load_settings(environ={})
    assert s.data.mix_pretrain == {"fineweb_edu": 0.9, "wikitext": 0.1}
    assert s.data.mix_sft == {"primer": 0.10, "oasst1": 0.70, "dolly15k": 0.20}
    assert s.data.val_sft_source == "sft"
    assert (s.model.vocab_size, s.model.seq_len, s.model.n_embd, s.model.n_layer, s.model.n_head) == (16384, 512, 384, 8, 6)
    assert s.tokenizer.vocab_size == 16384


def test_config_file_deep_merges_but_mixes_replace(tmp_path):
    cfg = write(tmp_path, {"data": {"mix_pretrain": {"wikitext": 0.5, "gutenberg": 0.5}, "seed": 7}, "model": {"n_layer": 2}})
    s = load_settings(cfg, environ={})
    assert s.data.mix_pretrain == {"wikitext": 0.5, "gutenberg": 0.5}  # replaced, not merged with fineweb_edu
    assert s.data.seed == 7 and s.data.cache_dir == "data/cache"  # sibling keys keep their defaults
    assert s.model.n_layer == 2 and s.model.n_embd == 384


def test_layers_order_file_env_flags(tmp_path):
    cfg = write(tmp_path, {"data": {"seed": 1, "cache_dir": "from_file", "mix_sft": {"primer": 1.0}}})
    env = {"NGPT_DATA__SEED": "2", "NGPT_DATA__MIX_SFT": '{"oasst1": 1.0}'}
    s = load_settings(cfg, overrides={"data": {"seed": 3}}, environ=env)
    assert s.data.seed == 3  # flags > env > file
    assert s.data.cache_dir == "from_file"
    assert s.data.mix_sft == {"oasst1": 1.0}  # env replaced the file's mix whole


def test_unknown_keys_are_named_with_valid_ones(tmp_path):
    cfg = write(tmp_path, {"data": {"mix_pretrian": {}}, "modle": {}})
    with pytest.raises(SettingsError) as e:
        load_settings(cfg, environ={})
    msg = str(e.value)
    assert str(cfg) in msg
    assert "'data.mix_pretrian'" in msg and "did you mean 'data.mix_pretrain'" in msg
    assert "'modle'" in msg and "valid keys: model, data" in msg


def test_unknown_env_key_is_an_error():
    with pytest.raises(SettingsError, match="data.colour"):
        load_settings(environ={"NGPT_DATA__COLOUR": "red"})


@pytest.mark.parametrize("key", ["mix_pretrain", "mix_sft"])
def test_wiki_is_not_an_alias(tmp_path, key):
    cfg = write(tmp_path, {"data": {key: {"wiki": 1.0}}})
    with pytest.raises(ValueError, match=r"unknown source 'wiki'.*no aliases"):
        load_settings(cfg, environ={})


def test_sft_source_in_pretrain_mix_is_rejected():
    with pytest.raises(SettingsError, match="Valid sources: wikitext, fineweb_edu, gutenberg, roam"):
        load_settings(overrides={"data": {"mix_pretrain": {"dolly15k": 1.0}}}, environ={})


@pytest.mark.parametrize(
    "mix, fragment",
    [
        ({"wikitext": 0.5, "gutenberg": 0.4}, "sum to 0.9"),
        ({"wikitext": 1.2, "gutenberg": -0.2}, "positive"),
        ({"wikitext": 0.0, "gutenberg": 1.0}, "positive"),
        ({}, "empty"),
    ],
)
def test_mix_weights_positive_and_sum_to_one(mix, fragment):
    with pytest.raises(SettingsError, match=fragment):
        load_settings(overrides={"data": {"mix_pretrain": mix}}, environ={})


def test_a_mix_set_one_source_at_a_time_says_it_is_set_whole():
    """Two --set flags for one mix's sources leave the last (mixes replace whole): the error says so."""
    with pytest.raises(SettingsError, match=r"set whole.*give every source at once, e.g. data.mix_sft=") as err:
        load_settings(overrides={"data": {"mix_sft": {"oasst1": 0.15}}}, environ={})
    assert "got {'oasst1': 0.15}" in str(err.value)


def test_mix_sum_tolerance():
    s = load_settings(overrides={"data": {"mix_pretrain": {"wikitext": 1 / 3, "gutenberg": 1 / 3, "roam": 1 / 3}}}, environ={})
    assert set(s.data.mix_pretrain) == {"wikitext", "gutenberg", "roam"}


def test_val_sft_source_enum():
    assert load_settings(overrides={"data": {"val_sft_source": "wikitext"}}, environ={}).data.val_sft_source == "wikitext"
    with pytest.raises(SettingsError, match="val_sft_source"):
        load_settings(overrides={"data": {"val_sft_source": "dolly"}}, environ={})


def test_bad_json_names_file_and_line(tmp_path):
    cfg = write(tmp_path, '{\n  "data": {\n    "seed": 1,\n  }\n}')
    with pytest.raises(SettingsError, match=r"c\.json is not valid JSON: line 4"):
        load_settings(cfg, environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.json", environ={})


def test_source_flags():
    assert parse_source_flags(["wikitext=/a", "primer=b.jsonl"]) == {"data": {"sources": {"wikitext": "/a", "primer": "b.jsonl"}}}
    with pytest.raises(SettingsError, match="unknown source 'wiki'"):
        parse_source_flags(["wiki=/a"])
    with pytest.raises(SettingsError, match="NAME=PATH"):
        parse_source_flags(["wikitext"])


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1}}
    merged = deep_merge(base, {"a": {"c": 2}})
    assert merged == {"a": {"b": 1, "c": 2}} and base == {"a": {"b": 1}}


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    for cfg in configs:
        load_settings(cfg, environ={})


def test_every_settings_field_is_documented_once_in_settings():
    """Each field carries its description (CLI help is taken from it), so a fact is written in one place."""
    from pydantic import BaseModel

    from ngpt.settings import Settings

    def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                missing += undocumented(sub, f"{prefix}{name}.")
        return missing

    assert undocumented(Settings) == []


def test_an_sft_section_keeps_the_sft_defaults_it_does_not_set(tmp_path):
    """SFT's own defaults (AdamW, lr 1e-3, cosine) are a layer under every config, not only when `sft` is absent."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sft": {"total_steps": 5}}))
    for s in (load_settings(path), load_settings(None, overrides={"sft": {"micro_batch": 2}})):
        assert s.sft.optimizer == "adamw" and s.sft.lr == 1e-3 and s.sft.schedule == "cosine"
        assert s.pretrain.optimizer == "muon" and s.pretrain.schedule == "wsd"
    assert load_settings(path).sft.total_steps == 5 and load_settings(None).sft == load_settings(path).sft.model_copy(
        update={"total_steps": 1000})


def test_classic_config_is_the_2023_recipe():
    s = load_settings(Path(__file__).resolve().parents[1] / "configs" / "classic.json")
    assert (s.model.mlp, s.model.tie_embeddings, s.model.norm_gains, s.model.qk_norm) == ("swiglu", True, True, False)
    assert (s.pretrain.optimizer, s.pretrain.schedule, s.pretrain.lr, s.pretrain.weight_decay) == ("adamw", "cosine", 6e-4, 0.1)
    # the model a checkpoint from before the options is read as (ngpt.checkpoint) is this same classic model
    from ngpt.checkpoint import ARCHITECTURE_BEFORE_OPTIONS

    assert {k: getattr(s.model, k) for k in ARCHITECTURE_BEFORE_OPTIONS} == ARCHITECTURE_BEFORE_OPTIONS


def test_amp_takes_json_booleans_as_its_choices(tmp_path):
    """`--set pretrain.amp=true` and a config's "amp": false arrive as JSON booleans: they mean "true"/"false"."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"pretrain": {"amp": False}}))
    assert load_settings(path).pretrain.amp == "false"
    assert load_settings(overrides={"pretrain": {"amp": True}}).pretrain.amp == "true"
    with pytest.raises(SettingsError, match="pretrain.amp"):
        load_settings(overrides={"pretrain": {"amp": "yes"}})
