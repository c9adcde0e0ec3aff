"""EdgeAgent: the torch-free agent on the device.

    agent = EdgeAgent.open("bundle/", memory_dir="mem/", options=RuntimeOptions(cache_experts=32))
    logits = agent.step(b"def main(")           # next-byte logits [256]
    text = agent.generate(b"import ", 64)        # bytes

``generate`` follows the torch agent's ``generate``: the prompt's experiences are stored, every step
reads long-term memory, and every produced byte is stored as an experience. Greedy output matches the
torch agent byte for byte on fp32 bundles (tests/runtime/test_runtime_agent.py).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from m3edge.bundle import open_bundle
from m3edge.data import windows as make_windows
from m3edge.runtime.cache import ExpertCache
from m3edge.runtime.engines import engine_dir
from m3edge.runtime.executor import BundleExecutor
from m3edge.backends import SessionConfig
from m3edge.memory.index import suffix_orders, window_hashes
from m3edge.memory.retrieval import Segment, check_mode, check_task, task_vector
from m3edge.memory.synaptic import unit
from m3edge.runtime.memory import LongTermMemory, memory_capacity
from m3edge.runtime.options import RuntimeOptions


@dataclass(frozen=True)
class Recall:
    """How a request retrieves: mode (hybrid | factual | experiential), task type, scene string."""

    mode: str = "hybrid"
    task: str = "general"
    scene: str = ""

    @classmethod
    def of(cls, mode: str = "hybrid", task: str = "general", scene: str = "") -> "Recall":
        """A checked Recall: raises ValueError naming an unknown mode or task, or a scene over 256 characters."""
        if not isinstance(scene, str) or len(scene) > 256:
            raise ValueError("scene must be a string of at most 256 characters")
        return cls(check_mode(mode), check_task(task), scene)

MAX_PROMPT = 1 << 20
MAX_GENERATE = 1 << 20


def as_bytes(value, what: str = "prompt") -> bytes:
    """``value`` as bytes: a str is UTF-8 encoded; anything but str or a bytes-like object is a ValueError."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ValueError(f"{what} must be bytes or str, got {type(value).__name__}")


