"""COPA (Choice of Plausible Alternatives, SuperGLUE): the more plausible cause or effect. lm-eval's `copa`.

    premise.strip()[:-1] + " because" (cause) | " therefore" (effect) → "  " + lcfirst(alternative); acc

The continuation has two leading spaces, as in lm-eval: the target delimiter and the choice's own
space. Local copy: the original XML release (copa-dev.xml: items 1-400 are SuperGLUE's train split,
401-500 its validation split, the one lm-eval scores; copa-test.xml the test split), or SuperGLUE's
jsonl rows (premise, choice1, choice2, question, label).
"""

from __future__ import annotations

from pathlib import Path
from xml.parsers import expat

from ngpt.eval.taskdata import read_rows, read_text, split_of
from ngpt.eval.tasks.base import ChatQuestion, Question, Row, Task, TaskDataError, label_index, need

SUPERGLUE_TRAIN_LAST_ID = 400  # SuperGLUE's COPA train = dev items 1-400, validation = 401-500


def read(path: Path) -> list[Row] | dict[str, list[Row]]:
    if path.suffix.lower() != ".xml":
        return read_rows(path)
    items = read_xml(path)
    if split_of(path) == "test":
        return {"test": items}
    split = {"train": [], "validation": []}
    for row, where in items:
        item_id = row.get("id")
        split["train" if isinstance(item_id, int) and item_id <= SUPERGLUE_TRAIN_LAST_ID else "validation"].append((row, where))
    return {k: v for k, v in split.items() if v}


def read_xml(path: Path) -> list[Row]:
    """<item id asks-for most-plausible-alternative><p/><a1/><a2/></item> → SuperGLUE rows, with each item's line.

    expat reads the DTD declaration without fetching the DTD, so copa.dtd need not be beside the file.
    """
    parser = expat.ParserCreate()
    rows: list[Row] = []
    state: dict = {}

    def start(tag: str, attrs: dict) -> None:
        if tag == "item":
            state.update(item=dict(attrs), line=parser.CurrentLineNumber, fields={})
        elif tag in ("p", "a1", "a2") and "item" in state:
            state["field"], state["text"] = tag, []

    def chars(data: str) -> None:
        if "field" in state:
            state["text"].append(data)

    def end(tag: str) -> None:
        if tag == state.get("field"):
            state["fields"][tag] = "".join(state.pop("text"))
            del state["field"]
        elif tag == "item" and "item" in state:
            rows.append(_row(path, state.pop("item"), state.pop("fields"), state.pop("line")))

    parser.StartElementHandler, parser.CharacterDataHandler, parser.EndElementHandler = start, chars, end
    try:
        parser.Parse(read_text(path), True)
    except expat.ExpatError as e:
        raise TaskDataError(f"{path}:{e.lineno}: not valid XML (column {e.offset}: {expat.errors.messages[e.code]})") from None
    return rows


def _row(path: Path, attrs: dict, fields: dict, line: int) -> Row:
    where = f"{path}:{line}"
    for key, tag in (("premise", "p"), ("choice1", "a1"), ("choice2", "a2")):
        if tag not in fields:
            raise TaskDataError(f"{where}: copa: item {attrs.get('id', '?')} has no <{tag}> ({key}); each item needs <p>, <a1>, <a2>")
    row = {"premise": fields["p"], "choice1": fields["a1"], "choice2": fields["a2"],
           "question": attrs.get("asks-for"), "label": attrs.get("most-plausible-alternative")}
    row["id"] = int(attrs["id"]) if attrs.get("id", "").isdigit() else attrs.get("id")
    if row["label"] in ("1", "2"):
        row["label"] = int(row["label"]) - 1
    else:
        raise TaskDataError(f"{where}: copa: attribute most-plausible-alternative is {row['label']!r}, out of range: it must be 1 or 2")
    return row, where


def to_doc(row: dict) -> dict:
    for key in ("premise", "choice1", "choice2"):
        if not need(row, key):
            raise TaskDataError(f"field '{key}' is empty")
    label_index(need(row, "question"), ["cause", "effect"], "question")
    label_index(need(row, "label", int, "0 or 1"), [0, 1], "label")
    return row


def _lcfirst(choice: str) -> str:
    return choice[0].lower() + choice[1:]


def question(doc: dict) -> Question:
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    context = doc["premise"].strip()[:-1] + f" {connector}"  # the premise's final period dropped
    choices = (" " + _lcfirst(doc["choice1"]), " " + _lcfirst(doc["choice2"]))
    return Question((context,), choices, doc["label"], choices)


def chat(doc: dict) -> ChatQuestion:
    ask = {"cause": "What was the cause?", "effect": "What happened as a result?"}[doc["question"]]
    return ChatQuestion(f"{doc['premise'].strip()} {ask}", (doc["choice1"], doc["choice2"]), doc["label"])


TASKS = [Task(
    name="copa", kind="multiple_choice", hub=("aps/super_glue", "copa"), eval_split="validation", test_split=False,
    to_doc=to_doc, question=question, chat=chat, read=read, extensions=(".xml", ".jsonl", ".json"),
    about="more plausible cause/effect, 2 choices",
    local_hint="COPA's local copy is the XML release (copa-dev.xml: items 1-400 train, 401-500 validation) or SuperGLUE's "
               "jsonl rows (premise, choice1, choice2, question, label).",
)]
