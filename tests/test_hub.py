"""Tests for ngpt/hub.py and `ngpt hub upload|download` against a loopback hub (tests/hub_server.py).

huggingface_hub's own upload/download code runs unchanged; only HF_ENDPOINT points at 127.0.0.1
(and xet is off: the loopback hub speaks the LFS transfer). Upload → download → the folder chats;
second runs skip unchanged files; a connection lost mid-commit leaves the repo untouched and a
retry resumes; offline and unreachable hubs are clear errors; the token is never printed.

    pytest tests/test_hub.py
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hub_server import LoopbackHub
from ngpt.chat_format import prompt_ids
from ngpt.device import Precision
from ngpt.engine import Engine
from ngpt.sampling import SamplingParams
from ngpt.export.hf import export_hf
from ngpt.hub import HubError, download, upload
from ngpt.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, load_for_inference, save_checkpoint
from test_export import write_tiny_checkpoint

hf_constants = pytest.importorskip("huggingface_hub.constants")

TOKEN = "hf_loopbackSecretToken0123456789"
REPO = "someone/tiny-chat"
FP32 = Precision(False, None, False)
GREEDY = SamplingParams(temperature=0, max_new_tokens=16)


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub as a user with a token would run it (conftest forces the session offline)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # huggingface_hub reads these once at import; the test session imported it offline.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def hub(online, monkeypatch):
    with LoopbackHub(lifetime_s=60) as server:
        point_at(server.url, monkeypatch)
        yield server


def point_at(url: str, monkeypatch) -> None:
    """HF_ENDPOINT, plus the constants huggingface_hub derived from it at import (as if set before it)."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def ckpt(tmp_path, tiny_tokenizer) -> Path:
    write_tiny_checkpoint(tmp_path / "checkpoints" / "best.pt", tiny_tokenizer, runs_dir=str(tmp_path / "runs"))
    run = tmp_path / "runs" / "run-test"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"phase": "sft", "step": 5, "train_loss": 2.75}\n'
                                       '{"phase": "sft", "step": 7, "val_sft_loss": 2.5, "val_pretrain_loss": 3.125}\n')
    return tmp_path / "checkpoints" / "best.pt"


def greedy(path: Path) -> list[int]:
    model, tok, _ = load_for_inference(path)
    prompt = prompt_ids(tok, [{"role": "user", "content": "the small river"}])
    return Engine(model, tok, "cpu", FP32).generate(prompt, GREEDY).ids


def cli(*args: str):
    """`ngpt hub ...` through a root app mounted as ngpt/cli/main.py mounts it."""
    from ngpt.cli import hub as hub_cli

    root = typer.Typer()
    root.add_typer(hub_cli.app, name="hub")
    root.command("other")(lambda: None)
    return CliRunner().invoke(root, ["hub", *args])


