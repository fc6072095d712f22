"""Tests for `ngpt chat` (ngpt/cli/chat.py): one-shot -p, seeds, checkpoint forms, system prompts,
context overflow, and an interactive session driven through a real pty.

    pytest tests/test_chat_cli.py

The checkpoint is a tiny model overfitted in a second to three conversations, so greedy replies are
known exactly: "hi" → HELLO; "hi" again in the same conversation → TWICE (so history reaches the
model); "hi" under the system prompt FRENCH → BONJOUR (so the system prompt does). It is saved with
the dict keys the training loop writes, and carries the session's tiny tokenizer.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ngpt.chat_format import labels_from_mask, render
from ngpt.settings import IGNORE_INDEX
from ngpt.cli.chat import ChatSession
from ngpt.train.pipeline import raw_overrides as _raw_overrides
from ngpt.cli.main import app, main
from ngpt.engine import Engine
from ngpt.sampling import SamplingParams
from ngpt.model import GPT
from ngpt.settings import GenerationSettings, load_settings
from ngpt.checkpoint import CHECKPOINT_VERSION, load_checkpoint, load_for_inference, save_checkpoint
from ngpt.train.checkpoint import rng_state

REPO = Path(__file__).resolve().parents[1]
HELLO, TWICE, FRENCH, BONJOUR = "Hello there, river!", "You said hi twice.", "Answer in French.", "Bonjour!"
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": HELLO}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": HELLO},
     {"role": "user", "content": "hi"}, {"role": "assistant", "content": TWICE}],
    [{"role": "system", "content": FRENCH}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": BONJOUR}],
]
MODEL = {"seq_len": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}
FAST = ["--device", "cpu", "--precision", "fp32", "--temperature", "0", "--max-new-tokens", "24"]


def checkpoint_dict(model: GPT, optimizer, settings, tok, step: int) -> dict:
    """What ngpt.train.checkpoint.checkpoint_state writes, for a model trained outside the loop."""
    return {
        "version": CHECKPOINT_VERSION, "phase": "sft", "step": step, "model": model.state_dict(),
        "model_config": settings.model.model_dump(mode="json"), "optimizer": optimizer.state_dict(),
        "scaler": None, "rng": rng_state(), "sampler": {}, "settings": settings.model_dump(mode="json"),
        "overrides": {}, "tokenizer_sha256": tok.sha256, "tokenizer_model": tok.proto, "run_id": "test-chat",
        "best_val": None, "tokens_seen": 0,
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """{"file": a trained .pt file, "folder": a phase folder holding it as best.pt, "random": an untrained .pt}."""
    tok = tiny_tokenizer
    settings = load_settings(overrides={"model": {**MODEL, "vocab_size": tok.vocab_size}}, environ={})
    torch.manual_seed(0)
    model = GPT(settings.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    root = tmp_path_factory.mktemp("chat_ckpts")
    save_checkpoint(root / "random.pt", checkpoint_dict(model, optimizer, settings, tok, 0))

    rows = [render(tok, conv) for conv in CONVERSATIONS]
    width = max(len(ids) for ids, _ in rows)
    idx = torch.zeros(len(rows), width - 1, dtype=torch.long)
    targets = torch.full((len(rows), width - 1), IGNORE_INDEX)
    for r, (ids, mask) in enumerate(rows):
        labels = labels_from_mask(ids, mask)
        idx[r, : len(ids) - 1] = torch.tensor(ids[:-1])
        targets[r, : len(ids) - 1] = torch.tensor(labels[1:])
    for _ in range(300):
        _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert loss.item() < 0.01, f"the tiny chat model did not fit its three conversations (loss {loss.item():.3f})"
    save_checkpoint(root / "trained.pt", checkpoint_dict(model.eval(), optimizer, settings, tok, 300))
    save_checkpoint(root / "sft" / "best.pt", checkpoint_dict(model, optimizer, settings, tok, 300))
    return {"file": root / "trained.pt", "folder": root / "sft", "random": root / "random.pt"}


@pytest.fixture(autouse=True)
def no_default_system_prompt(tmp_path, monkeypatch):
    """Run where configs/system.txt does not exist, unless a test puts one there."""
    monkeypatch.chdir(tmp_path)


def chat(*args: str):
    result = CliRunner().invoke(app, ["chat", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


# ---------------------------------------------------------------------------------------------
# -p: one answer, then exit.


def test_prompt_prints_only_the_reply_on_a_pipe(ckpts):
    result = chat("--ckpt", str(ckpts["file"]), "-p", "hi", *FAST)
    assert result.stdout == HELLO + "\n"  # stdout is not a terminal here: the reply alone, for scripts
    assert "ngpt chat" in result.stderr and "fp32" in result.stderr and "stop: end of turn" in result.stderr
    assert "sft phase, step 300" in result.stderr


def test_file_and_folder_checkpoints_load_alike(ckpts):
    from_folder = chat("--ckpt", str(ckpts["folder"]), "-p", "hi", *FAST)
    assert from_folder.stdout == HELLO + "\n"
    assert str(ckpts["folder"] / "best.pt") in from_folder.stderr


def test_system_file_and_system_flag_reach_the_model(ckpts, tmp_path):
    (tmp_path / "french.txt").write_text(FRENCH + "\n", encoding="utf-8")
    assert chat("--ckpt", str(ckpts["file"]), "-p", "hi", "--system-file", "french.txt", *FAST).stdout == BONJOUR + "\n"
    assert chat("--ckpt", str(ckpts["file"]), "-p", "hi", "--system", FRENCH, *FAST).stdout == BONJOUR + "\n"
    result = CliRunner().invoke(app, ["chat", "--ckpt", str(ckpts["file"]), "-p", "hi", "--system", "x",
                                      "--system-file", "french.txt"])
    assert result.exit_code == 2 and "not both" in result.output


def test_default_system_prompt_from_configs_and_off_with_empty_flag(ckpts, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "system.txt").write_text(FRENCH, encoding="utf-8")
    result = chat("--ckpt", str(ckpts["file"]), "-p", "hi", *FAST)
    assert result.stdout == BONJOUR + "\n" and "configs/system.txt" in result.stderr
    assert chat("--ckpt", str(ckpts["file"]), "-p", "hi", "--system", "", *FAST).stdout == HELLO + "\n"


def test_shipped_system_prompt_is_short_and_names_ngpt():
    text = (REPO / "configs" / "system.txt").read_text(encoding="utf-8").strip()
    assert "ngpt" in text and 0 < len(text) < 300 and "\n" not in text


def test_same_seed_same_text_when_sampling(ckpts):
    args = ["--ckpt", str(ckpts["random"]), "-p", "the river", "--device", "cpu", "--precision", "fp32",
            "--temperature", "1", "--top-k", "0", "--top-p", "1", "--max-new-tokens", "12"]
    first, again = chat(*args, "--seed", "7").stdout, chat(*args, "--seed", "7").stdout
    assert first == again and first.strip()
    # Untrained weights are near uniform: other seeds must give other text (deterministic, not flaky).
    assert {chat(*args, "--seed", str(s)).stdout for s in (8, 9, 10)} != {first}


def test_kv_cache_off_and_default_precision_give_the_reply(ckpts):
    assert chat("--ckpt", str(ckpts["file"]), "-p", "hi", *FAST, "--no-kv-cache").stdout == HELLO + "\n"
    # auto precision (bf16 weights on CPUs with native bf16, else fp32): the overfitted reply survives it.
    result = chat("--ckpt", str(ckpts["file"]), "-p", "hi", "--device", "cpu", "--temperature", "0")
    assert result.stdout == HELLO + "\n"


def test_generation_flags_override_settings_in_print_config(ckpts):
    result = CliRunner().invoke(app, ["chat", "--ckpt", str(ckpts["file"]), "--temperature", "0.3", "--top-k", "7",
                                      "--seed", "5", "--print-config"])
    assert result.exit_code == 0
    assert '"temperature": 0.3' in result.stdout and '"top_k": 7' in result.stdout and '"seed": 5' in result.stdout


def test_max_new_tokens_stops_with_length(ckpts):
    result = chat("--ckpt", str(ckpts["file"]), "-p", "hi", *FAST, "--max-new-tokens", "2")
    assert 0 < len(result.stdout.strip()) < len(HELLO) and HELLO.startswith(result.stdout.strip())
    assert "2 tokens in" in result.stderr and "stop: --max-new-tokens reached" in result.stderr


def test_max_new_tokens_beyond_the_context_is_capped_and_said(ckpts):
    result = chat("--ckpt", str(ckpts["file"]), "-p", "hi", *FAST, "--max-new-tokens", "100")
    assert result.stdout == HELLO + "\n" and "32 (capped from 100" in result.stderr


def test_context_overflow_in_prompt_mode_is_a_clear_error(ckpts, capsys):
    long_prompt = " ".join(["the river and the mountain light"] * 30)  # far more than 64 tokens
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--ckpt", str(ckpts["file"]), "-p", long_prompt, *FAST])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "only 40 fit" in err and "context 64" in err and "shorten the message" in err


def test_missing_checkpoint_names_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--ckpt", str(tmp_path / "nope"), "-p", "hi"])
    assert exit_info.value.code == 1 and "nope" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The session: history, reset, dropping the oldest turns.


def test_session_keeps_history_resets_and_drops_oldest_turns(ckpts):
    model, tok, _ = load_for_inference(ckpts["file"])
    session = ChatSession(Engine(model, tok, "cpu"), SamplingParams(max_new_tokens=24, temperature=0), None)
    pieces: list[str] = []
    assert session.ask("hi", pieces.append).result.text == HELLO and "".join(pieces) == HELLO
    assert session.ask("hi", lambda _: None).result.text == TWICE  # the first turn reached the model
    session.reset()
    assert session.history == [] and session.ask("hi", lambda _: None).result.text == HELLO

    for k in range(4):  # long turns: a 64-token context soon holds only the latest
        turn = session.ask(f"the river and the mountain light number {k}", lambda _: None)
    assert turn.dropped > 0
    assert session.history[0]["role"] == "user" and session.history[-2]["content"].endswith("number 3")
    before = list(session.history)
    with pytest.raises(ValueError, match="shorten the message"):
        session.ask(" ".join(["stone"] * 200), lambda _: None)
    assert session.history == before  # a message that cannot fit leaves the conversation as it was


# ---------------------------------------------------------------------------------------------
# An interactive session through a real terminal.

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\r")


class Terminal:
    """`python -m ngpt chat ...` on a pty; waits for output with deadlines, never fixed sleeps."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160", "NO_COLOR": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ngpt", "chat", *args], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=cwd, env=env, close_fds=True)
        os.close(slave)
        self.text = ""

    def expect_prompts(self, n: int, timeout: float = 60) -> str:
        """Read until the output holds n `you: ` prompts in all; the output so far, cleaned of ANSI codes."""
        deadline = time.monotonic() + timeout
        while ANSI.sub("", self.text).count("you: ") < n:
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, f"no prompt #{n}; output so far:\n{ANSI.sub('', self.text)}"
            if select.select([self.master], [], [], left)[0]:
                self.text += os.read(self.master, 65536).decode("utf-8", "replace")
        return ANSI.sub("", self.text)

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_interactive_session_on_a_pty(ckpts, tmp_path):
    term = Terminal(["--ckpt", str(ckpts["folder"]), *FAST], tmp_path)
    try:
        intro = term.expect_prompts(1)
        assert "ngpt chat" in intro and "/reset" in intro and "/exit" in intro
        term.send("hi")
        first = term.expect_prompts(2).split("you: ")[-2]
        assert HELLO in first and "stop: end of turn" in first
        term.send("hi")
        assert TWICE in term.expect_prompts(3).split("you: ")[-2]  # history is kept between turns
        term.send("/reset")
        assert "history cleared" in term.expect_prompts(4).split("you: ")[-2]
        term.send("hi")
        after_reset = term.expect_prompts(5).split("you: ")[-2]
        assert HELLO in after_reset and TWICE not in after_reset
        term.send("/exit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


def test_interactive_session_ends_on_eof(ckpts, tmp_path):
    term = Terminal(["--ckpt", str(ckpts["file"]), *FAST], tmp_path)
    try:
        term.expect_prompts(1)
        os.write(term.master, b"\x04")  # Ctrl-D at an empty prompt: EOF
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


def test_checkpoint_generation_settings_sit_under_config_and_flags(ckpts, tmp_path, tiny_tokenizer):
    """A model trained with generation settings chats with them unless --config or a flag says otherwise."""
    state = load_checkpoint(ckpts["random"])
    train_config = tmp_path / "train.json"
    train_config.write_text(json.dumps({"generation": {"temperature": 0.3, "top_k": 7, "retired_key": 1}}))
    state["overrides"] = _raw_overrides(train_config, {"pretrain": {"total_steps": 5}})  # as `ngpt train` records it
    path = tmp_path / "tuned.pt"
    save_checkpoint(path, state)

    def resolved(*args: str) -> dict:
        out = chat("--ckpt", str(path), "--device", "cpu", "--print-config", *args).stdout
        return json.loads(out)["generation"]

    assert resolved()["temperature"] == 0.3 and resolved()["top_k"] == 7
    config = tmp_path / "gen.json"
    config.write_text(json.dumps({"generation": {"temperature": 0.5}}))
    assert resolved("-c", str(config)) == {**resolved(), "temperature": 0.5}
    assert resolved("-c", str(config), "--temperature", "0.9")["temperature"] == 0.9
    plain = chat("--ckpt", str(ckpts["random"]), "--device", "cpu", "--print-config").stdout
    assert json.loads(plain)["generation"]["temperature"] == GenerationSettings().temperature


# ---------------------------------------------------------------------------------------------
# Text that is not text (issue 14): a message saying which character, never a traceback.


def test_prompt_with_a_byte_that_is_not_utf8_is_refused_before_the_model_loads(tmp_path, capsys):
    # Python hands argv bytes that are not UTF-8 over as surrogateescape'd code points: b"\xff" → "\udcff".
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--ckpt", str(tmp_path / "not-even-there"), "-p", "caf\udcff"])
    assert exit_info.value.code == 1
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "-p/--prompt holds byte 0xFF, which is not valid UTF-8, at character 3" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["chat", "--ckpt", str(tmp_path / "not-even-there"), "-p", "hi", "--system", "be \ud800"])
    assert "--system holds a lone UTF-16 surrogate U+D800" in " ".join(capsys.readouterr().err.replace("│", " ").split())


