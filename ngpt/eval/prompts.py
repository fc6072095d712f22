"""Prompts as lm-evaluation-harness 0.4.x builds them: few-shot prefixes, request strings, token ids.

    prefixes = fewshot_prefixes(task, eval_docs, pool_docs, pool_questions, shots=5, seed=1234)
    pairs = request_strings(task, question, prefix)      # [(context, continuation), ...] one per choice
    req = encode_pair(tok, context, continuation)        # Request(context ids, continuation ids)

Few-shot (lm-eval's ContextSampler): one random.Random(seed) per task, drawn from in eval-doc order,
so the first N docs of a --limit N run get the same examples as a full run. When the task's YAML has
no test_split (piqa, boolq, copa, ...), lm-eval draws k+1 examples and drops any equal to the doc
being asked (then keeps k); otherwise (arc, lambada) it draws k. Each example is
`context + " " + answer + "\\n\\n"`; the question follows.

Tokens (lm-eval's HFLM): trailing whitespace of the context moves to the front of the continuation;
context ids = encode(context), continuation ids = encode(context + continuation)[len(context ids):]
— one joint encoding split at the context's length, not two separate encodings. No BOS: ngpt's
tokenizer has none, and lm-eval adds none for the export (its tokenizer adds no special tokens).
An empty context (never in these tasks) is lm-eval's prefix token, here <|eot|>.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ngpt.eval.tasks.base import TARGET_DELIMITER, Question, Task, TaskDataError
from ngpt.tokenizer import Tokenizer


@dataclass(frozen=True)
class Request:
    """One continuation to score: its context ids and its own ids (scored), as lm-eval tokenizes them."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def fewshot_prefixes(task: Task, eval_docs: list[dict], pool_docs: list[dict], pool_questions: list[Question],
                     shots: int, seed: int) -> list[str]:
    """The few-shot prefix of each eval doc, in order (all "" when shots == 0)."""
    if shots == 0:
        return [""] * len(eval_docs)
    exclude = not task.test_split  # lm-eval: fewshot_split (None) == test_split (None) → pass the eval doc to drop
    need = shots + 1 if exclude else shots
    if len(pool_docs) < need:
        raise TaskDataError(f"{task.name}: --shots {shots} draws {need} examples per question, but the few-shot pool "
                            f"has only {len(pool_docs)}; use fewer shots or a larger split")
    rnd = random.Random(seed)
    indices = list(range(len(pool_docs)))
    out = []
    for doc in eval_docs:
        if exclude:
            picked = [i for i in rnd.sample(indices, need) if pool_docs[i] != doc][:shots]
            if len(picked) < shots:  # the pool held copies of the doc: lm-eval redraws without any of them
                picked = rnd.sample([i for i in indices if pool_docs[i] != doc], shots)
        else:
            picked = rnd.sample(indices, shots)
        out.append("".join(pool_questions[i].worked_example() for i in picked))
    return out


def request_strings(task: Task, question: Question, prefix: str = "") -> list[tuple[str, str]]:
    """(context, continuation) per choice as lm-eval sends them to the model."""
    # multiple_choice puts the target delimiter before each choice; a loglikelihood task's target has its own space.
    delimiter = TARGET_DELIMITER if task.kind == "multiple_choice" else ""
    return [(prefix + ctx, delimiter + cont) for ctx, cont in question.pairs()]


class PairEncoder:
    """encode_pair with the context's ids remembered: every choice of a question shares its context."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self._contexts: dict[str, list[int]] = {}

    def __call__(self, context: str, continuation: str) -> Request:
        if context == "":
            return Request((self.tok.eot_id,), tuple(self.tok.encode(continuation)))
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx_ids = self._contexts.get(context)
        if ctx_ids is None:
            ctx_ids = self._contexts[context] = self.tok.encode(context)
            if len(self._contexts) > 4096:  # one question's choices share it; old contexts are not asked again
                self._contexts.pop(next(iter(self._contexts)))
        whole = self.tok.encode(context + continuation)
        return Request(tuple(ctx_ids), tuple(whole[len(ctx_ids):]))


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> Request:
    return PairEncoder(tok)(context, continuation)
