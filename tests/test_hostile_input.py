"""Hostile input costs `ngpt serve` at most a 4xx: issue 14's four requests, malformed HTTP, slow clients, a fuzz.

    pytest tests/test_hostile_input.py

A tiny random-init checkpoint (test_serve.tiny_checkpoint) served by uvicorn on 127.0.0.1 as
`ngpt serve` runs it (test_serve.live_server → server_config). Requests go out on bare sockets,
so a test can send what no HTTP client library would (a negative Content-Length, half a header,
a lone surrogate escape) and read the answer with h11. The four requests of the issue — a
300 000-character stop string, a lone surrogate, 100 000-deep nesting, a 5 000-digit integer —
must each be a 400 in OpenAI's error shape, fast, while /health keeps answering; hypothesis then
throws arbitrary bodies and headers at the server: 200 or 4xx with the error shape, never a 5xx,
and /health answers within a second all along.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
h11 = pytest.importorskip("h11")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_serve import live_server, tiny_checkpoint, wait_until  # noqa: E402  (skips with test_serve)

from ngpt.inference import load_engine  # noqa: E402
from ngpt.serve.app import ServeOptions, StopMatcher, create_app  # noqa: E402
from ngpt.serve.schemas import (  # noqa: E402
    MAX_CONTENT_PARTS,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    MAX_MESSAGES,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
)
from ngpt.settings import GenerationSettings  # noqa: E402
from ngpt.tokenizer import UnencodableText, check_encodable, first_surrogate  # noqa: E402

CAP = 8  # max_tokens cap: any request the fuzz gets right generates at most 8 tokens
ERROR_KEYS = {"message", "type", "param", "code"}
OK = [{"role": "user", "content": "hi"}]


# ---------------------------------------------------------------------------------------------
# A bare-socket client.


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self):
        return json.loads(self.body)


def request_bytes(method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                  content_length: str | None = "auto") -> bytes:
    """A request as raw bytes: Host and Connection: close, then `headers`, then Content-Length unless None."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if content_length is not None:
        lines.append(f"Content-Length: {len(body) if content_length == 'auto' else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, data: bytes, method: str = "POST", timeout: float = 30) -> Reply | None:
    """Send `data` on a new connection and read the first response (None when the server just closes)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413, 400) and closed: its answer is still there to read
        parser = h11.Connection(h11.CLIENT)
        # h11 reads a response only after "sending" a request; the method says whether a body follows.
        parser.send(h11.Request(method=method if method == "HEAD" else "POST", target="/",
                                headers=[("Host", "x"), ("Content-Length", "0")]))
        parser.send(h11.EndOfMessage())
        status, headers, body = None, {}, b""
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                parser.receive_data(chunk)
                if not chunk and status is None:
                    return None
                continue
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return Reply(status, headers, body, time.perf_counter() - t0)


def post(port: int, body: bytes, path: str = "/v1/chat/completions") -> Reply:
    reply = exchange(port, request_bytes("POST", path, body, [("Content-Type", "application/json")]))
    assert reply is not None, "the server closed the connection without an answer"
    return reply


def assert_error_shape(reply: Reply, status: int | None = None) -> dict:
    """The reply is OpenAI's {"error": {message, type, param, code}}, as JSON; returns the error."""
    assert reply.status >= 400, (reply.status, reply.body[:300])
    if status is not None:
        assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    error = reply.json()["error"]
    assert set(error) == ERROR_KEYS and isinstance(error["message"], str) and error["message"], error
    assert "Traceback" not in error["message"] and "Error:" not in error["message"], error  # no exception text
    return error


def chat_body(**fields) -> bytes:
    return json.dumps({"messages": OK} | fields).encode()


# ---------------------------------------------------------------------------------------------
# Servers: one as `ngpt serve` runs by default (no key, so the fuzz reaches the parser), one whose
# read deadline is short enough to wait for.


@pytest.fixture(scope="module")
def ckpt(tiny_tokenizer, tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("hostile") / "ckpt.pt", tiny_tokenizer)


def serve(ckpt, **options):
    engine = load_engine(ckpt, "cpu", "fp32")[0]
    opts = ServeOptions(model_id="ngpt-tiny", max_tokens_cap=CAP, generation=GenerationSettings(max_new_tokens=CAP), **options)
    return live_server(create_app(engine, opts))


@pytest.fixture(scope="module")
def port(ckpt):
    with serve(ckpt) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def impatient_port(ckpt):
    with serve(ckpt, read_timeout=0.5) as url:
        yield int(url.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------------
# The four requests (and their variants): a 400 naming the problem, fast, /health meanwhile.

DEEP = b"[" * 100_000 + b"]" * 100_000
NESTED_20K = b"[" * 20_000 + b"]" * 20_000
SURROGATE = "\\ud800"  # as it appears in the JSON text: an escape with no low half after it


def raw_chat(messages_json: str, extra: str = "") -> bytes:
    return ('{"messages": ' + messages_json + extra + "}").encode()


HOSTILE = {
    "stop of 300 000 characters": (chat_body(max_tokens=10, stop="x" * 300_000), "stop", "stop_too_long"),
    "lone surrogate in a user message": (raw_chat(f'[{{"role": "user", "content": "{SURROGATE}"}}]'),
                                         "messages[0].content", "invalid_unicode"),
    "lone surrogate in a system message": (raw_chat(f'[{{"role": "system", "content": "be {SURROGATE}"}}, '
                                                    '{"role": "user", "content": "hi"}]'),
                                           "messages[0].content", "invalid_unicode"),
    "lone surrogate in a content part": (raw_chat(f'[{{"role": "user", "content": [{{"type": "text", "text": "{SURROGATE}"}}]}}]'),
                                         "messages[0].content[0].text", "invalid_unicode"),
    "lone surrogate, streamed": (raw_chat(f'[{{"role": "user", "content": "{SURROGATE}x"}}]', ', "stream": true'),
                                 "messages[0].content", "invalid_unicode"),
    "lone low surrogate in a stop string": (raw_chat(json.dumps(OK), ', "stop": ["\\udc00"]'), "stop[0]", "invalid_unicode"),
    "100 000-deep arrays": (DEEP, None, "nesting_too_deep"),
    "20 000-deep metadata": (raw_chat(json.dumps(OK), ', "metadata": ' + NESTED_20K.decode()), None, "nesting_too_deep"),
    "20 000-deep stop": (raw_chat(json.dumps(OK), ', "stop": ' + NESTED_20K.decode()), None, "nesting_too_deep"),
    f"{MAX_JSON_DEPTH + 1}-deep metadata": (raw_chat(json.dumps(OK), ', "metadata": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH),
                                            "metadata", "nesting_too_deep"),
    "max_tokens of 5 000 digits": (raw_chat(json.dumps(OK), ', "max_tokens": ' + "9" * 5000), None, "number_too_long"),
    "seed of 200 digits": (raw_chat(json.dumps(OK), ', "seed": ' + "1" * 200), None, "number_too_long"),
    # Counted before validation: validating 30 000 content parts held the GIL (and /health) for 0.25 s.
    "30 000 content parts": (json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 30_000}]}).encode(),
                             "messages", "too_many_content_parts"),
    f"{MAX_MESSAGES + 1} messages": (json.dumps({"messages": OK * (MAX_MESSAGES + 1)}).encode(), "messages", "too_many_messages"),
    "100 000 stop strings": (chat_body(stop=["a"] * 100_000), "stop", None),
}


