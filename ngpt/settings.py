"""Every default ngpt uses, and the rules for overriding them.

Resolution order (later wins): the defaults below < a JSON file (`--config FILE`, shaped like
`Settings`) < environment variables (`NGPT_` prefix, `__` between nesting levels, e.g.
`NGPT_DATA__CACHE_DIR=/tmp/c` or `NGPT_DATA__MIX_PRETRAIN='{"wikitext": 1.0}'`) < command-line flags.
Dicts deep-merge, except the two source mixes (`data.mix_pretrain`, `data.mix_sft`), which a later
layer replaces whole: a mix is one decision, not a sum of partial ones.

Unknown keys and unknown source names are errors that name the key and list the valid ones; there
are no aliases (`wiki` is not `wikitext`).

    from ngpt.settings import load_settings
    s = load_settings("configs/demo.json", overrides={"data": {"seed": 1}})
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from ngpt.io_utils import read_json_file

PRETRAIN_SOURCES: tuple[str, ...] = ("wikitext", "fineweb_edu", "gutenberg", "roam")
SFT_SOURCES: tuple[str, ...] = ("dolly15k", "oasst1", "primer")
ALL_SOURCES: tuple[str, ...] = PRETRAIN_SOURCES + SFT_SOURCES
SPECIAL_TOKENS: tuple[str, ...] = ("<|sys|>", "<|usr|>", "<|asst|>", "<|eot|>")
IGNORE_INDEX = -100  # a label that takes no loss (prompt tokens, padding): torch's cross-entropy default
MlpChoice = Literal["swiglu", "relu2"]
OptimizerChoice = Literal["adamw", "muon"]
ScheduleChoice = Literal["cosine", "wsd"]
NsScalingChoice = Literal["frobenius", "aol"]
AmpChoice = Literal["auto", "true", "false"]  # train.amp: auto = on where it measured faster (ngpt.device)
AmpDtypeChoice = Literal["auto", "bf16", "fp16"]  # train.amp_dtype: auto = bf16 where supported, else fp16
# How generation stores the weights (`--precision` of chat, serve, bench): auto = what decodes fastest here.
WeightFormat = Literal["auto", "fp32", "bf16", "fp16", "int8"]
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)
# What `ngpt bench speed --compare` can time beside ngpt, the same model in another implementation.
SpeedCompare = Literal["transformers", "llama.cpp"]
AMP_CHOICES: tuple[str, ...] = get_args(AmpChoice)
AMP_DTYPE_CHOICES: tuple[str, ...] = get_args(AmpDtypeChoice)
REPLACED_WHOLE = {("data", "mix_pretrain"), ("data", "mix_sft")}
MIX_TOLERANCE = 1e-6


class SettingsError(ValueError):
    """A setting is wrong; the message names the key (and file) and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    """Transformer shape and architecture options (defaults: the measured recipe, README *Training recipe*; configs/classic.json: 2023 Llama)."""

    vocab_size: int = Field(16384, gt=0, description="Vocabulary size (must equal the tokenizer's).")
    seq_len: int = Field(512, gt=0, description="Context length T in tokens.")
    n_embd: int = Field(384, gt=0, description="Model width C.")
    n_layer: int = Field(8, gt=0, description="Number of transformer blocks L.")
    n_head: int = Field(6, gt=0, description="Attention heads H (C must be divisible by H).")
    d_ff: int | None = Field(None, description="MLP hidden size; None = 8/3·C rounded up to 64 (swiglu) or 4·C (relu2).")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability (0 = off).")
    mlp: MlpChoice = Field("relu2", description="MLP: swiglu (Llama: down(silu(gate x) * up x)) | relu2 (down(relu(up x)²)).")
    qk_norm: bool = Field(False, description="RMSNorm each head's queries and keys before RoPE (Qwen3, modded-nanogpt).")
    tie_embeddings: bool = Field(False, description="The LM head is the token embedding (one V×C matrix).")
    logit_softcap: float | None = Field(None, gt=0, description="Logits become cap·tanh(logits/cap) (Gemma 2, nanochat: 15); None = off.")
    zero_init: bool = Field(False, description="Attention and MLP output projections (and an untied head) start at zero.")
    norm_gains: bool = Field(False, description="RMSNorms carry a learned gain; false = parameter-free norms.")
    embed_norm: bool = Field(True, description="RMSNorm the token embedding before the first block.")
    init_std: float | None = Field(0.02, gt=0, description="Std of the initial weights (output projections: ÷√(2L)); None = 1/√n_embd (nanochat's width rule).")
    embed_init_std: float | None = Field(None, gt=0, description="Std of the initial token embedding; None = init_std's.")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_dim(self) -> int:
        """The MLP's hidden size: d_ff, or what keeps ~8C² MLP parameters: SwiGLU 8/3·C rounded up to 64, relu2 4·C."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "relu2":
            return 4 * self.n_embd
        return -(-8 * self.n_embd // (3 * 64)) * 64

    @property
    def dims_label(self) -> str:
        """'V=16384 T=512 C=384 L=8 H=6 d_ff=1024': the shape as every table and report prints it."""
        return f"V={self.vocab_size} T={self.seq_len} C={self.n_embd} L={self.n_layer} H={self.n_head} d_ff={self.ffn_dim}"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelSettings":
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}")
        return self


class SourcePaths(_Section):
    """Local copies of the sources in the hub's own schema (file or directory). None = the hub."""

    wikitext: str | None = Field(None, description="wikitext parquet/jsonl/.raw file or dir.")
    fineweb_edu: str | None = Field(None, description="fineweb-edu parquet/jsonl file or dir.")
    gutenberg: str | None = Field(None, description="Directory of Project Gutenberg .txt books.")
    roam: str | None = Field(None, description="Markdown notes dir (overrides data.roam_dir).")
    dolly15k: str | None = Field(None, description="databricks-dolly-15k jsonl/parquet.")
    oasst1: str | None = Field(None, description="oasst1 message rows jsonl/parquet.")
    primer: str | None = Field("data/primer.jsonl", description="Primer dialogues jsonl.")


