"""What a decode precision costs in answers: a checkpoint in fp32 against itself in bf16 / int8 weights.

For each prompt (the first user message of each line of a chat jsonl, e.g. data/primer.jsonl), the fp32
model answers greedily. Every other precision then reads that same conversation (teacher forcing), and at
each reply position we compare its next-token distribution with fp32's: KL(fp32 ‖ other) in nats and
whether the top token agrees. It also answers greedily itself, and we count replies identical to fp32's.
No caches or datasets are needed: only the checkpoint and the prompts.

    from ngpt.bench.quality import QualityPlan, run_quality
    rows = run_quality(QualityPlan(ckpt="checkpoints/best.pt", prompts_file="data/primer.jsonl"))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ngpt.chat_format import prompt_ids, read_chat_jsonl
from ngpt.engine import Engine
from ngpt.inference import NO_AUTOCAST, prepare_for_decoding
from ngpt.sampling import SamplingParams


@dataclass(frozen=True)
class QualityPlan:
    ckpt: str | Path
    prompts_file: str | Path
    precisions: tuple[str, ...] = ("bf16", "int8")  # each compared with fp32
    n_prompts: int = 30
    max_new_tokens: int = 48


@dataclass(frozen=True)
class QualityRow:
    precision: str
    mean_kl: float  # nats per reply token, KL(fp32 ‖ this)
    top1_agreement: float  # share of reply positions where this precision's top token is fp32's
    identical_replies: int  # greedy replies equal to fp32's, of `prompts`
    prompts: int
    reply_tokens: int

    def to_json(self) -> dict:
        return {
            "precision": self.precision, "mean_kl": float(f"{self.mean_kl:.4g}"),
            "top1_agreement": round(self.top1_agreement, 4), "identical_replies": self.identical_replies,
            "prompts": self.prompts, "reply_tokens": self.reply_tokens,
        }


def read_prompts(path: str | Path, n: int) -> list[str]:
    """The first user message of each of the first `n` conversations in a chat jsonl file."""
    prompts = []
    for _, messages in read_chat_jsonl(path):
        user = next((m["content"] for m in messages if m["role"] == "user"), None)
        if user:
            prompts.append(user)
        if len(prompts) == n:
            break
    if not prompts:
        raise ValueError(f"{path} holds no conversation with a user message; give --prompts a chat jsonl file")
    return prompts


def run_quality(plan: QualityPlan) -> list[QualityRow]:
    from ngpt.checkpoint import load_for_inference

    model, tok, _ = load_for_inference(plan.ckpt, "cpu")
    prompts = read_prompts(plan.prompts_file, plan.n_prompts)
    reference = Engine(model, tok, "cpu", NO_AUTOCAST)
    others = {p: Engine(prepare_for_decoding(copy.deepcopy(model), p), tok, "cpu", NO_AUTOCAST) for p in plan.precisions}
    kl = {p: 0.0 for p in others}
    agree = {p: 0 for p in others}
    same = {p: 0 for p in others}
    n_tokens = compared = 0
    for text in prompts:
        ids = prompt_ids(tok, [{"role": "user", "content": text}])
        budget = model.cfg.seq_len - len(ids)
        if budget < 1:
            continue  # a prompt that fills the context leaves nothing to compare
        params = SamplingParams.greedy(min(plan.max_new_tokens, budget))
        reply = reference.generate(ids, params).ids
        seq = torch.tensor([ids + reply[:-1]])
        positions = slice(len(ids) - 1, len(ids) - 1 + len(reply))  # the positions that chose each reply token
        with torch.inference_mode():
            ref_logp = F.log_softmax(reference.model(seq)[0][0, positions].float(), dim=-1)
            for p, engine in others.items():
                logp = F.log_softmax(engine.model(seq)[0][0, positions].float(), dim=-1)
                kl[p] += float(F.kl_div(logp, ref_logp, log_target=True, reduction="sum"))
                agree[p] += int((logp.argmax(-1) == ref_logp.argmax(-1)).sum())
                same[p] += engine.generate(ids, params).ids == reply
        n_tokens += len(reply)
        compared += 1
    return [
        QualityRow(p, kl[p] / max(n_tokens, 1), agree[p] / max(n_tokens, 1), same[p], compared, n_tokens)
        for p in others
    ]
