"""The chat template: messages → token ids + loss mask, the generation prompt, and jsonl validation.

    <|sys|>system<|eot|><|usr|>question<|eot|><|asst|>answer<|eot|> ...   (system optional)

Loss is taken only on assistant content and the assistant's own <|eot|>, so the model learns to
answer and to stop, never to imitate the user. Message text is encoded with Tokenizer.encode, which
never yields a special id: a user typing "<|eot|>" cannot forge a turn.

    ids, mask = render(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    prompt = prompt_ids(tok, history)   # ends with <|asst|>, ready for generation
    kept = fit_messages(tok, history, max_context=512, max_new_tokens=256)   # oldest turns dropped to fit
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ngpt.settings import IGNORE_INDEX
from ngpt.tokenizer import Tokenizer, describe_char, first_surrogate

ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    """A conversation breaks a rule of the chat format; the message names where and which rule."""


def _role_id(tok: Tokenizer, role: str) -> int:
    return {"system": tok.sys_id, "user": tok.usr_id, "assistant": tok.asst_id}[role]


def render(tok: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and a 0/1 mask (1 = trained: assistant content + its eot)."""
    ids: list[int] = []
    mask: list[int] = []
    for msg in messages:
        content = tok.encode(msg["content"])
        trained = 1 if msg["role"] == "assistant" else 0
        ids.append(_role_id(tok, msg["role"]))
        mask.append(0)
        ids.extend(content)
        mask.extend([trained] * len(content))
        ids.append(tok.eot_id)
        mask.append(trained)
    return ids, mask


def render_example(tok: Tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[int], list[int]] | None:
    """A training example: left-truncated to `max_tokens` (keeps the latest turns).

    None when it ends up with < 2 tokens or no trained token (it would teach nothing).
    """
    ids, mask = render(tok, messages)
    if len(ids) > max_tokens:
        ids, mask = ids[-max_tokens:], mask[-max_tokens:]
    if len(ids) < 2 or not any(mask):
        return None
    return ids, mask


def labels_from_mask(ids: list[int], mask: list[int]) -> list[int]:
    """Per-token labels: the id where trained, IGNORE_INDEX (-100) elsewhere."""
    return [i if m else IGNORE_INDEX for i, m in zip(ids, mask)]


def prompt_ids(tok: Tokenizer, messages: list[dict]) -> list[int]:
    """The conversation so far followed by <|asst|>: what the model continues when it answers."""
    ids, _ = render(tok, messages)
    return ids + [tok.asst_id]


def validate_messages(obj: object, where: str) -> list[dict]:
    """Check one conversation record ({"messages": [...]}) and return its messages.

    Rules: non-empty `messages`; each message has exactly `role` and `content`; role in
    system/user/assistant; content a string of valid Unicode (no lone surrogate: a JSON "\\ud800"
    escape without its pair has no UTF-8 form to tokenize); at least one assistant message.
    """
    def fail(rule: str) -> ChatFormatError:
        return ChatFormatError(f"{where}: {rule}")

    if not isinstance(obj, dict) or "messages" not in obj:
        raise fail('each line must be a JSON object with a "messages" list, e.g. '
                   '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}')
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise fail('"messages" must be a non-empty list')
    for k, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            keys = sorted(msg) if isinstance(msg, dict) else type(msg).__name__
            raise fail(f'message {k} must have exactly the keys "role" and "content", got {keys}')
        if msg["role"] not in ROLES:
            raise fail(f'message {k} has role {msg["role"]!r}; roles are {", ".join(ROLES)}')
        if not isinstance(msg["content"], str):
            raise fail(f'message {k} content must be a string, got {type(msg["content"]).__name__}')
        if (offset := first_surrogate(msg["content"])) is not None:
            raise fail(f"message {k} content holds {describe_char(msg['content'], offset)}; a JSON \\uD800-\\uDFFF "
                       "escape must be half of a high-low pair. Fix or drop that line")
    if not any(m["role"] == "assistant" for m in messages):
        raise fail("needs at least one assistant message (nothing to train on otherwise)")
    return messages


def read_chat_jsonl(path: str | Path) -> Iterator[tuple[int, list[dict]]]:
    """Yield (line number, messages) from a chat jsonl file, validating every line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; generate it with `ngpt primer generate` or fix the path.")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ChatFormatError(f"{where}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ChatFormatError(f"{where}: not valid JSON (column {e.colno}: {e.msg})") from None
            except RecursionError:
                raise ChatFormatError(f"{where}: not a chat record (arrays/objects nested too deeply to read)") from None
            except ValueError as e:  # e.g. an integer past Python's 4300-digit limit
                raise ChatFormatError(f"{where}: not readable JSON ({e})") from None
            yield lineno, validate_messages(obj, where)


def fit_messages(tok: Tokenizer, messages: list[dict], max_context: int, max_new_tokens: int) -> list[dict]:
    """The conversation with its oldest turns dropped until the prompt leaves room for the answer.

    System messages always stay; other turns go oldest first (a turn = a user message and the
    replies after it, so the kept history still starts with a user). ValueError when even the last
    user message (with the system messages) does not fit in max_context - max_new_tokens.
    """
    budget = max_context - max_new_tokens
    if budget <= 0:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {max_context} "
            f"tokens; lower max_new_tokens below {max_context}"
        )
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    while (n := len(prompt_ids(tok, system + rest))) > budget:
        if len(rest) <= 1:
            raise ValueError(
                f"the last message alone makes a {n}-token prompt (system messages included), but only "
                f"{budget} fit: context {max_context} minus max_new_tokens={max_new_tokens}; shorten the "
                "message or the system prompt, or lower max_new_tokens"
            )
        rest = rest[1:]
        while len(rest) > 1 and rest[0]["role"] != "user":
            rest = rest[1:]
    return system + rest
