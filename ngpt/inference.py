"""Generation from a checkpoint: the weight format decoding uses on this device, and loading an Engine.

    from ngpt.inference import load_engine
    engine, state, path, weights = load_engine("checkpoints/best.pt")     # weights="auto" → e.g. "int8"

"Weights" here is how the model's weights are stored for decoding (fp32 | bf16 | fp16 | int8) — not
an autocast mode: generation runs without autocast (NO_AUTOCAST), on weights prepared once.
The CLI flag that picks it is `--precision` (chat, serve, bench speed --decode).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ngpt.checkpoint import find_checkpoint, load_for_inference
from ngpt.device import DTYPES, NO_AUTOCAST, resolve_device
from ngpt.engine import Engine
from ngpt.model import GPT
from ngpt.quantize import int8_supported, quantize_int8
from ngpt.settings import WEIGHT_FORMATS, GenerationSettings

WEIGHT_LABELS = {
    "fp32": "fp32",
    "bf16": "bf16 weights",
    "fp16": "fp16 weights",
    "int8": "int8 weights (bf16 matmuls, fp32 rest)",
}


def choose_weights(device: torch.device, choice: str = "auto") -> str:
    """How generation stores the weights: "fp32", "bf16", "fp16" or "int8" (see prepare_for_decoding).

    Batch-1 decoding is bound by reading the weights, so fewer bytes per weight is the lever.
    Measured on a 2-core AVX512-BF16 CPU (V=16384 C=384 L=8, 256 + 256 tokens, greedy, tokens/s):
    fp32 ~270, bf16 weights ~240, int8 weights ~720 (bf16 matrix-vector products are slow there, and
    bf16 attention over the cache 4x slower than fp32; int8 keeps attention and the cache fp32). What
    it costs in answers, `ngpt bench quality`: on two demo models int8 KL to fp32 ~1e-5 nats/token,
    top-1 agreement 100 %, 30/30 greedy replies identical. So auto = on the CPU int8 or fp32, whichever
    decoded a stack of matrices faster on this machine (ngpt.measured.cpu_decode_weights, once per
    machine); bf16 on CUDA GPUs that have it (fp16 on older ones); fp32 on MPS, as in training.
    Re-measure: `ngpt bench speed --decode --precision X`.
    """
    if choice not in WEIGHT_FORMATS:
        raise ValueError(f"precision {choice!r} is not known; choose one of: {', '.join(WEIGHT_FORMATS)}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if choice == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_bf16 else "fp16"
        if device.type == "cpu" and int8_supported(device):
            from ngpt.measured import cpu_decode_weights

            return cpu_decode_weights().name
        return "fp32"
    if choice == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise ValueError("--precision bf16 but this GPU does not support bf16; use fp16, fp32 or auto")
    if choice == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 is not supported for CPU decoding (far slower than fp32); use int8, bf16, fp32 or auto")
    if choice == "int8" and not int8_supported(device):
        raise ValueError(f"--precision int8 runs on the CPU only (device here: {device}); use bf16, fp16, fp32 or auto")
    return choice


def weights_label(device: torch.device, requested: str, chosen: str) -> str:
    """What the resolved tables print for the weights: the format, and the measurement when auto chose it."""
    if requested == "auto" and device.type == "cpu" and int8_supported(device):
        from ngpt.measured import cpu_decode_weights

        return f"{WEIGHT_LABELS[chosen]} (auto: {cpu_decode_weights().summary})"
    return WEIGHT_LABELS[chosen]


def prepare_for_decoding(model: GPT, weights: str) -> GPT:
    """The model (changed in place) with its weights in `weights` (a WEIGHT_FORMATS name); run it with NO_AUTOCAST.

    fp32/bf16/fp16: every tensor cast (the KV cache follows the keys' dtype; the RoPE tables are cast
    too, apply_rope casts them to the activations' dtype anyway). int8: ngpt.quantize.quantize_int8.
    """
    if weights == "int8":
        return quantize_int8(model)
    return model.to(dtype=DTYPES[weights])


def checkpoint_generation(state: dict, path: Path) -> tuple[str, dict]:
    """The `generation` settings a checkpoint's training run set explicitly, as a settings layer.

    Chat and serve put it under --config, env and flags (settings.load_settings `base`): a model
    trained with, say, temperature 0.7 in its config chats at 0.7 unless told otherwise.
    """
    overrides = state.get("overrides") or {}  # as ngpt train records them: {"config": {...}, "flags": {...}}
    generation = {**(overrides.get("config") or {}).get("generation", {}), **(overrides.get("flags") or {}).get("generation", {})}
    # A key a later ngpt renamed or dropped is not the user's mistake now: leave it out.
    generation = {k: v for k, v in generation.items() if k in GenerationSettings.model_fields}
    return f"checkpoint {path}", {"generation": generation} if generation else {}


def load_engine(
    ckpt: str | Path, device: str = "auto", weights: str = "auto", *, use_kv_cache: bool = True
) -> tuple[Engine, dict, Path, str]:
    """(Engine for a checkpoint file or folder, its state without weights, the .pt file, the weight format).

    What `ngpt chat`, `ngpt serve` and `ngpt demo` load: weights prepared once (choose_weights), no autocast.
    """
    path = find_checkpoint(ckpt)
    dev = resolve_device(device)
    chosen = choose_weights(dev, weights)
    model, tok, state = load_for_inference(path, "cpu")
    engine = Engine(prepare_for_decoding(model, chosen), tok, dev, NO_AUTOCAST, use_kv_cache=use_kv_cache)
    return engine, state, path, chosen
