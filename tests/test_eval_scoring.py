"""Scoring: log-likelihoods of continuations, acc / acc_norm / LAMBADA's greedy match and perplexity, CORE.

    pytest tests/test_eval_scoring.py

A model with a zero head gives every token log-probability -log V, so a continuation's log-likelihood is
-(its tokens) · log V and the expected accuracies follow by hand from token counts.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from test_eval_data import one_thread  # noqa: F401  (an autouse fixture)
from ngpt.eval.harness import prepare_tasks, run_tasks
from ngpt.eval.loglik import score_requests
from ngpt.eval.prompts import PairEncoder, Request
from ngpt.model import GPT
from ngpt.settings import ModelSettings


def uniform_model(vocab_size: int, seq_len: int = 128) -> GPT:
    """Untied head at zero (zero_init): every logit is 0, every token equally likely at every position."""
    torch.manual_seed(0)
    return GPT(ModelSettings(vocab_size=vocab_size, seq_len=seq_len, n_embd=32, n_layer=2, n_head=2,
                             tie_embeddings=False, zero_init=True)).eval()


# Three questions (ARC's hub schema). With every token equally likely, acc picks the choice of fewest
# tokens and acc_norm the most characters per token; Q3's choices have equal counts: the first wins.
HAND_MADE = [
    {"question": "the model", "choices": {"text": ["the", "the the the the"], "label": ["A", "B"]}, "answerKey": "A"},
    {"question": "a cache", "choices": {"text": ["a", "quickly quickly quickly"], "label": ["A", "B"]}, "answerKey": "B"},
    {"question": "light", "choices": {"text": ["stone", "stone"], "label": ["A", "B"]}, "answerKey": "A"},
]


def test_acc_and_acc_norm_on_a_hand_made_task_equal_hand_computed_values(tmp_path, tiny_tokenizer):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(HAND_MADE))
    runs = prepare_tasks(["arc_easy"], {"arc_easy": str(path)}, shots=0, limit=None)
    model = uniform_model(tiny_tokenizer.vocab_size)
    result = run_tasks(model, tiny_tokenizer, runs, shots=0, seed=1234, batch_size=4).tasks[0]

    log_v = math.log(tiny_tokenizer.vocab_size)
    hits, norm_hits = [], []
    for row in HAND_MADE:
        context = f"Question: {row['question']}\nAnswer:"
        choices = row["choices"]["text"]
        n_ctx = len(tiny_tokenizer.encode(context))
        counts = [len(tiny_tokenizer.encode(context + " " + c)) - n_ctx for c in choices]
        lls = [-n * log_v for n in counts]
        gold = row["choices"]["label"].index(row["answerKey"])
        hits.append(lls.index(max(lls)) == gold)
        normed = [ll / len(c) for ll, c in zip(lls, choices)]
        norm_hits.append(normed.index(max(normed)) == gold)
        assert [lp for lp in result.logprobs[len(hits) - 1]] == pytest.approx(lls, rel=1e-5)
    assert (result.acc, result.acc_norm) == (sum(hits) / 3, sum(norm_hits) / 3)
    assert hits == [True, False, True] and norm_hits == [False, True, True]  # length normalisation matters here
    assert result.baseline == 0.5 and result.centered == pytest.approx((2 / 3 - 0.5) / 0.5)


def test_lambada_greedy_match_and_perplexity(tmp_path, tiny_tokenizer):
    rows = [{"text": "the river ran under the light"}, {"text": "a quiet lamp and the stone"}]
    path = tmp_path / "lambada_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = prepare_tasks(["lambada_openai"], {"lambada_openai": str(path)}, shots=0, limit=None)
    tok = tiny_tokenizer
    target = tok.encode("the river ran under the light")[len(tok.encode("the river ran under the")):]
    assert len(target) == 1  # " light" is one token: a model that always predicts it matches greedily
    model = uniform_model(tok.vocab_size)
    with torch.no_grad():  # every input the same vector, and the head maps it to a high logit for " light" only
        model.tok_emb.weight.zero_()
        model.tok_emb.weight[:, 0] = 1.0
        model.lm_head.weight[target[0], 0] = 5.0
    result = run_tasks(model, tok, runs, shots=0, seed=1234, batch_size=4).tasks[0]
    assert result.acc == 0.5  # row 1 ends in " light"; row 2's " stone" is not the argmax
    with torch.no_grad():
        lsm = torch.log_softmax(model(torch.tensor([[1]]))[0][0, -1], -1)
    lls = []
    for row in rows:
        ctx, word = row["text"].rsplit(" ", 1)
        cont = tok.encode(row["text"])[len(tok.encode(ctx)):]
        lls.append(sum(float(lsm[t]) for t in cont))
    assert result.extra["perplexity"] == pytest.approx(math.exp(-sum(lls) / 2), rel=1e-4)
    assert result.acc_norm is None and result.baseline == 0.0 and result.centered == 0.5


def naive_scores(model: GPT, requests: list[Request]) -> list[tuple[float, bool]]:
    """lm-eval's loop, one request at a time: the left-truncated row, log-softmax over its continuation."""
    T, out = model.cfg.seq_len, []
    with torch.no_grad():
        for r in requests:
            row = (r.context + r.continuation)[-(T + 1):][:-1]
            logits = model(torch.tensor([row]))[0][0]
            n = len(r.continuation)
            lsm = logits[-n:].log_softmax(-1)
            targets = torch.tensor(r.continuation)
            out.append((float(lsm.gather(1, targets[:, None]).sum()), bool((logits[-n:].argmax(-1) == targets).all())))
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_shared_context_scoring_equals_one_row_at_a_time(batch_size):
    torch.manual_seed(0)
    model = GPT(ModelSettings(vocab_size=64, seq_len=24, n_embd=32, n_layer=2, n_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    rng = random.Random(0)
    requests = []
    for _ in range(25):  # contexts of repeated lengths (batched together), some too long (left-truncated)
        ctx = tuple(rng.randrange(64) for _ in range(rng.choice([1, 4, 4, 9, 20, 24, 30])))
        requests += [Request(ctx, tuple(rng.randrange(64) for _ in range(rng.randint(1, 6)))) for _ in range(rng.randint(1, 4))]
    # greedy continuations, so is_greedy is sometimes true
    greedy_ctx = (5, 6, 7)
    nxt = int(model(torch.tensor([greedy_ctx]))[0][0, -1].argmax())
    requests.append(Request(greedy_ctx, (nxt,)))
    done = []
    got = score_requests(model, requests, batch_size=batch_size, on_done=done.append)
    want = naive_scores(model, requests)
    assert sum(done) == len(requests)
    assert max(abs(g.logprob - w[0]) for g, w in zip(got, want)) < 1e-4
    assert [g.greedy for g in got] == [w[1] for w in want]
    assert got[-1].greedy


def test_empty_continuation_scores_zero_and_an_empty_context_is_refused(tiny_tokenizer):
    model = uniform_model(tiny_tokenizer.vocab_size)
    assert score_requests(model, [Request((1, 2), ())])[0].logprob == 0.0
    with pytest.raises(ValueError):
        score_requests(model, [Request((), (1,))])
    req = PairEncoder(tiny_tokenizer)("", " the")  # lm-eval conditions an empty context on its prefix token
    assert req.context == (tiny_tokenizer.eot_id,)
