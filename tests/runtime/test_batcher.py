"""DynamicBatcher: correctness under concurrency, Triton-style limits, timeouts, failures, shutdown, asyncio."""

import asyncio
import threading
import time

import pytest

from m3edge.runtime.batcher import (BatcherClosed, BatcherConfig, BatcherError, DynamicBatcher, QueueFull,
                                    RequestTimeout)

LONG = 60_000.0  # a queue delay no test waits for (results time out first): a size or close triggers the batch


class Gate:
    """fn that blocks on its first batch until released, so tests can pile up a queue behind it."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list] = []

    def __call__(self, items):
        self.batches.append(list(items))
        if not self.release.is_set():
            self.entered.set()
            assert self.release.wait(10)
        return [("ok", x) for x in items]

    def seen(self):
        return [x for b in self.batches for x in b]


def start_blocked(b, gate, item="first"):
    fut = b.submit(item)
    assert gate.entered.wait(10)
    return fut


def test_threads_get_their_own_results_in_order():
    n_threads, per_thread = 32, 40
    cfg = BatcherConfig(max_batch_size=16, preferred_batch_sizes=(4, 8, 16), max_queue_delay_ms=2,
                        max_queue_size=n_threads * per_thread)
    calls = []

    def fn(items):
        calls.append(len(items))
        return [("done", t, s) for t, s in items]

    results: dict[int, list] = {}
    completed: dict[int, list] = {t: [] for t in range(n_threads)}
    barrier = threading.Barrier(n_threads)

    with DynamicBatcher(fn, cfg, name="t-batcher") as b:
        def client(t):
            barrier.wait()
            futs = []
            for s in range(per_thread):
                f = b.submit((t, s))
                f.add_done_callback(lambda _, s=s: completed[t].append(s))
                futs.append(f)
            results[t] = [f.result(timeout=10) for f in futs]

        threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(20)
        assert not any(th.is_alive() for th in threads)
        m = b.metrics()

    for t in range(n_threads):
        assert results[t] == [("done", t, s) for s in range(per_thread)]
        assert completed[t] == list(range(per_thread))  # futures resolved in submission order
    total = n_threads * per_thread
    assert m["inference_count"] == total == sum(calls)
    assert m["execution_count"] == len(calls) < total
    assert m["avg_batch_size"] == pytest.approx(total / len(calls))
    assert max(calls) <= 16 and m["max_batch_observed"] == max(calls)
    assert sum(k * v for k, v in m["batch_size_histogram"].items()) == total
    assert m["pending"] == 0 and m["failure_count"] == m["timeout_count"] == m["rejected_count"] == 0
    assert m["queue_time_us_total"] > 0 and m["compute_time_us_total"] >= 0


def test_worker_is_a_daemon_thread_named_after_the_batcher():
    with DynamicBatcher(lambda xs: xs, name="my-batcher") as b:
        assert b(3) == 3
        assert any(t.name == "my-batcher" and t.daemon for t in threading.enumerate())


def test_batch_size_cap_and_queue_full():
    gate = Gate()
    cfg = BatcherConfig(max_batch_size=4, preferred_batch_sizes=(2, 4, 64), max_queue_delay_ms=1,
                        max_queue_size=10)
    with DynamicBatcher(gate, cfg) as b:
        first = start_blocked(b, gate)
        queued = [b.submit(i) for i in range(10)]
        t0 = time.monotonic()
        for i in range(7):
            with pytest.raises(QueueFull, match=r"queue is full .*max_queue_size=10"):
                b.submit(100 + i)
        assert time.monotonic() - t0 < 5  # rejected at once, not after waiting for room
        m = b.metrics()
        assert m["rejected_count"] == 7 and m["pending"] == 10
        gate.release.set()
        assert first.result(10) == ("ok", "first")
        assert [f.result(10) for f in queued] == [("ok", i) for i in range(10)]
        m = b.metrics()
    assert all(len(batch) <= 4 for batch in gate.batches)
    assert m["max_batch_observed"] <= 4 and max(m["batch_size_histogram"]) <= 4
    assert m["inference_count"] == 11 and m["rejected_count"] == 7
    assert not any(isinstance(x, int) and x >= 100 for x in gate.seen())  # rejected items never ran


def test_preferred_size_runs_at_once_and_drain_takes_the_rest():
    calls = []

    def fn(items):
        calls.append(list(items))
        return items

    cfg = BatcherConfig(max_batch_size=8, preferred_batch_sizes=(2, 8), max_queue_delay_ms=LONG)
    b = DynamicBatcher(fn, cfg)
    futs = [b.submit(i) for i in range(8)]
    # The largest preferred size is reached, so the batch runs without waiting out the 10 s delay.
    assert [f.result(timeout=5) for f in futs] == list(range(8))
    futs = [b.submit(i) for i in range(3)]
    b.close(drain=True, timeout=10)
    assert [f.result(timeout=0) for f in futs] == [0, 1, 2]
    # 3 queued when draining: all of them in one batch (everything pending, up to max_batch_size).
    assert [len(c) for c in calls] == [8, 3]
    assert b.metrics()["batch_size_histogram"] == {3: 1, 8: 1}


def test_max_queue_delay_runs_a_lone_request():
    cfg = BatcherConfig(max_batch_size=8, preferred_batch_sizes=(8,), max_queue_delay_ms=20)
    with DynamicBatcher(lambda xs: [x * 2 for x in xs], cfg) as b:
        t0 = time.monotonic()
        assert b(21) == 42
        elapsed = time.monotonic() - t0
        assert 0.019 <= elapsed < 10  # it waited for company, then ran alone
        assert b.metrics()["batch_size_histogram"] == {1: 1}


def test_requests_queued_behind_a_running_batch_wait_for_the_callers_it_answers():
    """Closed-loop callers: three requests pile up behind a running batch for longer than the delay. When the
    batch returns, its caller comes straight back; the delay clock starts when the worker frees, so the
    waiting three are joined by it (one batch of the target 4) instead of running at once as an "expired"
    batch of 3, which is how 16 callers used to settle into two cohorts of 8 forever."""
    gate = Gate()
    cfg = BatcherConfig(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_ms=2_000)
    with DynamicBatcher(gate, cfg) as b:
        first = [b.submit(x) for x in range(4)]  # the target: runs at once, then blocks inside fn
        assert gate.entered.wait(10)
        rest = [b.submit(x) for x in ("a", "b", "c")]
        time.sleep(2.1)  # longer than the delay: by arrival time alone they are overdue

        def caller():  # one answered caller issues its next step as soon as it has the answer
            first[0].result(10)
            rest.append(b.submit("again"))

        t = threading.Thread(target=caller)
        t.start()
        gate.release.set()
        t.join(10)
        assert [f.result(10) for f in rest] == [("ok", x) for x in ("a", "b", "c", "again")]
    assert gate.batches == [[0, 1, 2, 3], ["a", "b", "c", "again"]]


def test_once_the_callers_it_answered_are_back_the_batch_runs_without_waiting_for_the_delay():
    """Four callers in a loop, a target of 64 they can never fill, and (after the first batch) a delay longer
    than the test's patience: each batch runs as soon as the four are queued again."""
    batches, enough = [], threading.Event()

    def fn(items):
        batches.append(list(items))
        b._delay_s = 60.0  # from now on only "the answered callers are back" can start a batch early
        if len(batches) >= 40:
            enough.set()
        return items

    b = DynamicBatcher(fn, BatcherConfig(max_batch_size=64, preferred_batch_sizes=(64,), max_queue_delay_ms=0))
    stop, together = threading.Event(), threading.Barrier(4)

    def caller(c):
        s = 0
        together.wait(10)
        while not stop.is_set():
            try:
                assert b.submit((c, s)).result(30) == (c, s)
            except BatcherClosed:  # it checked `stop` just before the test closed the batcher
                return
            s += 1

    ts = [threading.Thread(target=caller, args=(c,)) for c in range(4)]
    for t in ts:
        t.start()
    assert enough.wait(10)  # under a plain delay rule the second batch would still be waiting its 60 s
    stop.set()
    b.close()  # a caller that left is not coming back: closing runs what is still queued
    for t in ts:
        t.join(10)
    # A thread slow off the barrier misses the first batches; once all are in, every caller is in every batch.
    assert [len(batch) for batch in batches[30:40]] == [4] * 10


