"""The OpenAI chat-completions wire format: request validation, response and error shapes.

    req = parse_chat_request(body_bytes)            # ApiError(400) naming the field on any problem
    ChatCompletion(...).to_json()                   # what POST /v1/chat/completions returns

A body is read as UTF-8 JSON within limits no legal request comes near: at most MAX_JSON_DEPTH
levels of arrays/objects, integers of at most MAX_INT_DIGITS digits, and no lone UTF-16 surrogate
(a "\\ud800" escape without its pair) in any string or key; each is a 400 naming what and where,
found in time linear in the body, before any field is looked at. Then at most MAX_MESSAGES messages
and MAX_CONTENT_PARTS content parts, and at most MAX_STOP_SEQUENCES stop strings (OpenAI's limit)
of at most MAX_STOP_CHARS characters each.

Requests are strict, like OpenAI's own API: a field of the wrong JSON type is an error (no "2" for 2),
and a field the API does not know is "Unrecognized request argument supplied". Fields OpenAI knows
but ngpt cannot honour (tools, response formats other than text, penalties, logit_bias, ...) are a
400 that says so, unless they carry their no-op value; bookkeeping fields (user, metadata, store,
service_tier, ...) are accepted and ignored. `model` may name anything: the server serves one model
and every response names it. Extensions: `top_k` and `repetition_penalty` (as in vLLM), and
`ngpt_trace: true`, which adds an `ngpt` object with per-token inspector data (token, cache_len,
step_ms, logprob, top alternatives) to each stream chunk or to the whole response.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ngpt.tokenizer import describe_char, first_surrogate

MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_STOP_CHARS = 1000  # per stop string: far past any real one, and the matcher's table stays small
MAX_TOP_LOGPROBS = 20
MAX_JSON_DEPTH = 32  # a request needs 5 ({messages: [{content: [{part}]}]}); metadata is flat
# Counted before the fields are validated (validating 30 000 content parts held the GIL for 0.25 s); no
# context ngpt trains holds more (a message costs at least 3 tokens: its role, a token, <|eot|>).
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 2048  # in all messages together
MAX_INT_DIGITS = 100  # the widest real value is a seed below 2**63 (19 digits)
# OpenAI fields that change nothing here: accepted and ignored.
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
                  "safety_identifier")
# OpenAI fields ngpt cannot honour, with the value that means "off" (accepted); anything else is a 400.
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "modalities": (None, ["text"]),
    "audio": (None,), "prediction": (None,), "web_search_options": (None,), "reasoning_effort": (None,),
    "verbosity": (None,),
}


class ApiError(Exception):
    """An error a client gets as OpenAI's {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        # Whatever of the client's text a message quotes, the body must stay encodable JSON.
        message, param = _printable(message), None if param is None else _printable(param)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # strict: JSON types must match (an int is still fine for a float); forbid: unknown fields are errors;
    # no NaN/Infinity (Python's json module reads them).
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ContentPart(_Strict):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)  # an image part's own fields: the type check says why it fails
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text" or self.text is None:
            raise ValueError(f'content part type {self.type!r} is not supported; ngpt reads text parts '
                             '({"type": "text", "text": "..."}) only')
        return self


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None  # a participant name: accepted and ignored, as the chat template has no slot for it

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text or "" for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # an OpenAI side-channel padding switch: nothing to pad here


