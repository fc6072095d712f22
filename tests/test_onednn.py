"""Tests for ngpt/kernels/onednn.py: the oneDNN fp32 linear equals torch's, in value and gradient; fallbacks hold.

    pytest tests/test_onednn.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ngpt.kernels import onednn
from ngpt.kernels.onednn import Linear, matmul_nt


def test_the_op_is_available_in_this_torch():
    assert onednn.available()  # pinned torch: if this fails, fp32 CPU training silently lost its fast path
    assert isinstance(onednn.preferred(), bool)


@pytest.mark.parametrize("transpose", [False, True])
def test_matmul_nt_equals_a_times_b_transposed(transpose):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 19, generator=g), torch.randn(23, 19, generator=g)
    if transpose:  # strided views, as the backward passes them
        a, b = torch.randn(19, 37, generator=g).t(), torch.randn(19, 23, generator=g).t()
    torch.testing.assert_close(matmul_nt(a, b), a @ b.T)


def test_linear_matches_f_linear_in_value_and_gradient(monkeypatch):
    monkeypatch.setattr(onednn, "preferred", lambda: True)  # whatever this CPU prefers, test the oneDNN path
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=False)
    x = torch.randn(3, 7, 24, requires_grad=True)
    y = layer(x)
    ref = F.linear(x, layer.weight)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, layer.weight), g)
    theirs = torch.autograd.grad(ref, (x, layer.weight), g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert y.grad_fn.name().endswith("_LinearFunctionBackward")  # the oneDNN path really ran


def test_autocast_and_non_fp32_take_the_ordinary_path():
    layer = Linear(8, 4, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16
    assert layer.to(torch.bfloat16)(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight"}