@pytest.mark.parametrize("body,param,code", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_requests_get_a_400_naming_the_problem(port, body, param, code):
    error = assert_error_shape(post(port, body), 400)
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["param"] == param, error


def test_limits_are_named_in_the_messages(port):
    assert f"{MAX_STOP_CHARS:,} characters" in assert_error_shape(post(port, chat_body(stop=["a", "b" * (MAX_STOP_CHARS + 1)])), 400)["message"]
    assert str(MAX_STOP_SEQUENCES) in assert_error_shape(post(port, chat_body(stop=list("abcde"))), 400)["message"]
    assert f"at most {MAX_JSON_DEPTH}" in assert_error_shape(post(port, DEEP), 400)["message"]
    parts = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * (MAX_CONTENT_PARTS + 1)}]})
    assert f"at most {MAX_CONTENT_PARTS:,}" in assert_error_shape(post(port, parts.encode()), 400)["message"]
    assert f"up to {MAX_INT_DIGITS} digits" in assert_error_shape(post(port, raw_chat(json.dumps(OK), ', "n": ' + "9" * 101)), 400)["message"]
    message = assert_error_shape(post(port, HOSTILE["lone surrogate in a user message"][0]), 400)["message"]
    assert "U+D800" in message and "messages[0].content" in message


def test_limits_themselves_are_accepted(port):
    """What the limits allow is served: MAX_STOP_SEQUENCES stops of MAX_STOP_CHARS, MAX_JSON_DEPTH levels, a valid pair."""
    stops = [c * MAX_STOP_CHARS for c in "qwxz"[:MAX_STOP_SEQUENCES]]
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # the body object is level 1
    for body in (chat_body(stop=stops, max_tokens=CAP), raw_chat(json.dumps(OK), ', "metadata": {"a": ' + nested[1:-1] + "}"),
                 raw_chat('[{"role": "user", "content": "smile \\ud83d\\ude00"}]', ', "max_tokens": 2, "seed": ' + "9" * 18)):
        reply = post(port, body)
        assert reply.status == 200, reply.body[:300]
        assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")


