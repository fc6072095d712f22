"""The checkpoint format: what a checkpoint file holds, how it is saved, found, loaded and checked.

A checkpoint is self-contained: model weights + model_config + optimizer (+ grad scaler) + step +
RNG and sampler state + resolved settings + raw overrides + tokenizer sha256 and the tokenizer's own
bytes, so it chats, serves and exports with no other file. Saves are atomic (temp file + rename):
a kill mid-save leaves the previous checkpoint intact. Inference, export, hub and bench use this
module; the training policy (layout of periodic/best saves, resume precedence, RNG state) lives in
ngpt.train.checkpoint.

    state = load_checkpoint("checkpoints/best.pt")          # a dict; CheckpointError if missing/corrupt
    model, tok, state = load_for_inference("checkpoints/")  # a .pt file or a folder holding best/latest.pt
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ngpt.io_utils import atomic_output
from ngpt.model import GPT
from ngpt.settings import ModelSettings
from ngpt.tokenizer import Tokenizer

CHECKPOINT_VERSION = 1
# Fields that fix the tensor shapes: resuming or initialising across a change in any of them is an error.
SHAPE_FIELDS = ("vocab_size", "seq_len", "n_embd", "n_layer", "n_head", "d_ff", "rope_theta",
                "mlp", "qk_norm", "tie_embeddings", "logit_softcap", "norm_gains", "embed_norm")
# A checkpoint saved before the architecture options existed holds the model they all default away from
# now: the classic Llama (configs/classic.json). Loading fills those keys in, so it is read as what it is.
ARCHITECTURE_BEFORE_OPTIONS = {"mlp": "swiglu", "qk_norm": False, "tie_embeddings": True, "logit_softcap": None,
                               "zero_init": False, "norm_gains": True, "embed_norm": False}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the current settings."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


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
    if isinstance(state.get("model_config"), dict):
        state["model_config"] = {**ARCHITECTURE_BEFORE_OPTIONS, **state["model_config"]}
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
