"""Checkpoints: atomic save, safe load, the on-disk layout, resume precedence and shape checks.

Layout (DESIGN.md):
    checkpoints/{pretrain,sft}/latest.pt   newest periodic save of that phase
    checkpoints/{pretrain,sft}/best.pt     lowest val loss of that phase (pretrain: val_pretrain_loss,
                                           sft: val_sft_loss); a phase never writes the other's
    checkpoints/{pretrain,sft}/step_0000500.pt   periodic, the last `keep_last` kept
    checkpoints/latest.pt, checkpoints/best.pt   root copies of the phase that saved last (for serving)

A checkpoint is self-contained: model + optimizer (+ grad scaler) + step + RNG and sampler state +
resolved settings + raw overrides + tokenizer sha256. Files are written to a temp name and renamed,
so a kill mid-save leaves the previous checkpoint intact; copies are hard links where possible.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from ngpt.io_utils import atomic_output

CHECKPOINT_VERSION = 1
PHASES = ("pretrain", "sft")
# Fields that fix the tensor shapes: resuming or initialising across a change in any of them is an error.
SHAPE_FIELDS = ("vocab_size", "seq_len", "n_embd", "n_layer", "n_head", "d_ff", "rope_theta")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the current settings."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make `dst` the same content as `src` (hard link if the filesystem allows)."""
    with atomic_output(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint; a missing, truncated or foreign file is a CheckpointError saying so."""
    path = find_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or truncated and cannot be loaded ({type(e).__name__}: {str(e)[:160]}). "
            "Delete it and resume from another one (--resume PATH), or start fresh with --no-resume."
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise CheckpointError(f"{path} is not an ngpt checkpoint (version {CHECKPOINT_VERSION}).")
    return state


def shape_of(model_cfg: dict) -> dict:
    return {k: model_cfg.get(k) for k in SHAPE_FIELDS}


def check_same_shape(saved: dict, current: dict, path: str | Path) -> None:
    """ValueError with a field-by-field diff when the checkpoint's model shape differs from the settings."""
    a, b = shape_of(saved), shape_of(current)
    diff = [f"  model.{k}: checkpoint {a[k]!r} != settings {b[k]!r}" for k in SHAPE_FIELDS if a[k] != b[k]]
    if diff:
        raise CheckpointError(
            f"Checkpoint {path} has a different model shape than the current settings:\n" + "\n".join(diff)
            + "\nUse the checkpoint's model settings, or start fresh with --no-resume."
        )


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


def find_checkpoint(path: str | Path) -> Path:
    """A .pt file, or a folder holding one: best.pt, then latest.pt (a phase folder, checkpoints/, a hub download)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "latest.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no best.pt or latest.pt; pass a checkpoint file or a folder with one.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; pass e.g. checkpoints/best.pt or checkpoints/sft/.")
    return path


def load_for_inference(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode on `device`, its Tokenizer, the checkpoint dict without weights) from a checkpoint."""
    from ngpt.model import GPT
    from ngpt.settings import ModelSettings
    from ngpt.tokenizer import Tokenizer

    ckpt = find_checkpoint(path)
    state = load_checkpoint(ckpt, map_location="cpu")
    proto = state.get("tokenizer_model")
    if not proto:
        raise CheckpointError(f"{ckpt} does not carry its tokenizer (tokenizer_model); re-save it with this ngpt.")
    tok = Tokenizer(f"{ckpt}#tokenizer", proto=proto)
    model = GPT(ModelSettings(**state["model_config"]))
    model.load_state_dict(state.pop("model"))
    state.pop("optimizer", None)
    return model.to(device).eval(), tok, state
