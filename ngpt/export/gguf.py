"""Export a checkpoint to one GGUF file that llama.cpp runs (and so ollama and LM Studio): `ngpt export gguf`.

    ngpt export gguf --ckpt checkpoints/best.pt --out exports/ngpt.gguf                  # f32
    ngpt export gguf --ckpt checkpoints/sft/ --out exports/ngpt-q8.gguf --dtype q8_0 --ollama
    ollama create ngpt -f exports/ngpt-q8.Modelfile                                      # then: ollama run ngpt

    from llama_cpp import Llama                                  # pip install -e ".[gguf]"
    llm = Llama("exports/ngpt.gguf", n_ctx=512)
    llm.create_chat_completion([{"role": "user", "content": "hi"}], temperature=0)

Needs the `gguf` package (the `gguf` extra). What goes in the file:

* **Architecture**: the llama.cpp architecture that computes exactly ngpt's function, which is the
  transformers one of ngpt.export.hf under the same name: `llama`; `qwen3` with model.qk_norm
  (per-head q/k RMSNorm before RoPE); `arcee` with model.mlp=relu2 (no gate). The same options are
  refused by name (logit soft-cap: none of the three reads a cap; QK-norm with ReLU²). The tensors
  are hf_state_dict's (gain-free norms written as ones, an embedding norm folded into the table,
  which unties the head), renamed by gguf's own name map. llama and arcee rotate consecutive pairs
  (llama.cpp's "normal" RoPE) where ngpt rotates dimension i with i + D/2, so their q and k rows are
  permuted per head as llama.cpp's own converter does (attention scores are unchanged); qwen3 uses
  the half-split layout itself, so nothing is permuted there. A tied head is stored once (llama.cpp
  reuses token_embd). Rows past the tokenizer's vocabulary (a model vocabulary padded for speed)
  are dropped: they have no text, and ngpt's engine never generates them either.
* **dtype**: f32 | f16 | bf16 | q8_0 for the matrices (q8_0: blocks of 32 weights with one f16
  scale, so n_embd and d_ff must be multiples of 32); norms stay f32, as llama.cpp expects.
* **Tokenizer** (plamo2_vocab): llama.cpp's "llama" (SPM) tokenizer merges pieces BPE-style, which
  is wrong for a unigram model; its unigram one ("t5") has no byte fallback, so characters outside
  the vocabulary become <unk>. Its "plamo2" tokenizer is a unigram Viterbi search with <0xXX> byte
  fallback, and gives ngpt's ids once the vocabulary is written for it: pieces with U+2581 turned
  back into spaces (plamo2 matches raw text, so a literal U+2581 falls back to bytes, as in ngpt),
  control and <unk> pieces scored out of reach (so typed "<|eot|>" stays text), scores scaled so that
  plamo2's fixed cost of an unknown character equals sentencepiece's (lowest score − 10), and the
  user-defined "\\n" piece typed normal (llama.cpp cuts text at user-defined pieces and drops a
  U+FEFF that starts a cut). Where they still differ: two segmentations of exactly (or, in float32,
  nearly) equal score, where sentencepiece and llama.cpp break the tie differently (e.g. 5 spaces as
  ▁▁▁▁+▁ or ▁+▁▁▁▁), and a U+FEFF at the very start of the text (or right after a control token),
  which plamo2 drops. No bos/eos is added; <|eot|> is eos and eot, so generation stops there.
* **Chat template**: ngpt.export.hf's CHAT_TEMPLATE (jinja), which renders ngpt's
  <|sys|>…<|eot|><|usr|>…<|eot|><|asst|> exactly. As in every llama.cpp chat model, the text
  "<|eot|>" typed inside a message is read as the control token there; ngpt never does that.
* **Sampling defaults**: the checkpoint's generation settings (as `ngpt chat` resolves them) as
  general.sampling.* keys, and with --ollama as PARAMETERs of a Modelfile beside the file.

The file is written to a temp file and renamed: an error or a kill leaves no half-written file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ngpt.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from ngpt.export.hf import CHAT_TEMPLATE, ExportError, ExportResult, check_lossless, checkpoint_tokenizer, hf_model_type, hf_state_dict
from ngpt.inference import checkpoint_generation
from ngpt.io_utils import atomic_output, atomic_write_text
from ngpt.settings import SPECIAL_TOKENS, GenerationSettings, ModelSettings
from ngpt.tokenizer import SPACE_MARK, Tokenizer

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
TARGET = "GGUF (llama.cpp)"
# llama.cpp's token types (llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# plamo2 drops every piece whose score × 1e4 is at most -2e7 from matching: below that, text never reaches it.
UNREACHABLE_SCORE = -3000.0
# plamo2 charges a character no piece covers 1000 (score × 1e4 = -1e7); sentencepiece charges (lowest score − 10).
PLAMO2_UNKNOWN_COST, SPM_UNKNOWN_PENALTY = 1000.0, 10.0
MAX_VOCAB = 2**31 - 1  # llama.cpp token ids are int32 (llama_token)
Q8_BLOCK = 32
_SYS, _USR, _ASST, _EOT = SPECIAL_TOKENS
OLLAMA_TEMPLATE = (  # Go template: the same rendering as CHAT_TEMPLATE (one line: every character outside {{ }} is text)
    f'{{{{ range .Messages }}}}{{{{ if eq .Role "system" }}}}{_SYS}{{{{ .Content }}}}{_EOT}'
    f'{{{{ else if eq .Role "user" }}}}{_USR}{{{{ .Content }}}}{_EOT}'
    f'{{{{ else if eq .Role "assistant" }}}}{_ASST}{{{{ .Content }}}}{_EOT}{{{{ end }}}}{{{{ end }}}}{_ASST}'
)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise RuntimeError(
            "the GGUF export needs the `gguf` package: pip install -e \".[gguf]\" (or pip install gguf)"
        ) from None
    return gguf


@dataclass
class GGUFExportResult(ExportResult):
    architecture: str  # llama | qwen3 | arcee
    modelfile: Path | None  # with --ollama


@dataclass(frozen=True)
class GGUFVocab:
    """What the file says about the tokenizer: llama.cpp's tokenizer type and every piece.

    model "none" (pieces empty) is a vocabulary of ids only, for the speed benchmark's random weights.
    """

    model: str
    size: int
    tokens: list[bytes] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    eot_id: int | None = None
    unk_id: int | None = None


# ---------------------------------------------------------------------------------------------
# The tokenizer.


def plamo2_vocab(tok: Tokenizer) -> GGUFVocab:
    """ngpt's sentencepiece unigram vocabulary, written so llama.cpp's plamo2 tokenizer gives its ids (module docstring)."""
    if tok.vocab_size > MAX_VOCAB:
        raise ExportError(f"the tokenizer has {tok.vocab_size:,} pieces; llama.cpp token ids are int32, at most {MAX_VOCAB:,}")
    sp = tok.sp
    missing = [b for b in range(256) if sp.piece_to_id(f"<0x{b:02X}>") == sp.unk_id()]
    if missing:
        raise ExportError(
            f"tokenizer {tok.path} has no byte-fallback piece for {len(missing)} bytes (e.g. <0x{missing[0]:02X}>); "
            "llama.cpp's unigram tokenizer with byte fallback (plamo2) needs all 256. Retrain it with `ngpt tokenizer train`."
        )
    specials = {i for i in range(tok.vocab_size) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i)}
    # The user-defined "\n" scores 0, above every learned piece, so the minimum is over learned pieces.
    lowest = min(sp.get_score(i) for i in range(tok.vocab_size) if i not in specials)
    scale = PLAMO2_UNKNOWN_COST / (SPM_UNKNOWN_PENALTY - lowest)  # a positive scale keeps every Viterbi argmax
    tokens, scores, types = [], [], []
    for i in range(tok.vocab_size):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            kind, score = BYTE, 0.0
        elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            kind = CONTROL if sp.is_control(i) else UNKNOWN if sp.is_unknown(i) else UNUSED
            score = UNREACHABLE_SCORE
        else:  # learned pieces and the user-defined "\n" (typed normal: see the module docstring)
            kind, score, piece = NORMAL, sp.get_score(i) * scale, piece.replace(SPACE_MARK, " ")
        tokens.append(piece.encode("utf-8"))
        scores.append(score)
        types.append(kind)
    if len(set(tokens)) != len(tokens):  # llama.cpp aborts loading a vocabulary with two equal texts
        dup = next(t for t in tokens if tokens.count(t) > 1)
        raise ExportError(f"tokenizer {tok.path} has two pieces that both read {dup.decode(errors='replace')!r} "
                          "once U+2581 is a space; retrain it with `ngpt tokenizer train`")
    return GGUFVocab("plamo2", tok.vocab_size, tokens, scores, types, eot_id=tok.eot_id, unk_id=sp.unk_id())


def ids_only_vocab(size: int) -> GGUFVocab:
    """No text at all: a model llama.cpp evaluates on ids (the decode benchmark's random prompts)."""
    return GGUFVocab("none", size)


# ---------------------------------------------------------------------------------------------
# Tensors.


def check_dtype(dtype: str, cfg: ModelSettings | None = None) -> None:
    """ValueError naming --dtype for an unknown dtype, or (given the model) q8_0 on rows that are not whole blocks."""
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(GGUF_DTYPES)}")
    if cfg is not None and dtype == "q8_0":
        odd = {name: n for name, n in (("model.n_embd", cfg.n_embd), ("d_ff", cfg.ffn_dim)) if n % Q8_BLOCK}
        if odd:
            raise ValueError(f"--dtype q8_0 quantizes each row in blocks of {Q8_BLOCK} weights, but "
                             + ", ".join(f"{k}={v}" for k, v in odd.items()) + f" is not a multiple of {Q8_BLOCK}; use --dtype f16")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of q or k from ngpt's half-split RoPE layout to llama.cpp's consecutive pairs (its converter's permute).

    Per head, row j and its rotation partner j + D/2 become rows 2j and 2j + 1.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model_sd: dict[str, torch.Tensor], cfg: ModelSettings, vocab_size: int) -> dict[str, np.ndarray]:
    """The checkpoint's weights as llama.cpp names and lays them out (fp32), for `vocab_size` ids."""
    gguf = _gguf()
    arch = hf_model_type(cfg, TARGET)
    names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], cfg.n_layer)
    out = {}
    for hf_name, t in hf_state_dict(model_sd, cfg, torch.float32).items():
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:  # an older gguf package than this export was written for
            raise ExportError(f"the installed gguf package has no {arch} tensor name for {hf_name}; pip install -U gguf")
        a = t.numpy()
        if name in ("token_embd.weight", "output.weight"):
            a = a[:vocab_size]
        elif arch != "qwen3" and name.endswith(("attn_q.weight", "attn_k.weight")):
            a = permute_qk(a, cfg.n_head)
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def encode_tensor(a: np.ndarray, dtype: str):
    """(array, raw ggml type or None) as the writer takes it; 1-D tensors (norms) stay f32."""
    gguf = _gguf()
    if a.ndim == 1 or dtype == "f32":
        return a, None
    if dtype == "f16":
        return a.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.Q8_0 if dtype == "q8_0" else gguf.GGMLQuantizationType.BF16
    return gguf.quants.quantize(a, qtype), qtype