def test_timeouts_reject_waiting_requests_before_fn():
    gate = Gate()
    cfg = BatcherConfig(max_batch_size=8, preferred_batch_sizes=(), max_queue_delay_ms=1)
    with DynamicBatcher(gate, cfg) as b:
        first = start_blocked(b, gate)
        short = [b.submit(("short", i), timeout_ms=20) for i in range(5)]
        patient = [b.submit(("patient", i)) for i in range(3)]
        time.sleep(0.1)
        gate.release.set()
        assert first.result(10) == ("ok", "first")
        for f in short:
            with pytest.raises(RequestTimeout, match=r"waited \d+\.\d ms .*timeout of 20 ms"):
                f.result(10)
        assert [f.result(10) for f in patient] == [("ok", ("patient", i)) for i in range(3)]
        m = b.metrics()
    assert m["timeout_count"] == 5 and m["inference_count"] == 4
    assert not any(isinstance(x, tuple) and x[0] == "short" for x in gate.seen())


def test_default_timeout_from_config_and_prompt_rejection():
    cfg = BatcherConfig(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_ms=LONG, timeout_ms=20)
    seen = []
    with DynamicBatcher(lambda xs: seen.extend(xs) or xs, cfg) as b:
        t0 = time.monotonic()
        doomed = [b.submit(i) for i in range(3)]
        for f in doomed:
            with pytest.raises(RequestTimeout):
                f.result(timeout=5)  # the worker wakes at the deadline, not after the 10 s delay
        assert time.monotonic() - t0 < 5
        kept = [b.submit(i, timeout_ms=LONG) for i in range(4)]
        assert [f.result(timeout=5) for f in kept] == [0, 1, 2, 3]
        assert b.metrics()["timeout_count"] == 3
    assert seen == [0, 1, 2, 3]


