"""Eval task data: each task's standard formats, lm-eval's prompt strings, few-shot sampling, bad rows.

    pytest tests/test_eval_data.py

Also the helpers the other eval tests share: `write_task_files` (a few hand-written rows per task, in
each release's own format) and `tiny_checkpoint` (a real checkpoint file of a tiny random model).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from ngpt.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from ngpt.eval.prompts import PairEncoder, fewshot_prefixes, request_strings
from ngpt.eval.taskdata import load_splits, split_of
from ngpt.eval.tasks import get_task, task_names
from ngpt.eval.tasks.base import TaskDataError
from ngpt.model import GPT
from ngpt.settings import ModelSettings



@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread while a test runs: tiny matmuls gain nothing from more, and on a busy machine
    (CI, shared boxes) a second thread waiting for a core made these tests 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- fixtures in each release's format

PIQA = [({"goal": "How do I keep bread fresh?", "sol1": "Put it in a sealed bag.", "sol2": "Leave it in the sun."}, 0),
        ({"goal": "dresser", "sol1": "can hold a lamp ", "sol2": "can hold a river"}, 0),
        ({"goal": "To cool soup quickly,", "sol1": "heat it on the stove.", "sol2": "stir it in a cold bowl."}, 1)]
ARC_AI2 = [
    {"id": "Q1", "question": {"stem": "Which gas do plants take in?", "choices": [
        {"text": "oxygen", "label": "A"}, {"text": "carbon dioxide", "label": "B"}, {"text": "helium", "label": "C"}]},
     "answerKey": "B"},
    {"id": "Q2", "question": {"stem": "What melts ice fastest?", "choices": [
        {"text": "salt", "label": "1"}, {"text": "sand", "label": "2"}, {"text": "paper", "label": "3"},
        {"text": "wood", "label": "4"}]}, "answerKey": "1"},
]
ARC_HF = [{"id": "H1", "question": "Which planet is closest to the Sun?",
           "choices": {"text": ["Venus", "Mercury", "Mars", "Earth"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
          {"id": "H2", "question": "What do bees make?",
           "choices": {"text": ["milk", "honey", "silk", "wax", "glue"], "label": ["A", "B", "C", "D", "E"]}, "answerKey": "B"},
          {"id": "H3", "question": "What is frozen water?",
           "choices": {"text": ["steam", "ice", "fog", "dew"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"}]
CSQA = [{"answerKey": "A", "id": "c1", "question": {"question_concept": "door", "choices": [
    {"label": "A", "text": "bank"}, {"label": "B", "text": "library"}, {"label": "C", "text": "store"},
    {"label": "D", "text": "mall"}, {"label": "E", "text": "new york"}], "stem": " Where is a revolving door? "}}]
BOOLQ = [{"question": "is the sky blue", "title": "Sky", "answer": True, "passage": "The sky looks blue by day."},
         {"question": "do fish fly", "title": "Fish", "answer": False, "passage": "Fish swim in water."}]
LAMBADA = [{"text": "He opened the door and saw a cat"}, {"text": "She said \"yes\" and\nthen left home"},
           {"text": "The river ran under the old bridge"}, {"text": "They ate bread with the soup"}]
COPA_ITEMS = [  # ids 399-402: SuperGLUE puts 1-400 in train, 401-500 in validation
    (399, "effect", 1, "The girl found a bug in her cereal.", "She poured milk in the bowl.", "She lost her appetite."),
    (400, "cause", 1, "The man lost his balance.", "He slipped on ice.", "He ate lunch."),
    (401, "effect", 2, "The man turned on the faucet.", "The toilet filled with water.", "Water flowed from the spout."),
    (402, "cause", 1, "My body cast a shadow over the grass.", "The sun was rising.", "The grass was cut."),
]
HELLASWAG = [{"ind": 92, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill [title] Scrub the grates.",
              "ctx_b": "Use A wire brush", "ctx": "x", "endings": ["to scrub. [substeps] Rinse well.", "and  water.",
                                                                   "[title] Dry it.", "to eat."],
              "source_id": "wikihow~1", "split": "val", "split_type": "indomain", "label": 2},
             {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
              "ctx": "A man is sitting on a roof. he", "endings": ["is using wrap.", "is ripping tiles off.", "is holding a cube.",
                                                                  "starts pulling up roofing on a roof."],
              "source_id": "activitynet~v_x", "split": "val", "split_type": "indomain", "label": "3"}]
WINOGRANDE = [{"qID": "w1", "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
               "option1": "Sarah", "option2": "Maria", "answer": "1"},
              {"qID": "w2", "sentence": "The trophy didn't fit in the suitcase because the _ was too big.",
               "option1": "trophy", "option2": "suitcase", "answer": "1"}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def copa_xml(items) -> str:
    body = "".join(f'  <item id="{i}" asks-for="{a}" most-plausible-alternative="{m}">\n    <p>{p}</p>\n    <a1>{a1}</a1>\n'
                   f"    <a2>{a2}</a2>\n  </item>\n" for i, a, m, p, a1, a2 in items)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE copa-corpus SYSTEM "copa.dtd">\n<copa-corpus version="1.0">\n{body}</copa-corpus>\n'


def write_task_files(root: Path) -> dict[str, Path]:
    """A local copy of every task (a folder or file each), in the release's own format; {task: path}."""
    root.mkdir(parents=True, exist_ok=True)
    piqa = root / "piqa"
    _jsonl(piqa / "valid.jsonl", [r for r, _ in PIQA])
    (piqa / "valid-labels.lst").write_text("".join(f"{y}\n" for _, y in PIQA))
    arc = root / "arc_easy"
    arc.mkdir()
    (arc / "test.json").write_text(json.dumps(ARC_HF, indent=2))
    (arc / "validation.json").write_text(json.dumps(ARC_HF[:2], indent=2))
    copa = root / "copa"
    copa.mkdir()
    (copa / "copa-dev.xml").write_text(copa_xml(COPA_ITEMS))
    return {
        "piqa": piqa, "arc_easy": arc, "copa": copa,
        "arc_challenge": _jsonl(root / "arc_challenge" / "ARC-Challenge-Test.jsonl", ARC_AI2),
        "commonsense_qa": _jsonl(root / "csqa" / "dev_rand_split.jsonl", CSQA),
        "boolq": _jsonl(root / "boolq" / "dev.jsonl", BOOLQ),
        "lambada_openai": _jsonl(root / "lambada" / "lambada_test.jsonl", LAMBADA),
        "hellaswag": _jsonl(root / "hellaswag" / "hellaswag_val.jsonl", HELLASWAG),
        "winogrande": _jsonl(root / "winogrande" / "dev.jsonl", WINOGRANDE),
    }


