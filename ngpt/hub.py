"""Share models through the Hugging Face hub: upload a checkpoint as a transformers repo, download it back.

    ngpt hub upload --checkpoint checkpoints/best.pt --repo-id you/ngpt-small [--private] [--revision main]
    ngpt hub download --repo-id you/ngpt-small          # → checkpoints/hub/ngpt-small
    ngpt chat --ckpt checkpoints/hub/ngpt-small

A repo holds the `ngpt export hf` folder (transformers loads it with no ngpt code), the native
checkpoint as best.pt or latest.pt (weights, settings and tokenizer, without optimizer state: it
chats, serves, exports and seeds SFT; it does not resume training) and a model card (README.md).

Transport is huggingface_hub's: the token comes from HF_TOKEN or the stored login (`hf auth login`)
and is never printed; HF_ENDPOINT picks the hub (a mirror, a private hub). Both directions skip what
is already there: upload compares the local files with the remote tree and commits only the
changed ones (nothing changed → no commit); download keeps files whose commit and etag match.
An upload is one commit, made after every large file is stored: a failure mid-way leaves the
repo as it was, and running the same command again sends only what the hub does not hold yet.
A repo holds one model: uploading latest.pt deletes a best.pt left by an earlier upload (and a
download removes it locally), so `ngpt chat` never loads a stale checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ngpt.export.hf import write_hf_folder
from ngpt.io_utils import atomic_write_bytes, atomic_write_text, file_digest, file_sha256
from ngpt.settings import SPECIAL_TOKENS, ModelSettings

SYS, USR, ASST, EOT = SPECIAL_TOKENS
from ngpt.checkpoint import CheckpointError, find_checkpoint, load_checkpoint

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_VARS = "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE"
# What a shared checkpoint keeps: enough to chat, serve, export and start SFT from; no optimizer, RNG or sampler.
SHARED_KEYS = ("version", "phase", "step", "model", "model_config", "settings", "overrides", "tokenizer_sha256",
               "tokenizer_model", "run_id", "best_val", "tokens_seen")
NATIVE_NAMES = ("best.pt", "latest.pt")  # what find_checkpoint looks for in a folder


class HubError(RuntimeError):
    """The hub could not be reached or refused a request; the message names the endpoint and the fix."""


@dataclass
class FileStatus:
    path: str
    size: int
    status: str  # upload: new | changed | unchanged | deleted; download: download | unchanged | removed


@dataclass
class UploadResult:
    repo_id: str
    revision: str
    endpoint: str
    commit: str  # the head after the upload (unchanged when nothing changed)
    committed: bool
    files: list[FileStatus]

    @property
    def url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}" + ("" if self.revision == "main" else f"/tree/{self.revision}")


@dataclass
class DownloadResult:
    repo_id: str
    revision: str
    commit: str
    out: Path
    checkpoint: Path
    files: list[FileStatus]


# ---------------------------------------------------------------------------------------------
# Where, who, and turning transport failures into sentences.


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once at import), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token_source() -> str:
    """Where the token comes from, for the plan table (never the token itself)."""
    from huggingface_hub import get_token

    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "HF_TOKEN"
    return "stored login" if get_token() else "none (anonymous)"


def check_repo_id(repo_id: str) -> str:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ValueError(f"--repo-id {repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.'), e.g. you/ngpt-small")
    return repo_id


def _scrub(text: str) -> str:
    """Belt and braces: whatever a server echoes back, the token never reaches the terminal."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