def timed_health(port: int) -> float:
    t0 = time.perf_counter()
    reply = exchange(port, request_bytes("GET", "/health", content_length=None), method="GET", timeout=30)
    assert reply is not None and reply.status == 200
    return time.perf_counter() - t0


def test_each_hostile_request_is_fast_and_health_answers_meanwhile(port):
    """The issue's acceptance: each of the four a 400 within 0.5 s, /health under 0.2 s while they run.

    Before the fix the stop string took 13.5 s and held /health for 12.5 s. The bounds are the
    issue's, plus what this machine needs right now for the same work done cheaply (a same-sized
    body rejected at its first field; /health when nothing else runs): on a loaded shared machine a
    plain request may itself take a tenth of a second, and the test is about what a hostile
    request adds, not about the load.
    """
    four = [HOSTILE[k][0] for k in ("stop of 300 000 characters", "lone surrogate in a user message",
                                    "100 000-deep arrays", "max_tokens of 5 000 digits")]
    four += [HOSTILE["lone surrogate, streamed"][0], HOSTILE["20 000-deep metadata"][0]]
    idle_health = max(timed_health(port) for _ in range(5))
    for body in four:
        cheap = b'{"messages": 5, "pad": "' + b"x" * len(body) + b'"}'  # parsed like it, rejected at once
        baseline = statistics.median(post(port, cheap).seconds for _ in range(3))
        hostile = post(port, body)
        assert_error_shape(hostile, 400)
        assert hostile.seconds < 0.5 + baseline, f"{hostile.seconds:.3f} s for {body[:60]!r}… (baseline {baseline:.3f} s)"

    # /health while the hostile requests run back to back on another connection.
    done = threading.Event()
    statuses: list[int] = []

    def attack() -> None:
        try:
            for _ in range(4):
                statuses.extend(post(port, body).status for body in four)
        finally:
            done.set()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    latencies = []
    while not done.is_set() or not latencies:
        latencies.append(timed_health(port))
    attacker.join(30)
    assert statuses == [400] * len(four) * 4
    assert max(latencies) < 0.2 + idle_health, f"/health took up to {max(latencies):.3f} s (idle: {idle_health:.3f} s)"


# ---------------------------------------------------------------------------------------------
# HTTP itself: malformed requests get the JSON shape, HEAD is GET without a body, slow clients meet deadlines.