@pytest.mark.parametrize("preserve", [True, False])
def test_rejections_respect_preserve_ordering(preserve):
    gate = Gate()
    cfg = BatcherConfig(max_batch_size=4, preferred_batch_sizes=(), max_queue_delay_ms=1,
                        preserve_ordering=preserve)
    order = []
    with DynamicBatcher(gate, cfg) as b:
        futs = [start_blocked(b, gate, 0), b.submit(1), b.submit(2, timeout_ms=20), b.submit(3)]
        for i, f in enumerate(futs):
            f.add_done_callback(lambda _, i=i: order.append(i))
        time.sleep(0.1)
        gate.release.set()
        with pytest.raises(RequestTimeout):
            futs[2].result(10)
        assert futs[3].result(10) == ("ok", 3)
    # Ordered, the timeout waits for request 1; unordered, it goes out as soon as the worker finds it.
    assert order == ([0, 1, 2, 3] if preserve else [0, 2, 1, 3])


def test_fn_raising_fails_only_that_batch():
    def fn(items):
        if "bad" in items:
            raise ValueError("boom")
        return [x.upper() for x in items]

    cfg = BatcherConfig(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_ms=LONG)
    with DynamicBatcher(fn, cfg) as b:
        failed = [b.submit(x) for x in ("a", "bad", "c", "d")]
        for f in failed:
            with pytest.raises(ValueError, match="boom"):
                f.result(10)
        ok = [b.submit(x) for x in "wxyz"]
        assert [f.result(10) for f in ok] == list("WXYZ")
        m = b.metrics()
    assert m["failure_count"] == 4 and m["inference_count"] == 4 and m["execution_count"] == 1