class HubDatasets(_Section):
    """Hugging Face hub ids used when a source has no local path ("repo" or "repo:config")."""

    wikitext: str = Field("Salesforce/wikitext:wikitext-103-raw-v1", description="Hub id of wikitext.")
    fineweb_edu: str = Field("HuggingFaceFW/fineweb-edu:sample-10BT", description="Hub id of fineweb-edu (streamed).")
    gutenberg: str = Field("manu/project_gutenberg", description="Hub id of Project Gutenberg.")
    dolly15k: str = Field("databricks/databricks-dolly-15k", description="Hub id of dolly-15k.")
    oasst1: str = Field("OpenAssistant/oasst1", description="Hub id of oasst1.")


class DataSettings(_Section):
    """Where text comes from, how it is mixed, and where its token caches live."""

    cache_dir: str = Field("data/cache", description="Where token caches are written.")
    mix_pretrain: dict[str, float] = Field(
        default_factory=lambda: {"fineweb_edu": 0.9, "wikitext": 0.1},
        description=f"Pretrain mixture weights; keys in {PRETRAIN_SOURCES}, sum 1.",
    )
    mix_sft: dict[str, float] = Field(
        default_factory=lambda: {"primer": 0.10, "oasst1": 0.70, "dolly15k": 0.20},
        description=f"SFT mixture weights; keys in {SFT_SOURCES}, sum 1.",
    )
    val_pretrain_source: Literal["wikitext", "fineweb_edu", "gutenberg", "roam"] = Field(
        "wikitext", description="Cache whose val split gives val_pretrain_loss."
    )
    val_sft_source: Literal["sft", "wikitext"] = Field(
        "sft", description="'sft' = the SFT val mixture; 'wikitext' = plain-text val."
    )
    sources: SourcePaths = Field(default_factory=SourcePaths, description="Local copies per source (None = the hub).")
    hub: HubDatasets = Field(default_factory=HubDatasets, description="Hub ids per source.")
    roam_dir: str = Field("data/.roam-data", description="Directory of markdown notes for 'roam'.")
    fineweb_train_tokens: int = Field(200_000_000, gt=0, description="Tokens taken from the fineweb stream for train.")
    fineweb_val_tokens: int = Field(2_000_000, gt=0, description="Tokens taken from the fineweb stream for val.")
    oasst_lang: str = Field("en", description="oasst1 language filter ('*' = all).")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="Share carved for val where a source has one split.")
    shard_bytes: int = Field(64 * 2**20, ge=1024, description="Shard file size in bytes.")
    sft_max_tokens: int = Field(512, ge=2, description="SFT examples longer than this are left-truncated.")
    seed: int = Field(1337, description="Seed for splits, sampling and caches.")
    workers: int = Field(0, ge=0, description="Tokenizer processes (0 = all cores; the builder itself is one of them).")

    @field_validator("mix_pretrain")
    @classmethod
    def _check_pretrain_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        return check_mix(mix, PRETRAIN_SOURCES, "data.mix_pretrain")

    @field_validator("mix_sft")
    @classmethod
    def _check_sft_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        return check_mix(mix, SFT_SOURCES, "data.mix_sft")


