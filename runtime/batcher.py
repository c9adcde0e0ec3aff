"""DynamicBatcher: many callers submit single items, one worker thread runs them through ``fn`` in batches.

Modelled on NVIDIA Triton Inference Server's dynamic batcher (``dynamic_batching`` in a model's
config.pbtxt: ``preferred_batch_size``, ``max_queue_delay_microseconds``, ``preserve_ordering``,
``default_queue_policy`` with ``max_queue_size``, ``default_timeout_microseconds`` and the REJECT
timeout action). Standard library only.

Scheduling rule
---------------
Preferred sizes are capped by ``max_batch_size``; the *target* is the largest of them (``max_batch_size``
when none are given).

1. The worker sleeps on a condition variable until the queue holds at least the target, or until
   ``max_queue_delay_ms`` has passed since the OLDEST queued request arrived or the worker last became
   free, whichever is later. It also wakes at the nearest request deadline, so a timed-out request is
   rejected on time, as Triton does. Right after a batch the target is at most the requests then queued
   plus the ones just answered: callers in a loop come straight back, so once they have, nobody else is
   known to be coming and waiting longer only adds latency.
2. On every wake-up, requests past their timeout are taken out of the queue and failed with
   ``RequestTimeout`` (and cancelled futures are dropped); they never reach ``fn``.
3. Then it takes everything queued, up to ``max_batch_size``, from the front of the queue (Triton's
   behaviour when the delay expires). The runtime pads a batch to its next token bucket anyway, so
   cutting it down to a preferred size would only make the rest wait another delay.
4. ``fn(items)`` runs outside the lock. If it raises, or returns the wrong number of results, every
   future of that batch fails and the worker carries on.

Where this differs from Triton: Triton executes a batch as soon as the queue fills *any* preferred size
(so a preferred size of 1 means no waiting at all). Here the worker holds out for the largest preferred
size or the delay: an MoE batch costs more with every distinct expert it touches, not per row, so larger
batches are where the savings are. And the delay clock does not run while the worker is busy: time spent
behind a running batch is not time chosen for batching. Counting it split 16 closed-loop callers into two
cohorts of 8 for good (a batch outlasting the delay left the other half "expired" every time the worker
freed); waiting up to the delay after the worker frees lets the callers it just answered rejoin, and no
longer than that (the target above). A request still waits at most the delay plus the batch ahead of it,
so p99 stays within delay + 2 x compute.

Ordering: one worker runs FIFO batches, so results always complete in submission order. With
``preserve_ordering`` a rejection (timeout, ``close(drain=False)``) is held back too, until every earlier
request has completed, as Triton holds responses; without it a rejection is delivered at once.

Statistics follow Triton's: ``inference_count``, ``execution_count``, the batch histogram and the
queue/compute times cover successful batches; the items of a failed batch count in ``failure_count``.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class BatcherConfig:
    """Dynamic batching settings, as Triton names them: ``EdgeAgent.enable_batching(BatcherConfig(...))``."""

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    max_queue_delay_ms: float = 5.0  # wait at most this long after the OLDEST queued request
    max_queue_size: int = 256  # beyond this, submit raises QueueFull and queues nothing
    timeout_ms: float | None = None  # default per-request queue timeout (Triton's REJECT action)
    preserve_ordering: bool = True  # rejections, too, complete in submission order

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if any(int(p) != p or p < 1 for p in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes must be positive integers, got {self.preferred_batch_sizes}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.timeout_ms is not None and self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0 or None, got {self.timeout_ms}")


class BatcherError(RuntimeError):
    pass


class QueueFull(BatcherError):
    pass


class RequestTimeout(BatcherError):
    pass


class BatcherClosed(BatcherError):
    pass


@dataclass(eq=False)
class _Request:
    seq: int  # submission order; rejections are merged back into it
    item: Any
    future: Future
    arrival: float  # time.monotonic()
    timeout_ms: float | None
    deadline: float | None
    error: BaseException | None = None
    result: Any = field(default=None, repr=False)


class DynamicBatcher:
    def __init__(self, fn: Callable[[list], Sequence], config: BatcherConfig = BatcherConfig(),
                 name: str = "batcher"):
        self.fn = fn
        self.config = config
        self.name = name
        self._preferred = sorted({min(int(p), config.max_batch_size) for p in config.preferred_batch_sizes})
        self._target = self._preferred[-1] if self._preferred else config.max_batch_size
        self._delay_s = config.max_queue_delay_ms / 1000.0
        self._free_at = -math.inf  # when the worker last finished delivering a batch; worker-only
        self._expect = math.inf  # after a batch: requests queued then plus those it answered (who may be back)

        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        # Rejected requests waiting for their turn in submission order, as (seq, request); worker-only.
        self._rejections: list[tuple[int, _Request]] = []
        self._seq = 0
        self._closed = False
        self._abort = False  # close(drain=False): fail what is queued instead of running it

        self._inference_count = 0
        self._execution_count = 0
        self._queue_time_s = 0.0
        self._compute_time_s = 0.0
        self._rejected_count = 0
        self._timeout_count = 0
        self._failure_count = 0
        self._histogram: dict[int, int] = {}

        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ front

    def submit(self, item, timeout_ms: float | None = None) -> Future:
        """Queue one item; the future resolves to fn's result for it. Raises QueueFull or BatcherClosed."""
        timeout_ms = self.config.timeout_ms if timeout_ms is None else timeout_ms
        if timeout_ms is not None and timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0 or None, got {timeout_ms}")
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self.name} is closed")
            if len(self._queue) >= self.config.max_queue_size:
                self._rejected_count += 1
                raise QueueFull(f"{self.name}: queue is full ({len(self._queue)} requests queued, "
                                f"max_queue_size={self.config.max_queue_size})")
            now = time.monotonic()
            deadline = None if timeout_ms is None else now + timeout_ms / 1000.0
            self._queue.append(_Request(self._seq, item, fut, now, timeout_ms, deadline))
            self._seq += 1
            # The worker's decision only changes when the first request starts the delay clock or the
            # queue reaches the target (or the callers it just answered are back); waking it on every
            # submit would just make it sleep again.
            # A deadline earlier than its planned wake-up must also wake it, to reject that request on time.
            early = deadline is not None and deadline < self._wake_at
            if len(self._queue) == 1 or len(self._queue) >= min(self._target, self._expect) or early:
                self._cond.notify()
        return fut

    def __call__(self, item, timeout_ms: float | None = None):
        return self.submit(item, timeout_ms).result()

    async def asubmit(self, item, timeout_ms: float | None = None):
        return await asyncio.wrap_future(self.submit(item, timeout_ms))

    def metrics(self) -> dict:
        with self._cond:
            return {
                "inference_count": self._inference_count,
                "execution_count": self._execution_count,
                "avg_batch_size": self._inference_count / self._execution_count if self._execution_count else 0.0,
                "queue_time_us_total": round(self._queue_time_s * 1e6),
                "compute_time_us_total": round(self._compute_time_s * 1e6),
                "rejected_count": self._rejected_count,
                "timeout_count": self._timeout_count,
                "failure_count": self._failure_count,
                "pending": len(self._queue),
                "max_batch_observed": max(self._histogram, default=0),
                "batch_size_histogram": dict(sorted(self._histogram.items())),
            }

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests. drain=True runs what is queued first; drain=False fails it with
        BatcherClosed. Either way a batch already inside fn finishes. Waits up to `timeout` seconds for
        the worker; a later close(drain=False) can cut a drain short."""
        with self._cond:
            self._closed = True
            self._abort = self._abort or not drain
            self._cond.notify_all()
        # fn may close its own batcher; the worker cannot wait for itself.
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------- worker

    def _worker(self) -> None:
        while True:
            with self._cond:
                batch, stop = self._next_batch()
                # Rejections older than the oldest still-queued request can now go out in order.
                head = self._queue[0].seq if self._queue and self.config.preserve_ordering else math.inf
            if batch:
                self._execute(batch)
                with self._cond:  # counted before delivery: an answered caller may be back at once
                    self._expect = len(self._queue) + len(batch)
            self._deliver(batch, head)
            if batch:
                self._free_at = time.monotonic()
            if stop:
                return

    def _next_batch(self) -> tuple[list[_Request], bool]:
        """Under the lock: wait per the scheduling rule, return (batch, stop). An empty batch without stop
        means rejections are ready to deliver; that happens outside the lock, so the worker returns."""
        while True:
            now = time.monotonic()
            self._reject_expired(now)
            if self._abort:
                while self._queue:
                    closed = BatcherClosed(f"{self.name} was closed before the request ran")
                    self._reject(self._queue.popleft(), closed)
            q = self._queue
            if not q:
                if self._closed:
                    return [], True
                if self._rejections:
                    return [], False
                self._wake_at = math.inf
                self._cond.wait()
                continue
            if self._rejections and (not self.config.preserve_ordering or self._rejections[0][0] < q[0].seq):
                return [], False
            due = max(q[0].arrival, self._free_at) + self._delay_s
            # Once closed nothing more can arrive, so waiting for a fuller batch is pointless.
            if len(q) >= min(self._target, self._expect) or now >= due or self._closed:
                self._expect = math.inf  # only the first batch after a free is sized by who was answered
                batch = self._take(q)
                if batch:
                    return batch, False
                continue
            self._wake_at = min([due] + [r.deadline for r in q if r.deadline is not None])
            self._cond.wait(max(0.0, self._wake_at - now))

    def _take(self, q: deque[_Request]) -> list[_Request]:
        batch = []
        for _ in range(min(len(q), self.config.max_batch_size)):
            r = q.popleft()
            # Claims the future: once RUNNING a caller can no longer cancel it; a cancelled one is dropped.
            if r.future.set_running_or_notify_cancel():
                batch.append(r)
        return batch

    def _reject_expired(self, now: float) -> None:
        if not any(r.future.cancelled() or (r.deadline is not None and now >= r.deadline) for r in self._queue):
            return
        keep: deque[_Request] = deque()
        for r in self._queue:
            if r.future.cancelled():
                r.future.set_running_or_notify_cancel()  # lets concurrent.futures.wait() see it as done
            elif r.deadline is not None and now >= r.deadline:
                self._timeout_count += 1
                waited = (now - r.arrival) * 1000.0
                self._reject(r, RequestTimeout(f"{self.name}: request waited {waited:.1f} ms in the queue, "
                                               f"past its timeout of {r.timeout_ms:g} ms"))
            else:
                keep.append(r)
        self._queue = keep

    def _reject(self, r: _Request, error: BaseException) -> None:
        if r.future.set_running_or_notify_cancel():
            r.error = error
            heapq.heappush(self._rejections, (r.seq, r))

    def _execute(self, batch: list[_Request]) -> None:
        items = [r.item for r in batch]
        start = time.monotonic()
        error: BaseException | None = None
        try:
            out = self.fn(items)
        except BaseException as e:  # a future left pending forever is worse than any exception type
            error = e
        else:
            try:
                results = list(out)
            except TypeError:
                results = None
            if results is None or len(results) != len(items):
                got = "a non-sequence" if results is None else f"{len(results)} results"
                error = BatcherError(f"{self.name}: fn returned {got} for a batch of {len(items)} items")
        elapsed = time.monotonic() - start
        for i, r in enumerate(batch):
            if error is None:
                r.result = results[i]
            else:
                r.error = error
        with self._cond:
            if error is not None:
                self._failure_count += len(batch)
                return
            self._inference_count += len(batch)
            self._execution_count += 1
            self._histogram[len(batch)] = self._histogram.get(len(batch), 0) + 1
            self._queue_time_s += sum(start - r.arrival for r in batch)
            self._compute_time_s += elapsed

    def _deliver(self, batch: list[_Request], head: float) -> None:
        """Resolve futures outside the lock (their callbacks may call submit) and in submission order."""
        done = list(batch)
        while self._rejections and self._rejections[0][0] < head:
            done.append(heapq.heappop(self._rejections)[1])
        done.sort(key=lambda r: r.seq)
        for r in done:
            if r.error is not None:
                r.future.set_exception(r.error)
            else:
                r.future.set_result(r.result)
