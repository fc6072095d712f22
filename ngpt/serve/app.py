"""The HTTP server: OpenAI-compatible chat completions (plain and SSE-streamed), models, health, the web page.

    from ngpt.serve import ServeOptions, create_app
    app = create_app(engine, ServeOptions(model_id="ngpt-sft-step1200", api_key="secret"))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # what `ngpt serve --ckpt PATH` does

Routes: POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health, GET / (the chat
page, static files from ngpt/serve/static). With an API key every /v1 route needs
`Authorization: Bearer KEY`; /health and the page stay open (the page asks for the key).

Every error is OpenAI's {"error": {message, type, param, code}}: 400 for a bad request (schemas.py
says which fields exist; protocol.py answers malformed HTTP alike), 401 without the key, 404/405 for
unknown routes, 408 for a body slower than read_timeout, 413 for a body over max_body_bytes, 503
when the wait queue is full or the worker is down, 500 for a fault of the server's own (its message
says only that: the traceback goes to the log). One worker thread generates for everyone
(worker.py). Everything whose cost grows with the request (parsing, validation, tokenizing the
prompt, the stop strings' tables) runs in a worker thread, not on the event loop, and is linear in
the body; so /health and the other clients' streams keep moving while a hostile request is read.
A client that disconnects, from a stream or while waiting for a whole reply, cancels its
generation before the next token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ngpt.chat_format import prompt_ids
from ngpt.engine import Engine
from ngpt.sampling import SamplingParams
from ngpt.serve.schemas import (
    ApiError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ModelCard,
    parse_chat_request,
)
from ngpt.serve.reply import Piece, ReplyBuilder, StopMatcher, TokenTable  # noqa: F401 (StopMatcher: tests use it from here)
from ngpt.serve.worker import GenerationWorker, Job, ServerBusy, WorkerStopped
from ngpt.settings import GenerationSettings
from ngpt.tokenizer import Tokenizer, UnencodableText

log = logging.getLogger("ngpt.serve")
TRACE_TOP = 5  # alternatives per token the inspector shows
# A temperature below this samples as greedy, and a top_p below it keeps just the top token (as in vLLM):
# dividing logits by a subnormal temperature overflows to inf, and a top_p that rounds to 0 in fp32
# drops every token, and either leaves no probabilities to draw from.
SAMPLING_EPS = 1e-5
# The page may only load what this server serves: no CDN, no inline script.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class ServeOptions:
    model_id: str  # the name /v1/models lists and every response carries
    api_key: str | None = None  # None = no authentication
    max_tokens_cap: int | None = None  # the largest max_tokens a request may ask for; None = the model's context
    max_body_bytes: int = 1_000_000
    read_timeout: float = 30.0  # seconds a client has for its request's headers, and again for its body
    max_active: int = 8  # requests generating at once (round robin, one token each in turn)
    max_waiting: int = 64  # requests queued behind them; more get 503
    generation: GenerationSettings = field(default_factory=GenerationSettings)  # sampling a request leaves out
    created: int = 0  # unix time the model was made (the checkpoint's mtime)


# ---------------------------------------------------------------------------------------------
# Request → prompt + sampling params.


def request_prompt(tok: Tokenizer, req: ChatCompletionRequest) -> list[int]:
    """The chat-template prompt; message text is encoded as plain text (a typed "<|eot|>" is no special id)."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    try:
        return prompt_ids(tok, messages)
    except UnencodableText as e:  # parse_chat_request rejects lone surrogates first; this keeps it a 400 regardless
        raise ApiError(400, f"messages: {e}", param="messages", code="invalid_unicode") from None


def sampling_params(req: ChatCompletionRequest, prompt_tokens: int, seq_len: int, options: ServeOptions) -> SamplingParams:
    """SamplingParams for a request; ApiError(400) when max_tokens is over the cap or the context is exceeded."""
    cap = min(options.max_tokens_cap or seq_len, seq_len)
    asked = req.max_new_tokens()
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    room = seq_len - prompt_tokens
    if asked is not None and asked > cap:
        raise ApiError(400, f"{param}={asked} is above this server's cap of {cap}; ask for {cap} or fewer.",
                       param=param, code="max_tokens_too_large")
    if (asked or 1) > room:
        raise ApiError(400, f"This model's maximum context length is {seq_len} tokens. However, you requested "
                            f"{prompt_tokens + (asked or 1)} tokens ({prompt_tokens} in the messages, {asked or 1} in "
                            "the completion). Shorten the messages (drop old turns) or lower max_tokens.",
                       param="messages", code="context_length_exceeded")
    gen = options.generation
    temperature = gen.temperature if req.temperature is None else req.temperature
    return SamplingParams(
        max_new_tokens=asked if asked is not None else min(gen.max_new_tokens, cap, room),
        temperature=0.0 if temperature < SAMPLING_EPS else temperature,
        top_p=max(gen.top_p if req.top_p is None else req.top_p, SAMPLING_EPS),
        top_k=gen.top_k if req.top_k is None else req.top_k,
        repetition_penalty=gen.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
        seed=gen.seed if req.seed is None else req.seed,
        trace=bool(req.logprobs or req.ngpt_trace),
        top_alternatives=max(req.top_logprobs or 0, TRACE_TOP if req.ngpt_trace else 0),
    )


