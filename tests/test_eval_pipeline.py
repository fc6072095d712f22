"""`ngpt train pipeline` with eval.tasks / eval.text: checked before step 0, run at the end, reported.

    pytest tests/test_eval_pipeline.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import ngpt_cli, write_workspace
from test_eval_data import one_thread, write_task_files  # noqa: F401  (one_thread is an autouse fixture)
from ngpt.train.report import write_eval_section

MODEL = {"vocab_size": 512, "seq_len": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}
PHASE = {"micro_batch": 2, "accum_steps": 1, "eval_every": 2, "ckpt_every": 2, "eval_batches": 1,
         "warmup_steps": 1, "amp": "false", "device": "cpu", "total_steps": 2}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_tokenizer_path) -> Path:
    return write_workspace(tmp_path_factory.mktemp("ws"), tiny_tokenizer_path, MODEL, PHASE)


def with_eval(workspace: Path, tmp_path: Path, eval_section: dict) -> Path:
    cfg = json.loads(workspace.read_text())
    cfg |= {"checkpoints_dir": str(tmp_path / "ckpt"), "runs_dir": str(tmp_path / "runs"), "eval": eval_section}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_pipeline_evaluates_its_final_model_into_the_report(workspace, tmp_path):
    data = write_task_files(tmp_path / "tasks")
    text = tmp_path / "notes.txt"
    text.write_text("the river ran under the old bridge, and a quiet lamp lit the garden\n")
    config = with_eval(workspace, tmp_path, {"tasks": ["arc_easy", "copa"], "limit": 2, "text": [str(text)],
                                             "task_data": {"arc_easy": str(data["arc_easy"]), "copa": str(data["copa"])}})
    assert ngpt_cli("train", "pipeline", "-c", config) == 0
    sft_run = next(d for d in (tmp_path / "runs").iterdir() if d.name.endswith("sft"))
    report = (sft_run / "report.md").read_text()
    assert "## eval" in report and "| arc_easy |" in report and "| copa |" in report and "bits/byte" in report
    assert "CORE" in report and "![eval](eval.png)" in report
    assert (sft_run / "eval.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "ckpt" / "sft" / "eval.json").read_text())
    assert saved["phase"] == "sft" and set(saved["tasks"]) == {"arc_easy", "copa"} and saved["bpb"]["tokens"] > 0
    assert all(r["n"] == 2 for r in saved["tasks"].values())


def test_bad_eval_settings_fail_before_step_0(workspace, tmp_path, capsys):
    bad = tmp_path / "copa.jsonl"
    bad.write_text('{"premise": "It rained.", "choice1": "a", "question": "effect", "label": 0}\n')
    config = with_eval(workspace, tmp_path, {"tasks": ["copa"], "task_data": {"copa": str(bad)}})
    assert ngpt_cli("train", "pipeline", "-c", config) == 1
    assert "copa.jsonl:1" in " ".join(capsys.readouterr().err.split()) and not (tmp_path / "ckpt").exists()
    config = with_eval(workspace, tmp_path, {"text": [str(tmp_path / "missing.txt")]})
    assert ngpt_cli("train", "pipeline", "-c", config) == 1
    assert not (tmp_path / "ckpt").exists()


def test_a_rerun_replaces_the_eval_section(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.md").write_text("# ngpt sft\n\n## final metrics\n\n| a | b |\n")
    record = {"tasks": {"copa": {"n": 2, "acc": 0.5, "acc_norm": 0.5, "baseline": 0.5, "centered": 0.0, "acc_stderr": 0.5,
                                 "examples_per_s": 3.0}}, "core": 0.0, "shots": 0, "limit": 2}
    write_eval_section(run_dir, record, tmp_path / "ckpt" / "best.pt")
    write_eval_section(run_dir, record, tmp_path / "ckpt" / "best.pt")
    text = (run_dir / "report.md").read_text()
    assert text.count("## eval") == 1 and text.startswith("# ngpt sft") and "## final metrics" in text
