"""Running the app on uvicorn with the protections a device on a network needs (issue 19).

- **Busy port**: the listening socket is bound here, before anything starts, so a port in use is one line and
  exit 2 (``PortInUse``), not a started-then-failed server.
- **Connections bounded below the file limit**: ``max_connections`` defaults to the soft ``RLIMIT_NOFILE`` minus
  the descriptors already open (bundle files, the memory store) minus headroom, so ``accept`` never fails with
  EMFILE. When a new connection would pass the bound, the oldest connection that is not being answered (no
  complete request head yet, a body still arriving, or idle between keep-alive requests) is closed for it; a
  connection whose request is being answered is never shed. So slow clients cannot starve ``/healthz``.
- **Header and body timeouts**: a connection that has not sent a whole request head within
  ``header_timeout_s`` is closed; the app gives a body ``body_timeout_s`` (408); idle keep-alive connections
  close after ``timeout_keep_alive``; a request head over ``h11_max_incomplete_event_size`` is a 400.
  uvicorn's ``limit_concurrency`` (plain-text 503) sits one above the connection bound as a backstop only.
- **A bounded log**: uvicorn's and asyncio's per-connection messages (invalid requests, accept errors, reset
  connections) are one line per kind per ``log_interval_s``, with a count of those suppressed, never a
  traceback per connection.
- **Graceful stop**: SIGTERM or SIGINT refuses new work at once (503; the listening socket closes), gives
  in-flight generations until ``grace_s`` (the shutdown timeout less one second), cancels the rest at their
  next step (they answer with what they have, ``finish_reason: "cancelled"``), drains the batcher, saves the
  memory and exits 0, within ``shutdown_timeout_s`` of the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from m3edge.errors import BadInput

log = logging.getLogger("m3edge.serve")


class PortInUse(BadInput):
    pass


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    backlog: int = 128  # the kernel's queue of connections not yet accepted
    max_connections: int | None = None  # default: derived from the file limit (module docstring)
    header_timeout_s: float = 10.0
    timeout_keep_alive: float = 5.0
    h11_max_incomplete_event_size: int = 16 * 1024
    shutdown_timeout_s: float = 5.0
    log_interval_s: float = 10.0

    @property
    def grace_s(self) -> float:
        """How long in-flight generations may run after SIGTERM: the shutdown timeout minus what the rest of the
        stop takes (the cancelled steps finishing, the batcher draining, the memory saved, the process exiting:
        measured 1.0-1.2 s with 64 generations on a loaded 2-core host), so the process is gone within the
        timeout."""
        return self.shutdown_timeout_s - 1.0 if self.shutdown_timeout_s >= 2 else self.shutdown_timeout_s / 2


def derive_max_connections(headroom: int = 32) -> int:
    """Connections that fit under the soft file limit next to what is open now (bundle, memory store)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 64
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(4, min(4096, soft - used - headroom))


class RateLimit(logging.Filter):
    """One record per kind (its message template) per interval, with how many were dropped, no traceback."""

    def __init__(self, interval_s: float):
        super().__init__()
        self.interval_s = interval_s
        self.last: dict[str, float] = {}
        self.dropped: dict[str, int] = {}
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = f"{record.name}:{record.msg}"
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(kind, -1e18) < self.interval_s:
                self.dropped[kind] = self.dropped.get(kind, 0) + 1
                return False
            self.last[kind] = now
            dropped = self.dropped.pop(kind, 0)
        text = record.getMessage().strip()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        if dropped:
            text += f" ({dropped} more like this in the last {self.interval_s:g} s)"
        record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = text, (), None, None, None
        return True


def bounded_logging(interval_s: float) -> RateLimit:
    limit = RateLimit(interval_s)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(limit)
    for name in ("uvicorn", "uvicorn.error", "asyncio", "m3edge.serve"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(logging.WARNING)
    return limit


def loop_exception_handler(loop, context) -> None:
    """asyncio's per-connection errors (EMFILE on accept, resets) through the rate-limited logger."""
    exc = context.get("exception")
    kind = context.get("message", "asyncio error")
    log.warning("%s%s", kind, f": {type(exc).__name__}: {exc}" if exc else "")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and connection shedding (module docstring)."""

    max_connections = 1024
    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.opened_at = time.monotonic()
        self.head_timer = self.loop.call_later(self.header_timeout_s, self.head_timed_out)
        if len(self.connections) > self.max_connections:
            self.shed()

    def idle(self) -> bool:
        """Not being answered: no request head yet, a body still arriving, or between keep-alive requests."""
        c = self.cycle
        if c is None or c.response_complete:
            return True
        return not c.response_started and self.conn.their_state is h11.SEND_BODY

    def shed(self) -> None:
        others = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol)
                  and not c.transport.is_closing() and c.idle()]
        victim = min(others, key=lambda c: c.opened_at) if others else self
        log.warning("connection limit (%d) reached: closed the oldest idle or slow connection", self.max_connections)
        # Out of the count now, not when its close completes (a later loop turn): uvicorn's limit_concurrency,
        # one above the bound, would otherwise answer the very next request 503 (seen under load).
        self.connections.discard(victim)
        victim.transport.close()

    def head_timed_out(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            log.warning("closed a connection that sent no complete request head within %g s", self.header_timeout_s)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def connection_lost(self, exc) -> None:
        if getattr(self, "head_timer", None) is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose stop refuses new work, cancels in-flight generations at the deadline and exits 0
    (uvicorn re-raises the signal after its shutdown, which makes the exit status -SIGTERM)."""

    def __init__(self, config: uvicorn.Config, app, grace_s: float):
        super().__init__(config)
        self.m3_app = app
        self.grace_s = grace_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested = False

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(loop_exception_handler)
        await super().startup(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        self.should_exit = True
        if not self.stop_requested and self.loop is not None:
            self.stop_requested = True
            self.loop.call_soon_threadsafe(self.m3_app.state.stop, self.grace_s)


def bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use (another server is listening there)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise BadInput(f"cannot bind {host}: not an address of this machine") from None
        raise BadInput(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def serve(app, cfg: ServeConfig, on_ready=None) -> None:
    """Bind, then serve ``app`` until SIGTERM/SIGINT; returns after the graceful stop."""
    sock = bind(cfg.host, cfg.port, cfg.backlog)
    bounded_logging(cfg.log_interval_s)
    max_conn = cfg.max_connections or derive_max_connections()
    protocol = type("Guarded", (GuardedH11Protocol,), {"max_connections": max_conn,
                                                        "header_timeout_s": cfg.header_timeout_s})
    config = uvicorn.Config(app, http=protocol, log_config=None, log_level="warning", access_log=False,
                            backlog=cfg.backlog, timeout_keep_alive=cfg.timeout_keep_alive,
                            h11_max_incomplete_event_size=cfg.h11_max_incomplete_event_size,
                            limit_concurrency=max_conn + 1, timeout_graceful_shutdown=cfg.shutdown_timeout_s)
    server = GracefulServer(config, app, cfg.grace_s)
    if on_ready is not None:
        on_ready(sock.getsockname()[1], max_conn)
    server.run(sockets=[sock])