# ---------------------------------------------------------------------------------------------
# Transport helpers.


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body; ApiError(413) as soon as it passes `limit` bytes (declared or actually sent),
    ApiError(408) when it has not all arrived `timeout` seconds after the headers."""
    too_large = ApiError(413, f"The request body is larger than this server's limit of {limit:,} bytes.",
                         code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"The request body did not arrive within {timeout:g} s ({size:,} bytes came); send it "
                            "in one go, or start the server with a longer --read-timeout.", code="request_timeout") from None
    except ClientDisconnect:  # nobody will read this answer; it only keeps a hang-up from looking like a fault
        raise ApiError(400, "The client closed the connection before the whole body arrived.",
                       code="client_disconnected") from None
    return b"".join(chunks)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client hangs up (call after the body is read: ASGI's receive then only reports that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def error_body(e: BaseException, what: str = "generating this reply") -> ApiError:
    """The ApiError a client gets for `e`. A fault of the server's own is logged with its traceback
    and reported without its text (that is for the operator, not for whoever sent the request)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, WorkerStopped):
        return ApiError(503, f"{e}; retry when the server is back.", code="server_unavailable", type="server_error")
    ref = uuid.uuid4().hex[:12]
    log.error("fault %s while %s", ref, what, exc_info=e)
    return ApiError(500, f"The server failed while {what} (a fault on its side, not in the request; the server log "
                         f"has the details under fault {ref}). Retry, or report it to whoever runs the server.",
                    code="server_fault", type="server_error")


class ErrorResponse(JSONResponse):
    """An ApiError as JSON; ASCII-escaped, so no text a client sent can make the error itself fail to encode."""

    def __init__(self, e: ApiError, headers: dict[str, str] | None = None) -> None:
        super().__init__(e.body(), status_code=e.status, headers=headers)

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class EventStream(StreamingResponse):
    """An SSE response that notices a hang-up even between tokens and always runs `on_close`.

    Starlette's own StreamingResponse may leave the body generator suspended when the client goes
    away; here the generator is closed and `on_close` (cancel the job) runs on every exit.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                try:
                    await self.stream_response(send)
                except OSError:  # servers on ASGI spec 2.4 raise this when writing to a closed connection
                    pass
                tg.cancel_scope.cancel()
        finally:
            self._on_close()
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


# ---------------------------------------------------------------------------------------------
# The app.


def create_app(engine: Engine, options: ServeOptions) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the generation worker (app.state.worker)."""
    worker = GenerationWorker(engine, options.max_active, options.max_waiting)
    table = TokenTable(engine.tok)
    seq_len = engine.model.cfg.seq_len
    static = files("ngpt.serve").joinpath("static")
    index_html = static.joinpath("index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    # No /docs: FastAPI's docs page loads its scripts from a CDN.
    app = FastAPI(title="ngpt serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    app.state.options = options
    app.mount("/static", StaticFiles(packages=[("ngpt.serve", "static")]), name="static")

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
        # A request whose body was not read to the end (413, 408) leaves the connection unusable.
        return ErrorResponse(e, headers={"Connection": "close"} if e.status in (408, 413) else None)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"No route {request.method} {request.url.path}." if e.status_code in (404, 405) else str(e.detail)
        return ErrorResponse(ApiError(e.status_code, message, code=str(e.status_code)))

    @app.exception_handler(Exception)
    async def on_fault(request: Request, e: Exception) -> JSONResponse:
        # Starlette re-raises `e` after this response, and uvicorn logs it too; error_body logs it with a ref.
        return ErrorResponse(error_body(e, f"answering {request.method} {request.url.path}"))

    def require_key(request: Request) -> None:
        if options.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise ApiError(401, "Missing or incorrect API key: send `Authorization: Bearer KEY` with the key this "
                                "server was started with (--api-key).", code="invalid_api_key")

    # GET routes answer HEAD too (uvicorn sends the headers without the body), as Starlette's own routes do.
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        ok = worker.alive
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": options.model_id,
                             "active": len(worker.active_jobs), "waiting": worker.waiting, "requests": dict(worker.counts)},
                            status_code=200 if ok else 503)

    card = ModelCard(id=options.model_id, created=options.created)

    @app.api_route("/v1/models", methods=["GET", "HEAD"], dependencies=[Depends(require_key)])
    async def list_models() -> dict:
        return {"object": "list", "data": [card.to_dict()]}

    @app.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"], dependencies=[Depends(require_key)])
    async def get_model(model_id: str) -> dict:
        if model_id != options.model_id:
            raise ApiError(404, f"The model {model_id!r} does not exist; this server serves {options.model_id!r}.",
                           param="model", code="model_not_found")
        return card.to_dict()

    def prepare(body: bytes) -> tuple[ChatCompletionRequest, list[int], SamplingParams, ReplyBuilder]:
        """Body → request, prompt ids, params and reply builder; ApiError(400) on any problem. Runs in a
        thread: its cost grows with the body (linearly), and the event loop must not wait for it."""
        req = parse_chat_request(body)
        prompt = request_prompt(engine.tok, req)
        return req, prompt, sampling_params(req, len(prompt), seq_len, options), ReplyBuilder(table, req, len(prompt))

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, options.max_body_bytes, options.read_timeout)
        req, prompt, params, reply = await anyio.to_thread.run_sync(prepare, body)
        try:
            job = worker.submit(prompt, params)
        except ValueError as e:  # Engine.check: anything the checks above did not already catch
            raise ApiError(400, str(e), param="messages") from None
        except ServerBusy as e:
            raise ApiError(503, f"The server is busy: {e}.", code="server_busy", type="server_error") from None
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": options.model_id}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(stream_events(job, reply, meta, include_usage), on_close=job.cancel)
        return await whole_reply(request, job, reply, meta)

    return app