class TokenizerSettings(_Section):
    """The sentencepiece unigram tokenizer: where it lives and how `ngpt tokenizer train` builds it."""

    model_path: str = Field("artifacts/tokenizer/spm.model", description="sentencepiece model file.")
    vocab_size: int = Field(16384, ge=300, description="Vocabulary size to train.")
    sample_bytes: int = Field(20_000_000, gt=0, description="Training text taken per source (bytes).")
    seed: int = Field(0, description="Seed for the sample order and sentencepiece.")
    sources: list[str] | None = Field(None, description="Sources the tokenizer trains on; None = every source the two mixes use.")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            check_mix({n: 1 / len(names) for n in names} if names else {}, ALL_SOURCES, "tokenizer.sources")
        return names


class TrainSettings(_Section):
    """One phase of training (pretrain or sft); both share the loop."""

    optimizer: OptimizerChoice = Field("muon", description="adamw: AdamW for every parameter | muon: Muon for the blocks' matrices, AdamW for the rest.")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the blocks' matrices (optimizer=adamw).")
    muon_lr: float = Field(0.04, gt=0, description="Muon learning rate of the blocks' matrices (optimizer=muon), ×√max(1, rows/cols) per matrix.")
    embed_lr: float = Field(0.3, gt=0, description="AdamW learning rate of the token embedding.")
    head_lr: float = Field(0.004, gt=0, description="AdamW learning rate of an untied LM head.")
    scalar_lr: float = Field(0.04, gt=0, description="AdamW learning rate of the norm gains.")
    lr_scaling: bool = Field(True, description="Scale the learning rates, given for lr_ref_width and lr_ref_batch_tokens, to this model and batch (ngpt.train.optim.scaled_lrs).")
    lr_ref_width: int = Field(128, gt=0, description="The model width C the learning rates are given for (with lr_scaling).")
    lr_ref_batch_tokens: int = Field(4096, gt=0, description="The tokens per optimizer step the learning rates are given for (with lr_scaling).")
    muon_ns_steps: int = Field(4, gt=0, le=20, description="Newton-Schulz iterations Muon orthogonalises each update with.")
    muon_ns_scaling: NsScalingChoice = Field("aol", description="How Muon brings each update's singular values under 1 before Newton-Schulz: frobenius (÷‖U‖_F) | aol (per-row bound, nearer 1: one iteration fewer does).")
    muon_row_norm: bool = Field(True, description="NorMuon: after Newton-Schulz, divide each neuron's update by the running RMS of its past updates (decay muon_beta2), keeping the update's total norm.")
    muon_beta2: float = Field(0.95, ge=0, lt=1, description="Decay of muon_row_norm's per-neuron second moment.")
    muon_split_heads: bool = Field(True, description="Orthogonalise each attention head's block of q, k, v (its rows) and o (its columns) on its own, not the whole matrix (GLM-5's Muon Split): about 1/12 of the Newton-Schulz flops there for the default 20M model.")
    adam_betas: tuple[float, float] = Field((0.8, 0.95), description="AdamW betas (every AdamW group).")
    adam_eps: float = Field(1e-10, gt=0, description="AdamW epsilon.")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon's Nesterov momentum after its warmup.")
    muon_momentum_start: float = Field(0.85, ge=0, lt=1, description="Muon's momentum at step 0, rising linearly to muon_momentum.")
    muon_momentum_warmup_steps: int = Field(300, ge=0, description="Steps over which Muon's momentum rises (0 = none).")
    schedule: ScheduleChoice = Field("wsd", description="cosine: warmup, cosine decay | wsd: warmup, stable, linear warmdown.")
    warmup_steps: int = Field(10, ge=0, description="Optimizer steps of linear warmup from 0 to the peak learning rates.")
    warmdown_frac: float = Field(0.7, gt=0, le=1, description="wsd: the share of the budget at the end spent decaying to final_lr_frac.")
    final_lr_frac: float = Field(0.0, ge=0, le=1, description="Learning rate at the end of the budget, as a fraction of each group's peak.")
    total_steps: int = Field(5000, gt=0, description="Optimizer steps for this phase (with max_tokens and max_time: whichever ends first).")
    micro_batch: int = Field(8, gt=0, description="Sequences per forward pass (micro_B).")
    accum_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(0.2, ge=0, description="Decoupled weight decay of the blocks' matrices (AdamW and Muon alike: each step W ← W·(1 − lr·wd)).")
    embed_weight_decay: float | None = Field(0.05, ge=0, description="Weight decay of the token embedding (None = weight_decay).")
    head_weight_decay: float | None = Field(None, ge=0, description="Weight decay of an untied LM head (None = weight_decay).")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off).")
    eval_every: int = Field(250, gt=0, description="Measure the val losses every this many steps.")
    eval_batches: int = Field(20, gt=0, description="Micro-batches per val loss.")
    ckpt_every: int = Field(500, gt=0, description="Save latest.pt / step_N.pt every this many steps.")
    keep_last: int = Field(3, ge=1, description="Periodic step_N.pt checkpoints kept.")
    amp: AmpChoice = Field("auto", description="Autocast: auto (on where it measured faster) | true | false.")
    amp_dtype: AmpDtypeChoice = Field("auto", description="Autocast dtype: auto (bf16 where supported, else fp16) | bf16 | fp16.")
    activation_checkpointing: bool = Field(False, description="Recompute each block in backward (less memory, ~30 % more compute).")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile the model: true | false | auto (time eager steps, compile when the budget left is long enough to repay it, keep it only if compiled steps time faster: ngpt.train.compile_policy).")
    max_tokens: int | None = Field(None, gt=0, description="Stop after this many training tokens.")
    max_time: str | None = Field(None, description="Stop after this wall time, e.g. '8h', '30m'.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    seed: int = Field(1337, description="Seed for init, sampling and dropout (rank r adds r).")

    def group_weight_decays(self) -> dict[str, float]:
        """Each optimizer group's weight decay: the tables' own where set, else weight_decay; never the gains."""
        return {"matrices": self.weight_decay, "scalars": 0.0,
                "embedding": self.weight_decay if self.embed_weight_decay is None else self.embed_weight_decay,
                "head": self.weight_decay if self.head_weight_decay is None else self.head_weight_decay}

    @field_validator("max_time")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        parse_duration(value)  # a bad duration fails at settings load, not when training starts
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, value):
        # JSON true/false (a config file, or --set pretrain.amp=true) mean the strings the choice names.
        return ("true" if value else "false") if isinstance(value, bool) else value

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"adam_betas={list(betas)}: each must be in [0, 1), e.g. [0.9, 0.95]")
        return betas


