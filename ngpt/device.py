"""Device and precision resolution: "auto" becomes a concrete device and autocast dtype.

Device: cuda > mps > cpu. Precision (`amp` = auto|true|false, `amp_dtype` = auto|bf16|fp16):
- CUDA: bf16 where the GPU supports it, else fp16 with a GradScaler.
- MPS: off (autocast support there is partial and often slower).
- CPU: bf16 where the CPU has native bf16 matrix units (AMX / AVX512-BF16), where it measured faster
  than fp32 for our model (see README, `ngpt bench speed`); else off.

    from ngpt.device import resolve_device, resolve_precision
    dev = resolve_device("auto"); prec = resolve_precision(dev, "auto", "auto")
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available here; use --device cpu or auto")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={name!r} but MPS is not available here; use --device cpu or auto")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AMX-BF16 or AVX512-BF16 (oneDNN then runs bf16 matmuls natively)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype | None  # autocast dtype when enabled
    use_grad_scaler: bool  # fp16 on CUDA needs loss scaling; bf16 does not

    @property
    def label(self) -> str:
        if not self.enabled:
            return "fp32"
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype] + " autocast"


def resolve_precision(device: torch.device, amp: str = "auto", amp_dtype: str = "auto") -> Precision:
    if amp == "false":
        return Precision(False, None, False)
    if device.type == "mps":
        if amp == "true":
            raise ValueError("amp=true is not supported on MPS here; use amp=false or auto")
        return Precision(False, None, False)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp_dtype) or (torch.bfloat16 if bf16_ok else torch.float16)
        if dtype == torch.bfloat16 and not bf16_ok:
            raise ValueError("amp_dtype=bf16 but this GPU does not support bf16; use amp_dtype=fp16 or auto")
        return Precision(True, dtype, dtype == torch.float16)
    # CPU: only bf16 autocast exists; fp16 on CPU is slower than fp32.
    if amp_dtype == "fp16":
        raise ValueError("amp_dtype=fp16 is not supported on CPU; use bf16 or auto")
    if amp == "true" or cpu_has_native_bf16():
        return Precision(True, torch.bfloat16, False)
    return Precision(False, None, False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@lru_cache(maxsize=8)
def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of the best of a few n×n matmuls in `dtype` on `device`: the denominator of MFU.

    Measured here rather than looked up, so MFU means "share of what this machine actually does",
    on CPUs and GPUs alike. On CUDA a larger n is used to reach the tensor cores' plateau.
    """
    import time

    if device.type == "cuda":
        n = max(n, 4096)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum()  # warm-up: kernels chosen, memory touched
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