def tiny_checkpoint(path: Path, tok, *, seq_len: int = 256, seed: int = 0, std: float | None = 0.3, **model) -> Path:
    """A checkpoint file (the real format) of a tiny random model; std spreads its logits so choices differ clearly."""
    cfg = ModelSettings(**{"vocab_size": tok.vocab_size, "seq_len": seq_len, "n_embd": 32, "n_layer": 2, "n_head": 2, **model})
    torch.manual_seed(seed)
    net = GPT(cfg)
    if std is not None:
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, std)
    save_checkpoint(path, {"version": CHECKPOINT_VERSION, "phase": "pretrain", "step": 7, "model": net.state_dict(),
                           "model_config": cfg.model_dump(mode="json"), "tokenizer_model": tok.proto,
                           "tokenizer_sha256": tok.sha256, "settings": {}})
    return path


# ---------------------------------------------------------------- formats → lm-eval's request strings

# task → (context, continuation) of each choice of its first row, exactly as lm-eval 0.4 sends them
EXPECTED = {
    "piqa": [("Question: How do I keep bread fresh?\nAnswer:", " Put it in a sealed bag."),
             ("Question: How do I keep bread fresh?\nAnswer:", " Leave it in the sun.")],
    "arc_easy": [("Question: Which planet is closest to the Sun?\nAnswer:", " " + t) for t in ("Venus", "Mercury", "Mars", "Earth")],
    "arc_challenge": [("Question: Which gas do plants take in?\nAnswer:", " " + t) for t in ("oxygen", "carbon dioxide", "helium")],
    "commonsense_qa": [("Question: Where is a revolving door?\nA. bank\nB. library\nC. store\nD. mall\nE. new york\nAnswer:",
                        " " + letter) for letter in "ABCDE"],
    "boolq": [("The sky looks blue by day.\nQuestion: is the sky blue?\nAnswer:", " no"),
              ("The sky looks blue by day.\nQuestion: is the sky blue?\nAnswer:", " yes")],
    "lambada_openai": [("He opened the door and saw a", " cat")],  # a loglikelihood task: no delimiter added
    "copa": [("The man turned on the faucet therefore", "  the toilet filled with water."),  # two spaces, as lm-eval
             ("The man turned on the faucet therefore", "  water flowed from the spout.")],
    "hellaswag": [("Home and Garden: How to clean a grill. Scrub the grates. Use a wire brush", " to scrub. Rinse well."),
                  ("Home and Garden: How to clean a grill. Scrub the grates. Use a wire brush", " and water."),
                  ("Home and Garden: How to clean a grill. Scrub the grates. Use a wire brush", "  Dry it."),
                  ("Home and Garden: How to clean a grill. Scrub the grates. Use a wire brush", " to eat.")],
    "winogrande": [("Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."),
                   ("Sarah was a much better surgeon than Maria so Maria", " always got the harder cases.")],
}
GOLD = {"piqa": 0, "arc_easy": 1, "arc_challenge": 1, "commonsense_qa": 0, "boolq": 1, "lambada_openai": 0, "copa": 1,
        "hellaswag": 2, "winogrande": 0}


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    return write_task_files(tmp_path_factory.mktemp("eval-data"))


