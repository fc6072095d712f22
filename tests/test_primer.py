"""Tests for `ngpt primer generate` (ngpt/primer.py, ngpt/cli/primer.py) and the chat jsonl rules.

    pytest tests/test_primer.py
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from ngpt.chat_format import ChatFormatError, read_chat_jsonl
from ngpt.cli.main import main
from ngpt.primer import FactsError, generate, load_facts, to_jsonl, write_primer

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FACTS = REPO / "data" / "public_facts.json"
SHIPPED_PRIMER = REPO / "data" / "primer.jsonl"
# The documented command (README / ngpt/primer.py); the shipped primer must equal its output.
DOCUMENTED_ARGS = ["--seed", "0", "--n-per-category", "30", "--shuffle"]


def run_cli(args: list[str]) -> int:
    """Exit code of `ngpt ARGS` (click exits 0 via SystemExit on success, main exits 1 on user errors)."""
    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


def small_facts() -> dict:
    return {
        "version": 1,
        "assistant_name": "Pip",
        "system_prompts": ["You are {assistant_name}."],
        "answer_leads": ["", "LEAD "],
        "categories": {
            "alpha": [
                {"question": ["Who are you?", "Your name?"], "answer": "I am {assistant_name}.",
                 "follow_up": [{"question": ["Really?"], "answer": "Really."}]},
                {"question": ["Are you human?"], "answer": "No, a program.", "lead": False},
            ],
            "beta": [{"question": ["What is 2+2?", "Sum of 2 and 2?"], "answer": "4."}],
        },
    }


def write_facts(tmp_path: Path, data: dict | str, name: str = "facts.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    return path


def test_generation_is_deterministic_and_seeded():
    facts = load_facts(SHIPPED_FACTS)
    a = to_jsonl(generate(facts, n_per_category=30, seed=0, shuffle=True))
    b = to_jsonl(generate(load_facts(SHIPPED_FACTS), n_per_category=30, seed=0, shuffle=True))
    assert a == b
    assert to_jsonl(generate(facts, n_per_category=30, seed=1, shuffle=True)) != a


def test_cli_twice_gives_identical_bytes(tmp_path):
    outs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for out in outs:
        assert run_cli(["primer", "generate", "--facts", str(SHIPPED_FACTS), "--out", str(out), *DOCUMENTED_ARGS]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]  # no temp files left


def test_shipped_primer_matches_documented_command(tmp_path, capsys):
    out = tmp_path / "primer.jsonl"
    assert run_cli(["primer", "generate", "--facts", str(SHIPPED_FACTS), "--out", str(out), *DOCUMENTED_ARGS]) == 0
    assert out.read_bytes() == SHIPPED_PRIMER.read_bytes(), (
        "data/primer.jsonl is stale: rerun `ngpt primer generate --facts data/public_facts.json "
        "--out data/primer.jsonl --seed 0 --n-per-category 30 --shuffle`"
    )
    printed = capsys.readouterr().out
    assert "primer generate" in printed and "n per category" in printed
    assert "wrote 390 dialogues" in printed


def test_shipped_primer_validates_and_counts():
    lines = list(read_chat_jsonl(SHIPPED_PRIMER))
    records = [json.loads(line) for line in SHIPPED_PRIMER.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(records) == 30 * len(load_facts(SHIPPED_FACTS).categories)
    counts = collections.Counter(r["category"] for r in records)
    assert set(counts) == set(load_facts(SHIPPED_FACTS).categories) and set(counts.values()) == {30}
    # The templates really vary the dialogues: system prompts, follow-up turns, no exact repeats.
    assert sum(r["messages"][0]["role"] == "system" for r in records) > 30
    assert sum(sum(m["role"] == "assistant" for m in r["messages"]) == 2 for r in records) > 10
    assert len({json.dumps(r["messages"]) for r in records}) == len(records)
    assert all("{assistant_name}" not in line for line in SHIPPED_PRIMER.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("n", [1, 7])
def test_counts_per_category_and_order(tmp_path, n):
    facts = load_facts(write_facts(tmp_path, small_facts()))
    plain = generate(facts, n_per_category=n, seed=3)
    assert [r["category"] for r in plain] == ["alpha"] * n + ["beta"] * n
    shuffled = generate(facts, n_per_category=n, seed=3, shuffle=True)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, shuffled)) == sorted(map(key, plain))
    out = tmp_path / "out.jsonl"
    write_primer(shuffled, out)
    assert len(list(read_chat_jsonl(out))) == 2 * n


def test_templates_name_leads_and_follow_ups(tmp_path):
    facts = load_facts(write_facts(tmp_path, small_facts()))
    records = generate(facts, n_per_category=40, seed=0)
    texts = [m["content"] for r in records for m in r["messages"]]
    assert "I am Pip." in texts and "LEAD I am Pip." in texts
    assert "You are Pip." in texts and "Really." in texts
    assert "LEAD No, a program." not in texts and "No, a program." in texts  # "lead": false
    assert any(t == "your name" for t in texts)  # the casual variant: lower case, no "?"
    # Facts are used round-robin: both alpha facts appear equally often.
    firsts = collections.Counter(r["messages"][-1]["content"] for r in records if r["category"] == "alpha")
    assert sum(v for k, v in firsts.items() if "program" in k) == 20


def test_editing_one_category_leaves_others_unchanged(tmp_path):
    base = small_facts()
    edited = small_facts()
    edited["categories"]["alpha"].append({"question": ["New?"], "answer": "New."})
    a = generate(load_facts(write_facts(tmp_path, base, "a.json")), n_per_category=10, seed=5)
    b = generate(load_facts(write_facts(tmp_path, edited, "b.json")), n_per_category=10, seed=5)
    assert [r for r in a if r["category"] == "beta"] == [r for r in b if r["category"] == "beta"]
    assert [r for r in a if r["category"] == "alpha"] != [r for r in b if r["category"] == "alpha"]


def _with(change) -> dict:
    data = small_facts()
    change(data)
    return data


BAD_FACTS = [
    ('{"version": 1,\n  "categories": {,}}', ["not valid JSON", "line 2, column 18"]),
    (_with(lambda d: d["categories"]["alpha"][1].pop("answer")), ["categories.alpha[1]", "missing key 'answer'"]),
    (_with(lambda d: d["categories"].update(beta=[])), ["categories.beta", "is empty"]),
    (_with(lambda d: d.update(categories={})), ["categories", "non-empty object"]),
    (_with(lambda d: d.update(categories=["alpha"])), ["categories", "non-empty object"]),
    (_with(lambda d: d["categories"]["beta"][0].update(question="What?")), ["categories.beta[0].question", "non-empty list of strings"]),
    (_with(lambda d: d["categories"]["beta"][0].update(question=["ok?", 3])), ["categories.beta[0].question[1]", "must be a string, got int"]),
    (_with(lambda d: d["categories"]["beta"][0].update(answer=4)), ["categories.beta[0].answer", "must be a string, got int"]),
    (_with(lambda d: d["categories"]["beta"][0].update(answer="  ")), ["categories.beta[0].answer", "is empty"]),
    (_with(lambda d: d["categories"]["beta"][0].update(answers="x")), ["categories.beta[0]", "unknown key 'answers'"]),
    (_with(lambda d: d["categories"]["beta"].append("a fact")), ["categories.beta[1]", "must be a JSON object, got str"]),
    (_with(lambda d: d["categories"].update(beta={"q": "a"})), ["categories.beta", "must be a list of facts, got dict"]),
    (_with(lambda d: d["categories"]["alpha"][0]["follow_up"][0].pop("question")), ["categories.alpha[0].follow_up[0]", "missing key 'question'"]),
    (_with(lambda d: d["categories"]["alpha"][1].update(lead="no")), ["categories.alpha[1].lead", "true or false"]),
    (_with(lambda d: d["categories"]["beta"][0].update(answer="Done <|eot|>")), ["categories.beta[0].answer", "special token '<|eot|>'"]),
    (_with(lambda d: d.update(version=2)), ["version", "reads version 1"]),
    (_with(lambda d: d.pop("assistant_name")), ["top level", "missing key 'assistant_name'"]),
    (_with(lambda d: d.update(system_prompts="You are Pip.")), ["system_prompts", "non-empty list of strings"]),
    ("[1, 2]", ["top level", "must be a JSON object, got list"]),
]


@pytest.mark.parametrize("content,expected", BAD_FACTS)
def test_bad_facts_errors_name_file_and_key(tmp_path, content, expected):
    path = write_facts(tmp_path, content)
    with pytest.raises(FactsError) as e:
        load_facts(path)
    message = str(e.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_missing_facts_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist.*--facts"):
        load_facts(tmp_path / "nope.json")


def test_cli_bad_facts_exits_1_and_writes_nothing(tmp_path, capsys):
    facts = write_facts(tmp_path, _with(lambda d: d["categories"]["alpha"][0].pop("answer")))
    out = tmp_path / "primer.jsonl"
    assert run_cli(["primer", "generate", "--facts", str(facts), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "FactsError" in err and "categories.alpha[0]" in err and "'answer'" in err
    assert list(tmp_path.iterdir()) == [facts]

    assert run_cli(["primer", "generate", "--facts", str(tmp_path / "missing.json"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_rejects_zero_per_category(tmp_path):
    assert run_cli(["primer", "generate", "--facts", str(SHIPPED_FACTS), "--out", str(tmp_path / "o.jsonl"), "--n-per-category", "0"]) == 2
    with pytest.raises(ValueError, match="at least 1"):
        generate(load_facts(SHIPPED_FACTS), n_per_category=0, seed=0)


def test_cli_via_typer_runner(tmp_path):
    from typer.testing import CliRunner

    from ngpt.cli.primer import app

    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(app, ["generate", "--facts", str(write_facts(tmp_path, small_facts())), "--out", str(out), "--n-per-category", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 dialogues" in result.output
    assert len(out.read_text(encoding="utf-8").splitlines()) == 6


def test_write_primer_validates_before_writing(tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text("old\n", encoding="utf-8")
    bad = [{"messages": [{"role": "user", "content": "hi"}], "category": "x"}]
    with pytest.raises(ChatFormatError, match="p.jsonl:1: needs at least one assistant message"):
        write_primer(bad, out)
    assert out.read_text(encoding="utf-8") == "old\n"


GOOD = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
BAD_LINES = [
    (b"{not json", "not valid JSON (column 2"),
    (b'{"text": "hi"}', 'with a "messages" list'),
    (b'{"messages": []}', '"messages" must be a non-empty list'),
    (b'{"messages": [{"role": "user", "content": "hi", "name": "x"}, {"role": "assistant", "content": "a"}]}',
     "message 0 must have exactly the keys \"role\" and \"content\", got ['content', 'name', 'role']"),
    (b'{"messages": [{"role": "bot", "content": "hi"}]}', "message 0 has role 'bot'; roles are system, user, assistant"),
    (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}', "message 1 content must be a string, got int"),
    (b'{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}', "needs at least one assistant message"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not valid UTF-8 (byte 46)"),
]


@pytest.mark.parametrize("bad,rule", BAD_LINES)
def test_read_chat_jsonl_rejects_malformed_lines(tmp_path, bad, rule):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(GOOD.encode() + b"\n\n" + bad + b"\n")
    with pytest.raises(ChatFormatError) as e:
        list(read_chat_jsonl(path))
    assert str(e.value).startswith(f"{path}:3: ")
    assert rule in str(e.value)


def test_read_chat_jsonl_accepts_good_lines_and_skips_blank(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(GOOD + "\n\n" + GOOD + "\n", encoding="utf-8")
    assert [lineno for lineno, _ in read_chat_jsonl(path)] == [1, 3]