class ChatCompletionRequest(_Strict):
    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # Extensions (not in OpenAI's API).
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, ge=0.01)  # logits / a near-zero penalty overflow fp32
    ngpt_trace: bool | None = False

    # OpenAI fields outside the model: checked against UNSUPPORTED_FIELDS / IGNORED_FIELDS.
    known_extra: ClassVar[tuple[str, ...]] = (*IGNORED_FIELDS, *UNSUPPORTED_FIELDS)

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def _printable(text: str) -> str:
    """`text` with any lone surrogate spelled as a \\udXXX escape (it has no UTF-8 form to send)."""
    return text if first_surrogate(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _param(loc: tuple) -> str:
    """Pydantic's location as OpenAI writes a param: messages[0].content."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float", "bool") or "[" in part:
            continue  # which member of a union failed ("str", "list[...]"): noise for a person
        else:
            out += f".{part}" if out else str(part)
    return out


EXAMPLE_BODY = '{"messages": [{"role": "user", "content": "Hello"}]}'
# Only a \\uD800-\\uDFFF escape can put a surrogate in a string (strict UTF-8 decoding rejects encoded ones).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONG_DIGITS = re.compile(rf"[0-9]{{{MAX_INT_DIGITS + 1}}}")


class _LongNumber(ValueError):
    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(literal: str) -> int:
    # Checked before int() converts it: converting n digits costs O(n^2) when the interpreter's own
    # limit (4300 digits, PYTHONINTMAXSTRDIGITS) is off, and its ValueError is no message for a person.
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongNumber(len(literal.lstrip("-")))
    return int(literal)


def load_json(body: bytes) -> Any:
    """The body's JSON value; ApiError(400) when it is not UTF-8 JSON within the limits (check_json_limits)."""
    def bad(why: str) -> ApiError:
        return ApiError(400, f"The request body is not valid JSON: {why}. Send a JSON object such as {EXAMPLE_BODY}.",
                        code="invalid_json")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"byte {e.start} (0x{body[e.start]:02X}) is not UTF-8; encode the body as UTF-8") from None
    try:
        # The hook costs a Python call per integer: only bodies with a run of digits that long need it.
        raw = json.loads(text, parse_int=_parse_int if _LONG_DIGITS.search(text) else None)
    except json.JSONDecodeError as e:
        raise bad(f"{e.msg} at line {e.lineno}, column {e.colno}") from None
    except _LongNumber as e:
        raise ApiError(400, f"The request body holds an integer of {e.digits:,} digits; this server reads integers of "
                            f"up to {MAX_INT_DIGITS} digits (no field takes a larger one).", code="number_too_long") from None
    except RecursionError:  # ~1000 levels: the parser's own limit, well past MAX_JSON_DEPTH
        raise _too_deep(None) from None
    check_json_limits(raw, text)
    return raw


def _too_deep(param: str | None) -> ApiError:
    what = param or "The request body"
    return ApiError(400, f"{what} nests arrays/objects more than {MAX_JSON_DEPTH} levels deep; this server accepts "
                         f"at most {MAX_JSON_DEPTH} (a chat request needs 5).", param=param, code="nesting_too_deep")


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")


def _deeper_than(text: str, limit: int) -> bool:
    """Whether valid JSON `text` nests arrays/objects more than `limit` deep, at C speed: with the strings
    cut out and only brackets left, each pass removes the innermost pairs (one level)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(limit):
        brackets = _EMPTY_PAIR.sub("", brackets)
        if not brackets:
            return False
    return True


def check_json_limits(raw: Any, text: str) -> None:
    """ApiError(400) when the parsed body `raw` (from `text`) nests too deep, or a string or key holds a lone
    surrogate; names the field. Linear in the body; the walk over the value (an explicit stack, no
    recursion) runs only when the text shows a surrogate escape or too much depth."""
    too_deep = _deeper_than(text, MAX_JSON_DEPTH)
    if not too_deep and not _SURROGATE_ESCAPE.search(text):
        return
    stack: list[tuple[Any, tuple, int]] = [(raw, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if (offset := first_surrogate(node)) is not None:
                param = _param(path) or "body"
                raise ApiError(400, f"{param} holds {describe_char(node, offset)}: JSON \\uD800-\\uDFFF escapes must "
                                    "come in high-low pairs; send valid Unicode text.", param=param, code="invalid_unicode")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(_param(path[:1]) or None)  # the top-level field: the rest of the path is noise
        if isinstance(node, dict):
            for key in node:
                if (offset := first_surrogate(key)) is not None:
                    param = _param(path) or None
                    raise ApiError(400, f"A key in {param or 'the body'} holds {describe_char(key, offset)}: JSON "
                                        "\\uD800-\\uDFFF escapes must come in high-low pairs.", param=param, code="invalid_unicode")
            children = [(v, (*path, k), depth + 1) for k, v in node.items()]
        else:
            children = [(v, (*path, i), depth + 1) for i, v in enumerate(node)]
        stack.extend(reversed(children))  # document order: the first problem is the one reported
    if too_deep:  # (the walk always finds it; this keeps the rule true even if the two disagreed)
        raise _too_deep(None)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Validate a request body; ApiError(400) with the offending param on the first problem."""
    raw = load_json(body)
    if not isinstance(raw, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {type(raw).__name__}.")
    _check_counts(raw)
    for key in [k for k in raw if k in ChatCompletionRequest.known_extra]:
        value = raw.pop(key)
        if key in UNSUPPORTED_FIELDS and value not in UNSUPPORTED_FIELDS[key]:
            raise ApiError(400, f"{key} is not supported by ngpt serve (a plain chat model); leave it out.",
                           param=key, code="unsupported_parameter")
    try:
        req = ChatCompletionRequest.model_validate(raw)
    except ValidationError as e:
        # Of a union's errors, the deepest says most (an unsupported content part, not "not a string").
        err = max(e.errors(), key=lambda x: len(x["loc"]))
        param = _param(err["loc"])
        if err["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param=param,
                           code="unknown_parameter") from None
        message = err["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param or 'body'}: {message}", param=param or None, code="invalid_value") from None
    _check_semantics(req)
    return req


def _check_counts(raw: dict) -> None:
    """The counts no request near the limits needs, checked on the raw JSON before validation costs anything."""
    messages = raw.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"messages holds {len(messages):,} messages; this server takes at most {MAX_MESSAGES:,} "
                            "(no context it serves could hold more). Drop old turns.", param="messages",
                       code="too_many_messages")
    if isinstance(messages, list):
        parts = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))
        if parts > MAX_CONTENT_PARTS:
            raise ApiError(400, f"The messages hold {parts:,} content parts; this server takes at most "
                                f"{MAX_CONTENT_PARTS:,} in all. Join the text parts.", param="messages",
                           code="too_many_content_parts")
    stop = raw.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"stop takes up to {MAX_STOP_SEQUENCES} non-empty strings.", param="stop")