def test_prompt_bytes_from_a_real_command_line(ckpts, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ngpt", "chat", "--ckpt", str(ckpts["file"]), "-p", b"caf\xe9"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "byte 0xE9, which is not valid UTF-8" in result.stderr and "Traceback" not in result.stderr


def test_system_file_that_is_not_utf8_names_the_file_and_line(ckpts, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes(b"Be brief.\nR\xe9pondez en fran\xe7ais.\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--ckpt", str(ckpts["file"]), "-p", "hi", "--system-file", "latin1.txt", *FAST])
    assert exit_info.value.code == 1
    assert "latin1.txt:2 is not valid UTF-8 (byte 0xE9)" in " ".join(capsys.readouterr().err.replace("│", " ").split())


@pytest.mark.parametrize("io_errors", ["surrogateescape", "strict"])
def test_interactive_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(ckpts, tmp_path, monkeypatch, io_errors):
    """A terminal in another encoding: Python either decodes the line with surrogateescape (the C locale's
    default) or fails to decode it (strict); either way a message, then the next prompt."""
    monkeypatch.setenv("PYTHONIOENCODING", f"utf-8:{io_errors}")
    term = Terminal(["--ckpt", str(ckpts["file"]), *FAST], tmp_path)
    try:
        term.expect_prompts(1)
        os.write(term.master, b"caf\xe9\n")  # Latin-1 "café"
        refused = term.expect_prompts(2).split("you: ")[-2]
        assert "0xE9" in refused and "UTF-8" in refused.upper() and "Traceback" not in refused
        term.send("hi")
        assert HELLO in term.expect_prompts(3).split("you: ")[-2]  # the chat goes on, history untouched
        term.send("/exit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()