@pytest.mark.parametrize("data,status", [
    (request_bytes("POST", "/v1/chat/completions", chat_body(), content_length="-1"), 400),
    (request_bytes("POST", "/v1/chat/completions", chat_body(), content_length="ten"), 400),
    (request_bytes("POST", "/v1/chat/completions", b"", [("X-Big", "a" * 200_000)]), 431),
    (request_bytes("POST", "/v1/chat/completions", chat_body(), content_length="9" * 5000), 400),
    (request_bytes("POST", "/v1/chat/completions", chat_body(), [("Content-Length", "3")]), 400),
    (request_bytes("POST", "/v1/chat/completions", b"zz\r\n{}\r\n0\r\n\r\n", [("Transfer-Encoding", "chunked")],
                   content_length=None), 400),
    (b"HELLO THERE\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
], ids=["negative Content-Length", "non-numeric Content-Length", "headers far over 16 KiB",
        "Content-Length of 5000 digits", "two Content-Lengths", "chunk size not hex", "no request line",
        "no Host", "header without a colon"])
def test_malformed_http_gets_the_json_error_shape(port, data, status):
    error = assert_error_shape(exchange(port, data), status)
    assert error["code"] == "invalid_http"


def test_head_is_get_without_a_body(port):
    for path in ("/", "/health", "/v1/models", "/static/app.js"):
        get = exchange(port, request_bytes("GET", path, content_length=None), method="GET")
        head = exchange(port, request_bytes("HEAD", path, content_length=None), method="HEAD")
        assert get.status == head.status == 200, path
        assert head.body == b"" and head.headers["content-type"] == get.headers["content-type"], path
    missing = exchange(port, request_bytes("HEAD", "/nope", content_length=None), method="HEAD")
    assert missing.status == 404 and missing.body == b""


def test_headers_slower_than_the_read_timeout_get_408(impatient_port):
    with socket.create_connection(("127.0.0.1", impatient_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Ty")  # ...and nothing more
        data = b""
        while chunk := sock.recv(65536):  # the server answers, then closes
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_silent_connection_is_closed(impatient_port):
    with socket.create_connection(("127.0.0.1", impatient_port), timeout=10) as sock:
        assert sock.recv(65536) == b""  # closed without a word, like an idle keep-alive connection


def test_a_keep_alive_connection_gets_a_deadline_for_its_next_headers(impatient_port):
    with socket.create_connection(("127.0.0.1", impatient_port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\nGET /health HTTP/1.1\r\nHo")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in data


def test_a_body_slower_than_the_read_timeout_gets_408(impatient_port):
    data = request_bytes("POST", "/v1/chat/completions", chat_body(), content_length="100")[:-10]  # 10 bytes short
    error = assert_error_shape(exchange(impatient_port, data), 408)
    assert error["code"] == "request_timeout" and "0.5 s" in error["message"]


def test_a_client_hanging_up_mid_body_is_no_server_fault(port, caplog):
    with caplog.at_level("ERROR", logger="ngpt.serve"):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request_bytes("POST", "/v1/chat/completions", chat_body(), content_length="1000"))
        for _ in range(3):  # the hang-ups are handled on the event loop before these later requests
            timed_health(port)
    assert [r.getMessage() for r in caplog.records if r.name == "ngpt.serve"] == []


# ---------------------------------------------------------------------------------------------
# The shared text check and the stop matcher, without a server.


def test_first_surrogate_finds_what_has_no_utf8_form():
    assert first_surrogate("plain") is None and first_surrogate("héllo 😀") is None
    assert first_surrogate("ab\ud800") == 2 and first_surrogate("\udcff") == 0
    with pytest.raises(UnencodableText, match=r"-p/--prompt holds byte 0xFF, which is not valid UTF-8, at character 1"):
        check_encodable("a\udcff", "-p/--prompt")  # what surrogateescape makes of a non-UTF-8 byte
    with pytest.raises(UnencodableText, match=r"lone UTF-16 surrogate U\+D800 at character 0"):
        check_encodable("\ud800", "x")


def reference_cut(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    """What the reply must be: cut at the first token boundary where a stop is complete, at its earliest start."""
    text = ""
    for piece in pieces:
        text += piece
        hits = [i for s in stops if (i := text.find(s)) >= 0]
        if hits:
            return text[: min(hits)], True
    return text, False


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.text("ab\u00e9", min_size=1, max_size=6), min_size=1, max_size=MAX_STOP_SEQUENCES),
       st.lists(st.text("ab\u00e9c", max_size=5), max_size=10))
def test_stop_matcher_agrees_with_the_definition(stops, pieces):
    matcher, out, hit = StopMatcher(stops), "", False
    for piece in pieces:
        sent, hit = matcher.push(piece)
        out += sent
        if hit:
            break
    if not hit:
        out += matcher.flush()
    assert (out, hit) == reference_cut(stops, pieces)
    assert len(matcher.pending) < max(map(len, stops))  # it never holds back more than a stop's length


# ---------------------------------------------------------------------------------------------
# The fuzz: whatever arrives, 200 or a 4xx in the error shape, and /health keeps answering.

json_text = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates included
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), json_text)
json_values = st.recursive(json_leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                st.dictionaries(json_text, inner, max_size=4)),
                           max_leaves=12)
FIELDS = ["messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
          "stream_options", "seed", "stop", "logprobs", "top_logprobs", "top_k", "repetition_penalty", "ngpt_trace",
          "user", "metadata", "tools", "response_format", "presence_penalty", "logit_bias", "frobnicate"]
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "assistant", "tool", ""]),
                                 "content": st.one_of(json_text, st.just("hi"),
                                                      st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                                                      "text": json_text}), max_size=2),
                                                      json_values)})
numbers = st.one_of(st.integers(-3, 30), st.floats(-1, 3), st.sampled_from([0, 1, 2, 10**30, -(10**30), 1e-320, 1e308]))
near_valid = st.builds(lambda msgs, extra: {"messages": msgs, "max_tokens": 2} | extra,
                       st.lists(message, min_size=1, max_size=3),
                       st.dictionaries(st.sampled_from(FIELDS), st.one_of(numbers, json_values, st.booleans()), max_size=4))