class EdgeAgent:
    """A bundle running on this device: its graphs through onnxruntime or LiteRT, an expert cache, long-term memory.

    Open one with ``EdgeAgent.open(bundle_dir)`` (which verifies the bundle) and close it, or use it as a context
    manager, so that a ``memory_dir`` store is saved. Thread-safe: concurrent calls are serialised, or merged
    into batches after ``enable_batching``. Text goes in as str or bytes and comes out as bytes (a byte-level
    model may stop inside a UTF-8 character)."""

    def __init__(self, executor: BundleExecutor, memory: LongTermMemory, memory_dir: Path | None = None):
        self.executor = executor
        self.cfg = executor.cfg
        self.memory = memory
        self.memory_dir = memory_dir
        self.experts_used: list[set[int]] = [set() for _ in range(self.cfg.n_layers)]
        # Tokens routed to each (layer, expert) since open: the server's heatmap; kept beside experts_used.
        self.expert_counts = np.zeros((self.cfg.n_layers, self.cfg.n_experts), dtype=np.int64)
        self.generated_bytes = 0  # bytes yielded by every stream since open
        self.cancelled_streams = 0  # streams that stopped early on their cancel flag
        # One lock for the executor and the memory: concurrent callers (threads, the batcher's worker,
        # the server) see each request's reads and writes whole.
        self._lock = threading.RLock()
        self.batcher = None
        self.orders = suffix_orders(self.cfg.context)

    def enable_batching(self, config=None):
        """Merge concurrent single-window steps (``step`` and each ``generate`` step) into batches."""
        from m3edge.runtime.batcher import BatcherConfig, DynamicBatcher

        if self.batcher is None:
            self.batcher = DynamicBatcher(self._run_batch, config or BatcherConfig(), name="m3edge-batcher")
        return self.batcher

    def _run_batch(self, items: list[tuple[np.ndarray, bool, Recall]]) -> list[tuple]:
        """The batcher's function: one forward per kind of request (memory on/off, mode, task, scene) over every
        queued window of that kind, split back per request."""
        results: list = [None] * len(items)
        for kind in dict.fromkeys((m, r) for _, m, r in items):
            rows = [i for i, (_, m, r) in enumerate(items) if (m, r) == kind]
            logits, enc = self._forward(np.stack([items[i][0] for i in rows]), kind[0], kind[1])
            for j, i in enumerate(rows):
                results[i] = (logits[j:j + 1], tuple(None if a is None else a[j:j + 1] for a in enc))
        return results

    def _forward_one(self, window: np.ndarray, use_memory: bool, recall: "Recall"):
        if self.batcher is not None:
            return self.batcher((window[0], use_memory, recall))
        return self._forward(window, use_memory, recall)

    @classmethod
    def open(cls, bundle_dir, memory_dir=None, options: RuntimeOptions | None = None) -> "EdgeAgent":
        """Verify every file of the bundle, then set up sessions, the expert cache and the memory, as ``options``
        (``runtime/options.py``) say."""
        o = options if options is not None else RuntimeOptions()
        bundle = open_bundle(bundle_dir)
        if o.blas_threads is not None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(o.blas_threads, user_api="blas")  # process-wide, as the option says
        target = bundle.spec.target
        # The profile's threads, but never more than this machine's cores (a profile is data from elsewhere).
        threads = o.threads or min(target.threads, os.cpu_count() or target.threads)
        session = SessionConfig(threads=max(1, threads // o.expert_workers), strict=o.strict, target=target,
                                cache_dir=str(engine_dir(bundle_dir, o.engine_cache)))
        cache_experts, cache_bytes = o.cache_experts, o.cache_bytes
        if cache_experts is None and cache_bytes is None:
            cache_experts = target.expert_cache_size
            cache_bytes = int(target.expert_memory_budget_mb * 2 ** 20)
        n_layers = bundle.spec.model_config.n_layers
        # cache_experts counts experts kept loaded per layer, as the profile's expert_cache_size does.
        max_items = None if cache_experts is None else cache_experts * n_layers
        # Measured (README, expert cache): with prefetch LRU wins (a quarter of the experts: 61% hits against
        # 38%; LFU gives a prefetched expert no uses, so it is the first evicted), without it LFU (35% to 33%).
        cache = ExpertCache(None, max_items=max_items, max_bytes=cache_bytes, policy=o.cache_policy,
                            prefetch="thread" if o.prefetch == "off" else o.prefetch)
        executor = BundleExecutor(bundle, session, cache, prefetch=o.prefetch != "off", expert_workers=o.expert_workers,
                                  banks=o.banks)
        cfg = executor.cfg
        memory = LongTermMemory(cfg.d_model, cfg.memory_top_k, memory_capacity(target, cfg), clock=o.clock,
                                device=o.memory_device)
        if memory_dir is not None:
            memory.load(memory_dir)
        return cls(executor, memory, Path(memory_dir) if memory_dir is not None else None)

    def _windows(self, data: bytes, positions: np.ndarray) -> np.ndarray:
        return make_windows(np.frombuffer(data, dtype=np.uint8), positions, self.cfg.context)

    def _forward(self, windows: np.ndarray, use_memory: bool, recall: "Recall" = None, next_bytes=None):
        """One pass over windows; with memory, retrieval feeds the alignment and the reader. ``next_bytes``:
        the windows are consecutive positions of one text (a prompt), each row also reading the rows before it.
        Returns (logits or log-probs, (x, key, complexity, context_key, hashes, preference, values))."""
        recall = recall or Recall()
        with self._lock:
            ex = self.executor
            x, key, complexity, context_key = ex.encode(windows)
            hashes = window_hashes(windows, self.orders) if use_memory else None  # read and stored only with memory
            task = task_vector(recall.task)
            values = None
            if use_memory:
                seg = None
                if next_bytes is not None:
                    values = ex.experience(x, next_bytes)
                    seg = Segment(unit(key), context_key, next_bytes, hashes, values)
                read = self.memory.read(key, context_key, hashes, self.cfg.memory_read_k, recall.mode, recall.task,
                                        recall.scene, seg)
                logits, routed = ex.decode(x, read.context(self.cfg.memory_top_k), task, read)
            else:
                logits, routed = ex.decode(x, None, task)
            for layer, r in enumerate(routed):
                chosen = r.index[r.keep]
                self.experts_used[layer].update(np.unique(chosen).tolist())
                self.expert_counts[layer] += np.bincount(chosen.ravel(), minlength=self.cfg.n_experts)[:self.cfg.n_experts]
        return logits, (x, key, complexity, context_key, hashes, ex.last_preference, values)

    def _remember(self, logits: np.ndarray, enc, next_bytes: np.ndarray, recall: "Recall" = None,
                  defer: bool = False) -> None:
        recall = recall or Recall()
        x, key, complexity, context_key, hashes, preference, values = enc
        z = logits.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        logp = z[np.arange(len(next_bytes)), next_bytes] - np.log(np.exp(z).sum(-1))
        surprise = np.clip(-logp / math.log(self.cfg.vocab), 0, 1).astype(np.float32)
        with self._lock:
            value = self.executor.experience(x, next_bytes) if values is None else values
            self.memory.store(key, context_key, value, complexity, surprise, next_bytes.astype(np.int64), hashes,
                              preference.argmax(-1).astype(np.int64), recall.scene, recall.task, defer=defer)

    def step(self, context, use_memory: bool = True, mode: str = "hybrid", task: str = "general",
             scene: str = "") -> np.ndarray:
        """Next-byte scores [256] after ``context`` (reads memory, stores nothing): the reader's log-probs
        with memory on, the head's logits with it off."""
        data = as_bytes(context, "context")
        if len(data) > MAX_PROMPT:
            raise ValueError(f"context is {len(data)} bytes; the limit is {MAX_PROMPT}")
        logits, _ = self._forward_one(self._windows(data, np.array([len(data)])), use_memory, Recall.of(mode, task, scene))
        return logits[0]

    def stream(self, prompt, max_bytes: int, temperature: float = 0.0, seed: int | None = None,
               use_memory: bool = True, mode: str = "hybrid", task: str = "general", scene: str = "",
               cancel=None) -> Iterator[bytes]:
        """Continue ``prompt`` by up to ``max_bytes`` bytes, yielding each generated byte as it is produced
        (a ``bytes`` object of length 1; a multi-byte UTF-8 character arrives as several, so join or decode
        incrementally). Greedy at temperature 0, else sampled with ``seed``.

        With memory on (the default), the prompt is ingested in one batched pass (each of its bytes is
        predicted from memory and the prompt before it, then stored), every step reads long-term memory through
        the reader, and every produced byte is stored. ``mode`` (hybrid | factual | experiential), ``task``
        (a seed task type) and ``scene`` (a context string for ``contextual_match``) steer retrieval.

        ``cancel``: a ``threading.Event`` (or any callable returning true) checked before every step; once set,
        the stream ends after the byte in progress. Closing the iterator early stops it the same way. Either
        way the memory is saved when the stream ends. Arguments are checked before the first step, so a bad
        value raises ``ValueError`` at the call, not at the first ``next``."""
        recall = Recall.of(mode, task, scene)
        text = bytearray(as_bytes(prompt))
        if len(text) > MAX_PROMPT:
            raise ValueError(f"prompt is {len(text)} bytes; the limit is {MAX_PROMPT}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 0 <= max_bytes <= MAX_GENERATE:
            raise ValueError(f"max_bytes must be an integer in [0, {MAX_GENERATE}], got {max_bytes!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        stop = (cancel.is_set if hasattr(cancel, "is_set") else cancel) or (lambda: False)
        return self._stream(text, max_bytes, float(temperature), np.random.default_rng(seed), use_memory, recall, stop)

    def _stream(self, text: bytearray, max_bytes: int, temperature: float, rng, use_memory: bool, recall: Recall,
                stop) -> Iterator[bytes]:
        try:
            if use_memory and len(text) > 1 and not stop():
                data = bytes(text)
                nb = np.frombuffer(data, dtype=np.uint8)[1:].astype(np.int64)
                logits, enc = self._forward(self._windows(data, np.arange(1, len(data))), use_memory, recall, nb)
                self._remember(logits, enc, nb, recall)
            for _ in range(max_bytes):
                if stop():
                    self.cancelled_streams += 1
                    return
                logits, enc = self._forward_one(self._windows(bytes(text), np.array([len(text)])), use_memory, recall)
                row = logits[0].astype(np.float64)
                if temperature > 0:
                    p = np.exp((row - row.max()) / temperature)
                    nxt = int(rng.choice(len(p), p=p / p.sum()))
                else:
                    nxt = int(np.argmax(row))
                if use_memory:
                    self._remember(logits, enc, np.array([nxt]), recall, defer=True)  # held, written in batches, read at once
                text.append(nxt)
                with self._lock:
                    self.generated_bytes += 1
                yield bytes((nxt,))
        except GeneratorExit:  # closed early: a cancellation if its flag is up (not a stop string's end)
            if stop():
                self.cancelled_streams += 1
            raise
        finally:  # also on close() of an abandoned stream: what was stored is committed
            self.save_memory()

    def generate(self, prompt, max_bytes: int, temperature: float = 0.0, seed: int | None = None,
                 use_memory: bool = True, mode: str = "hybrid", task: str = "general", scene: str = "",
                 on_byte=None, cancel=None) -> bytes:
        """Continue ``prompt`` by ``max_bytes`` bytes and return them: ``b"".join(self.stream(...))``.

        Same arguments as ``stream``; ``on_byte(b)`` is called with each byte (an int) as it is produced, and a
        ``cancel`` that is set ends it early with the bytes produced so far."""
        out = bytearray()
        for b in self.stream(prompt, max_bytes, temperature, seed, use_memory, mode, task, scene, cancel):
            out += b
            if on_byte is not None:
                on_byte(b[0])
        return bytes(out)

    def save_memory(self) -> None:
        """Write held experiences; snapshot the long-term memory to ``memory_dir`` if one was given."""
        with self._lock:
            self.memory.flush()
            if self.memory_dir is not None:
                self.memory.save(self.memory_dir)

    def search_memory(self, query, k: int = 5) -> list[dict]:
        """The k stored memories that best match the last window of ``query`` (no reconsolidation)."""
        data = as_bytes(query, "query")
        with self._lock:
            _, key, _, ctx = self.executor.encode(self._windows(data, np.array([len(data)])))
            return self.memory.search(key[0], ctx[0], k)

    def memory_detail(self, memory_id: int, links: int = 16) -> dict | None:
        """One memory as the server's memory browser shows it: priority, uses, type, scene, the byte it predicts
        and its strongest Hebbian links (``links`` of them, each with its weight); None if there is no such id."""
        with self._lock:
            m = self.memory.storage.memories.get(memory_id)
            if m is None:
                return None
            mems = self.memory.storage.memories
            strongest = sorted(m.associations.items(), key=lambda kv: (-kv[1], kv[0]))[:links]
            return {"id": m.id, "priority": float(m.priority), "access_count": int(m.access_count),
                    "created": float(m.created), "last_access": float(m.last_access), "memory_type": m.memory_type,
                    "scene": m.scene, "next_byte": int(m.extra.get("next_byte", -1)),
                    "links": [{"id": int(j), "weight": float(w),
                               "next_byte": int(mems[j].extra.get("next_byte", -1)) if j in mems else -1,
                               "priority": float(mems[j].priority) if j in mems else None} for j, w in strongest],
                    "n_links": len(m.associations)}

    def reset_memory(self) -> None:
        """Forget everything held in memory (a store in ``memory_dir`` is left as it is on disk)."""
        with self._lock:
            self.memory = LongTermMemory(self.cfg.d_model, self.cfg.memory_top_k, self.memory.capacity,
                                         self.memory.clock, self.memory.device)

    def online_chunk(self, windows: np.ndarray, next_bytes: np.ndarray, recall: "Recall" = None) -> np.ndarray:
        """Predict consecutive bytes of one text (each row from memory and the rows before it), then store
        them: ``m3edge eval --memory`` on a bundle."""
        logits, enc = self._forward(windows, True, recall, next_bytes.astype(np.int64))
        self._remember(logits, enc, next_bytes.astype(np.int64), recall)
        return logits

    def stats(self) -> dict:
        """Expert-cache counters (hits, misses, evictions, hit rate...), experts used per layer, memory count."""
        return {"cache": self.executor.cache.stats.to_dict(), "cached_experts": len(self.executor.cache),
                "experts_used": [len(s) for s in self.experts_used], "memories": len(self.memory)}

    def close(self) -> None:
        """Drain the batcher, release the sessions and save the memory to ``memory_dir`` (if any)."""
        if self.batcher is not None:
            self.batcher.close(drain=True)
        self.executor.close()
        self.save_memory()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
