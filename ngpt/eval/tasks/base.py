"""What a benchmark task is to ngpt: where its data comes from, and each row as the questions lm-eval scores.

A task module (one per data format, in this package) declares `TASKS = [Task(...), ...]`; the
registry (ngpt.eval.tasks) finds them. A Task says:

    hub          the Hugging Face dataset lm-evaluation-harness 0.4.x loads (path, config)
    eval_split   the split lm-eval scores: its YAML's test_split when set, else validation_split
    test_split   whether that YAML sets test_split: lm-eval's few-shot draw depends on it (ngpt.eval.prompts)
    read         a local file → raw rows (default: .jsonl / .json rows), with "file:line" for errors
    to_doc       a raw row (the original release's schema or the hub's) → the hub's schema
    question     a doc → Question: the strings lm-eval scores, exactly its YAML's doc_to_text/choice/target
    chat         a doc → ChatQuestion for --chat (None: no multiple-choice form)

A row that breaks the schema raises TaskDataError through `need` / `label_index`, and the loader
adds the file and line, so a bad row names where it is, which field and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter: between a context and each continuation
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter: after each worked example


class TaskDataError(ValueError):
    """A task's data is unreadable or a row breaks its schema; the message names the file, line and field."""


@dataclass(frozen=True)
class Question:
    """One eval row as lm-eval scores it: log P(" " + continuation | context) per choice.

    contexts: doc_to_text — one shared context, or one per choice (Winogrande's partial scoring).
    continuations: one per choice after the shared context, or one shared after each context.
    choices: lm-eval's doc_to_choice strings; acc_norm divides each log-likelihood by their length in characters.
    A completion task (LAMBADA) has one context, one continuation and no choices.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choices: tuple[str, ...] = ()

    @property
    def num_choices(self) -> int:
        return max(len(self.contexts), len(self.continuations))

    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) per choice, before the few-shot prefix and the target delimiter."""
        if len(self.contexts) > 1:
            return [(c, self.continuations[0]) for c in self.contexts]
        return [(self.contexts[0], c) for c in self.continuations]

    def worked_example(self) -> str:
        """This row as a few-shot example: its correct context, the delimiter, its answer, the few-shot delimiter."""
        ctx = self.contexts[self.gold if len(self.contexts) > 1 else 0]
        answer = self.continuations[self.gold if len(self.continuations) > 1 else 0]
        return ctx + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER


@dataclass(frozen=True)
class ChatQuestion:
    """A row as a chat question: the question text and its options (letters A, B, ... in order)."""

    question: str
    options: tuple[str, ...]
    gold: int


Row = tuple[dict, str]  # a raw row and where it is ("file:line")


@dataclass(frozen=True)
class Task:
    name: str
    kind: Literal["multiple_choice", "loglikelihood"]
    hub: tuple[str, str | None]
    eval_split: Literal["validation", "test"]
    test_split: bool
    to_doc: Callable[[dict], dict]
    question: Callable[[dict], Question]
    chat: Callable[[dict], ChatQuestion] | None = None
    read: Callable[[Path], list[Row] | dict[str, list[Row]]] | None = None  # None: generic .jsonl/.json rows
    extensions: tuple[str, ...] = (".jsonl", ".json")
    about: str = ""
    local_hint: str = ""  # what a local copy looks like, for error messages


# ---------------------------------------------------------------------------------------------
# Schema checks every task module uses: each names the field and what it must be.


def flatten_question(row: dict, release: str, carried: tuple[str, ...] = ()) -> dict:
    """A row in the release's nested schema, question = {stem, choices: [{label, text}], ...}, in the hub's flat
    one (question = the stem, choices = {label: [...], text: [...]}, plus the `carried` fields of the question);
    a hub row comes back as it is. ARC (AI2's jsonl) and CommonsenseQA share this layout."""
    q = need(row, "question", (str, dict), f"a string (hub rows) or an object with stem and choices ({release})")
    if isinstance(q, str):
        return row
    items = need(q, "choices", list, "a list of {label, text}")
    for item in items:
        need(item, "label")
        need(item, "text")
    return {**row, **{key: q.get(key) for key in carried}, "question": need(q, "stem"),
            "choices": {"label": [c["label"] for c in items], "text": [c["text"] for c in items]}}


def need(row: dict, key: str, kind: type | tuple[type, ...] = str, what: str | None = None):
    """row[key], which must exist and be of `kind`; TaskDataError naming the field otherwise."""
    if not isinstance(row, dict):
        raise TaskDataError(f"the row is a JSON {type(row).__name__}, not an object with field '{key}'")
    if key not in row:
        raise TaskDataError(f"field '{key}' is missing (fields here: {', '.join(sorted(row)) or 'none'})")
    value = row[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TaskDataError(f"field '{key}' must be {what or names}, got {value!r:.80}")
    return value


def need_strings(row: dict, key: str, n: int | None = None) -> list[str]:
    """row[key]: a non-empty list of strings (exactly n of them when n is given)."""
    value = need(row, key, list, "a list of strings")
    if not value or not all(isinstance(v, str) for v in value) or (n is not None and len(value) != n):
        size = f"{n} strings" if n is not None else "a non-empty list of strings"
        raise TaskDataError(f"field '{key}' must be {size}, got {value!r:.80}")
    return value


def label_index(value, labels: list, key: str) -> int:
    """The position of `value` among `labels` (an answer key, a 0/1 label); TaskDataError naming the range."""
    if value in labels and not isinstance(value, bool):
        return labels.index(value)
    raise TaskDataError(f"field '{key}' is {value!r}, out of range: it must be one of {', '.join(map(repr, labels))}")