# ---------------------------------------------------------------------------------------------
# The file.


def write_gguf(path: str | Path, model_sd: dict[str, torch.Tensor], cfg: ModelSettings, vocab: GGUFVocab,
               dtype: str = "f32", generation: GenerationSettings | None = None, name: str = "ngpt") -> tuple[str, int]:
    """Write the GGUF file at `path` (atomically); returns (the llama.cpp architecture, parameters written)."""
    gguf = _gguf()
    check_dtype(dtype, cfg)
    arch = hf_model_type(cfg, TARGET)
    if vocab.size > cfg.vocab_size:
        raise CheckpointError(f"the tokenizer has {vocab.size} ids but model.vocab_size is {cfg.vocab_size}")
    tensors = gguf_tensors(model_sd, cfg, vocab.size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    with atomic_output(path) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        # A neutral name: llama.cpp gives some names special token handling (e.g. "phi-3").
        w.add_name(name)
        w.add_file_type(file_types[dtype])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.seq_len)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.ffn_dim)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_head)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_vocab_size(vocab.size)
        write_vocab(w, vocab)
        if generation is not None:
            write_sampling(w, generation)
        for tensor_name, a in tensors.items():
            data, raw_dtype = encode_tensor(a, dtype)
            w.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return arch, sum(a.size for a in tensors.values())