def test_wrong_number_of_results_is_a_batcher_error():
    cfg = BatcherConfig(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_ms=LONG)
    with DynamicBatcher(lambda xs: xs[:-1] if 0 in xs else xs, cfg) as b:
        futs = [b.submit(i) for i in range(4)]
        for f in futs:
            with pytest.raises(BatcherError, match="returned 3 results for a batch of 4"):
                f.result(10)
        ok = [b.submit(i) for i in range(4, 8)]
        assert [f.result(timeout=5) for f in ok] == [4, 5, 6, 7]  # the worker is still alive
        assert b.metrics()["failure_count"] == 4


def test_close_drain_runs_queued_items():
    seen = []
    cfg = BatcherConfig(max_batch_size=8, preferred_batch_sizes=(8,), max_queue_delay_ms=LONG)
    b = DynamicBatcher(lambda xs: seen.extend(xs) or [x + 1 for x in xs], cfg)
    futs = [b.submit(i) for i in range(3)]
    b.close(drain=True, timeout=10)
    assert [f.result(timeout=0) for f in futs] == [1, 2, 3] and seen == [0, 1, 2]
    with pytest.raises(BatcherClosed):
        b.submit(9)
    b.close()  # idempotent


def test_close_without_drain_fails_queued_items():
    seen = []
    cfg = BatcherConfig(max_batch_size=8, preferred_batch_sizes=(8,), max_queue_delay_ms=LONG)
    b = DynamicBatcher(lambda xs: seen.extend(xs) or xs, cfg)
    futs = [b.submit(i) for i in range(3)]
    b.close(drain=False, timeout=10)
    for f in futs:
        with pytest.raises(BatcherClosed):
            f.result(timeout=0)
    assert seen == []
    with pytest.raises(BatcherClosed):
        b(9)


def test_close_without_drain_lets_the_running_batch_finish():
    gate = Gate()
    b = DynamicBatcher(gate, BatcherConfig(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_ms=1))
    first = start_blocked(b, gate)
    queued = [b.submit(i) for i in range(3)]
    threading.Timer(0.05, gate.release.set).start()
    b.close(drain=False, timeout=10)
    assert first.result(timeout=0) == ("ok", "first")
    for f in queued:
        with pytest.raises(BatcherClosed):
            f.result(timeout=0)
    assert gate.seen() == ["first"]


def test_context_manager_closes():
    with DynamicBatcher(lambda xs: xs) as b:
        assert b("x") == "x"
    with pytest.raises(BatcherClosed):
        b.submit("y")


def test_cancelled_request_never_reaches_fn():
    gate = Gate()
    with DynamicBatcher(gate, BatcherConfig(max_batch_size=4, max_queue_delay_ms=1)) as b:
        start_blocked(b, gate)
        doomed, kept = b.submit("doomed"), b.submit("kept")
        assert doomed.cancel()
        gate.release.set()
        assert kept.result(10) == ("ok", "kept")
    assert "doomed" not in gate.seen()


def test_asubmit_from_asyncio_tasks():
    cfg = BatcherConfig(max_batch_size=16, preferred_batch_sizes=(4, 16), max_queue_delay_ms=5)

    async def main(b):
        return await asyncio.wait_for(asyncio.gather(*(b.asubmit(i) for i in range(100))), timeout=10)

    with DynamicBatcher(lambda xs: [x * x for x in xs], cfg) as b:
        assert asyncio.run(main(b)) == [i * i for i in range(100)]
        m = b.metrics()
    assert m["inference_count"] == 100 and m["execution_count"] < 100


def test_config_validation():
    with pytest.raises(ValueError):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(ValueError):
        BatcherConfig(preferred_batch_sizes=(0, 4))
    with pytest.raises(ValueError):
        BatcherConfig(timeout_ms=0)
    # Preferred sizes above max_batch_size are capped to it, so a small max works with the defaults.
    with DynamicBatcher(lambda xs: xs, BatcherConfig(max_batch_size=8, max_queue_delay_ms=LONG)) as b:
        futs = [b.submit(i) for i in range(8)]
        assert [f.result(timeout=5) for f in futs] == list(range(8))
