import threading
import time

import pytest

from m3edge.runtime.cache import ExpertCache


class Loader:
    def __init__(self, delay=0.0, size=10):
        self.calls = []
        self.delay, self.size = delay, size
        self.lock = threading.Lock()

    def __call__(self, key):
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(key)
        return f"graph{key}", self.size


def test_lru_evicts_least_recently_used():
    c = ExpertCache(Loader(), max_items=2, policy="lru")
    c.get(1), c.get(2), c.get(1), c.get(3)
    assert 2 not in c and 1 in c and 3 in c
    assert (c.stats.hits, c.stats.misses, c.stats.evictions) == (1, 3, 1)


def test_lfu_keeps_the_frequent_expert():
    c = ExpertCache(Loader(), max_items=2, policy="lfu")
    for _ in range(3):
        c.get(1)
    c.get(2), c.get(3), c.get(4)
    assert 1 in c and c.stats.evictions == 2


def test_byte_capacity_and_pinning():
    c = ExpertCache(Loader(size=40), max_bytes=100)
    c.pin([7])
    for k in range(5):
        c.get(k)
    assert 7 in c and c.bytes <= 100 and len(c) == 2
    assert c.get(7) == "graph7"


def test_unbounded_lifts_both_limits():
    c = ExpertCache(Loader(size=40), max_items=2, max_bytes=100)
    c.unbounded()
    for k in range(6):
        c.get(k)
    assert len(c) == 6 and c.bytes == 240 and c.stats.evictions == 0


def test_prefetch_loads_in_background_and_counts_its_hits():
    loader = Loader(delay=0.01)
    c = ExpertCache(loader, max_items=10)
    c.prefetch([1, 2, 2])
    c.wait()
    assert sorted(loader.calls) == [1, 2] and c.stats.prefetched == 2
    c.get(1)
    assert c.stats.prefetch_hits == 1 and c.stats.misses == 0
    c.close()


def test_a_key_loads_once_under_concurrency():
    loader = Loader(delay=0.02)
    c = ExpertCache(loader, max_items=10)
    c.prefetch([5])
    threads = [threading.Thread(target=c.get, args=(5,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == [5]
    c.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown cache policy"):
        ExpertCache(Loader(), policy="fifo")
    with pytest.raises(ValueError, match="at least one"):
        ExpertCache(Loader(), max_items=0)


def test_a_miss_being_loaded_is_not_loaded_again_by_prefetch():
    loader = Loader(delay=0.05)
    c = ExpertCache(loader, max_items=10)
    t = threading.Thread(target=c.get, args=(9,))
    t.start()
    time.sleep(0.01)
    c.prefetch([9])
    t.join()
    c.wait()
    assert loader.calls == [9]
    c.close()


def test_inline_prefetch_loads_now_and_counts_its_hits():
    loader = Loader()
    c = ExpertCache(loader, max_items=10, prefetch="inline")
    c.prefetch([1, 2, 2])
    assert loader.calls == [1, 2] and c.stats.prefetched == 2 and c._pool is None
    c.get(2)
    assert (c.stats.hits, c.stats.prefetch_hits, c.stats.misses) == (1, 1, 0)
    with pytest.raises(ValueError, match="unknown prefetch mode"):
        ExpertCache(loader, prefetch="eager")


def test_a_queued_prefetch_is_loaded_by_its_asker_not_waited_for():
    gate = threading.Event()
    calls = []

    def loader(key):
        if key == "slow":
            gate.wait(5)
        calls.append(key)
        return key, 1

    c = ExpertCache(loader, max_items=10)
    c.prefetch(["slow", "queued"])  # one worker: "queued" waits behind "slow"
    assert c.get("queued") == "queued"  # loaded here at once, while "slow" still blocks the worker
    assert calls == ["queued"] and c.stats.misses == 1
    gate.set()
    c.wait()
    assert sorted(calls) == ["queued", "slow"]  # "queued" was not loaded a second time
    c.close()