def write_vocab(w, vocab: GGUFVocab) -> None:
    w.add_tokenizer_model(vocab.model)
    if vocab.model == "none":
        return
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    # plamo2 never adds bos/eos; say so for every reader. Its default ids (bos 1, eos 2, pad 3) would be
    # <|sys|>, <|usr|>, <|asst|> here: eos, eot and pad are <|eot|>, the one id generation stops at.
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_remove_extra_whitespaces(False)
    w.add_unk_token_id(vocab.unk_id)
    w.add_eos_token_id(vocab.eot_id)
    w.add_eot_token_id(vocab.eot_id)
    w.add_pad_token_id(vocab.eot_id)
    w.add_chat_template(CHAT_TEMPLATE)


def write_sampling(w, gen: GenerationSettings) -> None:
    """general.sampling.*: the defaults llama.cpp's own tools take from the file (llama-cpp-python ignores them)."""
    w.add_sampling_temp(gen.temperature)
    w.add_sampling_top_k(gen.top_k)
    w.add_sampling_top_p(gen.top_p)
    w.add_sampling_min_p(0.0)  # ngpt has no min-p; llama.cpp's default is 0.05
    w.add_sampling_penalty_repeat(gen.repetition_penalty)
    w.add_sampling_penalty_last_n(-1)  # ngpt penalises every token seen, the prompt included: the whole context


