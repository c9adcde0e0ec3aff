"""How ``EdgeAgent.open`` runs a bundle: one frozen dataclass, one spelling per option. Stdlib only.

    EdgeAgent.open("bundle/", memory_dir="mem/", options=RuntimeOptions(cache_experts=16, prefetch="thread"))

Defaults are what ``m3edge bench`` measured on the small reference (README): prefetch off, the fastest setting at
every cache size on 2 cores (inline prefetch raises a quarter cache's hit rate from 35% to 61% but costs ~10% of
the speed); the cache policy LFU without prefetch and LRU with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PREFETCH = ("off", "thread", "inline")
POLICIES = ("lru", "lfu")  # runtime/cache.py's registry


def _count(name: str, v, lo: int = 1) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
        raise ValueError(f"{name} must be an integer >= {lo} or None, got {v!r}")


@dataclass(frozen=True)
class RuntimeOptions:
    # Experts kept loaded per layer (as the profile's expert_cache_size counts them) and the cache's byte budget.
    # Both None: the profile's expert_cache_size, bounded by its expert_memory_budget_mb.
    cache_experts: int | None = None
    cache_bytes: int | None = None
    policy: str | None = None  # "lru" | "lfu"; None: LFU without prefetch, LRU with (measured)
    # After each router, load the experts the next layer (or the next step's first layer) will likely need: in a
    # background "thread", "inline" on the calling thread, or "off".
    prefetch: str = "off"
    strict: bool = False  # fail when a profile's execution provider is missing, instead of falling back
    threads: int | None = None  # None: the profile's threads
    # Run a batch's distinct experts on this many threads; the threads are then split between them.
    expert_workers: int = 1
    # Run a batch that touches most of a layer's experts through the layer's expert bank, where the bundle has
    # one and the cache may hold every expert (``BundleExecutor._bank_for``).
    banks: bool = True
    # The crossbar preset holding the memory keys: "ideal" (exact float, what parity uses), "reram", "pcm".
    memory_device: str = "ideal"
    clock: Callable[[], float] | None = None  # the memory store's clock (tests and benchmarks pin it)
    # Where TensorRT builds its engines (runtime/engines.py; a subdirectory per bundle content); never inside a
    # bundle. None: $M3EDGE_ENGINE_CACHE, else ~/.cache/m3edge/engines.
    engine_cache: str | None = None
    # numpy's BLAS threads in this process (``EdgeAgent.open`` sets them; None leaves them). The memory path's
    # matrices are small, and an OpenBLAS pool spinning between calls takes cores onnxruntime needs: with
    # another process busy on this 2-core machine, decode with memory on took 2.1 ms a step at 1 against 3.0
    # at 2 (small reference); on a quiet machine the two measure the same (docs/memory.md).
    blas_threads: int | None = 1

    def __post_init__(self):
        if self.prefetch not in PREFETCH:
            raise ValueError(f"prefetch must be one of {', '.join(PREFETCH)}, got {self.prefetch!r}")
        if self.policy is not None and self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)} or None, got {self.policy!r}")
        _count("cache_experts", self.cache_experts)
        _count("cache_bytes", self.cache_bytes, 0)
        _count("threads", self.threads)
        _count("expert_workers", self.expert_workers)
        _count("blas_threads", self.blas_threads)
        for name in ("strict", "banks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.memory_device, str):
            raise ValueError(f"memory_device must be a device preset name, got {self.memory_device!r}")

    @property
    def cache_policy(self) -> str:
        return self.policy or ("lfu" if self.prefetch == "off" else "lru")
