"""The HTTP side: an OpenAI-compatible FastAPI app in front of one :class:`Engine`.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON, or server-sent events
with ``stream``), ``GET /v1/models``, ``GET /health`` (no key needed), ``GET /metrics`` (JSON
counters). Every error is an OpenAI error body ``{"error": {"message", "type", "param",
"code"}}``; bad input is a 4xx. The app's lifespan starts and stops the :class:`Scheduler`.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from longforge.serve.engine import Engine, QueueFull, RequestError, Scheduler
from longforge.serve.protocol import (APIError, ChatRequest, CompletionRequest, Reply, loads,
                                      parse, sse)

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 8 << 20
    request_timeout: float = 600.0
    max_concurrent: int = 4
    max_queue: int = 64


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    scheduler = Scheduler(engine, config.max_concurrent, config.max_queue)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            engine.documents.close()

    app = FastAPI(title="longforge serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine, app.state.scheduler, app.state.config = engine, scheduler, config

    # ------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request, exc):
        log.exception("unhandled error")
        return JSONResponse(APIError(500, f"internal server error: {exc}", "server_error").body(),
                            status_code=500)

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    # ------------------------------------------------------------ plain routes
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name}

    def model_card() -> dict:
        return {"id": config.model_name, "object": "model", "created": started,
                "owned_by": "longforge"}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        check_key(request)
        if name != config.model_name:
            raise APIError(404, f"the model {name!r} does not exist", param="model",
                           code="model_not_found")
        return model_card()

    @app.get("/metrics")
    async def metrics(request: Request):
        check_key(request)
        return {**engine.stats(), **scheduler.stats()}

    # ------------------------------------------------------------ generation
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    async def generate(request: Request, chat: bool):
        check_key(request)
        try:
            raw = await asyncio.wait_for(read_body(request, config.max_body_bytes),
                                         config.request_timeout)
        except TimeoutError:
            raise APIError(408, "the request body did not arrive in time",
                           code="request_timeout") from None
        req = parse(ChatRequest if chat else CompletionRequest, raw, loads(raw))
        if req.model != config.model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves "
                           f"{config.model_name!r}", param="model", code="model_not_found")
        opts = req.options()
        try:
            if chat:
                messages = [{"role": "system" if m.role == "developer" else m.role,
                             "content": m.text()} for m in req.messages]
                ids, extra = engine.chat_ids(messages)
                opts["stop"] = [*opts["stop"], *extra]
            else:
                ids = engine.completion_ids(req.prompt_value())
            job = engine.prepare(ids, **opts, param="messages" if chat else "prompt")
        except RequestError as exc:
            raise APIError(400, str(exc), param=exc.param, code=exc.code) from None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown)
                job.cancel()

        job.emit = emit
        job.deadline = time.monotonic() + config.request_timeout
        deadline = loop.time() + config.request_timeout
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            raise APIError(429, f"the server is busy: {exc}", "rate_limit_error",
                           code="queue_full") from None
        reply = Reply(chat, config.model_name, job.policy.label(), engine.identity.digest()[:16])
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            return StreamingResponse(stream(job, queue, reply, deadline, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await collect(request, job, queue, reply, deadline)

    async def collect(request, job, queue, reply, deadline):
        parts, loop = [], asyncio.get_running_loop()
        checked = loop.time()
        try:
            while True:
                if loop.time() - checked >= 0.5:  # has the client left? (asked twice a second)
                    checked = loop.time()
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                event = await next_event(queue, deadline, poll=0.5)
                if event is None:
                    continue
                if event[0] == "text":
                    parts.append(event[1])
                elif event[0] == "done":
                    return reply.full("".join(parts), event[1], event[2])
                else:
                    raise failure(event[1])
        finally:
            job.cancel()

    async def stream(job, queue, reply, deadline, include_usage):
        try:
            if reply.chat:
                yield sse(reply.chunk(role=True))
            while True:
                try:
                    event = await next_event(queue, deadline)
                except APIError as exc:
                    yield sse(exc.body())
                    break
                if event[0] == "text":
                    yield sse(reply.chunk(text=event[1]))
                elif event[0] == "done":
                    yield sse(reply.chunk(finish=event[1]))
                    if include_usage:
                        yield sse(reply.chunk(usage=event[2]))
                    break
                else:
                    yield sse(failure(event[1]).body())
                    break
            yield sse("[DONE]")
        finally:  # also when the client disconnects: Starlette cancels this generator
            job.cancel()

    return app


async def read_body(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length", "")
    too_big = APIError(413, f"the request body exceeds {limit} bytes", code="body_too_large")
    if size.isdigit() and int(size) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


async def next_event(queue: asyncio.Queue, deadline: float, poll: float | None = None):
    """The job's next event (None after ``poll`` seconds without one); a 504 past the
    deadline."""
    loop = asyncio.get_running_loop()
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise APIError(504, "the request did not finish within the server's time limit "
                           "(--request-timeout)", "timeout_error", code="request_timeout")
        try:
            return await asyncio.wait_for(queue.get(), min(left, poll or 1.0))
        except TimeoutError:
            if poll is not None:
                return None


def failure(exc: BaseException) -> APIError:
    if isinstance(exc, TimeoutError):
        return APIError(504, str(exc), "timeout_error", code="request_timeout")
    if isinstance(exc, QueueFull):
        return APIError(503, str(exc), "server_error", code="shutting_down")
    return APIError(500, f"generation failed: {exc}", "server_error")


@contextmanager
def background(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
    """Serve ``app`` with uvicorn on a thread (``port`` 0: a free one); yields the base URL
    (``http://host:port``) and stops the server, and so the scheduler, on exit."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