def test_every_registered_task_has_a_fixture():
    assert sorted(task_names()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_format_gives_lm_evals_request_strings(name, task_files):
    task = get_task(name)
    split = load_splits(task, task_files[name])[task.eval_split]
    question = split.questions[0]
    assert request_strings(task, question) == EXPECTED[name]
    assert question.gold == GOLD[name]
    if task.kind == "multiple_choice":  # acc_norm divides by lm-eval's doc_to_choice strings
        assert len(question.choices) == len(EXPECTED[name])


def test_labels_in_their_many_spellings(task_files):
    arc = load_splits(get_task("arc_challenge"), task_files["arc_challenge"])["test"]
    assert [q.gold for q in arc.questions] == [1, 0]  # answerKey "B" of A-C; "1" of digit labels 1-4
    assert len(arc.questions[0].continuations) == 3  # not every ARC question has 4 choices
    hella = load_splits(get_task("hellaswag"), task_files["hellaswag"])["validation"]
    assert [q.gold for q in hella.questions] == [2, 3]  # the release's int label and the hub's string label
    piqa = load_splits(get_task("piqa"), task_files["piqa"])["validation"]
    assert [q.gold for q in piqa.questions] == [0, 0, 1]  # from valid-labels.lst, line by line
    assert piqa.questions[1].choices[0] == "can hold a lamp "  # trailing space kept (it counts in acc_norm)


def test_copa_xml_splits_as_superglue(task_files):
    splits = load_splits(get_task("copa"), task_files["copa"], shots=1)
    assert [d["id"] for d in splits["validation"].docs] == [401, 402]  # SuperGLUE's validation: dev items 401-500
    assert [d["id"] for d in splits["train"].docs] == [399, 400]
    assert splits["validation"].where[0].endswith("copa-dev.xml:14")  # each item's line, for errors


def test_superglue_and_hub_schemas_load_too(tmp_path):
    boolq = _jsonl(tmp_path / "val.jsonl", [{"question": "is it", "passage": "It is.", "idx": 0, "label": 1}])
    assert load_splits(get_task("boolq"), boolq)["validation"].questions[0].gold == 1
    copa = _jsonl(tmp_path / "copa" / "val.jsonl", [{"premise": "It rained.", "choice1": "We got wet.", "choice2": "We sang.",
                                                     "question": "effect", "label": 0, "idx": 0}])
    assert request_strings(get_task("copa"), load_splits(get_task("copa"), copa)["validation"].questions[0])[0] == \
        ("It rained therefore", "  we got wet.")
    piqa = _jsonl(tmp_path / "piqa-hub.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 1}])
    assert load_splits(get_task("piqa"), piqa)["validation"].questions[0].gold == 1


def test_split_names_of_the_releases():
    names = {"valid.jsonl": "validation", "ARC-Challenge-Dev.jsonl": "validation", "ARC-Easy-Test.jsonl": "test",
             "dev_rand_split.jsonl": "validation", "train_rand_split.jsonl": "train", "lambada_test.jsonl": "test",
             "copa-dev.xml": "validation", "hellaswag_val.jsonl": "validation", "train_xl.jsonl": "train", "rows.jsonl": None}
    assert {n: split_of(Path(n)) for n in names} == names


def test_real_shared_data_loads_whole(shared_data):
    eval_dir = shared_data / "eval"
    counts = {"piqa": ("piqa", 1838), "arc_easy": ("arc_easy", 2376), "arc_challenge": ("arc_challenge", 1172),
              "commonsense_qa": ("commonsenseqa", 1221), "boolq": ("boolq", 3270), "lambada_openai": ("lambada", 5153),
              "copa": ("copa", 100)}
    for name, (folder, n) in counts.items():
        task = get_task(name)
        assert len(load_splits(task, eval_dir / folder)[task.eval_split].questions) == n, name
    assert len(load_splits(get_task("copa"), eval_dir / "copa", shots=1)["train"].docs) == 400


# ---------------------------------------------------------------- bad input names file, line and field


def _bad_jsonl(tmp_path: Path, name: str, rows: list, raw_line: str | None = None) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + ([raw_line] if raw_line is not None else [])
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", ["missing field", "label out of range", "bad json", "bad json array", "bad xml",
                                  "xml label", "labels file", "labels count", "not utf-8"])