def test_upload_then_download_chats(hub, ckpt, tmp_path):
    result = cli("upload", "--checkpoint", str(ckpt), "--repo-id", REPO)
    assert result.exit_code == 0, result.output
    assert "Committed" in result.output and TOKEN not in result.output
    assert "HF_TOKEN" in result.output  # where the token came from, never the token
    files = hub.files(REPO)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.model", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "best.pt", "README.md"} <= set(files)
    assert f"Bearer {TOKEN}" in hub.auth_headers
    card = files["README.md"].decode()
    for needed in ("LlamaForCausalLM", "2 × 64 × 4", "RoPE θ=5000", "| steps | 7 |", "| tokens seen | 12,345 |",
                   "wikitext", "| val_sft_loss | 2.5000 |", "| train_loss | 2.7500 |", f"ngpt hub download --repo-id {REPO}",
                   "apply_chat_template"):
        assert needed in card, needed

    out = tmp_path / "dl"
    result = cli("download", "--repo-id", REPO, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"ngpt chat --ckpt {out}" in result.output and TOKEN not in result.output
    assert find_checkpoint(out) == out / "best.pt"
    reference = export_hf(ckpt, tmp_path / "reference")  # what tests/test_export.py checks against transformers
    assert all((out / name).read_bytes() == (reference.out / name).read_bytes() for name in reference.files)
    assert greedy(out) == greedy(ckpt)  # the downloaded folder chats, exactly as the original
    state = load_checkpoint(out / "best.pt")
    assert "optimizer" not in state and state["step"] == 7 and state["tokenizer_model"]


def test_second_runs_skip_unchanged_files(hub, ckpt, tmp_path, tiny_tokenizer):
    first = upload(ckpt, REPO)
    puts = hub.count("PUT", "/lfs-upload/")
    again = upload(ckpt, REPO)
    assert not again.committed and again.commit == first.commit == hub.head(REPO)
    assert {f.status for f in again.files} == {"unchanged"}
    assert hub.count("PUT", "/lfs-upload/") == puts and hub.count("POST", "/commit/") == 1

    out = tmp_path / "dl"
    download(REPO, out=out)
    gets = hub.count("GET", "/resolve/")
    second = download(REPO, out=out)
    assert {f.status for f in second.files} == {"unchanged"} and hub.count("GET", "/resolve/") == gets

    # A later checkpoint of the same model: only the files that changed travel, both ways.
    write_tiny_checkpoint(ckpt, tiny_tokenizer, step=9)
    third = upload(ckpt, REPO)
    changed = {f.path for f in third.files if f.status == "changed"}
    assert third.committed and changed == {"best.pt", "README.md"}
    assert hub.count("PUT", "/lfs-upload/") == puts + 1  # best.pt; model.safetensors is the same bytes
    update = download(REPO, out=out)
    assert {f.path for f in update.files if f.status == "download"} == changed
    assert load_checkpoint(out / "best.pt")["step"] == 9


def test_connection_lost_mid_commit_leaves_repo_untouched_and_retry_resumes(hub, ckpt, tiny_tokenizer):
    first = upload(ckpt, REPO)
    before = hub.files(REPO)
    write_tiny_checkpoint(ckpt, tiny_tokenizer, seed=1, step=9)  # new weights: every large file changes
    hub.drop_commits = 1
    with pytest.raises(HubError, match="run the same command again") as err:
        upload(ckpt, REPO)
    assert hub.url in str(err.value)
    assert hub.head(REPO) == first.commit and hub.files(REPO) == before  # no partial commit
    puts = hub.count("PUT", "/lfs-upload/")
    retry = upload(ckpt, REPO)
    assert retry.committed and hub.head(REPO) == retry.commit != first.commit
    assert hub.files(REPO)["model.safetensors"] != before["model.safetensors"]
    assert hub.count("PUT", "/lfs-upload/") == puts  # large files stored before the failure are not sent again


def test_offline_mode_is_a_clear_error(hub, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    for call in (lambda: upload(ckpt, REPO), lambda: download(REPO, out=tmp_path / "dl")):
        with pytest.raises(HubError) as err:
            call()
        assert hub.url in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    assert hub.requests == []  # refused before any traffic


def test_unreachable_endpoint_is_a_clear_error(online, ckpt, tmp_path, monkeypatch):
    from ngpt.cli.main import USER_ERRORS

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    point_at(dead, monkeypatch)
    for args in (["upload", "--checkpoint", str(ckpt), "--repo-id", REPO], ["download", "--repo-id", REPO, "--out", str(tmp_path / "d")]):
        result = cli(*args)
        err = result.exception
        assert isinstance(err, HubError) and isinstance(err, USER_ERRORS)  # ngpt's main() → one error panel, exit 1
        assert dead in str(err) and "HF_ENDPOINT" in str(err) and "HF_HUB_OFFLINE" in str(err)
        assert TOKEN not in result.output + str(err)


def test_bad_token_is_explained_without_printing_it(hub, ckpt):
    hub.require_token = "hf_the_right_one"
    with pytest.raises(HubError) as err:
        upload(ckpt, REPO)
    message = str(err.value)
    assert "401" in message and "HF_TOKEN" in message and "hf auth login" in message and TOKEN not in message


def test_private_repo_on_a_branch(hub, ckpt, tmp_path):
    result = cli("upload", "--checkpoint", str(ckpt), "--repo-id", REPO, "--private", "--revision", "dev")
    assert result.exit_code == 0, result.output
    assert hub.repos[REPO].private
    assert set(hub.files(REPO, "main")) == {".gitattributes"} and "best.pt" in hub.files(REPO, "dev")
    got = download(REPO, revision="dev", out=tmp_path / "dl")
    assert got.commit == hub.head(REPO, "dev") and got.checkpoint.name == "best.pt"
    with pytest.raises(HubError, match="no revision"):
        download(REPO, revision="nope", out=tmp_path / "dl2")


def test_native_checkpoint_name_follows_the_upload(hub, ckpt, tmp_path):
    upload(ckpt, REPO)
    out = tmp_path / "dl"
    download(REPO, out=out)
    periodic = ckpt.parent / "step_0000009.pt"
    periodic.write_bytes(ckpt.read_bytes())
    result = upload(periodic, REPO)
    assert {(f.path, f.status) for f in result.files} >= {("latest.pt", "new"), ("best.pt", "deleted")}
    assert "best.pt" not in hub.files(REPO)
    update = download(REPO, out=out)
    assert ("best.pt", "removed") in {(f.path, f.status) for f in update.files}
    assert find_checkpoint(out) == out / "latest.pt"  # no stale best.pt shadows it


def test_bad_inputs_fail_before_any_traffic(hub, ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        upload(tmp_path / "missing.pt", REPO)
    state = load_checkpoint(ckpt)
    del state["tokenizer_model"]
    save_checkpoint(tmp_path / "bare.pt", state)
    with pytest.raises(CheckpointError, match="does not carry its tokenizer"):
        upload(tmp_path / "bare.pt", REPO)
    with pytest.raises(ValueError, match="USER/NAME"):
        upload(ckpt, "no-namespace")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--force"):
        download(REPO, out=foreign)
    assert hub.requests == []
    with pytest.raises(HubError, match="not found"):
        download(REPO, out=tmp_path / "dl")