def parse_duration(text: str | None) -> float | None:
    """'8h', '90m', '45s', '1h30m' → seconds (None → None); ValueError naming the accepted forms."""
    if not text:
        return None
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if not parts or not any(parts.groups()):
        raise ValueError(f"max_time={text!r}: use a duration like '8h', '90m', '1h30m' or '45s'")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, to the second: 28800 → '8h', 5400 → '1h30m', 36 → '36s'."""
    h, rest = divmod(max(1, round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{unit}" for v, unit in ((h, "h"), (m, "m"), (s, "s")) if v)


# SFT: AdamW at a flat 1e-3 on every group, 15 warmup steps, cosine to 1e-4, one micro-batch per step: on the chat
# task (README, round 6) it beat the earlier 1e-4 / 50 warmup steps / accum 4 by 0.23 bits/byte, and Muon at the
# pretrain recipe's rates (× 0.2-0.8) by 0.01-0.09. A layer under every config, so an `sft` section that sets one key
# keeps the others.
SFT_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw", "lr": 1e-3, "embed_lr": 1e-3, "head_lr": 1e-3, "scalar_lr": 1e-3, "lr_scaling": False,
    "adam_betas": (0.9, 0.95), "adam_eps": 1e-8, "weight_decay": 0.1, "embed_weight_decay": None, "schedule": "cosine", "warmup_steps": 15,
    "final_lr_frac": 0.1, "accum_steps": 1, "total_steps": 1000, "eval_every": 100, "ckpt_every": 200,
}


def _sft_defaults() -> TrainSettings:
    return TrainSettings(**SFT_DEFAULTS)


class GenerationSettings(_Section):
    """How chat, serve and the demo choose each next token (a checkpoint's own training config may set them)."""

    max_new_tokens: int = Field(256, gt=0, description="Longest reply in tokens (capped by the model's context).")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0 = greedy).")
    top_k: int = Field(50, ge=0, description="Keep the k most likely tokens (0 = off).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens up to this probability (1 = off).")
    repetition_penalty: float = Field(1.0, gt=0, description="CTRL's penalty on tokens already seen (>1 discourages them; 1 = off).")
    seed: int | None = Field(None, description="Sampling seed (None = a fresh one each reply).")


