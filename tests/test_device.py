"""Tests for ngpt/device.py: device and precision resolution, and the CPU allocator setting.

    pytest tests/test_device.py
"""

from __future__ import annotations

import platform
import resource
import subprocess
import sys

import pytest
import torch

from ngpt.device import resolve_device, resolve_precision


def test_cpu_resolves_and_fp32_is_off():
    dev = resolve_device("cpu")
    assert dev.type == "cpu"
    assert not resolve_precision(dev, "false").enabled
    assert resolve_precision(dev, "true", "bf16").dtype == torch.bfloat16


CHURN = """
import resource, torch
from ngpt.kernels.memory import retain_freed_memory
assert retain_freed_memory() is True

def step():  # like a training step: many activations alive at once, all freed at the end
    blocks = [torch.ones(4 * 2**20) for _ in range(8)]  # 8 × 16 MiB, every page touched
    return sum(float(b[0]) for b in blocks)

for _ in range(3):  # the first steps map the memory
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retained_memory_is_reused_without_page_faults():
    """In steady state a step finds its memory already mapped. (glibc's defaults sometimes trim the heap
    and fault it all in again every step, depending on the heap's layout: ~1 step's worth each time.)"""
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True)
    pages_per_step = 8 * 16 * 2**20 // resource.getpagesize()
    assert int(out.stdout.strip()) < pages_per_step // 4  # over 5 steps
