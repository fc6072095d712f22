"""Tests for ngpt/kernels/linear_cross_entropy.py: the fused head + loss equals the plain way, in value and gradient.

    pytest tests/test_linear_cross_entropy.py
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ngpt.kernels.linear_cross_entropy as lce
from ngpt.kernels.linear_cross_entropy import linear_cross_entropy

V, C, N = 50, 16, 37  # N not a multiple of the block rows forced below: the last block is ragged


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(V, C, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[3:9] = -100
    t[-1] = -100
    return x, w, t


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.fixture(params=[1, 4, 1000], ids=["1-row-blocks", "4-row-blocks", "one-block"])
def block_rows(request, monkeypatch):
    monkeypatch.setattr(lce, "BLOCK_BYTES", 4 * V * request.param)
    assert lce.block_rows(V) == request.param
    return request.param


def test_value_and_gradients_equal_plain_cross_entropy(block_rows):
    x, w, t = inputs()
    plain = F.cross_entropy(x @ w.T, t, ignore_index=-100)
    fused = linear_cross_entropy(x, w, t)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-12)
    for a, b in zip(grads(fused * 3.0, x, w), grads(plain * 3.0, x, w)):  # grad_out != 1 is scaled through
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_ignored_rows_get_no_gradient():
    x, w, t = inputs()
    gx, _ = grads(linear_cross_entropy(x, w, t), x, w)
    assert gx[3:9].abs().max() == 0 and gx[-1].abs().max() == 0
    assert gx[0].abs().max() > 0


def test_nothing_labelled_is_nan_like_cross_entropy():
    x, w, _ = inputs()
    t = torch.full((N,), -100)
    assert math.isnan(F.cross_entropy(x @ w.T, t, ignore_index=-100).item())
    assert math.isnan(linear_cross_entropy(x, w, t).item())


def test_bf16_autocast_matches_plain_autocast():
    x, w, t = (a.detach().float().requires_grad_() if a.is_floating_point() else a for a in inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy((x @ w.T).float(), t, ignore_index=-100)
        fused = linear_cross_entropy(x, w, t)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(plain.item(), rel=1e-2)
    for a, b in zip(grads(fused, x, w), grads(plain, x, w)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=2e-3)


def test_no_gradient_work_without_grad(monkeypatch):
    """Under no_grad only the logits are multiplied: one product per block, not three."""
    calls = []
    real = lce.matmul_nt
    monkeypatch.setattr(lce, "matmul_nt", lambda a, b: calls.append(a.shape) or real(a, b))
    monkeypatch.setattr(lce, "BLOCK_BYTES", 4 * V * 10)  # 4 blocks of 10 rows
    x, w, t = inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(x, w, t)
    assert not loss.requires_grad and len(calls) == 4
    assert loss.item() == pytest.approx(F.cross_entropy(x @ w.T, t, ignore_index=-100).item(), rel=1e-12)
    calls.clear()
    linear_cross_entropy(x, w, t)
    assert len(calls) == 12  # with grad: logits, input gradient, weight gradient