def test_bad_task_files_name_file_line_and_field(case, tmp_path):
    good = {"goal": "g", "sol1": "a", "sol2": "b", "label": 0}
    if case == "missing field":
        task, path, want = "piqa", _bad_jsonl(tmp_path, "p.jsonl", [good, {"goal": "g", "sol1": "a", "label": 0}]), [":2:", "'sol2'"]
    elif case == "label out of range":
        task, path, want = "piqa", _bad_jsonl(tmp_path, "p.jsonl", [good, {**good, "label": 2}]), [":2:", "'label'", "2"]
    elif case == "bad json":
        task, path, want = "boolq", _bad_jsonl(tmp_path, "dev.jsonl", [BOOLQ[0]], '{"question": "x",'), [":2:", "not valid JSON"]
    elif case == "bad json array":
        path = tmp_path / "test.json"
        path.write_text(json.dumps(ARC_HF[:1], indent=2)[:-1] + ",\n  {\"id\": oops}\n]")
        task, want = "arc_easy", [f"{path}:", "not valid JSON"]
        want[0] += str(path.read_text().count("\n"))  # the line of the broken object
    elif case in ("bad xml", "xml label"):
        path = tmp_path / "copa-dev.xml"
        text = copa_xml(COPA_ITEMS)
        text = text.replace("</a2>\n  </item>\n  <item id=\"402\"", "</a2>\n  <item id=\"402\"") if case == "bad xml" \
            else text.replace('id="402" asks-for="cause" most-plausible-alternative="1"', 'id="402" asks-for="cause" most-plausible-alternative="3"')
        path.write_text(text)
        task, want = "copa", ([f"{path}:", "not valid XML"] if case == "bad xml" else [f"{path}:19", "most-plausible-alternative", "1 or 2"])
    elif case in ("labels file", "labels count"):
        path = _bad_jsonl(tmp_path, "valid.jsonl", [r for r, _ in PIQA])
        (tmp_path / "valid-labels.lst").write_text("0\n7\n1\n" if case == "labels file" else "0\n1\n")
        task, want = "piqa", (["valid-labels.lst:2", "'7'"] if case == "labels file" else ["2 labels for 3 rows"])
    else:
        path = tmp_path / "lambada_test.jsonl"
        path.write_bytes(b'{"text": "a b"}\n{"text": "caf\xe9 x"}\n')
        task, want = "lambada_openai", [f"{path}:2", "UTF-8"]
    with pytest.raises(TaskDataError) as e:
        load_splits(get_task(task), path)
    assert all(w in str(e.value) for w in want), str(e.value)


@pytest.mark.parametrize("case", ["lone surrogate", "deep nesting", "huge integer", "array surrogate"])
def test_hostile_task_rows_are_task_data_errors_naming_file_and_line(case, tmp_path):
    """What a hostile request does to the server (issue 14) is a clear error in a task file too, never a traceback."""
    good = '{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}'
    bad = {"lone surrogate": '{"goal": "g\\ud800", "sol1": "a", "sol2": "b", "label": 0}',
           "deep nesting": '{"goal": "g", "sol1": "a", "sol2": "b", "label": 0, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
           "huge integer": '{"goal": "g", "sol1": "a", "sol2": "b", "label": ' + "9" * 5000 + "}",
           "array surrogate": None}[case]
    if bad is None:
        path = tmp_path / "test.json"
        path.write_text("[\n" + json.dumps(ARC_HF[0]) + ",\n" + json.dumps({**ARC_HF[0], "question": "q"}).replace('"q"', '"q\\udbff"') + "\n]")
        task, want = "arc_easy", [f"{path}:3", "U+DBFF"]
    else:
        path = tmp_path / "valid.jsonl"
        path.write_text(good + "\n" + bad + "\n")
        (tmp_path / "valid-labels.lst").write_text("0\n1\n")
        task = "piqa"
        want = [f"{path}:2", {"lone surrogate": "U+D800", "deep nesting": "nested too deeply", "huge integer": "digits"}[case]]
    with pytest.raises(TaskDataError) as e:
        load_splits(get_task(task), path)
    assert all(w in str(e.value) for w in want), str(e.value)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskDataError) as e:
        get_task("arc_eazy")
    assert "did you mean 'arc_easy'" in str(e.value) and "winogrande" in str(e.value)


