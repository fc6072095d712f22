"""Benchmark tasks end to end: read and check the data, build lm-eval's prompts, score them, the numbers.

    runs = prepare_tasks(["piqa", "arc_easy"], {"piqa": "../shared/data/eval/piqa"}, shots=0, limit=None)
    result = run_tasks(model, tok, runs, shots=0, seed=1234, batch_size=16)
    result.to_json()   # {"tasks": {"piqa": {"acc", "acc_norm", "baseline", "centered", ...}}, "core": ...}

prepare_tasks reads and checks every row of every task first, so a bad file stops the run before the
model scores anything. Per task: acc (argmax of the summed log-likelihood), acc_norm (argmax of the
log-likelihood divided by the choice's length in characters, lm-eval's acc_norm), baseline (the
accuracy of guessing uniformly: the mean of 1 / number of choices; 0 for LAMBADA), centered =
(acc − baseline) / (1 − baseline), and `core`, the mean centered accuracy over the tasks run
(nanochat's CORE idea on lm-eval's tasks and prompts). LAMBADA adds perplexity. Ties go to the first
choice, as numpy's argmax in lm-eval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ngpt.eval.loglik import Score, score_requests
from ngpt.eval.prompts import PairEncoder, fewshot_prefixes, request_strings
from ngpt.eval.taskdata import POOL_ORDER, Split, load_splits
from ngpt.eval.tasks import get_task
from ngpt.eval.tasks.base import Question, Task, TaskDataError
from ngpt.model import GPT
from ngpt.tokenizer import Tokenizer

# start(description, total) → advance(n): how a caller shows progress (a Rich bar, or nothing)
Tracker = Callable[[str, int], Callable[[int], None]]


def no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class TaskRun:
    """One task, its data read and checked: the questions to score and the few-shot pool."""

    task: Task
    eval: Split
    pool: Split | None
    limit: int | None

    @property
    def docs(self) -> list[dict]:
        return self.eval.docs[: self.limit]

    @property
    def questions(self) -> list[Question]:
        return self.eval.questions[: self.limit]

    @property
    def pool_note(self) -> str:
        """Where few-shot examples come from, and whether that differs from lm-eval's own default (train)."""
        if self.pool is None:
            return "—"
        note = f"{self.pool.name} ({len(self.pool.docs):,})"
        return note if self.pool.name == "train" else note + ", no train split here"


def prepare_tasks(names: list[str], task_data: dict[str, str], shots: int, limit: int | None) -> list[TaskRun]:
    """Every named task's data, read and checked (local copy when task_data names one, else the hub)."""
    if not names:
        raise TaskDataError("no tasks to run: pass --tasks (e.g. --tasks piqa,arc_easy) or set eval.tasks")
    tasks = [get_task(n) for n in names]  # unknown names fail before any data is read
    for name in task_data:
        get_task(name)  # a local copy for a task that does not exist is a typo worth naming
    runs = []
    for task in tasks:
        splits = load_splits(task, task_data.get(task.name), shots)
        # lm-eval's few-shot pool: train, else validation, else test (possibly the scored split itself)
        pool = splits[next(s for s in POOL_ORDER if s in splits)] if shots else None
        runs.append(TaskRun(task, splits[task.eval_split], pool, limit))
    return runs


@dataclass
class TaskResult:
    name: str
    n: int
    acc: float
    acc_norm: float | None
    baseline: float
    acc_stderr: float
    seconds: float
    extra: dict = field(default_factory=dict)  # perplexity (LAMBADA), chat numbers, split and data origin
    logprobs: list[list[float]] = field(default_factory=list)  # per question, per choice (tests compare them)

    @property
    def centered(self) -> float:
        return (self.acc - self.baseline) / (1 - self.baseline)

    def to_json(self) -> dict:
        return {"n": self.n, "acc": self.acc, "acc_norm": self.acc_norm, "baseline": self.baseline,
                "centered": self.centered, "acc_stderr": self.acc_stderr, **self.extra,
                "seconds": round(self.seconds, 3), "examples_per_s": round(self.n / self.seconds, 2) if self.seconds else None}


