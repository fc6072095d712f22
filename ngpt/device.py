"""Device, precision and the measured matmul peak: "auto" becomes a concrete device and autocast dtype.

Device: cuda > mps > cpu. Precision (`amp` = auto|true|false, `amp_dtype` = auto|bf16|fp16):
- CUDA: bf16 where the GPU supports it, else fp16 with a GradScaler.
- MPS: off (autocast support there is partial and often slower).
- CPU: bf16 where a training step of a small model of ours measured faster in bf16 autocast than in
  fp32 on this machine (ngpt.measured, once per machine: 1.5-2× where the CPU has AMX / AVX512-BF16,
  about 3× slower on an Ice Lake without them); else off.

    from ngpt.device import resolve_device, resolve_precision
    dev = resolve_device("auto"); prec = resolve_precision(dev, "auto", "auto")
    measure_matmul_peak(dev, torch.bfloat16).flops_per_s     # the denominator of MFU
"""

from __future__ import annotations

import platform
import time
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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the names flags and reports use


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 → "bf16" (the inverse of DTYPES)."""
    return next(name for name, d in DTYPES.items() if d == dtype)


@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype | None  # autocast dtype when enabled
    use_grad_scaler: bool  # fp16 on CUDA needs loss scaling; bf16 does not
    why: str = ""  # how "auto" chose it, when a measurement did (the resolved tables print it)

    @property
    def label(self) -> str:
        if not self.enabled:
            return "fp32"
        return dtype_name(self.dtype) + " autocast"


# No autocast: fp32 training (amp false, MPS), and what generation always runs under (its weights are already
# in the form to compute in).
NO_AUTOCAST = Precision(False, None, False)


def resolve_precision(device: torch.device, amp: str = "auto", amp_dtype: str = "auto") -> Precision:
    if amp == "false":
        return NO_AUTOCAST
    if device.type == "mps":
        if amp == "true":
            raise ValueError("amp=true is not supported on MPS here; use amp=false or auto")
        return NO_AUTOCAST
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        dtype = DTYPES.get(amp_dtype) or (torch.bfloat16 if bf16_ok else torch.float16)  # amp_dtype: auto | bf16 | fp16
        if dtype == torch.bfloat16 and not bf16_ok:
            raise ValueError("amp_dtype=bf16 but this GPU does not support bf16; use amp_dtype=fp16 or auto")
        return Precision(True, dtype, dtype == torch.float16)
    # CPU: only bf16 autocast exists; fp16 on CPU is slower than fp32.
    if amp_dtype == "fp16":
        raise ValueError("amp_dtype=fp16 is not supported on CPU; use bf16 or auto")
    if amp == "true":
        return Precision(True, torch.bfloat16, False)
    from ngpt.measured import cpu_training_autocast

    measured = cpu_training_autocast()
    return Precision(measured.name == "bf16", torch.bfloat16 if measured.name == "bf16" else None, False,
                     why=f"auto: {measured.summary}")



def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_label(device: torch.device) -> str:
    """'cpu (Intel Xeon ...), 2 threads' / 'cuda:0 (NVIDIA H100 ...)': for the tables commands print."""
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return f"{device} ({device_name(device)}){threads}"


# ---------------------------------------------------------------------------------------------
# The matmul peak of this device in one dtype, measured on the spot: the denominator of MFU.
# A spec-sheet peak is wrong for most machines ngpt runs on (laptop CPUs, shared or clocked-down
# GPUs, TF32 on or off), so MFU is measured against what large square matmuls in the same dtype
# actually reach on the same device, best of a few timings.

# Big enough to keep every core's matrix units busy, small enough to take well under a second
# on a laptop CPU; a GPU needs a larger matrix and several matmuls per timing to hide launches.
DEFAULT_SIZE = {"cuda": 8192, "mps": 4096, "cpu": 2048}
MATMULS_PER_TIMING = {"cuda": 10, "mps": 4, "cpu": 1}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class MatmulPeak:
    flops_per_s: float  # best timing over the repeats
    size: int  # n of the n×n @ n×n matmuls
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.flops_per_s / 1e12:.3g} TFLOP/s ({str(self.dtype).removeprefix('torch.')} {self.size}²)"


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5
) -> MatmulPeak:
    """FLOP/s of n×n @ n×n matmuls in `dtype` on `device`: one warm-up, then the best of `repeats`.

    The fastest product the model can use: for fp32 on the CPU that is the better of torch.matmul
    (MKL) and oneDNN (ngpt.kernels.onednn, what the model's linear layers use), so MFU stays ≤ 100 %.
    """
    from ngpt.kernels.onednn import matmul_nt  # the model's own fp32 CPU path

    n = size or DEFAULT_SIZE.get(device.type, DEFAULT_SIZE["cpu"])
    per_timing = MATMULS_PER_TIMING.get(device.type, 1)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    products = [lambda: torch.matmul(a, b, out=out)]
    if device.type == "cpu" and dtype == torch.float32:
        products.append(lambda: matmul_nt(a, b))
    best = float("inf")
    for product in products:
        product()  # warm-up: library init, kernel selection, caches
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(per_timing):
                product()
            synchronize(device)
            best = min(best, time.perf_counter() - t0)
    return MatmulPeak(2 * n**3 * per_timing / best, n, dtype)


@lru_cache(maxsize=8)
def cached_matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """measure_matmul_peak once per process and (device, dtype): training runs several phases."""
    return measure_matmul_peak(device, dtype).flops_per_s
