"""`ngpt hub upload|download`: share a checkpoint through the Hugging Face hub (HF_TOKEN / HF_ENDPOINT honoured).

    ngpt hub upload --checkpoint checkpoints/best.pt --repo-id you/ngpt-small [--private] [--revision main]
    ngpt hub download --repo-id you/ngpt-small [--revision main] [--out checkpoints/hub/ngpt-small]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ngpt.cli.common import CHECKPOINT_HELP
from ngpt.console import console, human_bytes, kv_table, table

app = typer.Typer(no_args_is_help=True)

RepoIdOpt = Annotated[str, typer.Option("--repo-id", help="USER/NAME on the hub.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Branch (upload creates it if missing) or commit/tag (download).")]


def _show(title: str, plan) -> None:
    console.print(table(title, ("file", "size", "status"),
                        [(f.path, human_bytes(f.size) if f.size else "", f.status) for f in plan]))


@app.command()
def upload(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help=CHECKPOINT_HELP)],
    repo_id: RepoIdOpt,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (an existing repo keeps its visibility).")] = False,
    revision: RevisionOpt = None,
) -> None:
    """Upload the transformers export, the native checkpoint and a model card; unchanged files are skipped."""
    from ngpt.hub import hub_endpoint, token_source, upload as do_upload

    console.print(kv_table("hub upload", {
        "checkpoint": checkpoint, "repo": repo_id, "revision": revision or "main", "private": private,
        "endpoint": hub_endpoint(), "token": token_source(),
    }))
    result = do_upload(checkpoint, repo_id, private=private, revision=revision, on_plan=lambda p: _show("files", p))
    if result.committed:
        console.print(f"[green]Committed[/green] {result.commit[:12]} to {result.repo_id}@{result.revision}: {result.url}")
    else:
        console.print(f"Nothing changed: {result.repo_id}@{result.revision} is already at {result.commit[:12]} ({result.url})")


@app.command()
def download(
    repo_id: RepoIdOpt,
    revision: RevisionOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder to fill (default checkpoints/hub/NAME).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download into a non-empty folder that is not an earlier download.")] = False,
) -> None:
    """Fetch a repo made by `ngpt hub upload` into a folder `ngpt chat --ckpt` accepts; unchanged files are kept."""
    from ngpt.hub import download as do_download
    from ngpt.hub import hub_endpoint, token_source

    console.print(kv_table("hub download", {
        "repo": repo_id, "revision": revision or "main", "out": out or f"checkpoints/hub/{repo_id.split('/')[-1]}",
        "endpoint": hub_endpoint(), "token": token_source(),
    }))
    result = do_download(repo_id, revision=revision, out=out, force=force, on_plan=lambda p: _show("files", p))
    fetched = sum(f.status == "download" for f in result.files)
    console.print(f"{result.repo_id}@{result.commit[:12]} in {result.out}: {fetched} fetched, "
                  f"{sum(f.status == 'unchanged' for f in result.files)} unchanged.")
    console.print(f"Chat with it: ngpt chat --ckpt {result.out}", soft_wrap=True)  # one line, to copy