async def run_job(job: Job, reply: ReplyBuilder) -> AsyncIterator[Piece]:
    """The job's pieces up to the finishing one; cancels the job when a stop string ends it early."""
    try:
        async for step in job.steps():
            piece = reply.add(step)
            yield piece
            if piece.finish_reason:
                return
    finally:
        job.cancel()  # a no-op when the engine finished; stops it when a stop string or the client ended it


async def stream_events(job: Job, reply: ReplyBuilder, meta: dict, include_usage: bool) -> AsyncIterator[str]:
    def chunk(choices: list[ChunkChoice], **extra) -> str:
        return sse(ChatCompletionChunk(**meta, choices=choices, **extra).to_dict())

    yield chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])
    try:
        async for piece in run_job(job, reply):
            if piece.content or piece.logprobs or piece.trace:
                logprobs = ChoiceLogprobs(content=piece.logprobs) if piece.logprobs is not None else None
                ngpt = {"tokens": [piece.trace]} if piece.trace else None
                yield chunk([ChunkChoice(delta=Delta(content=piece.content), logprobs=logprobs)], ngpt=ngpt)
    except Exception as e:  # noqa: BLE001 - the headers are sent: an error event is all a client can get now
        yield sse(error_body(e).body())
        return
    yield chunk([ChunkChoice(delta=Delta(), finish_reason=reply.finish_reason)])
    if include_usage:
        yield chunk([], usage=reply.usage())
    yield sse("[DONE]")


async def whole_reply(request: Request, job: Job, reply: ReplyBuilder, meta: dict) -> Response:
    """Generate to the end, unless the client hangs up first (then the job is cancelled)."""

    async def collect() -> None:
        async for _ in run_job(job, reply):
            pass

    generating = asyncio.ensure_future(collect())
    hang_up = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({generating, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        job.cancel()  # a no-op when it finished
        hang_up.cancel()
        generating.cancel()
    if not generating.done() or generating.cancelled():  # the client left: nobody will read this
        return Response(status_code=499)
    if generating.exception() is not None:
        raise error_body(generating.exception())
    logprobs = ChoiceLogprobs(content=reply.all_logprobs) if reply.logprobs else None
    choice = Choice(message=AssistantMessage(content="".join(reply.text)), logprobs=logprobs,
                    finish_reason=reply.finish_reason)
    ngpt = {"tokens": reply.all_trace} if reply.trace else None
    return JSONResponse(ChatCompletion(**meta, choices=[choice], usage=reply.usage(), ngpt=ngpt).to_dict())
