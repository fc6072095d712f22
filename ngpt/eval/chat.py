"""Chat evaluation (`ngpt eval tasks --chat`): ask each question through the chat template, read the letter.

nanochat's ChatCORE way for SFT models: the question goes in as a user turn, in nanochat's
multiple-choice format (each option followed by "=" and its letter, the letter right after the "=",
then "Respond only with the letter of the correct answer."), the model answers greedily, and the
answer is the first standalone option letter in its reply (none → wrong). Letters are A, B, C, ... in
the dataset's order. Per task: chat_acc, chat_centered (against the same chance baseline) and how
many replies held no letter; `chatcore` is the mean chat_centered.

    extra = chat_accuracy(model, tok, task, docs)    # {"chat_acc": ..., "chat_centered": ..., ...}
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

from ngpt.chat_format import prompt_ids
from ngpt.engine import Engine
from ngpt.eval.tasks.base import ChatQuestion, Task
from ngpt.inference import NO_AUTOCAST
from ngpt.model import GPT
from ngpt.sampling import SamplingParams
from ngpt.tokenizer import Tokenizer

MAX_REPLY_TOKENS = 8  # a letter and <|eot|>, with room for "The answer is B"
LETTERS = string.ascii_uppercase


def render_question(q: ChatQuestion) -> str:
    lines = [f"Multiple Choice question: {q.question}"]
    lines += [f"- {option}={LETTERS[i]}" for i, option in enumerate(q.options)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


def read_letter(reply: str, n_options: int) -> int | None:
    """The option index of the first standalone letter among the options' letters in `reply`, or None."""
    allowed = LETTERS[:n_options]
    for match in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", reply):
        if match.group(1) in allowed:
            return allowed.index(match.group(1))
    return None


def chat_prompt(tok: Tokenizer, q: ChatQuestion, seq_len: int) -> tuple[list[int], bool]:
    """The generation prompt, and whether it was cut: too long, it keeps <|usr|> and its last tokens (the options)."""
    ids = prompt_ids(tok, [{"role": "user", "content": render_question(q)}])
    room = seq_len - MAX_REPLY_TOKENS
    if len(ids) <= room:
        return ids, False
    return ids[:1] + ids[-(room - 1):], True


def chat_accuracy(model: GPT, tok: Tokenizer, task: Task, docs: list[dict],
                  progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict:
    engine = Engine(model, tok, precision=NO_AUTOCAST)
    params = SamplingParams.greedy(MAX_REPLY_TOKENS)
    advance = progress(f"{task.name} (chat)", len(docs)) if progress else (lambda n: None)
    hits = no_letter = cut = 0
    chance = 0.0
    for doc in docs:
        q = task.chat(doc)
        ids, was_cut = chat_prompt(tok, q, model.cfg.seq_len)
        pick = read_letter(engine.generate(ids, params).text, len(q.options))
        hits += pick == q.gold
        no_letter += pick is None
        cut += was_cut
        chance += 1 / len(q.options)
        advance(1)
    n = len(docs)
    acc, baseline = hits / n, chance / n
    return {"chat_acc": acc, "chat_centered": (acc - baseline) / (1 - baseline), "chat_no_letter": no_letter,
            "chat_prompts_cut": cut}