class EvalSettings(_Section):
    """What `ngpt eval` measures, and what `ngpt train pipeline` measures when it ends (nothing by default)."""

    tasks: list[str] = Field(default_factory=list, description="Benchmark tasks, named as lm-evaluation-harness names them (piqa, arc_easy, ...); [] = none.")
    text: list[str] = Field(default_factory=list, description="Text files or folders to report bits per byte on; [] = none.")
    task_data: dict[str, str] = Field(default_factory=dict, description="A local copy per task (a file or folder in the dataset's own format); a task without one loads from the hub.")
    shots: int = Field(0, ge=0, description="Few-shot examples before each question.")
    limit: int | None = Field(None, gt=0, description="Questions per task, the first N (None = all).")
    batch_size: int = Field(16, gt=0, description="Continuations scored per forward pass.")
    seed: int = Field(1234, description="Seed for choosing few-shot examples (lm-evaluation-harness's default: 1234).")
    chat: bool = Field(False, description="Also ask each multiple-choice question through the chat template and read the answer letter from the greedy reply (for SFT models).")
    stride: int | None = Field(None, gt=0, description="Bits/byte with sliding windows that move by this many tokens (None = non-overlapping windows of the model's context).")


class Settings(BaseSettings):
    """The whole resolved configuration. Build it with `load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="NGPT_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    model: ModelSettings = Field(default_factory=ModelSettings, description="The transformer's shape and options.")
    data: DataSettings = Field(default_factory=DataSettings, description="Sources, mixes and token caches.")
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings, description="The sentencepiece tokenizer.")
    pretrain: TrainSettings = Field(default_factory=TrainSettings, description="The pretraining phase.")
    sft: TrainSettings = Field(default_factory=_sft_defaults, description="The SFT phase.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings, description="Sampling for chat and serve.")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="Benchmarks and bits/byte text for ngpt eval.")
    checkpoints_dir: str = Field("checkpoints", description="Where checkpoints are saved.")
    runs_dir: str = Field("runs", description="Where runs/<run_id>/ (metrics, report) are written.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # load_settings merges file/env/flags itself (so the mixes can replace instead of merge);
        # the model only validates what it is handed.
        return (init_settings,)


def check_mix(mix: Mapping[str, float], allowed: tuple[str, ...], key: str) -> dict[str, float]:
    """Validate a mixture: known source names, positive weights, summing to 1."""
    if not mix:
        raise ValueError(f"{key} is empty; give at least one of {', '.join(allowed)} with weight 1.0")
    unknown = [name for name in mix if name not in allowed]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.4)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ValueError(
            f"{key} has unknown source {', '.join(hints)}. Valid sources: {', '.join(allowed)}. "
            "Names are exact; there are no aliases."
        )
    bad = {name: w for name, w in mix.items() if not (isinstance(w, (int, float)) and w > 0)}
    if bad:
        raise ValueError(f"{key}: weights must be positive numbers, got {bad}")
    total = sum(mix.values())
    if abs(total - 1.0) > MIX_TOLERANCE:
        # A mix is replaced whole (REPLACED_WHOLE), so two flags setting one source each leave only the last.
        example = json.dumps({name: round(1 / len(mix), 3) for name in mix})
        raise ValueError(f"{key}: weights sum to {total:.6g}, they must sum to 1 (got {dict(mix)}). A mix is set "
                         f"whole, never merged source by source with the config's or another flag's: give every "
                         f"source at once, e.g. {key}={example}")
    return dict(mix)


def deep_merge(base: dict, override: Mapping, path: tuple[str, ...] = ()) -> dict:
    """Merge `override` into a copy of `base`; dicts merge key by key except REPLACED_WHOLE paths."""
    out = dict(base)
    for key, value in override.items():
        here = path + (key,)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and here not in REPLACED_WHOLE:
            out[key] = deep_merge(dict(out[key]), value, here)
        else:
            out[key] = value
    return out


def prune_none(d: dict) -> dict:
    """Drop flags the user did not give (None), recursively, so they do not override the config."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = prune_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def _unknown_keys(model: type[BaseModel], data: Mapping, path: str = "") -> list[str]:
    """Every key in `data` that `model` does not define, as dotted paths with the valid choices."""
    problems = []
    for key, value in data.items():
        dotted = f"{path}{key}"
        field = model.model_fields.get(key)
        if field is None:
            valid = ", ".join(model.model_fields)
            close = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
            hint = f" (did you mean '{path}{close[0]}'?)" if close else ""
            problems.append(f"'{dotted}'{hint}; valid keys{' in ' + path.rstrip('.') if path else ''}: {valid}")
            continue
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(value, Mapping):
            problems.extend(_unknown_keys(sub, value, dotted + "."))
    return problems


