"""Export a checkpoint to a Hugging Face transformers folder: Llama (or Qwen3 / Arcee) weights + its tokenizer.

    ngpt export hf --ckpt checkpoints/best.pt --out exports/my-model

    from transformers import AutoModelForCausalLM, AutoTokenizer       # no ngpt code needed
    model = AutoModelForCausalLM.from_pretrained("exports/my-model")
    tok = AutoTokenizer.from_pretrained("exports/my-model")
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)

The architecture is the transformers one that computes exactly ngpt's function for the checkpoint's
options (hf_model_type): LlamaForCausalLM; Qwen3ForCausalLM with model.qk_norm (per-head q/k RMSNorm
before RoPE); ArceeForCausalLM with model.mlp=relu2. An option none of them expresses (logit soft-cap,
QK-norm together with ReLU²) is refused by name. The folder holds config.json, model.safetensors,
generation_config.json (eos = <|eot|>, sampling defaults from the checkpoint's settings),
tokenizer.model (the sentencepiece file itself), tokenizer.json, tokenizer_config.json (with a
chat_template that renders ngpt's template), special_tokens_map.json.

The weights are a rename (ngpt/model.py already uses Llama's half-split RoPE, RMSNorm and SwiGLU).
The tokenizer is the subtle part. transformers' own sentencepiece conversion replaces spaces with
U+2581 before the model runs, so a literal U+2581 in the text would turn into a space, where ngpt
spells it out as three byte pieces. tokenizer.json therefore stores the same unigram model with
its pieces spelled with real spaces and no normalizer at all: the ids and scores are sentencepiece's,
and a literal U+2581 is just an unknown character that falls back to bytes, as in ngpt. Pieces that
sentencepiece never matches in text (control, <unk>, byte pieces like "<0x41>") get a score no
segmentation would take, and a split before their first character keeps them out of reach even
when one of their characters is missing from the vocabulary (its fallback scores lower still).
Where two segmentations score exactly the same, the pick is float rounding (sentencepiece sums
float32 scores along the whole line, tokenizers float64 per segment) and can differ: 2 of 34,628
dolly-15k texts with an 8k vocabulary, both segmentations valid and decoding to the same text.
As in every transformers chat tokenizer, the strings "<|eot|>" etc. typed as text are read as
their control tokens; ngpt never does that. Pass split_special_tokens=True (plain encoding) or
sanitize_control_tokens=True (apply_chat_template) to get ngpt's ids for such text.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ngpt.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from ngpt.device import DTYPES
from ngpt.io_utils import atomic_write_bytes, atomic_write_text, replace_dir, temp_dir_for
from ngpt.settings import SPECIAL_TOKENS, ModelSettings
from ngpt.tokenizer import SPACE_MARK, Tokenizer

# --dtype takes torch's names, as transformers' config.json "dtype" does: float32, bfloat16, float16.
HF_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in DTYPES.values()}
# A unigram score no segmentation ever prefers: pieces sentencepiece never matches in text.
NEVER_SCORE = -1e9
# Renders exactly chat_format.render / prompt_ids: <|sys|>…<|eot|><|usr|>…<|eot|><|asst|>…<|eot|> [<|asst|>].
_SYS, _USR, _ASST, _EOT = SPECIAL_TOKENS
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    f"{{%- if message['role'] == 'system' -%}}{{{{- '{_SYS}' -}}}}"
    f"{{%- elif message['role'] == 'user' -%}}{{{{- '{_USR}' -}}}}"
    f"{{%- elif message['role'] == 'assistant' -%}}{{{{- '{_ASST}' -}}}}"
    "{%- else -%}{{- raise_exception('ngpt chat roles are system, user and assistant, got ' + message['role']) -}}"
    "{%- endif -%}"
    f"{{{{- message['content'] -}}}}{{{{- '{_EOT}' -}}}}"
    "{%- endfor -%}"
    f"{{%- if add_generation_prompt -%}}{{{{- '{_ASST}' -}}}}{{%- endif -%}}"
)


@dataclass
class ExportResult:
    out: Path
    checkpoint: Path
    files: dict[str, int]  # file name → bytes
    num_params: int
    dtype: str


# ---------------------------------------------------------------------------------------------
# Weights and config.


class ExportError(ValueError):
    """The checkpoint uses an option the target format cannot express; the message names it."""


# ngpt's options → the transformers architecture that computes exactly the same function.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "arcee": "ArceeForCausalLM"}


def hf_model_type(cfg: ModelSettings, target: str = "transformers") -> str:
    """llama (SwiGLU), qwen3 (SwiGLU + per-head QK RMSNorm before RoPE), arcee (ReLU², no gate); or ExportError.

    llama.cpp has the same three architectures under the same names (ngpt.export.gguf passes
    target="GGUF (llama.cpp)"), so the same options are refused there, for the same reasons.
    """
    refused = []
    if cfg.logit_softcap is not None:
        refused.append(f"model.logit_softcap={cfg.logit_softcap:g}: no Llama, Qwen3 or Arcee config caps the logits")
    if cfg.qk_norm and cfg.mlp == "relu2":
        refused.append("model.qk_norm with model.mlp=relu2: Qwen3 has QK-norm but a SwiGLU MLP, Arcee ReLU² but no QK-norm")
    if refused:
        raise ExportError(f"this checkpoint cannot be exported to {target}: " + "; ".join(refused)
                          + ". Train with those options off to share the model in this format.")
    return "qwen3" if cfg.qk_norm else "arcee" if cfg.mlp == "relu2" else "llama"


def hf_tied(cfg: ModelSettings) -> bool:
    """Whether the export ties its head to its embedding: a normalised embedding is folded into the table, so not then."""
    return cfg.tie_embeddings and not cfg.embed_norm


def hf_state_dict(model_sd: dict[str, torch.Tensor], cfg: ModelSettings, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """ngpt parameter names → the transformers names (see ngpt/model.py); a tied head is stored once.

    Parameter-free norms become gains of ones; an embedding RMSNorm is applied to the table itself
    (each row is one token's input vector, so normalising the rows once is exact).
    """
    sd = dict(model_sd)
    head = sd.pop("lm_head.weight", None)
    if cfg.tie_embeddings and head is not None and not torch.equal(head, sd["tok_emb.weight"]):
        raise CheckpointError("the checkpoint's lm_head differs from its embedding, but model.tie_embeddings is true")
    if not cfg.tie_embeddings and head is None:
        raise CheckpointError("model.tie_embeddings is false but the checkpoint has no lm_head.weight")
    ones = torch.ones(cfg.n_embd)
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        names[ours + "attn_norm.weight"] = theirs + "input_layernorm.weight"
        names[ours + "mlp_norm.weight"] = theirs + "post_attention_layernorm.weight"
        names.update({ours + f"attn.{p}.weight": theirs + f"self_attn.{p}_proj.weight" for p in "qkvo"})
        names.update({ours + f"mlp.{p}.weight": theirs + f"mlp.{p}_proj.weight"
                      for p in (("up", "down") if cfg.mlp == "relu2" else ("gate", "up", "down"))})
        if cfg.qk_norm:
            names.update({ours + f"attn.{p}_norm.weight": theirs + f"self_attn.{p}_norm.weight" for p in "qk"})
    if not cfg.norm_gains:  # the norms' gains are ones
        head_ones = torch.ones(cfg.head_dim)
        sd.update({k: (head_ones if "attn.q_norm" in k or "attn.k_norm" in k else ones) for k in names if "norm" in k})
    emb_gain = sd.pop("emb_norm.weight", None)
    if cfg.embed_norm:
        table = sd["tok_emb.weight"].float()
        sd["tok_emb.weight"] = F.rms_norm(table, (cfg.n_embd,), None if emb_gain is None else emb_gain.float(), cfg.norm_eps)
    unknown, missing = sorted(set(sd) - set(names)), sorted(set(names) - set(sd))
    if unknown or missing:
        raise CheckpointError(f"checkpoint weights do not match its model_config: unknown {unknown[:5]}, missing {missing[:5]}")
    # clone(): safetensors refuses tensors that share memory (a tied head) or are views.
    out = {names[k]: v.detach().to(dtype).contiguous().clone() for k, v in sd.items()}
    if not hf_tied(cfg):
        out["lm_head.weight"] = (model_sd["tok_emb.weight"] if head is None else head).detach().to(dtype).contiguous().clone()
    return out


def hf_fields(cfg: ModelSettings) -> dict:
    """The config fields that make the transformers model (hf_model_type) exactly this model's shape.

    Shared by config.json and the speed benchmark's comparison model (ngpt.bench.speed).
    """
    fields = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "relu2" if cfg.mlp == "relu2" else "silu",
        "tie_word_embeddings": hf_tied(cfg),
        "attention_bias": False,
        "attention_dropout": 0.0,
    }
    model_type = hf_model_type(cfg)
    if model_type != "qwen3":  # Qwen3 has no MLP bias field; the others' default is false anyway
        fields["mlp_bias"] = False
    else:
        fields |= {"use_sliding_window": False, "sliding_window": None}
    return fields


def hf_config(cfg: ModelSettings, tok: Tokenizer, dtype: str) -> dict:
    """config.json (both the transformers 5 rope_parameters and the older rope_theta)."""
    model_type = hf_model_type(cfg)
    return {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        **hf_fields(cfg),
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        # Llama's defaults (bos 1, eos 2) would be <|sys|> and <|usr|> here: say there is no bos.
        "bos_token_id": None,
        "eos_token_id": tok.eot_id,
        "pad_token_id": None,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def generation_config(tok: Tokenizer, settings: dict | None, vocab_size: int) -> dict:
    """generation_config.json: stop at <|eot|>, and sample the way `ngpt chat` does by default."""
    gen = (settings or {}).get("generation", {})
    temperature = gen.get("temperature", 0.8)
    out = {"eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id, "bos_token_id": None,
           "max_new_tokens": gen.get("max_new_tokens", 256), "do_sample": temperature > 0}
    if vocab_size > tok.vocab_size:  # a vocabulary padded for speed: ids with no text, never generated (as the engine)
        out["suppress_tokens"] = list(range(tok.vocab_size, vocab_size))
    if temperature > 0:
        out.update(temperature=temperature, top_k=gen.get("top_k", 50), top_p=gen.get("top_p", 0.95))
    if gen.get("repetition_penalty", 1.0) != 1.0:
        out["repetition_penalty"] = gen["repetition_penalty"]
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer.


def checkpoint_tokenizer(state: dict) -> Tokenizer:
    """The tokenizer a loaded checkpoint carries; CheckpointError when it has none (every export needs it)."""
    proto = state.get("tokenizer_model")
    if not proto:
        raise CheckpointError("the checkpoint does not carry its tokenizer (tokenizer_model); re-save it with this ngpt")
    return Tokenizer("checkpoint#tokenizer", proto=proto)


def check_lossless(tok: Tokenizer) -> None:
    """The export reproduces ngpt's tokenizer (identity normalisation, no dummy prefix); refuse any other."""
    probe = "  Ａﬁ x  \t"
    dummy_prefix = tok.sp.encode("x", out_type=str)[0].startswith(SPACE_MARK)
    if dummy_prefix or tok.sp.decode(tok.sp.encode(probe)) != probe:
        raise ValueError(
            f"tokenizer {tok.path} is not lossless (it normalises text or adds a prefix space), so transformers "
            "could not reproduce its ids; retrain it with `ngpt tokenizer train`"
        )


def _added(token_id: int, content: str, special: bool) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def tokenizer_json(tok: Tokenizer) -> dict:
    """tokenizer.json (the `tokenizers` format) giving the same ids as Tokenizer.encode; see the module docstring."""
    sp = tok.sp
    vocab: list[list] = []
    added: list[dict] = []
    unmatched: list[str] = []  # pieces sentencepiece never matches in text
    for i in range(tok.vocab_size):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i):
            vocab.append([piece, NEVER_SCORE])
            # <unk> stays out of the added tokens: the text "<unk>" is plain text to ngpt, as it is here.
            if sp.is_control(i):
                added.append(_added(i, piece, special=True))
            unmatched.append(piece)
            continue
        score = sp.get_score(i)
        # A user-defined symbol ("\n") is the only normal-looking piece the trainer scores exactly 0;
        # sentencepiece always cuts it out whole, as an added token does.
        if score == 0.0:
            added.append(_added(i, piece, special=False))
        vocab.append([piece.replace(SPACE_MARK, " "), score])
    # Where a character of "<0x41>" (or "<unk>", "<|eot|>") is not in the vocabulary, its fallback score
    # is below NEVER_SCORE and the whole piece would win; isolating the first character prevents that.
    byte_alt = "<(?=0x[0-9A-F]{2}>)"
    alts = sorted({re.escape(p[0]) + "(?=" + re.escape(p[1:]) + ")" for p in unmatched
                   if len(p) > 1 and not re.fullmatch(r"<0x[0-9A-F]{2}>", p)})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "|".join([byte_alt, *alts])},
                          "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "Unigram", "unk_id": sp.unk_id(), "vocab": vocab, "byte_fallback": True},
    }


