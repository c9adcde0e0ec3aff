"""``m3edge serve``: the EdgeAgent behind a small JSON-over-HTTP API (Starlette on uvicorn, the
``serve`` extra).

    POST /v1/generate       {prompt, max_bytes, temperature, seed,  -> {text, bytes, ...}
                             memory, retrieval_mode, task_type, scene}
    POST /v1/step           {context}                               -> {top: [{byte, char, p}], logits}
    POST /v1/memory/search  {query, k}                              -> {results: [...]}
    GET  /healthz                                                   -> {status: "ok", ...}
    GET  /metrics                                                   Prometheus text format

Bad requests get a 4xx and one-line message, never a traceback: a body over the limit is 413, malformed
JSON 400, wrong or missing fields 422, a full queue 503, a request that timed out in the queue 504.
Blocking work runs in Starlette's thread pool; concurrent generations meet in the dynamic batcher one step
at a time. On shutdown (SIGTERM: uvicorn stops accepting, lets in-flight requests finish), the batcher
drains and the memory is saved, so no acknowledged write is lost.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from m3edge.memory.retrieval import MODES, TASK_TYPES
from m3edge.runtime.batcher import BatcherError, QueueFull, RequestTimeout


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_prompt_bytes: int = 8 * 1024
    max_generate_bytes: int = 1024
    max_search_k: int = 50


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def create_app(agent, limits: Limits = Limits()) -> Starlette:
    requests = Counter()
    lock = threading.Lock()

    async def read_json(request: Request, allowed: set[str]) -> dict:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            raise HTTPError(413, f"body is {size} bytes; the limit is {limits.max_body_bytes}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise HTTPError(413, f"body exceeds the limit of {limits.max_body_bytes} bytes")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"malformed JSON: {e}") from None
        if not isinstance(data, dict):
            raise HTTPError(422, "the body must be a JSON object")
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

    async def generate(request: Request):
        body = await read_json(request, {"prompt", "max_bytes", "temperature", "seed"} | RECALL)
        prompt = text_field(body, "prompt")
        n = field(body, "max_bytes", int, 64, lambda v: 0 <= v <= limits.max_generate_bytes,
                  f"an integer in [0, {limits.max_generate_bytes}]")
        temp = field(body, "temperature", (int, float), 0.0, lambda v: math.isfinite(v) and 0 <= v <= 10,
                     "a number in [0, 10]")
        seed = field(body, "seed", int, None, what="an integer")
        out = await run_in_threadpool(lambda: agent.generate(prompt, n, float(temp), seed, **recall_fields(body)))
        return {"text": out.decode("utf-8", errors="replace"), "bytes": len(out), "memories": len(agent.memory)}

    async def step(request: Request):
        body = await read_json(request, {"context", "top"} | RECALL)
        context = text_field(body, "context")
        top = field(body, "top", int, 5, lambda v: 1 <= v <= 256, "an integer in [1, 256]")
        logits = await run_in_threadpool(lambda: agent.step(context, **recall_fields(body)))
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = np.argsort(-p, kind="stable")[:top]
        return {"top": [{"byte": int(b), "char": chr(b) if 32 <= b < 127 else None, "p": float(p[b])} for b in best],
                "logits": [float(v) for v in logits]}

    async def memory_search(request: Request):
        body = await read_json(request, {"query", "k"})
        query = text_field(body, "query")
        k = field(body, "k", int, 5, lambda v: 1 <= v <= limits.max_search_k, f"an integer in [1, {limits.max_search_k}]")
        return {"results": await run_in_threadpool(agent.search_memory, query, k)}

    async def healthz(request: Request):
        return {"status": "ok", "memories": len(agent.memory), "batching": agent.batcher is not None}

    async def metrics(request: Request):
        return PlainTextResponse(prometheus(agent, dict(requests)), media_type="text/plain; version=0.0.4")

    def endpoint(fn, path):
        async def handler(request: Request):
            try:
                result = await fn(request)
                status = 200
            except HTTPError as e:
                result, status = {"error": str(e)}, e.status
            except QueueFull as e:
                result, status = {"error": str(e)}, 503
            except RequestTimeout as e:
                result, status = {"error": str(e)}, 504
            except (ValueError, BatcherError) as e:
                result, status = {"error": str(e)}, 422 if isinstance(e, ValueError) else 503
            except Exception as e:  # the client gets one line; the server keeps serving
                result, status = {"error": f"internal error: {type(e).__name__}"}, 500
            with lock:
                requests[(path, status)] += 1
            if isinstance(result, PlainTextResponse):
                return result
            return JSONResponse(result, status_code=status)
        return handler

    routes = [Route("/v1/generate", endpoint(generate, "/v1/generate"), methods=["POST"]),
              Route("/v1/step", endpoint(step, "/v1/step"), methods=["POST"]),
              Route("/v1/memory/search", endpoint(memory_search, "/v1/memory/search"), methods=["POST"]),
              Route("/healthz", endpoint(healthz, "/healthz"), methods=["GET"]),
              Route("/metrics", endpoint(metrics, "/metrics"), methods=["GET"])]

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        agent.close()  # drain the batcher, stop prefetching, save the memory

    return Starlette(routes=routes, lifespan=lifespan)


def prometheus(agent, requests: dict) -> str:
    lines = []

    def metric(name, kind, help_, samples):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    metric("m3edge_http_requests_total", "counter", "HTTP requests by path and status.",
           [({"path": p, "code": c}, n) for (p, c), n in sorted(requests.items())])
    if agent.batcher is not None:
        m = agent.batcher.metrics()
        for key, kind, help_ in [("inference_count", "counter", "Requests executed by the batcher."),
                                 ("execution_count", "counter", "Batches executed."),
                                 ("queue_time_us_total", "counter", "Microseconds requests spent queued."),
                                 ("compute_time_us_total", "counter", "Microseconds spent computing batches."),
                                 ("rejected_count", "counter", "Requests rejected because the queue was full."),
                                 ("timeout_count", "counter", "Requests rejected after their queue timeout."),
                                 ("pending", "gauge", "Requests queued now.")]:
            metric(f"m3edge_batcher_{key}", kind, help_, [({}, m[key])])
    c = agent.executor.cache.stats
    metric("m3edge_expert_cache_hits_total", "counter", "Expert cache hits.", [({}, c.hits)])
    metric("m3edge_expert_cache_misses_total", "counter", "Expert cache misses.", [({}, c.misses)])
    metric("m3edge_expert_cache_evictions_total", "counter", "Expert cache evictions.", [({}, c.evictions)])
    metric("m3edge_memories", "gauge", "Memories in the long-term store.", [({}, len(agent.memory))])
    return "\n".join(lines) + "\n"
