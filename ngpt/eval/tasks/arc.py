"""ARC-Easy and ARC-Challenge (AI2 Reasoning Challenge, grade-school science). lm-eval's `arc_easy`, `arc_challenge`.

    "Question: {question}\nAnswer:" → " {choices.text[i]}"; gold = choices.label.index(answerKey); acc, acc_norm

Scored on the test split (lm-eval's YAML sets test_split). Local copy: AI2's jsonl (ARC-Easy-Test.jsonl:
question.stem, question.choices[{text, label}], answerKey) or the hub's rows (question, choices{text, label},
answerKey) as a JSON array or jsonl; a folder holds one file per split. 3 to 5 choices; some labels are digits.
"""

from __future__ import annotations

from ngpt.eval.tasks.base import (ChatQuestion, Question, Task, TaskDataError, flatten_question, label_index, need,
                                  need_strings)


def to_doc(row: dict) -> dict:
    """The hub's schema; AI2's nested question {stem, choices: [{text, label}]} is flattened to it."""
    row = flatten_question(row, "AI2 jsonl")
    choices = need(row, "choices", dict, "an object with text and label lists")
    texts, labels = need_strings(choices, "text"), need_strings(choices, "label")
    if len(texts) != len(labels):
        raise TaskDataError(f"field 'choices' has {len(texts)} texts but {len(labels)} labels")
    label_index(need(row, "answerKey"), labels, "answerKey")
    return row


def question(doc: dict) -> Question:
    texts = tuple(doc["choices"]["text"])
    gold = doc["choices"]["label"].index(doc["answerKey"])
    return Question((f"Question: {doc['question']}\nAnswer:",), texts, gold, texts)


def chat(doc: dict) -> ChatQuestion:
    return ChatQuestion(doc["question"], tuple(doc["choices"]["text"]), doc["choices"]["label"].index(doc["answerKey"]))


HINT = ("ARC's local copy is AI2's jsonl (ARC-{0}-Test.jsonl, rows with question.stem, question.choices, answerKey) "
        "or the hub's rows (question, choices{{text, label}}, answerKey), a file or a folder with one file per split.")
TASKS = [
    Task(name="arc_easy", kind="multiple_choice", hub=("allenai/ai2_arc", "ARC-Easy"), eval_split="test", test_split=True,
         to_doc=to_doc, question=question, chat=chat, about="science questions (easy set), 3-5 choices",
         local_hint=HINT.format("Easy")),
    Task(name="arc_challenge", kind="multiple_choice", hub=("allenai/ai2_arc", "ARC-Challenge"), eval_split="test",
         test_split=True, to_doc=to_doc, question=question, chat=chat, about="science questions (challenge set), 3-5 choices",
         local_hint=HINT.format("Challenge")),
]
