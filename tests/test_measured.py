"""ngpt/measured.py: "auto" fast paths are chosen by timing the candidates once per machine, and each
CPU "auto" (training autocast, decode weights, Muon's Newton-Schulz dtype) follows that measurement.

    pytest tests/test_measured.py
"""

from __future__ import annotations

import json

import pytest
import torch

from ngpt import measured
from ngpt.device import resolve_precision
from ngpt.inference import choose_weights
from ngpt.measured import Choice, fastest, machine_key
from ngpt.settings import ModelSettings, TrainSettings
from ngpt.train.muon import newton_schulz_dtype, orthogonalize
from ngpt.train.optim import make_optimizer
from ngpt.model import GPT

CPU = torch.device("cpu")
A = torch.randn(192, 192, generator=torch.Generator().manual_seed(0))


def matmuls(n: int):
    return lambda: [A @ A for _ in range(n)]


def never():
    raise AssertionError("a remembered answer must not be measured again")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "measured.json"
    monkeypatch.setenv("NGPT_MEASURED_CACHE", str(path))
    return path


def test_the_faster_candidate_wins_and_is_remembered_for_this_machine(cache):
    choice = fastest("toy", {"slow": matmuls(60), "fast": matmuls(1)})
    assert choice.name == "fast" and choice.ms["fast"] < choice.ms["slow"]
    entry = json.loads(cache.read_text())[f"toy @ {machine_key()}"]
    assert entry["choice"] == "fast" and set(entry["ms"]) == {"slow", "fast"}
    assert f"{torch.get_num_threads()} threads" in machine_key() and torch.__version__ in machine_key()
    again = fastest("toy", {"slow": never, "fast": never})
    assert again.name == "fast" and "fast" in again.summary and "measured here" in again.summary


def test_a_damaged_cache_is_measured_again_and_rewritten(cache):
    cache.write_text("{ not json")
    assert fastest("toy", {"slow": matmuls(60), "fast": matmuls(1)}).name == "fast"
    assert f"toy @ {machine_key()}" in json.loads(cache.read_text())


def test_a_remembered_choice_that_is_no_longer_a_candidate_is_measured_again(cache):
    cache.write_text(json.dumps({f"toy @ {machine_key()}": {"choice": "gone", "ms": {"gone": 1.0}}}))
    assert fastest("toy", {"slow": matmuls(60), "fast": matmuls(1)}).name == "fast"


def test_other_questions_in_the_cache_are_kept(cache):
    fastest("first", {"a": matmuls(1), "b": matmuls(60)})
    fastest("second", {"a": matmuls(60), "b": matmuls(1)})
    keys = json.loads(cache.read_text())
    assert {k.split(" @ ")[0] for k in keys} == {"first", "second"}


@pytest.mark.parametrize("winner", ["bf16", "fp32"])
def test_training_autocast_auto_follows_the_measurement(monkeypatch, winner):
    monkeypatch.setattr(measured, "cpu_training_autocast", lambda: Choice(winner, {"bf16": 1.0, "fp32": 2.0}))
    prec = resolve_precision(CPU, "auto", "auto")
    assert prec.enabled == (winner == "bf16") and prec.dtype == (torch.bfloat16 if winner == "bf16" else None)
    assert prec.why.startswith("auto: ") and "measured here" in prec.why
    assert resolve_precision(CPU, "true").enabled and not resolve_precision(CPU, "false").enabled  # asked: no measuring


@pytest.mark.parametrize("winner", ["int8", "fp32"])
def test_decode_weights_auto_follows_the_measurement(monkeypatch, winner):
    monkeypatch.setattr(measured, "cpu_decode_weights", lambda: Choice(winner, {"int8": 1.0, "fp32": 2.0}))
    assert choose_weights(CPU, "auto") == winner
    assert choose_weights(CPU, "bf16") == "bf16"


@pytest.mark.parametrize("winner", ["bf16", "fp32"])
def test_muon_iterates_in_the_measured_dtype(monkeypatch, winner):
    monkeypatch.setattr(measured, "cpu_matmul_dtype", lambda: Choice(winner, {"bf16": 1.0, "fp32": 2.0}))
    want = torch.bfloat16 if winner == "bf16" else torch.float32
    assert newton_schulz_dtype(CPU) == want
    model = GPT(ModelSettings(vocab_size=64, seq_len=16, n_embd=32, n_layer=1, n_head=4))
    opt = make_optimizer(model, TrainSettings(optimizer="muon"), model.cfg, CPU, tokens_per_step=64)
    assert opt.muon.ns_dtype == want


def test_fp32_iterations_agree_with_bf16_ones():
    """The choice is one of speed: both dtypes give the same orthogonalised update to bf16's precision."""
    g = torch.randn(3, 48, 96, generator=torch.Generator().manual_seed(1))
    bf16, fp32 = orthogonalize(g, 4, "aol", torch.bfloat16), orthogonalize(g, 4, "aol", torch.float32)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=0, atol=0.03)


def test_the_real_measurements_answer_with_a_candidate(cache):
    """On this machine, whatever it is: each question times its real workloads and names one of them."""
    assert measured.cpu_matmul_dtype.__wrapped__().name in ("bf16", "fp32")
    assert measured.cpu_decode_weights.__wrapped__().name in ("int8", "fp32")
    questions = {k.split(" @ ")[0] for k in json.loads(cache.read_text())}
    assert questions == {"newton-schulz matmuls", "decode weights"}
