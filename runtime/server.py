"""``m3edge serve``: the EdgeAgent behind HTTP (Starlette on uvicorn, the ``serve`` extra).

m3edge's own JSON API (error bodies ``{"error": "one line"}``, kept as they were):

    POST /v1/generate       {prompt, max_bytes, temperature, seed,  -> {text, bytes, memories, finish_reason}
                             memory, retrieval_mode, task_type, scene}
    POST /v1/step           {context}                               -> {top: [{byte, char, p}], logits}
    POST /v1/memory/search  {query, k}                              -> {results: [...]}
    GET  /healthz                                                   -> {status: "ok", ...}

OpenAI-compatible (``runtime/openai_api.py``; errors in OpenAI's shape ``{"error": {message, type, param, code}}``,
as are 404 and 405 everywhere):

    POST /v1/completions, POST /v1/chat/completions (``stream: true``: server-sent events), GET /v1/models

and for people and dashboards: ``GET /`` (the web page, ``runtime/web/``), ``GET /health``, ``GET /v1/stats``
(live counters and per-layer expert counts), ``GET /v1/memory/{id}`` (a memory's priority and links),
``GET /metrics`` (prometheus-client, ``runtime/metrics.py``).

Limits (``Limits``): a body over the limit is 413, one that does not arrive within ``body_timeout_s`` 408,
malformed or too deeply nested JSON 400, wrong or missing fields 422. Work (generate, step, search, completions)
holds one of ``max_active`` slots; up to ``max_waiting`` requests wait for one, the next gets 503 at once, as does
everything once the server is stopping. A full batcher queue is 503, a step that timed out in it 504, a memory
write the disk refused 507. A client that hangs up cancels its generation before the next step. ``stop(timeout)``
(SIGTERM, ``runtime/serving.py``) refuses new work, gives in-flight generations until the deadline, then cancels
them at their next step; the lifespan's end drains the batcher and saves the memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from m3edge.errors import StorageError
from m3edge.memory.retrieval import MODES, TASK_TYPES
from m3edge.runtime import openai_api as oa
from m3edge.runtime.batcher import BatcherError, QueueFull, RequestTimeout

log = logging.getLogger("m3edge.serve")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_prompt_bytes: int = 8 * 1024
    max_generate_bytes: int = 1024
    max_search_k: int = 50
    max_active: int = 64  # requests doing agent work at once (the batcher merges their steps)
    max_waiting: int = 64  # requests waiting for a slot; the next one is answered 503 at once
    body_timeout_s: float = 10.0  # the whole request body must arrive within this (slow bodies hold sockets)
    max_json_depth: int = 32  # deeper bodies are refused before parsing (no request here nests past 3)


@dataclass(frozen=True)
class AppOptions:
    cors_origins: tuple[str, ...] = ()  # browsers' origins allowed to call the API ("*": any)
    model: str = "m3edge"  # the id /v1/models lists and responses echo
    target: str = ""  # the bundle's target profile, for build info


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


class Disconnected(Exception):
    """The client went away before its request was read: nothing to answer."""


def field(body: dict, name: str, kind, default=..., check=None, what: str = ""):
    """One JSON field, typed and checked; a clear 422 otherwise."""
    if name not in body:
        if default is ...:
            raise HTTPError(422, f"missing field {name!r}")
        return default
    v = body[name]
    ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
    if not ok or (check is not None and not check(v)):
        raise HTTPError(422, f"field {name!r} must be {what}, got {json.dumps(v)[:60]}")
    return v


def json_depth(body: bytes) -> int:
    """Deepest nesting of a JSON text, strings skipped, without parsing it (a parser recursing 30,000 levels
    deep is what the limit prevents)."""
    import re

    a = np.frombuffer(re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', body), dtype=np.uint8)
    step = np.isin(a, (91, 123)).astype(np.int32) - np.isin(a, (93, 125)).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


class Admission:
    """Slots for agent work: ``max_active`` at once, ``max_waiting`` queued for one (FIFO), the rest refused at
    once; ``stopping`` refuses everything. Every admitted request registers a cancel flag, so a stop can cancel
    them all."""

    def __init__(self, max_active: int, max_waiting: int, metrics):
        self.max_active, self.max_waiting, self.metrics = max_active, max_waiting, metrics
        self.active = 0
        self.waiters: list[asyncio.Future] = []
        self.cancels: set[threading.Event] = set()
        self.stopping = False

    def _refuse(self, reason: str, message: str):
        self.metrics.rejected.labels(reason).inc()
        raise HTTPError(503, message)

    async def acquire(self, cancel: threading.Event) -> None:
        if self.stopping:
            self._refuse("stopping", "the server is stopping; retry on another instance or later")
        if self.active >= self.max_active:
            if len(self.waiters) >= self.max_waiting:
                self._refuse("overloaded", f"overloaded: {self.active} requests running and {len(self.waiters)} "
                                           f"waiting (max_active={self.max_active}, max_waiting={self.max_waiting})")
            fut = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            self.metrics.waiting.set(len(self.waiters))
            try:
                await fut  # release() hands its slot over: active stays counted
            except BaseException:
                if fut in self.waiters:
                    self.waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._release_slot()  # the slot was handed over as we were cancelled: pass it on
                raise
            finally:
                self.metrics.waiting.set(len(self.waiters))
            if self.stopping:
                self._release_slot()
                self._refuse("stopping", "the server is stopping; retry on another instance or later")
        else:
            self.active += 1
        self.cancels.add(cancel)
        self.metrics.active.set(self.active)

    def _release_slot(self) -> None:
        while self.waiters:
            fut = self.waiters.pop(0)
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1
        self.metrics.active.set(self.active)

    def release(self, cancel: threading.Event) -> None:
        self.cancels.discard(cancel)
        self._release_slot()

    def cancel_all(self) -> int:
        for c in list(self.cancels):
            c.set()
        return len(self.cancels)


async def watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client hangs up (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def create_app(agent, limits: Limits = Limits(), options: AppOptions = AppOptions()) -> Starlette:
    from m3edge.runtime.metrics import CONTENT_TYPE, ServerMetrics

    metrics = ServerMetrics(agent, options.model, options.target)
    admission = Admission(limits.max_active, limits.max_waiting, metrics)
    started = time.time()
    web = resources.files("m3edge.runtime") / "web"

    async def read_body(request: Request) -> bytes:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            raise HTTPError(413, f"body is {size} bytes; the limit is {limits.max_body_bytes}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise HTTPError(413, f"body exceeds the limit of {limits.max_body_bytes} bytes")
        return body

    async def read_json(request: Request, allowed: set[str] | None) -> dict:
        try:
            body = await asyncio.wait_for(read_body(request), limits.body_timeout_s)
        except asyncio.TimeoutError:
            metrics.rejected.labels("body_timeout").inc()
            raise HTTPError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s") from None
        except ClientDisconnect:
            raise Disconnected() from None
        if json_depth(body) > limits.max_json_depth:
            raise HTTPError(400, f"JSON nested deeper than {limits.max_json_depth} levels")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"malformed JSON: {e}") from None
        except RecursionError:
            raise HTTPError(400, f"JSON nested deeper than {limits.max_json_depth} levels") from None
        if not isinstance(data, dict):
            raise HTTPError(422, "the body must be a JSON object")
        if allowed is not None:
            unknown = sorted(set(data) - allowed)
            if unknown:
                raise HTTPError(422, f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        return data

    def text_field(body, name):
        v = field(body, name, str, what="a string")
        if len(v.encode("utf-8")) > limits.max_prompt_bytes:
            raise HTTPError(422, f"field {name!r} is longer than {limits.max_prompt_bytes} bytes")
        return v

    def recall_fields(body) -> dict:
        """m3edge's retrieval fields: memory on/off, retrieval mode, task type, scene."""
        return {"use_memory": field(body, "memory", bool, True, what="true or false"),
                "mode": field(body, "retrieval_mode", str, "hybrid", lambda v: v in MODES, f"one of {', '.join(MODES)}"),
                "task": field(body, "task_type", str, "general", lambda v: v in TASK_TYPES,
                              f"one of {', '.join(TASK_TYPES)}"),
                "scene": field(body, "scene", str, "", lambda v: len(v) <= 256, "a string of at most 256 characters")}

    RECALL = {"memory", "retrieval_mode", "task_type", "scene"}

    @asynccontextmanager
    async def slot():
        """Admission for one request's agent work, with its cancel flag."""
        cancel = threading.Event()
        await admission.acquire(cancel)
        try:
            yield cancel
        finally:
            admission.release(cancel)

    async def collect(request: Request, p: oa.Params, cancel: threading.Event) -> tuple[str, int, str]:
        """A whole generation in the thread pool, cancelled between steps if the client hangs up or the server
        stops past its deadline. Returns (text, bytes generated, finish reason)."""
        stream = agent.stream(p.prompt, p.max_bytes, cancel=cancel, **p.agent_kwargs())  # bad values raise here

        def run():
            scanner, parts, n, finish = oa.StopScanner(p.stop), [], 0, "length"
            try:
                for b in stream:
                    n += 1
                    text, stopped = scanner.feed(b)
                    parts.append(text)
                    if stopped:
                        finish = "stop"
                        break
                else:
                    parts.append(scanner.feed(b"", final=True)[0])
                    if n < p.max_bytes:
                        finish = "cancelled"
            finally:
                stream.close()
            return "".join(parts), n, finish

        watcher = asyncio.ensure_future(watch_disconnect(request, cancel))
        try:
            return await run_in_threadpool(run)
        finally:
            watcher.cancel()

    async def generate(request: Request):
        body = await read_json(request, {"prompt", "max_bytes", "temperature", "seed"} | RECALL)
        prompt = text_field(body, "prompt")
        n = field(body, "max_bytes", int, 64, lambda v: 0 <= v <= limits.max_generate_bytes,
                  f"an integer in [0, {limits.max_generate_bytes}]")
        temp = field(body, "temperature", (int, float), 0.0, lambda v: math.isfinite(v) and 0 <= v <= 10,
                     "a number in [0, 10]")
        seed = field(body, "seed", int, None, lambda v: v >= 0, "a non-negative integer")
        r = recall_fields(body)
        p = oa.Params(prompt, n, float(temp), seed, recall=r)
        async with slot() as cancel:
            text, produced, finish = await collect(request, p, cancel)
        return {"text": text, "bytes": produced, "memories": len(agent.memory), "finish_reason": finish}

    async def step(request: Request):
        body = await read_json(request, {"context", "top"} | RECALL)
        context = text_field(body, "context")
        top = field(body, "top", int, 5, lambda v: 1 <= v <= 256, "an integer in [1, 256]")
        r = recall_fields(body)
        async with slot():
            logits = await run_in_threadpool(lambda: agent.step(context, **r))
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = np.argsort(-p, kind="stable")[:top]
        return {"top": [{"byte": int(b), "char": chr(b) if 32 <= b < 127 else None, "p": float(p[b])} for b in best],
                "logits": [float(v) for v in logits]}

    async def memory_search(request: Request):
        body = await read_json(request, {"query", "k"})
        query = text_field(body, "query")
        k = field(body, "k", int, 5, lambda v: 1 <= v <= limits.max_search_k, f"an integer in [1, {limits.max_search_k}]")
        async with slot():
            return {"results": await run_in_threadpool(agent.search_memory, query, k)}

    async def memory_get(request: Request):
        mid = request.path_params["memory_id"]
        detail = await run_in_threadpool(agent.memory_detail, mid)
        if detail is None:
            raise HTTPError(404, f"no memory with id {mid}")
        return detail

    async def healthz(request: Request):
        return {"status": "stopping" if admission.stopping else "ok", "memories": len(agent.memory),
                "batching": agent.batcher is not None}

    async def stats(request: Request):
        """What the web page polls: cumulative counters (the page differentiates them) and expert counts."""
        c = agent.executor.cache.stats
        b = agent.batcher.metrics() if agent.batcher is not None else None
        return {"uptime_s": time.time() - started, "generated_bytes": agent.generated_bytes,
                "cancelled": agent.cancelled_streams, "active": admission.active, "waiting": len(admission.waiters),
                "memories": len(agent.memory), "model": options.model,
                "cache": {"hits": c.hits, "misses": c.misses, "evictions": c.evictions, "hit_rate": c.hit_rate},
                "batcher": None if b is None else {k: b[k] for k in ("inference_count", "execution_count",
                                                                       "avg_batch_size", "pending", "rejected_count")},
                "experts": {"n_layers": int(agent.expert_counts.shape[0]), "n_experts": int(agent.expert_counts.shape[1]),
                            "counts": agent.expert_counts.tolist()}}

    async def metrics_endpoint(request: Request):
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------------------------- OpenAI-compatible

    async def models(request: Request):
        return {"object": "list", "data": [{"id": options.model, "object": "model", "created": int(started),
                                            "owned_by": "m3edge"}]}

    def openai_generation(chat: bool):
        async def handler(request: Request):
            body = await read_json(request, None)
            p = (oa.chat_params if chat else oa.completion_params)(body, limits)
            model = options.model
            rid = oa.new_id("chatcmpl" if chat else "cmpl")
            if p.stream:
                return await sse(request, p, chat, rid, model)
            async with slot() as cancel:
                text, produced, finish = await collect(request, p, cancel)
            make = oa.chat_body if chat else oa.completion_body
            return make(rid, model, text, finish, oa.usage(p.prompt, produced))
        return handler

    async def sse(request: Request, p: oa.Params, chat: bool, rid: str, model: str):
        cancel = threading.Event()
        await admission.acquire(cancel)  # refused before the 200 and the first byte
        try:
            stream = agent.stream(p.prompt, p.max_bytes, cancel=cancel, **p.agent_kwargs())
        except BaseException:
            admission.release(cancel)
            raise
        chunk = (lambda text, finish, first=False: oa.chat_chunk(rid, model, text, finish, first)) if chat else \
            (lambda text, finish, first=False: oa.completion_chunk(rid, model, text or "", finish))

        def event(obj) -> str:
            return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"

        closed, finished = [], []

        def cleanup():
            """Once, however the response ends (normally, the client gone, the task cancelled, or before the body
            was ever iterated): cancel, free the slot, close the iterator in a thread (it saves the memory, which
            is file I/O). No step is in flight then: a thread-pool call is waited for, not abandoned."""
            if closed:
                return
            closed.append(True)
            if not finished:  # the client left or the task was cancelled: the iterator stops as cancelled
                cancel.set()
            admission.release(cancel)
            asyncio.get_running_loop().run_in_executor(None, stream.close)

        async def events():
            watcher = asyncio.ensure_future(watch_disconnect(request, cancel))
            scanner, n, finish = oa.StopScanner(p.stop), 0, "length"
            try:
                if chat:
                    yield event(chunk("", None, True))
                while True:
                    b = await run_in_threadpool(next, stream, None)
                    if b is None:
                        break
                    n += 1
                    text, stopped = scanner.feed(b)
                    if text:
                        yield event(chunk(text, None))
                    if stopped:
                        finish = "stop"
                        break
                if finish != "stop":
                    text, _ = scanner.feed(b"", final=True)
                    if text:
                        yield event(chunk(text, None))
                    if n < p.max_bytes:
                        finish = "cancelled"
                yield event(chunk(None, finish))
                if p.include_usage:
                    last = chunk(None, None)
                    last["choices"], last["usage"] = [], oa.usage(p.prompt, n)
                    yield event(last)
                finished.append(True)
                yield "data: [DONE]\n\n"
            finally:
                watcher.cancel()
                cleanup()

        return SSEResponse(events(), cleanup, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --------------------------------------------------------------------------------------- the web page

    WEB_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
    CSP = "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:"

    async def index(request: Request):
        return Response((web / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    async def web_file(request: Request):
        name = request.path_params["name"]
        if name not in WEB_FILES:
            raise HTTPError(404, f"no file {name!r}")
        return Response((web / name).read_bytes(), media_type=WEB_FILES[name], headers={"Cache-Control": "no-cache"})

    # ---------------------------------------------------------------------------------------- plumbing

    def endpoint(fn, openai_errors: bool):
        """Typed failures become one-line JSON errors; unexpected ones a 500 naming only the exception type.
        m3edge's own endpoints keep ``{"error": message}``, the rest use OpenAI's shape."""
        async def handler(request: Request):
            param = None
            try:
                result = await fn(request)
                if isinstance(result, Response):
                    return result
                return JSONResponse(result)
            except Disconnected:
                return Response(status_code=499)  # nobody is listening; uvicorn drops it
            except HTTPError as e:
                message, status, param = str(e), e.status, e.param
            except oa.RequestError as e:
                message, status, param = str(e), e.status, e.param
            except QueueFull as e:
                message, status = str(e), 503
            except RequestTimeout as e:
                message, status = str(e), 504
            except BatcherError as e:
                message, status = str(e), 503
            except StorageError as e:  # the disk refused a memory write; it was rolled back, nothing acknowledged lost
                message, status = str(e), e.http_status
            except ValueError as e:
                message, status = str(e), 422
            except (OSError, sqlite3.OperationalError) as e:
                full = isinstance(e, OSError) and e.errno == 28 or "full" in str(e)
                message = f"{'disk full' if full else 'I/O error'}: {getattr(e, 'filename', '') or e}"
                status = 507
            except Exception as e:  # the client gets one line; the server keeps serving
                message, status = f"internal error: {type(e).__name__}", 500
            body = oa.error_body(message, status, param) if openai_errors else {"error": message}
            headers = {"Retry-After": "1"} if status == 503 else None
            return JSONResponse(body, status_code=status, headers=headers)
        return handler

    async def http_error(request: Request, exc: HTTPException):
        """404 and 405 from the router (and any other HTTPException) as JSON in OpenAI's shape."""
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, exc.detail)
        return JSONResponse(oa.error_body(message, exc.status_code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    def route(path, fn, method="POST", openai_errors=False):
        return Route(path, endpoint(fn, openai_errors), methods=[method])

    routes = [route("/v1/generate", generate), route("/v1/step", step), route("/v1/memory/search", memory_search),
              route("/healthz", healthz, "GET"), route("/metrics", metrics_endpoint, "GET"),
              route("/v1/completions", openai_generation(False), openai_errors=True),
              route("/v1/chat/completions", openai_generation(True), openai_errors=True),
              route("/v1/models", models, "GET", True), route("/health", healthz, "GET", True),
              route("/v1/stats", stats, "GET", True), route("/v1/memory/{memory_id:int}", memory_get, "GET", True),
              route("/", index, "GET", True), route("/web/{name}", web_file, "GET", True)]

    @asynccontextmanager
    async def lifespan(app):
        import anyio.to_thread

        # Every admitted request may hold a pool thread for a step (anyio's default is 40): room for all of them
        # plus the memory browser's lookups, so a full house never queues behind the pool.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, limits.max_active + 8)
        yield
        admission.stopping = True
        t0 = time.monotonic()
        await run_in_threadpool(agent.close)  # drain the batcher, stop prefetching, save the memory
        log.warning("stopped: batcher drained and memory saved in %.2f s", time.monotonic() - t0)

    middleware = [Middleware(HTTPMetrics, metrics=metrics, paths={r.path for r in routes})]
    if options.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                                     allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"], max_age=600))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: http_error})
    app.state.admission = admission
    app.state.metrics = metrics

    def stop(timeout_s: float) -> None:
        """Refuse new work now; cancel what still runs after ``timeout_s`` seconds (call on the event loop)."""
        admission.stopping = True
        log.warning("stopping: %d requests running, %d waiting; running ones get %g s to finish",
                    admission.active, len(admission.waiters), timeout_s)

        def deadline():
            n = admission.cancel_all()
            if n:
                log.warning("stopping: cancelled %d requests at the deadline", n)

        asyncio.get_running_loop().call_later(timeout_s, deadline)

    app.state.stop = stop
    return app


class SSEResponse(StreamingResponse):
    """A stream whose cleanup also runs when its body is never iterated (the client left before it started)."""

    def __init__(self, content, on_close, **kw):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class HTTPMetrics:
    """Pure ASGI middleware: latency to the end of the response body (streams included) and counts by path
    template, method and status. Unknown paths are one label ("other"), so scanners cannot grow the series."""

    def __init__(self, app, metrics, paths: set[str]):
        self.app, self.metrics = app, metrics
        self.paths = {p for p in paths if "{" not in p}

    def label(self, path: str) -> str:
        if path in self.paths:
            return path
        if path.startswith("/v1/memory/"):
            return "/v1/memory/{id}"
        if path.startswith("/web/"):
            return "/web/{name}"
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(self.label(scope["path"]), scope["method"], status[0], time.perf_counter() - start)
