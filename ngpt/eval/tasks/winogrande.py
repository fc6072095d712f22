"""Winogrande: which option fills the blank ("_") of a sentence. lm-eval's `winogrande` (winogrande_xl).

Partial scoring, as lm-eval: the two contexts are the sentence up to the blank with each option filled
in; the one continuation is the rest of the sentence, scored after each context:

    sentence[:i] + option1 | sentence[:i] + option2 → " " + sentence[i+1:].strip(); i = sentence.index("_")
    gold = {"1": 0, "2": 1}[answer]; acc

Local copy: the release's jsonl (dev.jsonl, train_xl.jsonl: qID, sentence, option1, option2, answer "1"/"2")
or the hub's rows (the same fields).
"""

from __future__ import annotations

from ngpt.eval.tasks.base import ChatQuestion, Question, Task, TaskDataError, label_index, need

ANSWERS = ["1", "2"]


def to_doc(row: dict) -> dict:
    if "_" not in need(row, "sentence"):
        raise TaskDataError("field 'sentence' has no blank '_' for the options to fill")
    need(row, "option1")
    need(row, "option2")
    label_index(str(need(row, "answer", (str, int), '"1" or "2"')), ANSWERS, "answer")
    return row


def question(doc: dict) -> Question:
    sentence = doc["sentence"]
    i = sentence.index("_")
    contexts = (sentence[:i] + doc["option1"], sentence[:i] + doc["option2"])
    return Question(contexts, (sentence[i + 1 :].strip(),), ANSWERS.index(str(doc["answer"])), contexts)


def chat(doc: dict) -> ChatQuestion:
    return ChatQuestion(f"Which option fills the blank (_)? {doc['sentence']}", (doc["option1"], doc["option2"]),
                        ANSWERS.index(str(doc["answer"])))


TASKS = [Task(
    name="winogrande", kind="multiple_choice", hub=("allenai/winogrande", "winogrande_xl"), eval_split="validation",
    test_split=False, to_doc=to_doc, question=question, chat=chat, about="pronoun/blank resolution, 2 options",
    local_hint="Winogrande's local copy is the release's dev.jsonl or the hub's rows (sentence with '_', option1, "
               "option2, answer \"1\"/\"2\").",
)]
