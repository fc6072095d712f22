"""CommonsenseQA: five-way commonsense questions, answered by letter. lm-eval's `commonsense_qa`.

    "Question: {question.strip()}\nA. {t0}\nB. {t1}\nC. {t2}\nD. {t3}\nE. {t4}\nAnswer:" → " A" … " E"; acc

Local copy: the release's jsonl (dev_rand_split.jsonl: answerKey, question{stem, choices[{label, text}]})
or the hub's rows (question, choices{label, text}, answerKey).
"""

from __future__ import annotations

from ngpt.eval.tasks.base import (ChatQuestion, Question, Task, TaskDataError, flatten_question, label_index, need,
                                  need_strings)

LETTERS = ("A", "B", "C", "D", "E")


def to_doc(row: dict) -> dict:
    """The hub's schema; the release's nested question {stem, choices} is flattened to it."""
    row = flatten_question(row, "release jsonl", carried=("question_concept",))
    choices = need(row, "choices", dict, "an object with label and text lists")
    need_strings(choices, "text", 5)
    if need_strings(choices, "label", 5) != list(LETTERS):
        raise TaskDataError(f"field 'choices.label' must be A, B, C, D, E in order, got {choices['label']}")
    label_index(need(row, "answerKey"), list(LETTERS), "answerKey")
    return row


def question(doc: dict) -> Question:
    t = doc["choices"]["text"]
    text = (f"Question: {doc['question'].strip()}\nA. {t[0]}\nB. {t[1]}\nC. {t[2]}\nD. {t[3]}\nE. {t[4]}\nAnswer:")
    return Question((text,), LETTERS, LETTERS.index(doc["answerKey"]), LETTERS)


def chat(doc: dict) -> ChatQuestion:
    return ChatQuestion(doc["question"].strip(), tuple(doc["choices"]["text"]), LETTERS.index(doc["answerKey"]))


TASKS = [Task(
    name="commonsense_qa", kind="multiple_choice", hub=("tau/commonsense_qa", None), eval_split="validation",
    test_split=False, to_doc=to_doc, question=question, chat=chat, about="commonsense questions, 5 lettered choices",
    local_hint="CommonsenseQA's local copy is the release's dev_rand_split.jsonl (answerKey, question{stem, choices}) "
               "or the hub's rows (question, choices{label, text}, answerKey).",
)]