def special_tokens_map(tok: Tokenizer) -> dict:
    return {"eos_token": tok.piece(tok.eot_id), "pad_token": tok.piece(tok.eot_id),
            "additional_special_tokens": list(SPECIAL_TOKENS)}


def tokenizer_config(tok: Tokenizer, seq_len: int) -> dict:
    """tokenizer_config.json: the generic fast tokenizer (tokenizer.json as written), no bos/eos added."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map(tok),
        "bos_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": seq_len,
        "chat_template": CHAT_TEMPLATE,
    }


# ---------------------------------------------------------------------------------------------
# The folder.


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def write_hf_folder(state: dict, out_dir: Path, dtype: str = "float32") -> int:
    """Write the transformers files of a loaded checkpoint dict into `out_dir`; returns the parameter count."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise RuntimeError("exporting needs the safetensors package: pip install safetensors") from None

    if dtype not in HF_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(HF_DTYPES)}")
    tok = checkpoint_tokenizer(state)
    check_lossless(tok)
    cfg = ModelSettings(**state["model_config"])
    weights = hf_state_dict(state["model"], cfg, HF_DTYPES[dtype])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})  # callers write to a fresh temp dir
    atomic_write_text(out_dir / "config.json", _json(hf_config(cfg, tok, dtype)))
    atomic_write_text(out_dir / "generation_config.json", _json(generation_config(tok, state.get("settings"), cfg.vocab_size)))
    atomic_write_bytes(out_dir / "tokenizer.model", tok.proto)
    atomic_write_text(out_dir / "tokenizer.json", _json(tokenizer_json(tok)))
    atomic_write_text(out_dir / "tokenizer_config.json", _json(tokenizer_config(tok, cfg.seq_len)))
    atomic_write_text(out_dir / "special_tokens_map.json", _json(special_tokens_map(tok)))
    return sum(t.numel() for t in weights.values())


def check_out_dir(out: Path, force: bool, keep: Path | None = None) -> None:
    """Refuse a non-empty output folder unless --force, and never one holding `keep` (the checkpoint)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --force to replace it, or choose another folder")
    resolved = out.resolve()
    if keep is not None and resolved in keep.resolve().parents:
        raise FileExistsError(f"--out {out} holds the checkpoint being exported ({keep}); choose another folder")
    if resolved in Path.cwd().resolve().parents or resolved == Path.cwd().resolve():
        raise FileExistsError(f"--out {out} is the current folder or one of its parents; choose a folder of its own")


def export_hf(ckpt: str | Path, out: str | Path, *, force: bool = False, dtype: str = "float32") -> ExportResult:
    """Export a checkpoint (file, or folder with best.pt/latest.pt) to a transformers folder, atomically."""
    path = find_checkpoint(ckpt)
    out = Path(out)
    check_out_dir(out, force, keep=path)
    state = load_checkpoint(path)
    tmp = temp_dir_for(out)
    try:
        num_params = write_hf_folder(state, tmp, dtype)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return ExportResult(out, path, files, num_params, dtype)