def test_a_file_for_the_wrong_split_says_which_split_is_scored(tmp_path):
    path = _jsonl(tmp_path / "ARC-Challenge-Dev.jsonl", ARC_AI2)
    with pytest.raises(TaskDataError) as e:
        load_splits(get_task("arc_challenge"), path)
    assert "scores the test split" in str(e.value) and "validation" in str(e.value)


def test_no_network_means_a_local_copy_is_asked_for():
    with pytest.raises(TaskDataError) as e:
        load_splits(get_task("piqa"), None)  # conftest forces the hub offline
    assert "--task-data piqa=PATH" in str(e.value)


# ---------------------------------------------------------------- few-shot: lm-eval's sampler


def lm_eval_sampler(pool: list[dict], docs: list[dict], k: int, seed: int, exclude: bool) -> list[list[int]]:
    """lm-eval 0.4's ContextSampler.sample, written out independently: which pool rows each doc gets."""
    rnd = random.Random(seed)
    out = []
    for doc in docs:
        if exclude:
            picked = [x for x in rnd.sample(pool, k + 1) if x != doc][:k]
        else:
            picked = rnd.sample(pool, k)
        out.append([pool.index(x) for x in picked])
    return out


def test_fewshot_prefixes_follow_lm_evals_sampler_and_are_deterministic(tmp_path):
    rows = [{"question": f"question {i}", "passage": f"passage {i}.", "label": i % 2} for i in range(12)]
    path = _jsonl(tmp_path / "val.jsonl", rows)
    task = get_task("boolq")  # no test_split: k+1 drawn, the doc itself dropped
    split = load_splits(task, path, shots=3)["validation"]
    prefixes = fewshot_prefixes(task, split.docs, split.docs, split.questions, 3, 1234)
    expected = lm_eval_sampler(split.docs, split.docs, 3, 1234, exclude=True)
    for doc_index, (prefix, picks) in enumerate(zip(prefixes, expected)):
        assert prefix == "".join(f"passage {i}.\nQuestion: question {i}?\nAnswer: {('no', 'yes')[i % 2]}\n\n" for i in picks)
        assert doc_index not in picks  # never its own example
    assert fewshot_prefixes(task, split.docs, split.docs, split.questions, 3, 1234) == prefixes  # same seed, same prompts
    assert fewshot_prefixes(task, split.docs, split.docs, split.questions, 3, 42) != prefixes
    assert fewshot_prefixes(task, split.docs[:4], split.docs, split.questions, 3, 1234) == prefixes[:4]  # --limit 4
    # arc (test_split set): k drawn, nothing dropped — the RNG moves differently
    arc = get_task("arc_easy")
    assert lm_eval_sampler(split.docs, split.docs, 3, 1234, exclude=False) != expected
    assert fewshot_prefixes(arc, split.docs, split.docs, split.questions, 3, 1234) != prefixes


def test_too_few_examples_for_the_shots_is_an_error(task_files):
    split = load_splits(get_task("winogrande"), task_files["winogrande"], shots=2)["validation"]
    with pytest.raises(TaskDataError) as e:
        fewshot_prefixes(get_task("winogrande"), split.docs, split.docs, split.questions, 2, 1234)
    assert "has only 2" in str(e.value)


def test_encode_pair_splits_one_joint_encoding(tiny_tokenizer):
    encode = PairEncoder(tiny_tokenizer)
    req = encode("The river ran under the ", "bridge")  # trailing space moves into the continuation
    ctx = tiny_tokenizer.encode("The river ran under the")
    assert req.context == tuple(ctx)
    assert req.continuation == tuple(tiny_tokenizer.encode("The river ran under the bridge")[len(ctx):])
    assert encode("", " x").context == (tiny_tokenizer.eot_id,)  # lm-eval's prefix token for an empty context


def test_eval_is_inference_it_never_imports_training_or_the_cli():
    import ast

    pkg = Path(__file__).resolve().parents[1] / "ngpt" / "eval"
    offenders = {}
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(("ngpt.train", "ngpt.cli"))]
            if bad:
                offenders[path.name] = bad
    assert offenders == {}
