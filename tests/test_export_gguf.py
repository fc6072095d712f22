"""Tests for ngpt/export/gguf.py and `ngpt export gguf`: llama.cpp runs the file as ngpt runs the checkpoint.

Against the real llama.cpp (llama-cpp-python, the `gguf` extra; skipped cleanly without it), on a
tiny checkpoint trained on primer conversations: the same token ids on odd strings (a typed
<|eot|> stays text), prompt logits within 1e-4 of ngpt's fp32 for an f32 file, the same chat prompt
from the embedded template, the same reply as `ngpt chat --temperature 0`, q8_0 / bf16 / f16 on the
same top-1 token at >= 99 % of teacher-forced positions; greedy 32 tokens on a random model; every
metadata key read back with gguf.GGUFReader; each architecture option (qwen3, arcee, untied, folded
embedding norm, gain-free norms) with equal logits, and the refusals and bad inputs.

    pytest tests/test_export_gguf.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS
from gguf_support import llama_cpp_or_skip, open_llama
from ngpt.chat_format import labels_from_mask, prompt_ids, render
from ngpt.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from ngpt.engine import Engine
from ngpt.export.hf import CHAT_TEMPLATE, ExportError
from ngpt.inference import NO_AUTOCAST
from ngpt.model import GPT
from ngpt.sampling import SamplingParams
from ngpt.settings import IGNORE_INDEX, ModelSettings
from ngpt.tokenizer import SourceSample, Tokenizer, train_tokenizer
from test_export import ODD, write_tiny_checkpoint
from test_model_options import CLASSIC, OPTIONS, REFUSED

gguf = pytest.importorskip("gguf")
from ngpt.export.gguf import (  # noqa: E402  (after the skip: the module needs gguf to write anything)
    MAX_VOCAB,
    OLLAMA_TEMPLATE,
    export_gguf,
    plamo2_vocab,
)

REPO = Path(__file__).resolve().parents[1]
T = 96  # the trained model's context
SYSTEM = "Be brief."
# Strings the tokenizers must agree on exactly (besides test_export's ODD): emoji, CJK, whitespace runs, controls.
HARD = ODD + ["👩‍👩‍👧 family", "日本語のテキスト", "中文 和 English", "a  b   c    d", "\t\t x\n\n\n y  ", " \n \n  \n\t \n",
              "x\r\ny", "say <|eot|> now", "<|sys|><|usr|><|asst|><|eot|>", "<unk> <0x41> <s>", "a\u2581\u2581b",
              "naïve café ½ ²", "\x07\x1b[0m", "a\u200db", "line1\nline2\n\nline3\n"]


def save_tiny(path: Path, model: GPT, tok: Tokenizer, overrides: dict | None = None) -> Path:
    """A checkpoint with the keys export reads (weights, model_config, tokenizer, the run's overrides)."""
    save_checkpoint(path, {
        "version": CHECKPOINT_VERSION, "phase": "sft", "step": 1, "model": model.state_dict(),
        "model_config": model.cfg.model_dump(mode="json"), "tokenizer_model": tok.proto,
        "tokenizer_sha256": tok.sha256, "overrides": overrides or {},
    })
    return path


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """(trained model, its tokenizer, checkpoint path, the conversations it was trained on)."""
    root = tmp_path_factory.mktemp("gguf_chat")
    convs = [json.loads(line)["messages"] for line in (REPO / "data" / "primer.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [m["content"] for conv in convs for m in conv]
    train_tokenizer([SourceSample("primer", texts, "data/primer.jsonl")], root, vocab_size=800, seed=0, threads=1)
    tok = Tokenizer(root / "spm.model")
    convs = [[{"role": "system", "content": SYSTEM}, *conv] for conv in convs[:60]]
    rows = [r for r in (render(tok, c) for c in convs) if len(r[0]) <= T + 1][:16]
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE_INDEX)
    for r, (ids, mask) in enumerate(rows):
        labels = labels_from_mask(ids, mask)
        idx[r, : len(ids) - 1] = torch.tensor(ids[:-1])
        targets[r, : len(ids) - 1] = torch.tensor(labels[1:])
    torch.manual_seed(0)
    model = GPT(ModelSettings(vocab_size=tok.vocab_size, seq_len=T, n_embd=64, n_layer=2, n_head=4, **CLASSIC))  # llama; each option below
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains no faster on two, and far slower on a busy machine
    try:
        for _ in range(150):
            _, loss = model(idx, targets, logits="none")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.1, f"the tiny chat model did not fit its conversations (loss {loss.item():.3f})"
    # The run's config set sampling defaults: the file and the Modelfile must carry them (as `ngpt chat` uses them).
    overrides = {"config": {"generation": {"temperature": 0.7, "top_k": 40}}, "flags": {}}
    ckpt = save_tiny(root / "ckpt" / "best.pt", model.eval(), tok, overrides)
    kept = [c for c in convs if len(render(tok, c)[0]) <= T + 1][:16]
    return model, tok, ckpt, kept


@pytest.fixture(scope="module")
def files(chat, tmp_path_factory) -> dict[str, Path]:
    """The trained checkpoint exported in every dtype (f32 with a Modelfile)."""
    root = tmp_path_factory.mktemp("gguf_files")
    return {dtype: export_gguf(chat[2], root / f"ngpt-{dtype}.gguf", dtype=dtype, ollama=dtype == "f32").out
            for dtype in ("f32", "f16", "bf16", "q8_0")}


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def ngpt_logits(model: GPT, ids: list[int], vocab: int) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, :, :vocab].numpy()


# ---------------------------------------------------------------------------------------------
# What the file says.


def field_value(field):
    """A GGUFReader field as Python: str, number, or list of them."""
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def test_every_metadata_key(files, chat):
    model, tok, _, _ = chat
    reader = gguf.GGUFReader(files["f32"])
    meta = {k: field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    vocab = plamo2_vocab(tok)
    cfg = model.cfg
    expected = {
        "general.architecture": "llama", "general.name": "ngpt", "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "llama.context_length": T, "llama.embedding_length": 64, "llama.block_count": 2,
        "llama.feed_forward_length": cfg.ffn_dim, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 4,
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(cfg.norm_eps), "llama.rope.freq_base": cfg.rope_theta,
        "llama.rope.dimension_count": 16, "llama.vocab_size": tok.vocab_size,
        "tokenizer.ggml.model": "plamo2", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": vocab.tokens, "tokenizer.ggml.scores": pytest.approx(vocab.scores),
        "tokenizer.ggml.token_type": vocab.types,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.remove_extra_whitespaces": False,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.eos_token_id": tok.eot_id,
        "tokenizer.ggml.eot_token_id": tok.eot_id, "tokenizer.ggml.padding_token_id": tok.eot_id,
        "tokenizer.chat_template": CHAT_TEMPLATE,
        # The checkpoint's config set temperature 0.7 and top_k 40; the rest are ngpt chat's defaults.
        "general.sampling.temp": pytest.approx(0.7), "general.sampling.top_k": 40, "general.sampling.top_p": pytest.approx(0.95),
        "general.sampling.min_p": 0.0, "general.sampling.penalty_repeat": 1.0, "general.sampling.penalty_last_n": -1,
    }
    assert set(meta) == set(expected)
    for key, value in expected.items():
        assert meta[key] == value, key
    # The pieces: a normal piece holds real spaces, controls and <unk> are out of reach, bytes are bytes, "\n" is normal.
    types = dict(zip(vocab.tokens, vocab.types))
    assert types[b"<|eot|>"] == 3 and types[b"<unk>"] == 2 and types[b"<0x41>"] == 6 and types[b"\n"] == 1
    assert not any("\u2581".encode() in t for t in vocab.tokens) and any(t.startswith(b" ") for t in vocab.tokens)
    lowest = min(s for s, t in zip(vocab.scores, vocab.types) if t == 1)
    assert -1000 < lowest and vocab.scores[tok.eot_id] == -3000  # unknown chars cost 1000: sentencepiece's (min - 10), scaled


@pytest.mark.parametrize("dtype, matrix_type", [("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_tensors_names_and_types(files, chat, dtype, matrix_type):
    model, tok, _, _ = chat
    tensors = {t.name: t for t in gguf.GGUFReader(files[dtype]).tensors}
    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == names  # tied: no output.weight, llama.cpp reuses token_embd
    for name, t in tensors.items():
        assert t.tensor_type.name == ("F32" if name.endswith("norm.weight") else matrix_type), name
    assert list(tensors["token_embd.weight"].shape) == [64, tok.vocab_size]  # ggml order: (C, V)


# ---------------------------------------------------------------------------------------------
# The tokenizer.


def test_token_ids_equal_ngpt_on_odd_strings(files, chat, tiny_tokenizer, tmp_path):
    _, tok, _, _ = chat
    other = export_gguf(write_ckpt_of(tiny_tokenizer, tmp_path), tmp_path / "tiny.gguf").out
    for path, t in ((files["f32"], tok), (other, tiny_tokenizer)):
        with open_llama(path, vocab_only=True) as llm:
            for text in HARD:
                ids = llm.tokenize(text.encode(), add_bos=True, special=False)  # add_bos: the file says no bos
                assert ids == t.encode(text), text
                assert llm.detokenize(ids).decode() == text


def write_ckpt_of(tok: Tokenizer, root: Path) -> Path:
    write_tiny_checkpoint(root / "tiny.pt", tok)
    return root / "tiny.pt"


def test_random_strings_equal_or_an_exact_score_tie(files, chat):
    """Where two segmentations score the same, sentencepiece and llama.cpp may pick either: same pieces, same text."""
    _, tok, _, _ = chat
    rng = random.Random(0)
    chars = list("abcxyz   \n\t.,!?07ÄéΩ日🙂\u2581<|>")
    texts = ["".join(rng.choice(chars) for _ in range(rng.randint(1, 30))) for _ in range(200)]
    texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + rng.choice(["", " ", ".", "\n"]) for _ in range(200)]
    ties = 0
    with open_llama(files["f32"], vocab_only=True) as llm:
        for text in texts:
            ours, theirs = tok.encode(text), llm.tokenize(text.encode(), add_bos=False, special=False)
            if ours != theirs:
                ties += 1
                assert sorted(ours) == sorted(theirs) and llm.detokenize(theirs).decode() == text, text
    assert ties <= len(texts) // 100


def test_real_text_ids_match_up_to_ties(shared_data, tmp_path):
    """A realistic vocabulary on real text (wikitext, oasst1): equal ids but for ties, and never lost text."""
    llama_cpp_or_skip()
    wiki = [json.loads(line)["text"] for line in open(shared_data / "wikitext-2-raw-v1" / "test.jsonl", encoding="utf-8")]
    chat_text = [json.loads(line)["text"] for line in open(shared_data / "oasst1" / "oasst1-validation-en.messages.jsonl", encoding="utf-8")]
    train_tokenizer([SourceSample("real", wiki[:2500] + chat_text[:600], "shared")], tmp_path, vocab_size=4000, seed=0, threads=2)
    tok = Tokenizer(tmp_path / "spm.model")
    path = export_gguf(write_ckpt_of(tok, tmp_path), tmp_path / "real.gguf").out
    texts = [t for t in wiki[2500:] + chat_text[600:] if t and not t.startswith("\ufeff")]
    ties = 0
    with open_llama(path, vocab_only=True) as llm:
        for text in texts:
            ours, theirs = tok.encode(text), llm.tokenize(text.encode(), add_bos=False, special=False)
            if ours != theirs:
                ties += 1
                assert llm.detokenize(theirs).decode() == text
                assert sum(map(tok.sp.get_score, ours)) == pytest.approx(sum(map(tok.sp.get_score, theirs)), abs=1e-3), text
    # llama.cpp breaks exact ties towards the longer first piece, sentencepiece by float32 rounding: 34 of 2299 here.
    assert ties <= len(texts) // 40, f"{ties} of {len(texts)} texts differ"


def test_typed_control_strings_stay_text_and_a_leading_bom_is_the_known_loss(files, chat):
    _, tok, _, _ = chat
    with open_llama(files["f32"], vocab_only=True) as llm:
        text = "say <|eot|> now <|usr|>"
        plain = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert plain == tok.encode(text) and not set(plain) & set(tok.special_ids.values())
        # Parsing specials (what a chat template's rendering uses) reads the string as the control token.
        assert tok.eot_id in llm.tokenize(text.encode(), add_bos=False, special=True)
        # plamo2 drops a U+FEFF that starts the text (README): the rest is tokenized as ngpt does.
        assert llm.tokenize("\ufeffhello".encode(), add_bos=False, special=False) == tok.encode("hello")
        assert llm.tokenize("a\n\ufeffb".encode(), add_bos=False, special=False) == tok.encode("a\n\ufeffb")


def test_chat_template_renders_ngpt_prompt(files, chat):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _, tok, _, _ = chat
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": " the river\nand the stone "},
                {"role": "assistant", "content": "A small answer."}, {"role": "user", "content": "why\u2581not 12? 🙂"}]
    with open_llama(files["f32"], vocab_only=True) as llm:
        assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
        prompt = Jinja2ChatFormatter(CHAT_TEMPLATE, eos_token="<|eot|>", bos_token="")(messages=messages).prompt
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == prompt_ids(tok, messages)


# ---------------------------------------------------------------------------------------------
# The model.


def test_prompt_logits_equal_ngpt_fp32(files, chat):
    model, tok, _, convs = chat
    with open_llama(files["f32"], logits_all=True, n_ctx=T) as llm:
        for conv in convs[:4]:
            ids = render(tok, conv)[0][:T]
            diff = np.abs(llama_logits(llm, ids) - ngpt_logits(model, ids, tok.vocab_size)).max()
            assert diff < 1e-4, diff  # float32 rounding: each is ~2e-5 from a float64 forward


@pytest.mark.parametrize("dtype", ["q8_0", "bf16", "f16"])
def test_rounded_weights_agree_on_top1_at_99_percent_of_positions(files, chat, dtype):
    model, tok, _, convs = chat
    agree = total = 0
    with open_llama(files[dtype], logits_all=True, n_ctx=T) as llm:
        for conv in convs:
            ids = render(tok, conv)[0][:T]  # teacher-forced: the conversation itself, every position
            agree += int((llama_logits(llm, ids).argmax(-1) == ngpt_logits(model, ids, tok.vocab_size).argmax(-1)).sum())
            total += len(ids)
    assert total > 1000 and agree / total >= 0.99, f"{dtype}: {agree}/{total}"


def test_greedy_32_tokens_equal_ngpt(tmp_path, tiny_tokenizer):
    model = write_tiny_checkpoint(tmp_path / "c.pt", tiny_tokenizer)  # wide random weights: no early stop, no loop
    path = export_gguf(tmp_path / "c.pt", tmp_path / "c.gguf").out
    prompt = prompt_ids(tiny_tokenizer, [{"role": "user", "content": "the model and the small city"}])
    ours = Engine(model, tiny_tokenizer, "cpu", NO_AUTOCAST).generate(prompt, SamplingParams(temperature=0, max_new_tokens=32))
    assert len(ours.ids) == 32 and len(set(ours.ids)) > 4
    with open_llama(path, n_ctx=model.cfg.seq_len) as llm:
        tokens = llm.generate(prompt, temp=0.0, repeat_penalty=1.0)
        theirs = [next(tokens) for _ in range(32)]
        tokens.close()
    assert theirs == ours.ids


def test_chat_completion_equals_ngpt_chat_greedy(files, chat, tmp_path, monkeypatch):
    from ngpt.cli.main import app

    _, tok, ckpt, convs = chat
    question = convs[1][1]["content"]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    budget = T - len(prompt_ids(tok, messages))
    monkeypatch.chdir(tmp_path)  # no configs/system.txt: the system prompt is the one given
    result = CliRunner().invoke(app, ["chat", "--ckpt", str(ckpt), "-p", question, "--system", SYSTEM, "--temperature", "0",
                                      "--precision", "fp32", "--device", "cpu", "--max-new-tokens", str(budget)])
    assert result.exit_code == 0, result.output
    reply = result.stdout.removesuffix("\n")
    assert reply == convs[1][2]["content"]  # the model learned its conversation: a real reply, ended by <|eot|>
    with open_llama(files["f32"], n_ctx=T) as llm:
        out = llm.create_chat_completion(messages, temperature=0.0, max_tokens=budget, repeat_penalty=1.0)
    assert out["choices"][0]["message"]["content"] == reply and out["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("name", [n for n in OPTIONS if n not in REFUSED])
def test_architecture_option_logits_equal(name, tmp_path, tiny_tokenizer):
    llama_cpp_or_skip()
    cfg = ModelSettings(vocab_size=tiny_tokenizer.vocab_size, seq_len=48, n_embd=32, n_layer=2, n_head=4, **{**CLASSIC, **OPTIONS[name]})
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # zero-initialised weights are no longer zero, gains no longer ones
        model(idx[:, :-1], idx[:, 1:], logits="none")[1].backward()
        opt.step()
        opt.zero_grad()
    result = export_gguf(save_tiny(tmp_path / "c.pt", model.eval(), tiny_tokenizer), tmp_path / "c.gguf")
    assert result.architecture == ("qwen3" if cfg.qk_norm else "arcee" if cfg.mlp == "relu2" else "llama")
    names = {t.name for t in gguf.GGUFReader(result.out).tensors}
    assert ("output.weight" in names) == (not cfg.tie_embeddings or cfg.embed_norm)  # a folded embedding norm unties
    assert ("blk.0.attn_q_norm.weight" in names) == cfg.qk_norm and ("blk.0.ffn_gate.weight" in names) == (cfg.mlp == "swiglu")
    ids = idx[0].tolist()[:40]
    with open_llama(result.out, logits_all=True, n_ctx=48) as llm:
        diff = np.abs(llama_logits(llm, ids) - ngpt_logits(model, ids, cfg.vocab_size)).max()
    assert diff < 1e-4, (name, diff)


def test_padded_vocabulary_rows_are_dropped(tmp_path, tiny_tokenizer):
    cfg = ModelSettings(vocab_size=tiny_tokenizer.vocab_size + 8, seq_len=48, n_embd=32, n_layer=1, n_head=4)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    path = export_gguf(save_tiny(tmp_path / "c.pt", model, tiny_tokenizer), tmp_path / "c.gguf").out
    ids = tiny_tokenizer.encode("the river and the stone")
    with open_llama(path, logits_all=True, n_ctx=48) as llm:
        assert llm.n_vocab() == tiny_tokenizer.vocab_size  # ids with no text: ngpt never generates them either
        assert np.abs(llama_logits(llm, ids) - ngpt_logits(model, ids, tiny_tokenizer.vocab_size)).max() < 1e-4


# ---------------------------------------------------------------------------------------------
# ollama, the CLI, refusals and bad input.


def test_ollama_modelfile(files):
    text = files["f32"].with_suffix(".Modelfile").read_text()
    lines = text.splitlines()
    assert f"FROM ./{files['f32'].name}" in lines and f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in lines
    params = dict(line.removeprefix("PARAMETER ").split(" ", 1) for line in lines if line.startswith("PARAMETER "))
    assert params == {"stop": '"<|eot|>"', "num_ctx": str(T), "num_predict": "256", "temperature": "0.7", "top_k": "40",
                      "top_p": "0.95", "min_p": "0.0", "repeat_penalty": "1.0", "repeat_last_n": "-1"}
    # The Go template spells the same rendering as CHAT_TEMPLATE: each role's token, the content, <|eot|>; then <|asst|>.
    for role, token in (("system", "<|sys|>"), ("user", "<|usr|>"), ("assistant", "<|asst|>")):
        assert f'eq .Role "{role}" }}}}{token}{{{{ .Content }}}}<|eot|>' in OLLAMA_TEMPLATE
    assert OLLAMA_TEMPLATE.endswith("{{ end }}<|asst|>") and "\n" not in OLLAMA_TEMPLATE


def test_cli_export_gguf(chat, tmp_path):
    import typer

    from ngpt.cli import export
    from ngpt.cli.main import USER_ERRORS

    root = typer.Typer()  # mounted as ngpt/cli/main.py mounts it
    root.add_typer(export.app, name="export")
    root.command("other")(lambda: None)
    args = ["export", "gguf", "--ckpt", str(chat[2].parent), "--out", str(tmp_path / "m.gguf"), "--dtype", "q8_0", "--ollama"]
    result = CliRunner().invoke(root, args)
    assert result.exit_code == 0, result.output
    assert "m.gguf" in result.output and "m.Modelfile" in result.output and "ollama create m" in result.output
    assert "llama" in result.output and "q8_0" in result.output
    again = CliRunner().invoke(root, args)
    assert isinstance(again.exception, FileExistsError) and isinstance(again.exception, USER_ERRORS)  # → error panel
    assert CliRunner().invoke(root, [*args, "--force"]).exit_code == 0


@pytest.mark.parametrize("opts, needle", [({"logit_softcap": 15.0}, "model.logit_softcap=15"),
                                          ({"qk_norm": True, "mlp": "relu2"}, "model.qk_norm with model.mlp=relu2")])
def test_an_option_llama_cpp_cannot_express_is_refused_by_name(opts, needle, tmp_path, tiny_tokenizer):
    cfg = ModelSettings(vocab_size=tiny_tokenizer.vocab_size, seq_len=16, n_embd=32, n_layer=1, n_head=4, **opts)
    ckpt = save_tiny(tmp_path / "c.pt", GPT(cfg), tiny_tokenizer)
    with pytest.raises(ExportError, match=needle) as e:
        export_gguf(ckpt, tmp_path / "c.gguf")
    assert "GGUF (llama.cpp)" in str(e.value)
    assert list(tmp_path.iterdir()) == [ckpt]  # nothing written


def test_existing_output_needs_force_and_bad_paths_are_named(tmp_path, tiny_tokenizer):
    ckpt = write_ckpt_of(tiny_tokenizer, tmp_path)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="--force"):
        export_gguf(ckpt, out)
    assert out.read_bytes() == b"mine"
    export_gguf(ckpt, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"
    (tmp_path / "m2.Modelfile").write_text("mine")
    with pytest.raises(FileExistsError, match="m2.Modelfile exists; pass --force"):
        export_gguf(ckpt, tmp_path / "m2.gguf", ollama=True)
    assert not (tmp_path / "m2.gguf").exists()
    with pytest.raises(ValueError, match="ending in .gguf"):
        export_gguf(ckpt, tmp_path / "exports")
    (tmp_path / "d.gguf").mkdir()
    with pytest.raises(FileExistsError, match="is a folder"):
        export_gguf(ckpt, tmp_path / "d.gguf")
    with pytest.raises(ValueError, match="--dtype 'q4_0': choose one of f32, f16, bf16, q8_0"):
        export_gguf(ckpt, tmp_path / "q.gguf", dtype="q4_0")


def test_checkpoint_without_tokenizer_is_refused_and_leaves_the_old_file(tmp_path, tiny_tokenizer):
    ckpt = write_ckpt_of(tiny_tokenizer, tmp_path)
    out = export_gguf(ckpt, tmp_path / "m.gguf").out
    before = out.read_bytes()
    state = load_checkpoint(ckpt)
    del state["tokenizer_model"]
    save_checkpoint(tmp_path / "bare.pt", state)
    with pytest.raises(CheckpointError, match="does not carry its tokenizer"):
        export_gguf(tmp_path / "bare.pt", out, force=True)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failure_mid_write_leaves_no_file(tmp_path, tiny_tokenizer, monkeypatch):
    import ngpt.export.gguf as export_module

    ckpt = write_ckpt_of(tiny_tokenizer, tmp_path)
    real, calls = export_module.encode_tensor, []

    def failing(a, dtype):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(a, dtype)

    monkeypatch.setattr(export_module, "encode_tensor", failing)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(ckpt, tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_q8_0_needs_whole_blocks(tmp_path, tiny_tokenizer):
    cfg = ModelSettings(vocab_size=tiny_tokenizer.vocab_size, seq_len=16, n_embd=48, n_layer=1, n_head=4)
    ckpt = save_tiny(tmp_path / "c.pt", GPT(cfg), tiny_tokenizer)
    with pytest.raises(ValueError, match="model.n_embd=48 is not a multiple of 32; use --dtype f16"):
        export_gguf(ckpt, tmp_path / "c.gguf", dtype="q8_0")
    export_gguf(ckpt, tmp_path / "c.gguf", dtype="f16")


def test_a_vocabulary_over_the_formats_limits_is_refused(tmp_path, tiny_tokenizer):
    class Huge:  # what plamo2_vocab reads first: ids are int32 in llama.cpp
        vocab_size, path = MAX_VOCAB + 1, Path("huge.model")

    with pytest.raises(ExportError, match="llama.cpp token ids are int32"):
        plamo2_vocab(Huge())
    # Without byte fallback, plamo2 (the only unigram tokenizer of llama.cpp that keeps every character) refuses to load.
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(["the river and the stone"] * 50), model_prefix=str(tmp_path / "nb"),
                                   vocab_size=40, model_type="unigram", control_symbols=["<|sys|>", "<|usr|>", "<|asst|>", "<|eot|>"],
                                   byte_fallback=False, normalization_rule_name="identity", add_dummy_prefix=False,
                                   bos_id=-1, eos_id=-1, hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(ExportError, match="no byte-fallback piece for 256 bytes"):
        plamo2_vocab(Tokenizer(tmp_path / "nb.model"))


def test_without_the_gguf_package_the_error_names_the_extra(tmp_path, tiny_tokenizer, monkeypatch):
    ckpt = write_ckpt_of(tiny_tokenizer, tmp_path)
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    with pytest.raises(RuntimeError, match=r"pip install -e \"\.\[gguf\]\""):
        export_gguf(ckpt, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
