"""Tests for ngpt/export.py and `ngpt export hf`: transformers opens the folder and agrees with ngpt.

Logits within 1e-4 (fp32) on random ids, the same token ids from AutoTokenizer on odd strings, the
same chat prompt from apply_chat_template, the same 32 greedy tokens as the engine; bad inputs.

    pytest tests/test_export.py
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS
from fixtures import classic_model
from ngpt.chat_format import prompt_ids, render
from ngpt.device import Precision
from ngpt.engine import Engine
from ngpt.sampling import SamplingParams
from ngpt.export.hf import export_hf, tokenizer_json
from ngpt.model import GPT, apply_rope, rope_tables
from ngpt.settings import ModelSettings, load_settings
from ngpt.tokenizer import SourceSample, Tokenizer, train_tokenizer
from ngpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

FP32 = Precision(False, None, False)
ODD = [
    "", " ", "   ", " leading", "trailing ", "two  spaces", "hello world", "The model learns.", "a\nb", "\n\n x \n",
    "tab\there", "\r\n", "\u2581", "a\u2581b", "\u2581\u2581 x\u2581", "é", "日本語", "🙂 emoji", "Ａ fullwidth", "ﬁ ligature",
    "\u00a0nbsp", "\x00nul", "<0x41>", "x<0xFF>y", "<unk>", "<|eot", "|>", "12345 678", "x" * 80,
]


def write_tiny_checkpoint(path: Path, tok: Tokenizer, *, seed: int = 0, step: int = 7, runs_dir: str = "runs") -> GPT:
    """A checkpoint in the training loop's layout around a tiny model; weights drawn wide enough that
    greedy decoding does not just repeat the last token."""
    torch.manual_seed(seed)
    cfg = ModelSettings(vocab_size=tok.vocab_size, seq_len=96, n_embd=64, n_layer=2, n_head=4, d_ff=96, rope_theta=5000.0, norm_eps=1e-6,
                        **classic_model())  # LlamaForCausalLM; the recipe's options export as test_model_options.py checks
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    settings = load_settings(None, overrides={"model": cfg.model_dump(), "runs_dir": runs_dir}, environ={})
    save_checkpoint(path, {
        "version": 1, "phase": "sft", "step": step, "model": model.state_dict(), "model_config": cfg.model_dump(mode="json"),
        "optimizer": {"state": {}, "param_groups": []}, "settings": settings.model_dump(mode="json"), "overrides": {},
        "tokenizer_sha256": tok.sha256, "tokenizer_model": tok.proto, "run_id": "run-test", "best_val": 2.5,
        "tokens_seen": 12345,
    })
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("export")
    model = write_tiny_checkpoint(root / "ckpt" / "best.pt", tiny_tokenizer)
    result = export_hf(root / "ckpt", root / "hf")
    return model, result


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")  # a dev dependency: the parity tests skip without it


@pytest.fixture(scope="module")
def hf_model(transformers, exported):
    return transformers.AutoModelForCausalLM.from_pretrained(exported[1].out, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tok(transformers, exported):
    return transformers.AutoTokenizer.from_pretrained(exported[1].out)


def ids_of(encoded) -> list[int]:
    """apply_chat_template returns a BatchEncoding in transformers 5, a list in 4."""
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)


def test_folder_holds_the_transformers_files(exported, tiny_tokenizer):
    model, result = exported
    assert set(result.files) == {"config.json", "model.safetensors", "generation_config.json", "tokenizer.model",
                                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    cfg = json.loads((result.out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["intermediate_size"]) == (64, 2, 4, 96)
    assert cfg["rope_theta"] == 5000.0 and cfg["rms_norm_eps"] == 1e-6 and cfg["max_position_embeddings"] == 96
    assert cfg["bos_token_id"] is None and cfg["eos_token_id"] == tiny_tokenizer.eot_id
    gen = json.loads((result.out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tiny_tokenizer.eot_id
    assert (gen["do_sample"], gen["temperature"], gen["top_k"], gen["top_p"]) == (True, 0.8, 50, 0.95)  # ngpt chat's defaults
    assert (result.out / "tokenizer.model").read_bytes() == tiny_tokenizer.proto
    assert result.num_params == model.num_params()


def test_rope_layout_is_transformers_half_split(transformers):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = rope_tables(16, 12, 10000.0)
    q, k = torch.randn(2, 3, 12, 16), torch.randn(2, 3, 12, 16)
    hq, hk = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.allclose(apply_rope(q, cos, sin), hq) and torch.allclose(apply_rope(k, cos, sin), hk)


def test_logits_match_transformers_fp32(exported, hf_model):
    model, _ = exported
    idx = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.seq_len), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(input_ids=idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()  # tied on load


def test_tokenizer_gives_ngpt_ids_on_odd_strings(hf_tok, tiny_tokenizer):
    rng = random.Random(0)
    chars = list("abcxyz   \n\t.,!?07ÄéΩ日🙂\u2581<|>")
    texts = ODD + ["".join(rng.choice(chars) for _ in range(rng.randint(1, 30))) for _ in range(150)]
    texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + rng.choice(["", " ", ".", "\n"]) for _ in range(150)]
    for text in texts:
        ids = tiny_tokenizer.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == text


def test_real_text_ids_match_up_to_exact_score_ties(shared_data, tmp_path):
    """A realistic vocabulary on real text: the same ids, except where two segmentations score the same
    and float rounding picks (sentencepiece sums float32 along the line, tokenizers float64)."""
    tokenizers = pytest.importorskip("tokenizers")
    wiki = [json.loads(line)["text"] for line in open(shared_data / "wikitext-2-raw-v1" / "test.jsonl", encoding="utf-8")]
    chat = [json.loads(line)["text"] for line in open(shared_data / "oasst1" / "oasst1-validation-en.messages.jsonl", encoding="utf-8")]
    train_tokenizer([SourceSample("real", wiki[:2500] + chat[:600], "shared")], tmp_path, vocab_size=4000, seed=0, threads=2)
    tok = Tokenizer(tmp_path / "spm.model")
    fast = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json(tok)))
    texts = [t for t in wiki[2500:] + chat[600:] if t]
    ties = 0
    for text in texts:
        ours, theirs = tok.encode(text), fast.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            ties += 1
            assert fast.decode(theirs) == text
            assert sum(map(tok.sp.get_score, ours)) == pytest.approx(sum(map(tok.sp.get_score, theirs)), abs=1e-3), text
    assert ties <= len(texts) // 500, f"{ties} of {len(texts)} texts differ"


def test_special_token_strings_parse_as_controls_unless_split(hf_tok, tiny_tokenizer):
    # transformers' convention (every chat tokenizer): the text "<|eot|>" is the control token ...
    text = "say <|eot|> now"
    assert tiny_tokenizer.eot_id in hf_tok(text)["input_ids"]
    assert tiny_tokenizer.eot_id not in tiny_tokenizer.encode(text)
    # ... and the documented switches give ngpt's ids, where no text ever becomes a control token.
    assert hf_tok(text, split_special_tokens=True)["input_ids"] == tiny_tokenizer.encode(text)
    messages = [{"role": "user", "content": text}]
    if "sanitize_control_tokens" in inspect.signature(hf_tok.apply_chat_template).parameters:  # recent transformers
        sanitized = hf_tok.apply_chat_template(messages, add_generation_prompt=True, sanitize_control_tokens=True)
        assert ids_of(sanitized) == prompt_ids(tiny_tokenizer, messages)


def test_chat_template_renders_ngpt_prompt(hf_tok, tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " the river\nand the stone "},
        {"role": "assistant", "content": "A small answer."},
        {"role": "user", "content": "why\u2581not 12?"},
    ]
    assert ids_of(hf_tok.apply_chat_template(messages, add_generation_prompt=True)) == prompt_ids(tiny_tokenizer, messages)
    assert ids_of(hf_tok.apply_chat_template(messages[:3])) == render(tiny_tokenizer, messages[:3])[0]
    text = hf_tok.apply_chat_template(messages[1:2], add_generation_prompt=True, tokenize=False)
    assert text == "<|usr|> the river\nand the stone <|eot|><|asst|>"
    with pytest.raises(Exception, match="roles are system, user and assistant"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_greedy_generation_matches_engine(exported, hf_model, hf_tok, tiny_tokenizer):
    model, _ = exported
    messages = [{"role": "user", "content": "the model and the small city"}]
    prompt = prompt_ids(tiny_tokenizer, messages)
    ours = Engine(model, tiny_tokenizer, "cpu", FP32).generate(prompt, SamplingParams(temperature=0, max_new_tokens=32))
    assert len(ours.ids) == 32 and len(set(ours.ids)) > 4  # a real 32-token comparison, not one token repeated
    inputs = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = hf_model.generate(**inputs, max_new_tokens=32, do_sample=False)
    assert out[0, len(prompt):].tolist() == ours.ids


def test_bfloat16_export(tmp_path, tiny_tokenizer):
    from safetensors import safe_open

    write_tiny_checkpoint(tmp_path / "c.pt", tiny_tokenizer)
    result = export_hf(tmp_path / "c.pt", tmp_path / "hf", dtype="bfloat16")
    assert json.loads((result.out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(result.out / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="--dtype"):
        export_hf(tmp_path / "c.pt", tmp_path / "hf2", dtype="int8")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_hf(tmp_path / "nope.pt", tmp_path / "out")
    with pytest.raises(CheckpointError, match="no best.pt or latest.pt"):
        export_hf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_tokenizer_is_refused_and_leaves_old_export(tmp_path, tiny_tokenizer):
    write_tiny_checkpoint(tmp_path / "good.pt", tiny_tokenizer)
    export_hf(tmp_path / "good.pt", tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    state = load_checkpoint(tmp_path / "good.pt")
    del state["tokenizer_model"]
    save_checkpoint(tmp_path / "bare.pt", state)
    with pytest.raises(CheckpointError, match="does not carry its tokenizer"):
        export_hf(tmp_path / "bare.pt", tmp_path / "hf", force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before  # atomic: old export intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.tmp")]


def test_non_empty_out_needs_force(tmp_path, tiny_tokenizer):
    write_tiny_checkpoint(tmp_path / "ck" / "best.pt", tiny_tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    export_hf(tmp_path / "ck", out)  # an empty folder is fine
    (out / "stray.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        export_hf(tmp_path / "ck", out)
    assert (out / "stray.txt").exists()
    export_hf(tmp_path / "ck", out, force=True)
    assert not (out / "stray.txt").exists() and (out / "model.safetensors").is_file()
    with pytest.raises(FileExistsError, match="holds the checkpoint"):
        export_hf(tmp_path / "ck", tmp_path / "ck", force=True)
    assert (tmp_path / "ck" / "best.pt").is_file()


def test_cli_export_hf(tmp_path, tiny_tokenizer):
    import typer

    from ngpt.cli import export
    from ngpt.cli.main import USER_ERRORS

    root = typer.Typer()  # mounted as ngpt/cli/main.py mounts it
    root.add_typer(export.app, name="export")
    root.command("other")(lambda: None)
    write_tiny_checkpoint(tmp_path / "best.pt", tiny_tokenizer)
    args = ["export", "hf", "--ckpt", str(tmp_path / "best.pt"), "--out", str(tmp_path / "hf")]
    result = CliRunner().invoke(root, args)
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.output and "from_pretrained" in result.output
    again = CliRunner().invoke(root, args)
    assert isinstance(again.exception, FileExistsError) and isinstance(again.exception, USER_ERRORS)  # → error panel