def _check_semantics(req: ChatCompletionRequest) -> None:
    """Rules JSON types cannot say: one choice, usable messages, consistent token limits."""
    if req.n is not None and req.n != 1:
        raise ApiError(400, f"n={req.n}: ngpt serve returns exactly one choice; leave n out or set it to 1.", param="n")
    if not req.messages:
        raise ApiError(400, "messages is empty; send at least one user message.", param="messages")
    for i, msg in enumerate(req.messages):
        if not msg.text().strip():
            raise ApiError(400, f"messages[{i}] ({msg.role}) has empty or whitespace-only content.",
                           param=f"messages[{i}].content")
    if req.messages[-1].role != "user":
        raise ApiError(400, f"The last message is from {req.messages[-1].role!r}; it must be from the user "
                            "(the model answers it).", param=f"messages[{len(req.messages) - 1}].role")
    if req.max_tokens is not None and req.max_completion_tokens is not None and req.max_tokens != req.max_completion_tokens:
        raise ApiError(400, "max_tokens and max_completion_tokens disagree; give one of them.", param="max_tokens")
    stops = req.stops()
    if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
        raise ApiError(400, f"stop takes up to {MAX_STOP_SEQUENCES} non-empty strings.", param="stop")
    for i, s in enumerate(stops):
        if len(s) > MAX_STOP_CHARS:
            which = "stop" if isinstance(req.stop, str) else f"stop[{i}]"
            raise ApiError(400, f"{which} is {len(s):,} characters long; this server takes stop strings of up to "
                                f"{MAX_STOP_CHARS:,} characters.", param="stop", code="stop_too_long")
    if req.top_logprobs and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed with stream: true.", param="stream_options")


# ---------------------------------------------------------------------------------------------
# Responses. Fields in `omit_if_none` are left out when unset (OpenAI sends `usage` on chunks only
# when asked; `ngpt` only with ngpt_trace); every other field is always present, null or not.


class _Out(BaseModel):
    omit_if_none: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json")
        for key in self.omit_if_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Out):
    content: list[TokenLogprob]
    refusal: None = None


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(_Out):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(_Out):
    omit_if_none: ClassVar[tuple[str, ...]] = ("ngpt",)
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    ngpt: dict | None = None  # with ngpt_trace: {"tokens": [...]} (see TokenTrace in app.py)


class Delta(_Out):
    omit_if_none: ClassVar[tuple[str, ...]] = ("role", "content")
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Out):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "delta": self.delta.to_dict()}


class ChatCompletionChunk(_Out):
    omit_if_none: ClassVar[tuple[str, ...]] = ("usage", "ngpt")
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    ngpt: dict | None = None  # with ngpt_trace: {"tokens": [this chunk's token]}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "choices": [c.to_dict() for c in self.choices]}


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ngpt"
