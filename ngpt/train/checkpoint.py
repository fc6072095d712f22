"""Training's checkpoint policy: where each phase saves, which save to resume from, the RNG state.

Layout (DESIGN.md):
    checkpoints/{pretrain,sft}/latest.pt   newest periodic save of that phase
    checkpoints/{pretrain,sft}/best.pt     lowest val loss of that phase (pretrain: val_pretrain_loss,
                                           sft: val_sft_loss); a phase never writes the other's
    checkpoints/{pretrain,sft}/step_0000500.pt   periodic, the last `keep_last` kept
    checkpoints/latest.pt, checkpoints/best.pt   root copies of the phase that saved last (for serving)

The file format itself (save/load/find, shape checks) is ngpt.checkpoint; copies are hard links
where the filesystem allows.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ngpt.checkpoint import CHECKPOINT_VERSION, CheckpointError, save_checkpoint
from ngpt.io_utils import atomic_output

PHASES = ("pretrain", "sft")


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make `dst` the same content as `src` (hard link if the filesystem allows)."""
    with atomic_output(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def resolve_resume(phase_dir: Path, resume: str | Path | None, no_resume: bool) -> Path | None:
    """--resume PATH > --no-resume > auto from this phase's own latest.pt (never the root copy)."""
    if resume is not None:
        if not Path(resume).exists():
            raise CheckpointError(f"--resume {resume}: no such checkpoint.")
        return Path(resume)
    if no_resume:
        return None
    latest = phase_dir / "latest.pt"
    return latest if latest.is_file() else None


class CheckpointManager:
    """Writes one phase's checkpoints in the DESIGN.md layout and keeps the last `keep_last` periodic ones."""

    def __init__(self, root: str | Path, phase: str, keep_last: int):
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.root = Path(root)
        self.dir = self.root / phase
        self.keep_last = keep_last

    def save_periodic(self, step: int, state: dict) -> Path:
        path = self.dir / f"step_{step:07d}.pt"
        save_checkpoint(path, state)
        link_or_copy(path, self.dir / "latest.pt")
        link_or_copy(path, self.root / "latest.pt")
        for old in sorted(self.dir.glob("step_*.pt"))[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, state: dict) -> Path:
        path = self.dir / "best.pt"
        save_checkpoint(path, state)
        link_or_copy(path, self.root / "best.pt")
        return path



def checkpoint_state(model, optimizer, scaler, step, batches, settings, raw_overrides, tok, phase, run_id, best_val,
                     tokens_seen, elapsed_s=0.0) -> dict:
    """Everything a resumed run needs to continue exactly, and an inference load needs to stand alone."""
    return {
        "version": CHECKPOINT_VERSION,
        "phase": phase,
        "step": step,
        "model": model.state_dict(),
        "model_config": settings.model.model_dump(mode="json"),
        "optimizer": optimizer.state_dict(),
        "optimizer_kind": getattr(settings, phase).optimizer,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "sampler": batches.state_dict(),
        "settings": settings.model_dump(mode="json"),
        "overrides": raw_overrides,
        "tokenizer_sha256": tok.sha256,
        "tokenizer_model": tok.proto,  # the spm.model bytes: a checkpoint chats without any other file
        "run_id": run_id,
        "best_val": best_val,
        "tokens_seen": tokens_seen,
        "elapsed_s": elapsed_s,  # the phase's wall time so far: a resumed time budget continues from it
    }


def rng_state() -> dict:
    # numpy's MT19937 key becomes a list: checkpoints load with weights_only=True, which refuses arrays.
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
