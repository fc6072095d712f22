"""Engine steps → what goes on the wire: token texts and bytes, stop strings, finish reasons, usage, logprobs, trace.

    table = TokenTable(tok)                         # once per server
    reply = ReplyBuilder(table, req, prompt_tokens) # once per request
    piece = reply.add(step)                         # per engine Step: content, logprobs, trace, finish_reason

Everything here runs once per token on the event loop, so it costs O(the token's text): the stop
matcher is an automaton, not a search of the reply so far.
"""

from __future__ import annotations

from dataclasses import dataclass

from ngpt.engine import Step
from ngpt.serve.schemas import ChatCompletionRequest, TokenLogprob, TopLogprob, Usage
from ngpt.tokenizer import SPACE_MARK, Tokenizer


class TokenTable:
    """Display text and UTF-8 bytes of every id, for logprobs and the inspector (computed once)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.entries: list[tuple[str, list[int]]] = []
        for i in range(tok.vocab_size):
            piece = tok.piece(i)
            if tok.is_byte(i):  # "<0xE2>": one byte (of a character split across tokens, if not ASCII)
                byte = int(piece[3:5], 16)
                self.entries.append((chr(byte) if 0x20 <= byte < 0x7F or byte in (9, 10) else piece, [byte]))
            elif tok.sp.is_control(i) or tok.sp.is_unknown(i):  # <|eot|> etc.: shown, but no text
                self.entries.append((piece, []))
            else:
                text = piece.replace(SPACE_MARK, " ")
                self.entries.append((text, list(text.encode("utf-8"))))

    def __getitem__(self, token_id: int) -> tuple[str, list[int]]:
        if 0 <= token_id < len(self.entries):
            return self.entries[token_id]
        return f"<unused {token_id}>", []  # model vocab padded past the tokenizer's: never sampled


def prefix_function(s: str) -> list[int]:
    """KMP's table: fail[i] = length of the longest proper prefix of s[:i + 1] that is also its suffix."""
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


class StopMatcher:
    """Cuts the reply at the first stop string, holding back text that may be the start of one.

    Each stop string runs a KMP automaton over the reply: its state is the length of the longest
    prefix of that stop the text so far ends with, so the text held back is the largest state, and
    a hit is a state reaching the stop's length. A piece of text costs O(len(text) × stops) steps
    whatever the stops' length (the table is O(length), built once per request). When one piece
    completes several stops, the reply is cut at the one that starts first.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.fail = [prefix_function(s) for s in stops]
        self.state = [0] * len(stops)
        self.pending = ""  # the text held back: the last max(state) characters

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        base = len(self.pending)  # offset of `text` in pending + text
        self.pending += text
        cut = None
        for j, (stop, fail) in enumerate(zip(self.stops, self.fail)):
            k = self.state[j]
            for i, ch in enumerate(text):
                while k and stop[k] != ch:
                    k = fail[k - 1]
                if stop[k] == ch:
                    k += 1
                if k == len(stop):  # this stop's first hit; a later one would start later
                    start = base + i + 1 - k
                    cut = start if cut is None else min(cut, start)
                    break
            self.state[j] = k
        if cut is not None:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = max(self.state)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Piece:
    """What one engine step adds to the reply on the wire."""

    content: str
    logprobs: list[TokenLogprob] | None
    trace: dict | None
    finish_reason: str | None  # "stop" or "length" on the last piece


class ReplyBuilder:
    """Turns engine steps into OpenAI pieces: stop strings, finish reasons, usage, logprobs, trace."""

    def __init__(self, table: TokenTable, req: ChatCompletionRequest, prompt_tokens: int) -> None:
        self.table = table
        self.stop = StopMatcher(req.stops())
        self.logprobs, self.top_logprobs, self.trace = bool(req.logprobs), req.top_logprobs or 0, bool(req.ngpt_trace)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.text: list[str] = []
        self.all_logprobs: list[TokenLogprob] = []
        self.all_trace: list[dict] = []
        self.finish_reason: str | None = None

    def add(self, step: Step) -> Piece:
        self.completion_tokens += 1
        content, hit = self.stop.push(step.text)
        if step.finish_reason and not hit:
            content += self.stop.flush()
        finish = "stop" if hit or step.finish_reason == "eot" else "length" if step.finish_reason == "length" else None
        logprobs = [self._logprob(step)] if self.logprobs else None
        trace = self._trace(step) if self.trace else None
        self.text.append(content)
        self.all_logprobs += logprobs or []
        if trace:
            self.all_trace.append(trace)
        self.finish_reason = finish
        return Piece(content, logprobs, trace, finish)

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def _logprob(self, step: Step) -> TokenLogprob:
        text, raw = self.table[step.token_id]
        tops = [TopLogprob(token=self.table[i][0], logprob=lp, bytes=self.table[i][1])
                for i, lp in zip(step.top_ids[: self.top_logprobs], step.top_logprobs)]
        return TokenLogprob(token=text, logprob=step.logprob, bytes=raw, top_logprobs=tops)

    def _trace(self, step: Step) -> dict:
        return {
            "index": step.index, "id": step.token_id, "token": self.table[step.token_id][0],
            "cache_len": step.cache_len, "step_ms": round(step.step_ms, 3), "logprob": step.logprob,
            "top": [{"id": i, "token": self.table[i][0], "logprob": lp} for i, lp in zip(step.top_ids, step.top_logprobs)],
        }