def check_online(endpoint: str, doing: str) -> None:
    """Offline mode (as huggingface_hub sees it) is a clear error before any work, not a failure mid-way."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise HubError(
            f"{doing}: offline mode is on ({OFFLINE_VARS}=1), so the hub at {endpoint} is not contacted. "
            "Unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE to reach it; a folder already downloaded "
            "chats without the network: ngpt chat --ckpt checkpoints/hub/NAME."
        )


@contextmanager
def hub_errors(endpoint: str, doing: str, repo_id: str) -> Iterator[None]:
    """Re-raise huggingface_hub/httpx failures as HubError sentences naming the endpoint and the fix."""
    from huggingface_hub.errors import (
        DryRunError,
        FileMetadataError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    check_online(endpoint, doing)
    unreachable = (
        f"{doing}: cannot reach the Hugging Face hub at {endpoint}{{why}}. Check the network, or point "
        f"HF_ENDPOINT at a reachable hub; to work offline set {OFFLINE_VARS}=1 and use local folders."
    )
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(unreachable.format(why=f" (offline mode: {OFFLINE_VARS})")) from None
    except (LocalEntryNotFoundError, DryRunError, FileMetadataError) as e:
        raise HubError(unreachable.format(why=f" ({type(e).__name__}: {_scrub(str(e))[:200]})")) from None
    except RevisionNotFoundError:
        raise HubError(f"{doing}: {repo_id} on {endpoint} has no revision by that name; check --revision.") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{doing}: repo {repo_id} was not found on {endpoint}, or it is private and this token cannot see it. "
            f"Check --repo-id; log in with `hf auth login` or set HF_TOKEN (token now: {token_source()})."
        ) from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = ""
        if status in (401, 403):
            hint = f" Log in with `hf auth login` or set HF_TOKEN to a token with write access (token now: {token_source()})."
        message = _scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise HubError(f"{doing}: the hub at {endpoint} answered {status} for {repo_id}: {message}.{hint}") from None
    except Exception as e:
        if not is_transport_error(e):
            raise
        raise HubError(unreachable.format(why=f" ({type(e).__name__}: {_scrub(str(e))[:200]})")) from None


def is_transport_error(e: BaseException) -> bool:
    """A connect/read/write/timeout/protocol failure of the HTTP client under huggingface_hub (httpx or httpx2)."""
    return any(c.__name__ == "TransportError" and c.__module__.startswith("httpx") for c in type(e).__mro__)


# ---------------------------------------------------------------------------------------------
# What goes into a repo.


def native_name(path: Path) -> str:
    """The checkpoint's name in the repo: one find_checkpoint picks up in the downloaded folder."""
    return path.name if path.name in NATIVE_NAMES else "latest.pt"


def shared_checkpoint_bytes(state: dict) -> bytes:
    """The checkpoint without optimizer/RNG/sampler state; the same bytes for the same checkpoint.

    Saved through a buffer: torch.save names its zip entries after the file it writes, so saving
    to a temp name would give different bytes (and a pointless re-upload) every time.
    """
    buf = io.BytesIO()
    torch.save({k: state[k] for k in SHARED_KEYS if k in state}, buf)
    return buf.getvalue()


def final_metrics(state: dict) -> dict[str, float]:
    """The last logged value of each metric of the checkpoint's phase, from runs/<run_id>/metrics.jsonl when present."""
    from ngpt.metrics import read_metrics

    settings, run_id = state.get("settings") or {}, state.get("run_id")
    if not run_id:
        return {}
    out: dict[str, float] = {}
    for record in read_metrics(Path(settings.get("runs_dir", "runs")) / str(run_id) / "metrics.jsonl"):
        if record.get("phase") == state.get("phase") and record.get("step", 0) <= state.get("step", 0):
            out.update({k: v for k, v in record.items() if k.startswith(("val_", "train_loss")) and v is not None})
    return out


def _mix(mix: dict | None) -> str:
    return ", ".join(f"{name} {weight:g}" for name, weight in (mix or {}).items()) or "—"


def model_card(state: dict, repo_id: str, checkpoint_name: str, num_params: int) -> str:
    """README.md: architecture, data mix, steps, tokens, final metrics, and how to chat with it."""

    cfg = ModelSettings(**state["model_config"])
    settings = state.get("settings") or {}
    data = settings.get("data", {})
    phase = state.get("phase", "?")
    name = repo_id.split("/")[1]
    best_key = "val_sft_loss" if phase == "sft" else "val_pretrain_loss"
    metrics = {f"best {best_key}": state.get("best_val"), **final_metrics(state)}
    metric_rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, (int, float))) or "| (none logged) | |"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- ngpt
- llama
- chat
---

# {name}

A small chat model trained from scratch with ngpt. The weights load as `LlamaForCausalLM` with no
ngpt code; `{checkpoint_name}` is the same model as a native ngpt checkpoint.