def modelfile(gguf_name: str, gen: GenerationSettings, seq_len: int) -> str:
    """An ollama Modelfile for the GGUF file next to it: the template, the stop token and ngpt chat's sampling."""
    params = {
        "stop": f'"{_EOT}"',
        "num_ctx": seq_len,  # ollama's default context is longer than the model was trained for
        "num_predict": gen.max_new_tokens,
        "temperature": gen.temperature,
        "top_k": gen.top_k,
        "top_p": gen.top_p,
        "min_p": 0.0,
        "repeat_penalty": gen.repetition_penalty,  # ollama's default is 1.1; ngpt's 1.0
        "repeat_last_n": -1,  # the whole context, as ngpt
    }
    if gen.seed is not None:
        params["seed"] = gen.seed
    lines = [f"# ollama create NAME -f {gguf_name.removesuffix('.gguf')}.Modelfile  (written by ngpt export gguf)",
             f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    return "\n".join(lines + [f"PARAMETER {k} {v}" for k, v in params.items()]) + "\n"


def checkpoint_sampling(state: dict, path: Path) -> GenerationSettings:
    """The generation settings `ngpt chat` starts from for this checkpoint: defaults < what its training config set."""
    return GenerationSettings(**checkpoint_generation(state, path)[1].get("generation", {}))


def check_out_file(out: Path, force: bool, keep: Path) -> None:
    if out.suffix != ".gguf":
        raise ValueError(f"--out {out}: name the file to write, ending in .gguf (e.g. exports/ngpt.gguf)")
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a folder; pass a file path such as {out / 'ngpt.gguf'}")
    if out.exists() and out.resolve() == keep.resolve():
        raise FileExistsError(f"--out {out} is the checkpoint being exported; choose another file")
    if out.exists() and not force:
        raise FileExistsError(f"--out {out} exists; pass --force to replace it, or choose another file")


def export_gguf(ckpt: str | Path, out: str | Path, *, dtype: str = "f32", force: bool = False,
                ollama: bool = False) -> GGUFExportResult:
    """Export a checkpoint (file, or folder with best.pt/latest.pt) to a GGUF file (and an ollama Modelfile)."""
    _gguf()  # a missing package is the first thing said
    path = find_checkpoint(ckpt)
    out = Path(out)
    check_out_file(out, force, path)
    model_file = out.with_suffix(".Modelfile")
    if ollama and model_file.exists() and not force:
        raise FileExistsError(f"{model_file} exists; pass --force to replace it (with {out}), or choose another --out")
    check_dtype(dtype)  # before loading anything
    state = load_checkpoint(path)
    tok = checkpoint_tokenizer(state)
    check_lossless(tok)
    cfg = ModelSettings(**state["model_config"])
    hf_model_type(cfg, TARGET)  # refused options named before any work
    check_dtype(dtype, cfg)
    gen = checkpoint_sampling(state, path)
    arch, num_params = write_gguf(out, state["model"], cfg, plamo2_vocab(tok), dtype, gen)
    files = {out.name: out.stat().st_size}
    if ollama:
        atomic_write_text(model_file, modelfile(out.name, gen, cfg.seq_len))
        files[model_file.name] = model_file.stat().st_size
    return GGUFExportResult(out, path, files, num_params, dtype, arch, model_file if ollama else None)