def read_config_file(path: str | Path) -> dict:
    """Read a JSON override file; errors name the file and the line."""
    p = Path(path)
    data = read_json_file(p, "Config file", "Pass an existing JSON file to --config (see configs/).", SettingsError)
    if not isinstance(data, dict):
        raise SettingsError(f"Config file {p} must hold a JSON object shaped like Settings, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str] | None = None) -> dict:
    """The NGPT_* environment variables as a nested dict (JSON values parsed by pydantic-settings)."""
    source = EnvSettingsSource(Settings)
    if environ is not None:
        source.env_vars = {k.lower(): v for k, v in environ.items()}
    return source()


def load_settings(
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: tuple[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Resolve defaults < base < config file < NGPT_* env < overrides (CLI flags) into validated Settings.

    `base` is (origin, layer): settings that come with something loaded, e.g. the `generation` section
    a checkpoint was trained with (see checkpoint_generation), which a config or flag still overrides.
    """
    layers: list[tuple[str, Mapping]] = []
    if base is not None:
        layers.append(base)
    if config is not None:
        layers.append((str(config), read_config_file(config)))
    layers.append(("environment (NGPT_*)", env_overrides(os.environ if environ is None else environ)))
    if overrides:
        layers.append(("command-line flags", overrides))

    merged: dict = {"sft": dict(SFT_DEFAULTS)}
    for origin, layer in layers:
        unknown = _unknown_keys(Settings, layer)
        if unknown:
            raise SettingsError(f"Unknown setting(s) in {origin}: " + "; ".join(unknown))
        merged = deep_merge(merged, layer)
    try:
        return Settings(**merged)
    except ValidationError as e:
        where = ", ".join(origin for origin, _ in layers if _) or "defaults"
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(msg if not loc or msg.startswith(loc) else f"{loc}: {msg}")
        raise SettingsError(f"Invalid settings (from {where}): " + "; ".join(lines)) from None


def settings_json(settings: Settings) -> str:
    """The resolved settings as pretty JSON (what --print-config shows and runs record)."""
    return json.dumps(settings.model_dump(mode="json"), indent=2)


def parse_source_flags(pairs: list[str] | None) -> dict:
    """`--source NAME=PATH` flags → {"data": {"sources": {NAME: PATH}}} (names checked by load_settings)."""
    paths: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SettingsError(f"--source expects NAME=PATH (e.g. wikitext=../shared/data/wikitext-2-raw-v1), got {pair!r}")
        if name not in ALL_SOURCES:
            raise SettingsError(f"--source {pair}: unknown source '{name}'. Valid sources: {', '.join(ALL_SOURCES)}")
        paths[name] = path
    return {"data": {"sources": paths}} if paths else {}
