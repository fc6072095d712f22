"""Tests for `ngpt bench speed --train|--decode` (ngpt/bench/speed.py, ngpt/device.py peak, ngpt/cli/bench.py).

Tiny dims and one timed step: these check the machinery and the JSON record, never timings
(timings belong in the benchmark itself).

    pytest tests/test_bench_speed.py
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from fixtures import classic_model
from ngpt.bench.speed import (
    DecodePlan,
    SpeedPlan,
    SyntheticTokenizer,
    TrainStep,
    build_ngpt,
    build_transformers_llama,
    transformers_config,
    synthetic_batch,
)
from ngpt.cli.bench import app
from ngpt.device import Precision, measure_matmul_peak
from ngpt.engine import Engine
from ngpt.inference import NO_AUTOCAST, choose_weights, prepare_for_decoding
from ngpt.sampling import SamplingParams
from ngpt.model import GPT
from ngpt.settings import ModelSettings, TrainSettings

TINY = ["--vocab-size", "97", "--seq-len", "16", "--n-embd", "32", "--n-layer", "2", "--n-head", "4"]
FAST = ["--micro-b", "2", "--warmup-steps", "1", "--steps", "1", "--device", "cpu", "--amp", "false"]
FP32 = Precision(False, None, False)


def run_speed(*args: str) -> tuple[object, dict]:
    result = CliRunner().invoke(app, ["speed", "--train", *TINY, *FAST, *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    last = result.stdout.strip().splitlines()[-1]
    return result, json.loads(last)


def tiny_plan(**overrides) -> SpeedPlan:
    # Non-default theta, eps and d_ff so a comparison model that ignored them would be caught.
    # The classic Llama (tied head, SwiGLU, gains), so the transformers twin has exactly its parameters.
    cfg = ModelSettings(vocab_size=97, seq_len=16, n_embd=32, n_layer=2, n_head=4, d_ff=96, rope_theta=500.0, norm_eps=1e-6,
                        **classic_model())
    return SpeedPlan(model=cfg, device=torch.device("cpu"), precision=FP32, **overrides)


def test_speed_train_prints_tables_then_json_last():
    result, record = run_speed()
    assert "bench speed --train" in result.stdout and "training speed" in result.stdout
    assert record["mode"] == "train"
    assert record["config"]["n_embd"] == 32 and record["config"]["micro_b"] == 2
    assert record["config"]["tokens_per_step"] == 2 * 16
    assert record["precision"] == "fp32" and record["device"] == "cpu"
    assert record["peak_flops"] > 0
    assert record["ours"]["tokens_per_s"] > 0 and record["ours"]["step_ms"] > 0
    assert 0 < record["ours"]["mfu"]
    assert "transformers" not in record and "ratio" not in record


def test_speed_train_times_the_configs_batch_unless_told(tmp_path):
    """Without --micro-b / --accum-steps the timed step is the one training would take: pretrain.micro_batch
    × accum_steps from the config."""
    config = tmp_path / "batch.json"
    config.write_text(json.dumps({"pretrain": {"micro_batch": 3, "accum_steps": 2}}))
    fast = ["--warmup-steps", "1", "--steps", "1", "--device", "cpu", "--amp", "false"]
    result = CliRunner().invoke(app, ["speed", "--train", *TINY, *fast, "-c", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["config"]["micro_b"], record["config"]["accum_steps"]) == (3, 2)
    assert record["config"]["tokens_per_step"] == 3 * 2 * 16
    _, told = run_speed("-c", str(config), "--accum-steps", "1")
    assert (told["config"]["micro_b"], told["config"]["accum_steps"]) == (2, 1)


def test_speed_without_a_single_mode_exits_2():
    assert CliRunner().invoke(app, ["speed", *TINY]).exit_code == 2
    assert CliRunner().invoke(app, ["speed", "--train", "--decode", *TINY]).exit_code == 2


def test_print_config_shows_flags_and_exits_0():
    result = CliRunner().invoke(app, ["speed", "--train", *TINY, "--amp", "false", "--compile", "--print-config"])
    assert result.exit_code == 0
    settings = json.loads(result.stdout)
    assert settings["model"]["n_embd"] == 32 and settings["pretrain"]["amp"] == "false"
    assert settings["pretrain"]["compile"] is True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_peak_is_positive(dtype):
    peak = measure_matmul_peak(torch.device("cpu"), dtype, size=128, repeats=2)
    assert peak.flops_per_s > 0 and peak.size == 128 and peak.dtype == dtype


def test_train_step_updates_the_model():
    plan = tiny_plan(optim=TrainSettings(lr=1e-2, embed_lr=1e-2, weight_decay=0.0))
    model = build_ngpt(plan)
    idx, targets = synthetic_batch(97, 2, 16, seed=0, device=plan.device)
    before = model.tok_emb.weight.detach().clone()
    step = TrainStep(model, lambda: model(idx, targets)[1], plan)
    with torch.no_grad():
        loss0 = model(idx, targets)[1].item()
    for _ in range(5):
        step()
    with torch.no_grad():
        loss1 = model(idx, targets)[1].item()
    assert not torch.equal(before, model.tok_emb.weight) and model.tok_emb.weight.grad is None
    assert loss1 < loss0  # five AdamW steps on one fixed batch must fit it a little


def test_compare_transformers_reports_ratio():
    pytest.importorskip("transformers")
    _, record = run_speed("--compare", "transformers")
    assert record["transformers"]["tokens_per_s"] > 0 and 0 < record["transformers"]["mfu"]
    # the default model's norms carry no gains; transformers' Arcee has one per norm (2 per block + the final one)
    assert record["transformers"]["params"] == record["ours"]["params"] + 32 * (2 * 2 + 1)
    assert record["ratio"] == pytest.approx(record["ours"]["tokens_per_s"] / record["transformers"]["tokens_per_s"], rel=1e-3)


def test_transformers_llama_is_the_same_model():
    """Same parameter count and, with ngpt's weights copied in by the export rename, the same logits."""
    pytest.importorskip("transformers")
    plan = tiny_plan()
    ours, hf = build_ngpt(plan).eval(), build_transformers_llama(plan).eval()
    assert sum(p.numel() for p in hf.parameters()) == ours.num_params()
    rename = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(plan.model.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        rename |= {b + "attn_norm.weight": h + "input_layernorm.weight", b + "mlp_norm.weight": h + "post_attention_layernorm.weight"}
        rename |= {f"{b}attn.{p}.weight": f"{h}self_attn.{p}_proj.weight" for p in "qkvo"}
        rename |= {f"{b}mlp.{p}.weight": f"{h}mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    state = {rename[k]: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}  # the tied head follows embed_tokens
    idx, _ = synthetic_batch(97, 2, 16, seed=3, device=plan.device)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, ours(idx)[0], atol=1e-5, rtol=1e-4)


def test_compare_without_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(RuntimeError, match="pip install transformers"):
        transformers_config(ModelSettings())
    result = CliRunner().invoke(app, ["speed", "--train", *TINY, *FAST, "--compare", "transformers"])
    assert isinstance(result.exception, RuntimeError) and "--compare transformers" in str(result.exception)


# ---------------------------------------------------------------------------------------------
# --decode

DECODE_TINY = ["--decode", *TINY, "--prompt-tokens", "6", "--new-tokens", "5", "--repeats", "1", "--device", "cpu"]


def run_decode(*args: str) -> tuple[object, dict]:
    result = CliRunner().invoke(app, ["speed", *DECODE_TINY, *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def test_speed_decode_reports_cached_uncached_and_their_ratio():
    result, record = run_decode("--precision", "fp32")
    assert "bench speed --decode" in result.stdout and "generation speed" in result.stdout
    assert record["mode"] == "decode" and record["precision"] == "fp32"
    assert record["config"]["prompt_tokens"] == 6 and record["config"]["new_tokens"] == 5
    assert record["config"]["batch_size"] == 1 and record["config"]["sampling"] == "greedy"
    ours, uncached = record["ours"], record["ours_no_kv_cache"]
    assert ours["tokens_per_s"] > 0 and uncached["tokens_per_s"] > 0
    assert ours["tokens_per_s"] == pytest.approx(5 / ours["run_s"], rel=0.01)
    assert 0 < ours["prefill_ms"] < 1e3 * ours["run_s"] and ours["decode_tokens_per_s"] > 0
    assert record["kv_cache_speedup"] == pytest.approx(ours["tokens_per_s"] / uncached["tokens_per_s"], rel=1e-2)
    assert "transformers" not in record and "ratio" not in record


def test_speed_decode_bf16_weights_and_no_uncached():
    _, record = run_decode("--precision", "bf16", "--no-uncached")
    assert record["precision"] == "bf16 weights"
    assert "ours_no_kv_cache" not in record and "kv_cache_speedup" not in record


def test_speed_decode_rejects_train_flags_and_a_context_too_small():
    result = CliRunner().invoke(app, ["speed", *DECODE_TINY, "--micro-b", "2", "--amp", "false"])
    assert result.exit_code == 2 and "--micro-b, --amp only apply to --train" in result.output
    result = CliRunner().invoke(app, ["speed", "--train", *TINY, "--new-tokens", "4"])
    assert result.exit_code == 2 and "--new-tokens only apply to --decode" in result.output
    result = CliRunner().invoke(app, ["speed", *DECODE_TINY, "--new-tokens", "12"])  # 6 + 12 > seq_len 16
    assert isinstance(result.exception, ValueError) and "raise --seq-len" in str(result.exception)


def test_decode_weight_choices():
    cpu = torch.device("cpu")
    assert [choose_weights(cpu, c) for c in ("fp32", "bf16", "int8")] == ["fp32", "bf16", "int8"]
    assert choose_weights(cpu, "auto") in ("fp32", "int8")
    with pytest.raises(ValueError, match="fp16 is not supported for CPU"):
        choose_weights(cpu, "fp16")
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        choose_weights(torch.device("meta"), "int8")
    with pytest.raises(ValueError, match="choose one of: auto, fp32, bf16, fp16, int8"):
        choose_weights(cpu, "int4")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_synthetic_decode_makes_exactly_new_tokens(precision):
    """The benchmark's engine never stops early: every run is the same amount of work."""
    plan = DecodePlan(model=tiny_plan().model, device=torch.device("cpu"), precision=precision, prompt_tokens=4, new_tokens=9)
    model = prepare_for_decoding(GPT(plan.model), plan.precision)
    result = Engine(model, SyntheticTokenizer(97), "cpu", NO_AUTOCAST).generate([1, 2, 3, 4], SamplingParams(max_new_tokens=9, temperature=0))
    assert len(result.ids) == 9 and result.finish_reason == "length"


def test_decode_compare_transformers_reports_its_tokens_per_s():
    pytest.importorskip("transformers")
    _, record = run_decode("--precision", "fp32", "--compare", "transformers", "--no-uncached")
    assert record["transformers"]["tokens_per_s"] > 0 and "transformers_version" in record
    assert record["ratio"] == pytest.approx(record["ours"]["tokens_per_s"] / record["transformers"]["tokens_per_s"], rel=1e-2)


def test_decode_compare_llama_cpp_times_the_same_weights_as_q8_0_and_the_limit():
    from gguf_support import llama_cpp_or_skip

    llama_cpp_or_skip()
    _, record = run_decode("--precision", "int8", "--compare", "llama.cpp", "--no-uncached")
    theirs, limit = record["llama_cpp"], record["limit"]
    assert theirs["dtype"] == "q8_0" and theirs["tokens_per_s"] > 0 and theirs["prefill_ms"] > 0
    assert record["ratio"] == pytest.approx(record["ours"]["tokens_per_s"] / theirs["tokens_per_s"], rel=1e-2)
    assert limit["read_gb_per_s"] > 0 and "llama_cpp_python_version" in record
    for name in ("ngpt", "llama.cpp"):
        assert limit[name]["weight_bytes_per_token"] > 0 and 0 < limit[name]["share"]
        assert limit[name]["limit_tokens_per_s"] == pytest.approx(
            limit["read_gb_per_s"] * 1e9 / limit[name]["weight_bytes_per_token"], rel=1e-2)


def test_weight_bytes_per_token_count_what_the_matmuls_read(tmp_path):
    """int8: a byte per weight plus a bf16 scale per row, the tied head once; q8_0: 34 bytes per 32 weights."""
    pytest.importorskip("gguf")
    from ngpt.bench.speed.llama_cpp import gguf_bytes_per_token, weight_bytes_per_token
    from ngpt.export.gguf import ids_only_vocab, write_gguf

    cfg = tiny_plan().model
    model = GPT(cfg)
    write_gguf(tmp_path / "m.gguf", model.state_dict(), cfg, ids_only_vocab(cfg.vocab_size), "q8_0")
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2]  # the embedding is the (tied) head
    norms = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert gguf_bytes_per_token(tmp_path / "m.gguf") == sum(p.numel() // 32 * 34 for p in matrices) + 4 * norms
    rows = sum(p.shape[0] for p in matrices)
    int8 = prepare_for_decoding(model, "int8")
    assert weight_bytes_per_token(int8) == sum(p.numel() for p in matrices) + 2 * rows + 4 * norms  # lookups read one row


def test_train_compare_llama_cpp_is_refused():
    result = CliRunner().invoke(app, ["speed", "--train", *TINY, *FAST, "--compare", "llama.cpp"])
    assert isinstance(result.exception, ValueError) and "use it with --decode" in str(result.exception)


def test_against_times_another_configs_recipe_at_the_same_dims(tmp_path):
    """--against: a second ngpt model with that config's options and optimizer, the run's dims, interleaved."""
    classic = tmp_path / "classic.json"
    classic.write_text(json.dumps({"model": {**classic_model(), "n_embd": 999}, "pretrain": {"optimizer": "adamw"}}))
    result, record = run_speed("--against", str(classic))
    against = record["against"]
    assert against["config"] == str(classic) and against["optimizer"] == "adamw" and record["config"]["optimizer"] == "muon"
    # SwiGLU (d_ff 128) with a tied head and gains at C=32, not the file's 999: table, final gain, 2 blocks
    tied_swiglu = 97 * 32 + 32 + 2 * (4 * 32 * 32 + 3 * 32 * 128 + 2 * 32)
    assert against["params"] == tied_swiglu != record["ours"]["params"]
    assert against["tokens_per_s"] > 0
    assert record["against_ratio"] == pytest.approx(record["ours"]["tokens_per_s"] / against["tokens_per_s"], rel=1e-3)
    assert "against" in result.stdout and "transformers" not in record  # the plan table names it
    # The run's own --config lies under the --against file: a key only the run's config sets reaches both models.
    own, options_only = tmp_path / "own.json", tmp_path / "options.json"
    own.write_text(json.dumps({"pretrain": {"optimizer": "adamw"}}))
    options_only.write_text(json.dumps({"model": classic_model()}))
    _, layered = run_speed("--config", str(own), "--against", str(options_only))
    assert layered["config"]["optimizer"] == layered["against"]["optimizer"] == "adamw"
    assert layered["against"]["params"] == tied_swiglu
    bad = CliRunner().invoke(app, ["speed", "--decode", *TINY, "--against", str(classic)])
    assert bad.exit_code == 2 and "--against only apply to --train" in bad.output