raw_numbers = st.one_of(st.integers(0, 6000).map(lambda n: "9" * max(n, 1)), st.just("1e999999"), st.just("-0"),
                        st.just("NaN"), st.just("Infinity"), st.just("1" + "0" * 400 + ".5"))


# Valid-looking values, edges included (subnormal and huge floats, huge ints): what gets past validation.
tiny_or_huge = st.sampled_from([5e-324, 1e-320, 1e-30, 1e-5, 1e30, 1e308])
PLAUSIBLE = {
    "max_tokens": st.integers(1, CAP), "temperature": st.one_of(st.floats(0, 2), tiny_or_huge),
    "top_p": st.one_of(st.floats(0, 1), tiny_or_huge), "top_k": st.one_of(st.integers(0, 600), st.just(10**30)),
    "repetition_penalty": st.one_of(st.floats(0, 3), tiny_or_huge), "seed": st.integers(0, 2**63 - 1),
    "stop": st.one_of(json_text, st.lists(json_text, max_size=4)), "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20), "stream": st.booleans(), "ngpt_trace": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "metadata": st.dictionaries(json_text, json_text, max_size=3), "user": json_text,
}
plausible = st.builds(lambda history, last, extra: {"messages": [*history, {"role": "user", "content": last}]} | extra,
                      st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                                                      "content": st.text(min_size=1, max_size=20)}), max_size=2),
                      st.text(min_size=1, max_size=40),
                      st.fixed_dictionaries({}, optional=PLAUSIBLE))


def dump(value) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: lone surrogates go out as \udXXX escapes


bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(dump),
    near_valid.map(dump),
    plausible.map(dump),
    plausible.map(dump),
    st.builds(lambda field, number: raw_chat(json.dumps(OK), f', "{field}": {number}'), st.sampled_from(FIELDS), raw_numbers),
    st.builds(lambda field, depth: raw_chat(json.dumps(OK), f', "{field}": ' + "[" * depth + "]" * depth),
              st.sampled_from(FIELDS), st.integers(1, 3000)),
)


@pytest.fixture(scope="module")
def health_watch(port):
    """/health polled from a thread during the fuzz; yields the list of its latencies."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.05):
            latencies.append(timed_health(port))

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    yield latencies
    stop.set()
    watcher.join(30)


def check_reply(reply: Reply | None, method: str) -> None:
    assert reply is not None, "the server closed the connection without an answer"
    assert reply.status < 500, (reply.status, reply.body[:300])
    if method == "HEAD":
        return
    if reply.status >= 400:
        assert_error_shape(reply)
    elif reply.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[6:] for line in reply.body.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and all("error" not in json.loads(e) for e in events[:-1])
    elif reply.headers.get("content-type", "").startswith("application/json"):
        reply.json()


FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                       HealthCheck.too_slow])


@FUZZ
@given(body=bodies)
def test_fuzz_bodies_never_get_a_5xx(port, health_watch, body):
    check_reply(post(port, body), "POST")


header_names = st.one_of(st.sampled_from(["Content-Type", "Authorization", "Transfer-Encoding", "Expect", "Accept",
                                          "Content-Encoding", "Upgrade", "Host", "Content-Length", "X-Any"]),
                         st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), min_size=1, max_size=10))
header_values = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=30)


@FUZZ
@given(method=st.sampled_from(["POST", "POST", "GET", "HEAD", "PUT", "OPTIONS", "DELETE"]),
       path=st.sampled_from(["/v1/chat/completions", "/v1/chat/completions", "/health", "/", "/v1/models",
                             "/v1/models/x", "/static/../app.py", "/%00", "/v1/chat/completions?x=1"]),
       headers=st.lists(st.tuples(header_names, header_values), max_size=5),
       body=st.one_of(st.just(chat_body(max_tokens=2)), bodies))
def test_fuzz_headers_never_get_a_5xx(port, health_watch, method, path, headers, body):
    # Content-Length and chunked bodies that do not match what is sent would only wait out the read
    # timeout (test_a_body_slower_than_the_read_timeout_gets_408 covers that): keep them honest here.
    headers = [(k, v) for k, v in headers if k.strip().lower() not in ("content-length", "transfer-encoding")]
    reply = exchange(port, request_bytes(method, path, body, headers), method=method)
    check_reply(reply, method)


def test_health_kept_answering_within_a_second_during_the_fuzz(health_watch):
    wait_until(lambda: len(health_watch) >= 3, "/health to be polled a few times", timeout=30)
    assert max(health_watch) < 1.0, f"/health took up to {max(health_watch):.3f} s during the fuzz"