## Architecture

| | |
|---|---|
| parameters | {num_params:,} (the LM head is tied to the embedding) |
| layers × width × heads | {cfg.n_layer} × {cfg.n_embd} × {cfg.n_head} (head dim {cfg.head_dim}) |
| MLP | SwiGLU, hidden {cfg.ffn_dim} |
| attention | causal, RoPE θ={cfg.rope_theta:g} (half-split, as Llama) |
| norm | RMSNorm, ε={cfg.norm_eps:g} |
| context | {cfg.seq_len} tokens |
| vocabulary | {cfg.vocab_size} (sentencepiece unigram, byte fallback, lossless) |

## Training

| | |
|---|---|
| phase | {phase} |
| steps | {state.get("step", 0):,} |
| tokens seen | {state.get("tokens_seen", 0):,} |
| pretrain mix | {_mix(data.get("mix_pretrain"))} |
| SFT mix | {_mix(data.get("mix_sft"))} |
| run id | {state.get("run_id", "—")} |
| tokenizer sha256 | `{state.get("tokenizer_sha256", "—")}` |

## Final metrics

| metric | value |
|---|---|
{metric_rows}

## Chat with it

With ngpt:

```bash
ngpt hub download --repo-id {repo_id}
ngpt chat --ckpt checkpoints/hub/{name}
```

With transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}")
messages = [{{"role": "user", "content": "Hello!"}}]
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=128)
print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```

The chat template is `{SYS}system{EOT}{USR}question{EOT}{ASST}answer{EOT}` (system
optional); generation stops at `{EOT}`. transformers reads the text "{EOT}" inside a message as
the control token; pass `sanitize_control_tokens=True` to `apply_chat_template` to encode it as text,
as ngpt does.
"""


def stage_repo_folder(path: Path, state: dict, repo_id: str, folder: Path) -> None:
    """Write everything a repo holds for this checkpoint into `folder`."""
    num_params = write_hf_folder(state, folder)
    name = native_name(path)
    atomic_write_bytes(folder / name, shared_checkpoint_bytes(state))
    atomic_write_text(folder / "README.md", model_card(state, repo_id, name, num_params))


def git_blob_sha1(path: Path) -> str:
    """The id git (and the hub's tree listing) gives a regular file's content."""
    return file_digest(path, hashlib.sha1(b"blob %d\0" % path.stat().st_size))


def compare_with_remote(folder: Path, remote: dict) -> list[FileStatus]:
    """new / changed / unchanged for each local file; native checkpoints only on the hub → deleted."""
    plan = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        theirs = remote.get(path.name)
        if theirs is None:
            status = "new"
        elif theirs.lfs is not None:
            status = "unchanged" if theirs.lfs.sha256 == file_sha256(path) else "changed"
        else:
            status = "unchanged" if theirs.blob_id == git_blob_sha1(path) else "changed"
        plan.append(FileStatus(path.name, path.stat().st_size, status))
    local = {p.name for p in folder.iterdir()}
    # A best.pt left from an earlier upload would shadow a new latest.pt in the downloaded folder.
    plan += [FileStatus(n, remote[n].size, "deleted") for n in NATIVE_NAMES if n in remote and n not in local]
    return plan


# ---------------------------------------------------------------------------------------------
# Upload and download.


def upload(
    checkpoint: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    on_plan: Callable[[list[FileStatus]], None] | None = None,
) -> UploadResult:
    """Export `checkpoint` and commit what changed to `repo_id` (created if missing) on HF_ENDPOINT."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile

    check_repo_id(repo_id)
    revision = revision or "main"
    endpoint = hub_endpoint()
    path = find_checkpoint(checkpoint)
    check_online(endpoint, f"upload to {repo_id}")
    state = load_checkpoint(path)
    if not state.get("tokenizer_model"):
        raise CheckpointError(f"{path} does not carry its tokenizer (tokenizer_model); re-save it with this ngpt.")
    api = HfApi(endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="ngpt-hub-") as tmp:
        folder = Path(tmp)
        stage_repo_folder(path, state, repo_id, folder)
        with hub_errors(endpoint, f"upload to {repo_id}", repo_id):
            api.create_repo(repo_id, private=True if private else None, exist_ok=True)  # None: the namespace's default
            if revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            head = api.repo_info(repo_id, revision=revision).sha
            remote = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, revision=head) if isinstance(f, RepoFile)}
        plan = compare_with_remote(folder, remote)
        if on_plan is not None:
            on_plan(plan)
        ops = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(folder / f.path))
               for f in plan if f.status in ("new", "changed")]
        ops += [CommitOperationDelete(path_in_repo=f.path) for f in plan if f.status == "deleted"]
        if not ops:
            return UploadResult(repo_id, revision, endpoint, head, False, plan)
        step = state.get("step", 0)
        with hub_errors(endpoint, f"upload to {repo_id} (an upload is one commit: the repo holds all of it or none of it; "
                         "run the same command again, it sends only what the hub does not have yet)", repo_id):
            # parent_commit: if someone pushed since we listed the tree, fail instead of overwriting blindly.
            info = api.create_commit(repo_id, ops, commit_message=f"ngpt: {state.get('phase', 'model')} step {step}",
                                     revision=revision, parent_commit=head)
        return UploadResult(repo_id, revision, endpoint, info.oid, True, plan)


def _tracked_files(out: Path) -> set[str]:
    """Files an earlier download put in `out` (huggingface_hub keeps a .metadata per file)."""
    meta = out / ".cache" / "huggingface" / "download"
    return {p.relative_to(meta).as_posix()[: -len(".metadata")] for p in meta.rglob("*.metadata")} if meta.is_dir() else set()


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
    on_plan: Callable[[list[FileStatus]], None] | None = None,
) -> DownloadResult:
    """Fetch a repo into `out` (default checkpoints/hub/NAME), skipping files already there, ready for `ngpt chat --ckpt`."""
    from huggingface_hub import HfApi, snapshot_download

    check_repo_id(repo_id)
    endpoint = hub_endpoint()
    out = Path(out) if out is not None else Path("checkpoints") / "hub" / repo_id.split("/")[1]
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / ".cache" / "huggingface").is_dir() and not force:
        raise FileExistsError(
            f"--out {out} exists, is not empty and is not an earlier hub download; pass --force to download into it, "
            "or choose another folder"
        )
    with hub_errors(endpoint, f"download of {repo_id}", repo_id):
        commit = HfApi(endpoint=endpoint).repo_info(repo_id, revision=revision).sha
        # The resolved commit, not the branch: every file comes from the same snapshot.
        dry = snapshot_download(repo_id, revision=commit, local_dir=out, endpoint=endpoint, dry_run=True)
        plan = sorted((FileStatus(f.filename, f.file_size or 0, "download" if f.will_download else "unchanged") for f in dry),
                      key=lambda f: f.path)
        stale = _tracked_files(out) - {f.filename for f in dry}
        plan += [FileStatus(name, 0, "removed") for name in sorted(stale)]
        if on_plan is not None:
            on_plan(plan)
        snapshot_download(repo_id, revision=commit, local_dir=out, endpoint=endpoint)
    # snapshot_download falls back to what is on disk when the hub drops out mid-way: check it got everything.
    missing = [f.path for f in plan if f.status != "removed" and not (out / f.path).is_file()]
    if missing:
        raise HubError(f"download of {repo_id} from {endpoint} is incomplete ({', '.join(missing[:3])} missing); "
                       "run the same command again: files already fetched are kept")
    # Files the revision no longer has (an old best.pt would shadow a new latest.pt for `ngpt chat`).
    for name in stale:
        (out / name).unlink(missing_ok=True)
        (out / ".cache" / "huggingface" / "download" / f"{name}.metadata").unlink(missing_ok=True)
    try:
        ckpt = find_checkpoint(out)
    except CheckpointError:
        raise HubError(
            f"{repo_id}@{commit[:12]} has no native ngpt checkpoint ({' or '.join(NATIVE_NAMES)}); it was downloaded to "
            f"{out}, but `ngpt chat` needs a repo made by `ngpt hub upload`"
        ) from None
    return DownloadResult(repo_id, revision or "main", commit, out, ckpt, plan)

