"""ExpertCache: (layer, expert) -> the expert's loaded graphs, bounded in experts or in bytes.

Eviction policies are a registry (``POLICIES``): LRU and LFU. Published MoE-offloading work found that
expert access often lacks temporal locality, so the choice is measured, not assumed: on the small
reference LFU wins (``m3edge bench``, README), and ``EdgeAgent`` defaults to it. Pinned experts are never evicted. ``prefetch`` loads experts in a background thread;
a key being loaded is loaded once, whoever asks first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Hashable


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    load_ms: float = 0.0
    prefetched: int = 0
    prefetch_hits: int = 0  # hits on entries that a prefetch loaded

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"hit_rate": self.hit_rate}


class LRUPolicy:
    def __init__(self):
        self.order: OrderedDict = OrderedDict()

    def touch(self, key):
        self.order[key] = None
        self.order.move_to_end(key)

    insert = touch  # a prefetched entry is as recent as a used one

    def remove(self, key):
        self.order.pop(key, None)

    def victim(self, candidates: set):
        return next(k for k in self.order if k in candidates)


class LFUPolicy:
    """Least frequently used; counts survive eviction, so a returning hot expert keeps its rank.
    Ties go to the least recently used."""

    def __init__(self):
        self.count: dict = {}
        self.tick = 0
        self.last: dict = {}

    def touch(self, key):
        self.count[key] = self.count.get(key, 0) + 1
        self.tick += 1
        self.last[key] = self.tick

    def insert(self, key):
        """Resident but not yet used (a prefetch): no frequency credit."""
        self.count.setdefault(key, 0)
        self.tick += 1
        self.last[key] = self.tick

    def remove(self, key):
        self.last.pop(key, None)

    def victim(self, candidates: set):
        return min(candidates, key=lambda k: (self.count.get(k, 0), self.last.get(k, 0)))


POLICIES: dict[str, Callable[[], object]] = {"lru": LRUPolicy, "lfu": LFUPolicy}

# How ``prefetch`` loads: "thread" in a background thread, overlapping the decoding thread's compute; "inline"
# at once in the caller's thread. With loads of ~40 us (experts as weights) and the GIL, a background thread
# on 2 cores stalls the decoding thread more than it hides (README: expert cache).
PREFETCH = ("thread", "inline")


class ExpertCache:
    """``loader(key) -> (value, bytes)``. Capacity: ``max_items`` experts and/or ``max_bytes``."""

    def __init__(self, loader: Callable[[Hashable], tuple[object, int]], max_items: int | None = None,
                 max_bytes: int | None = None, policy: str = "lfu", prefetch: str = "thread"):
        if policy not in POLICIES:
            raise ValueError(f"unknown cache policy {policy!r}; choose from {', '.join(POLICIES)}")
        if prefetch not in PREFETCH:
            raise ValueError(f"unknown prefetch mode {prefetch!r}; choose from {', '.join(PREFETCH)}")
        self.prefetch_mode = prefetch
        if max_items is not None and max_items < 1:
            raise ValueError("cache capacity must be at least one expert")
        self.loader = loader
        self.max_items, self.max_bytes = max_items, max_bytes
        self.policy = POLICIES[policy]()
        self.stats = CacheStats()
        self._items: dict = {}
        self._sizes: dict = {}
        self._pinned: set = set()
        self._from_prefetch: set = set()
        self._loading: dict[Hashable, Future] = {}
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self._items)

    def unbounded(self) -> None:
        """Keep every expert once loaded: no limit in experts or bytes (benchmarks of everything else)."""
        self.max_items = self.max_bytes = None

    def holds(self, items: int, nbytes: int) -> bool:
        """Whether ``items`` entries of ``nbytes`` in all fit within the capacity."""
        return ((self.max_items is None or self.max_items >= items)
                and (self.max_bytes is None or self.max_bytes >= nbytes))

    def __contains__(self, key) -> bool:
        return key in self._items

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def get(self, key):
        with self._lock:
            if key in self._items:
                self.stats.hits += 1
                if key in self._from_prefetch:
                    self.stats.prefetch_hits += 1
                    self._from_prefetch.discard(key)
                self.policy.touch(key)
                return self._items[key]
            self.stats.misses += 1
            fut = self._loading.get(key)
            # A prefetch still queued behind others is cancelled and loaded here: waiting would cost the loads
            # queued before it too. One already running is waited for.
            mine = fut is None or fut.cancel()
            if mine:  # we load it; anyone else asking meanwhile waits on this future
                fut = self._loading[key] = Future()
        if mine:
            try:
                value = self._load(key)
                fut.set_result(value)
            except BaseException as e:
                fut.set_exception(e)
                raise
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        else:
            value = fut.result()
        with self._lock:
            self._from_prefetch.discard(key)
            self.policy.touch(key)
        return value

    def _load(self, key, prefetched: bool = False):
        t0 = time.perf_counter()
        value, size = self.loader(key)
        with self._lock:
            self.stats.load_ms += (time.perf_counter() - t0) * 1e3
            if key not in self._items:
                self._items[key], self._sizes[key] = value, size
                self.policy.insert(key)
                if prefetched:
                    self.stats.prefetched += 1
                    self._from_prefetch.add(key)
                self._evict(keep=key)
            return self._items[key]

    def _over(self) -> bool:
        return ((self.max_items is not None and len(self._items) > self.max_items)
                or (self.max_bytes is not None and self.bytes > self.max_bytes))

    def _evict(self, keep) -> None:
        while self._over():
            candidates = set(self._items) - self._pinned - {keep}
            if not candidates:
                break
            victim = self.policy.victim(candidates)
            del self._items[victim]
            del self._sizes[victim]
            self._from_prefetch.discard(victim)
            self.policy.remove(victim)
            self.stats.evictions += 1

    def pin(self, keys) -> None:
        """Keep these resident (loading them now); pinned entries count toward capacity."""
        for k in keys:
            with self._lock:
                self._pinned.add(k)
            if k not in self._items:
                self._load(k)

    def prefetch(self, keys) -> list[Future]:
        """Load ``keys`` ahead of need (in the background, or now when inline); resident or loading keys are
        skipped."""
        futures = []
        if not keys:
            return futures
        # Most likely first: more than the cache holds would evict the likeliest for the least likely.
        keys = list(keys)[: self.max_items]
        if self.prefetch_mode == "inline":
            for k in keys:
                if k not in self._items and k not in self._loading:
                    self._load(k, prefetched=True)
            return futures
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3edge-prefetch")
            for k in keys:
                if k in self._items or k in self._loading:
                    continue
                fut = self._pool.submit(self._prefetch_one, k)
                self._loading[k] = fut
                futures.append(fut)
        return futures

    def _prefetch_one(self, key):
        try:
            return self._load(key, prefetched=True)
        finally:
            with self._lock:
                self._loading.pop(key, None)

    def wait(self) -> None:
        """Block until every prefetch started so far has finished."""
        with self._lock:
            futures = list(self._loading.values())
        for f in futures:
            f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