@dataclass
class TasksResult:
    tasks: list[TaskResult]
    settings: dict

    @property
    def core(self) -> float | None:
        return sum(t.centered for t in self.tasks) / len(self.tasks) if self.tasks else None

    @property
    def chatcore(self) -> float | None:
        chat = [t.extra["chat_centered"] for t in self.tasks if t.extra.get("chat_centered") is not None]
        return sum(chat) / len(chat) if chat else None

    def to_json(self) -> dict:
        out = {**self.settings, "tasks": {t.name: t.to_json() for t in self.tasks}, "core": self.core}
        if self.chatcore is not None:
            out["chatcore"] = self.chatcore
        return out


def run_tasks(model: GPT, tok: Tokenizer, runs: list[TaskRun], *, shots: int, seed: int, batch_size: int,
              chat: bool = False, progress: Tracker = no_progress) -> TasksResult:
    """Score every task (and, with chat, ask every multiple-choice question through the chat template)."""
    results = []
    for run in runs:
        t0 = time.perf_counter()
        result = score_task(model, tok, run, shots=shots, seed=seed, batch_size=batch_size, progress=progress)
        result.seconds = time.perf_counter() - t0
        result.extra |= {"split": run.eval.name, "data": run.eval.origin}
        if chat and run.task.chat is not None:
            from ngpt.eval.chat import chat_accuracy

            result.extra |= chat_accuracy(model, tok, run.task, run.docs, progress=progress)
        results.append(result)
    return TasksResult(results, {"shots": shots, "limit": runs[0].limit if runs else None, "seed": seed,
                                 "batch_size": batch_size})


def score_task(model: GPT, tok: Tokenizer, run: TaskRun, *, shots: int, seed: int, batch_size: int,
               progress: Tracker = no_progress) -> TaskResult:
    task, questions = run.task, run.questions
    pool_docs, pool_questions = (run.pool.docs, run.pool.questions) if run.pool else ([], [])
    prefixes = fewshot_prefixes(task, run.docs, pool_docs, pool_questions, shots, seed)
    encode = PairEncoder(tok)
    requests, owner = [], []
    for q_index, (question, prefix) in enumerate(zip(questions, prefixes)):
        for context, continuation in request_strings(task, question, prefix):
            requests.append(encode(context, continuation))
            owner.append(q_index)
    advance = progress(task.name, len(requests))
    scores = score_requests(model, requests, batch_size, on_done=advance)
    per_question: list[list[Score]] = [[] for _ in questions]
    for q_index, score in zip(owner, scores):
        per_question[q_index].append(score)
    if task.kind == "loglikelihood":
        return _completion_metrics(task.name, per_question)
    return _choice_metrics(task.name, questions, per_question)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as np.argmax


def _stderr(xs: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def _choice_metrics(name: str, questions: list[Question], scores: list[list[Score]]) -> TaskResult:
    hits, norm_hits, chance, logprobs = [], [], [], []
    for question, qs in zip(questions, scores):
        lls = [s.logprob for s in qs]
        # lm-eval's acc_norm: log-likelihood per character of the choice (not bytes, not tokens).
        normed = [ll / len(c) if c else -math.inf for ll, c in zip(lls, question.choices)]
        hits.append(float(_argmax(lls) == question.gold))
        norm_hits.append(float(_argmax(normed) == question.gold))
        chance.append(1.0 / question.num_choices)
        logprobs.append(lls)
    n = len(questions)
    return TaskResult(name, n, sum(hits) / n, sum(norm_hits) / n, sum(chance) / n, _stderr(hits), 0.0,
                      logprobs=logprobs)


def _completion_metrics(name: str, scores: list[list[Score]]) -> TaskResult:
    lls = [qs[0].logprob for qs in scores]
    hits = [float(qs[0].greedy) for qs in scores]
    n = len(scores)
    mean_ll = sum(lls) / n
    perplexity = math.exp(-mean_ll) if -mean_ll < 700 else math.inf  # exp overflows past ~709
    return TaskResult(name, n, sum(hits) / n, None, 0.0, _stderr(hits), 0.0, {"perplexity": perplexity},
                      logprobs=[[ll] for ll in lls])
