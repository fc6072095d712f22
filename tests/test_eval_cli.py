"""`ngpt eval tasks` end to end: every task on hand-written rows, eval.json, --chat, and every bad input.

    pytest tests/test_eval_cli.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import ngpt_cli
from test_eval_data import one_thread, tiny_checkpoint, write_task_files  # noqa: F401  (one_thread is an autouse fixture)
from ngpt.eval.tasks import task_names


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def numbers(record: dict) -> dict:
    """The results without the timings."""
    return {t: {k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for t, r in record["tasks"].items()}


def flat(text: str) -> str:
    return "".join(text.replace("│", " ").split())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_task_files(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_tokenizer) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "best.pt", tiny_tokenizer, seq_len=128)


def task_data_flags(data: dict[str, Path]) -> list[str]:
    return [a for name, path in data.items() for a in ("--task-data", f"{name}={path}")]


def test_every_task_runs_and_reports_acc_baseline_centered_and_core(ckpt, data, capsys):
    assert ngpt_cli("eval", "tasks", "--ckpt", ckpt, "--tasks", ",".join(task_names()), *task_data_flags(data),
                    "--batch-size", "3") == 0
    out = capsys.readouterr().out
    record = last_json(out)
    assert record["mode"] == "tasks" and set(record["tasks"]) == set(task_names())
    for name, r in record["tasks"].items():
        assert {"acc", "acc_norm", "baseline", "centered", "n", "examples_per_s"} <= set(r), name
        assert r["centered"] == pytest.approx((r["acc"] - r["baseline"]) / (1 - r["baseline"]))
    assert record["tasks"]["arc_easy"]["baseline"] == pytest.approx((1 / 4 + 1 / 5 + 1 / 4) / 3)  # per question: 1 / choices
    assert record["tasks"]["lambada_openai"]["acc_norm"] is None and "perplexity" in record["tasks"]["lambada_openai"]
    assert record["core"] == pytest.approx(sum(r["centered"] for r in record["tasks"].values()) / len(task_names()))
    assert "CORE(meancenteredaccuracy)" in flat(out) and "few-shot" in out  # the plan, then the results table
    saved = json.loads((ckpt.parent / "eval.json").read_text())
    assert saved["tasks"] == record["tasks"] and saved["step"] == 7


def test_settings_config_and_flags_agree_and_shots_come_from_train(ckpt, data, tmp_path, capsys):
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"eval": {"tasks": ["copa", "piqa"], "task_data": {k: str(v) for k, v in data.items()},
                                           "shots": 1, "limit": 1}}))
    assert ngpt_cli("eval", "tasks", "--ckpt", ckpt, "-c", config) == 0
    out = capsys.readouterr().out
    first = last_json(out)
    assert first["shots"] == 1 and first["limit"] == 1 and {r["n"] for r in first["tasks"].values()} == {1}
    from ngpt.eval.harness import prepare_tasks

    copa, piqa = prepare_tasks(["copa", "piqa"], {k: str(v) for k, v in data.items()}, shots=1, limit=1)
    assert (copa.pool_note, piqa.pool_note) == ("train (2)", "validation (3), no train split here")  # as lm-eval picks
    assert ngpt_cli("eval", "tasks", "--ckpt", ckpt, "-c", config) == 0
    again = last_json(capsys.readouterr().out)
    assert numbers(again) == numbers(first)  # deterministic, few-shot included
    assert ngpt_cli("eval", "tasks", "--ckpt", ckpt, "-c", config, "--tasks", "copa", "--shots", "0") == 0
    assert set(last_json(capsys.readouterr().out)["tasks"]) == {"copa"}


def test_chat_asks_through_the_template_and_reads_a_letter(ckpt, data, capsys):
    assert ngpt_cli("eval", "tasks", "--ckpt", ckpt, "--tasks", "arc_easy,winogrande,lambada_openai", *task_data_flags(data),
                    "--chat") == 0
    record = last_json(capsys.readouterr().out)
    assert "chat_acc" in record["tasks"]["arc_easy"] and "chat_acc" in record["tasks"]["winogrande"]
    assert "chat_acc" not in record["tasks"]["lambada_openai"]  # no multiple-choice form
    assert record["chatcore"] == pytest.approx((record["tasks"]["arc_easy"]["chat_centered"]
                                                + record["tasks"]["winogrande"]["chat_centered"]) / 2)


def test_read_letter_and_the_chat_prompt():
    from ngpt.eval.chat import read_letter, render_question
    from ngpt.eval.tasks.base import ChatQuestion

    assert [read_letter(r, 4) for r in ("B", " C.", "The answer is D", "I think a", "E", "AB", "")] == [1, 2, 3, None, None, None, None]
    text = render_question(ChatQuestion("Which is red?", ("grass", "blood"), 1))
    assert text == "Multiple Choice question: Which is red?\n- grass=A\n- blood=B\n\nRespond only with the letter of the correct answer."


def test_bpb_and_tasks_share_one_eval_json(ckpt, data, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the river ran under the old bridge\n")
    assert ngpt_cli("eval", "tasks", "--ckpt", ckpt, "--tasks", "copa", "--task-data", f"copa={data['copa']}") == 0
    assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, "--text", text) == 0
    saved = json.loads((ckpt.parent / "eval.json").read_text())
    assert "bpb" in saved and "copa" in saved["tasks"]


@pytest.mark.parametrize("case", ["unknown task", "limit 0", "missing field", "label out of range", "bad json", "bad xml",
                                  "task-data syntax", "task-data unknown task", "no tasks", "missing checkpoint"])
def test_bad_input_is_one_clear_message_and_exit_1(case, ckpt, data, tmp_path, capsys):
    args = ["eval", "tasks", "--ckpt", ckpt, "--tasks", "piqa", "--task-data", f"piqa={data['piqa']}"]
    if case == "unknown task":
        args[5], want = "piqa,hellaswagg", ["unknown task 'hellaswagg'", "did you mean 'hellaswag'", "Known tasks"]
    elif case == "limit 0":
        args, want = args + ["--limit", "0"], ["eval.limit", "greater than 0"]
    elif case in ("missing field", "label out of range", "bad json"):
        rows = {"missing field": '{"goal": "g", "sol1": "a", "label": 0}',
                "label out of range": '{"goal": "g", "sol1": "a", "sol2": "b", "label": 5}', "bad json": '{"goal": '}[case]
        path = tmp_path / "piqa.jsonl"
        path.write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n' + rows + "\n")
        args[-1] = f"piqa={path}"
        want = [f"{path.name}:2", {"missing field": "'sol2'", "label out of range": "'label'", "bad json": "not valid JSON"}[case]]
    elif case == "bad xml":
        path = tmp_path / "copa-dev.xml"
        path.write_text('<?xml version="1.0"?>\n<copa-corpus>\n<item id="401" asks-for="cause">\n<p>x</p>\n</copa-corpus>\n')
        args[5:8], want = ["copa", "--task-data", f"copa={path}"], [f"{path.name}:5", "not valid XML"]
    elif case == "task-data syntax":
        args[-1], want = "piqa", ["--task-data expects NAME=PATH"]
    elif case == "task-data unknown task":
        args, want = args + ["--task-data", "piqaa=x"], ["unknown task 'piqaa'"]
    elif case == "no tasks":
        args, want = ["eval", "tasks", "--ckpt", ckpt], ["no tasks to run", "--tasks"]
    else:
        args[3], want = tmp_path / "none.pt", ["does not exist"]
    assert ngpt_cli(*args) == 1
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    # the panel wraps long paths anywhere (even "file:5" → "file: 5"), so compare without whitespace
    assert all("".join(w.split()) in "".join(err.split()) for w in want), err
    assert "Traceback" not in err


def test_offline_config_runs_every_shared_task(ckpt, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the config's paths are relative to the checkout
    assert ngpt_cli("eval", "tasks", "--ckpt", ckpt, "-c", "configs/eval-offline.json", "--limit", "3") == 0
    record = last_json(capsys.readouterr().out)
    assert set(record["tasks"]) == {"piqa", "arc_easy", "arc_challenge", "commonsense_qa", "boolq", "lambada_openai", "copa"}
    assert {r["n"] for r in record["tasks"].values()} == {3}
