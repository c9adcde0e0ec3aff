"""``m3edge bench``: engines and expert-cache settings measured side by side, in one run, on this machine.

Every measurement runs in a fresh process (``python -m m3edge.bench worker ...``), so cold start and peak
RSS belong to that configuration alone. Threads are fixed (2 by default, a small board's spare cores).

Workloads, on prompts cut from the eval split:
  engines   greedy decoding at batch 1 (the torch agent and the runtime produce the same bytes, so they do
            the same work): torch eager fp32 vs the runtime with every expert resident
  cache     sampled decoding (temperature 0.8, fixed seed): the runtime at several experts-per-layer cache
            sizes, each eviction policy, prefetch off and on; hit rate and bytes/s
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT_BYTES = 48


def prompts(data_dir: Path, n: int) -> list[bytes]:
    from m3edge.data import load_split

    text = load_split(data_dir, "eval").tobytes()
    starts = np.linspace(0, len(text) - PROMPT_BYTES - 1, n).astype(int)
    return [text[s:s + PROMPT_BYTES] for s in starts]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def worker(args: dict) -> dict:
    """One configuration, in this (fresh) process."""
    t0 = time.perf_counter()
    ps = [bytes.fromhex(p) for p in args["prompts"]]
    n, temp, threads = args["bytes"], args["temperature"], args["threads"]
    clock = (lambda: 0.0)  # a frozen clock: identical memory behaviour in every engine
    if args["engine"] == "torch":
        import torch

        from m3edge import checkpoint

        torch.set_num_threads(threads)
        agent = checkpoint.agent_from_source(json.loads(Path(args["bundle"], "manifest.json").read_text())["source"])
        agent.memory.storage.clock = clock
        gen = lambda p: agent.generate(p, n, temp, seed=0)  # noqa: E731
        stats = lambda: {}  # noqa: E731
    else:
        from m3edge.runtime.agent import EdgeAgent

        agent = EdgeAgent.open(args["bundle"], cache_experts=args["cache"], policy=args["policy"],
                               prefetch=args["prefetch"], threads=threads, clock=clock)
        gen = lambda p: agent.generate(p, n, temp, seed=0)  # noqa: E731
        stats = lambda: dict(agent.stats()["cache"])  # noqa: E731
    t_open = time.perf_counter()
    first = gen(ps[0][:8])[:1]  # cold start: open to the first answered byte
    t_first = time.perf_counter()
    for p in ps:  # warm-up pass, not timed: loads, caches and allocators settle
        gen(p)
    before = stats()
    outs, t1 = [], time.perf_counter()
    for p in ps:
        outs.append(gen(p))
    dt = time.perf_counter() - t1
    after = stats()
    cache = {k: after[k] - before[k] for k in ("hits", "misses", "evictions", "prefetched", "prefetch_hits")} if after else {}
    if cache:  # the timed pass alone
        cache["hit_rate"] = cache["hits"] / max(1, cache["hits"] + cache["misses"])
    return {"bytes_per_s": len(ps) * n / dt, "open_s": t_open - t0, "cold_start_s": t_first - t0,
            "peak_rss_mb": peak_rss_mb(), "cache": cache, "first": first.hex(),
            "outputs_sha": __import__("hashlib").sha256(b"".join(outs)).hexdigest()[:16]}


def measure(config: dict, timeout: int = 900) -> dict:
    r = subprocess.run([sys.executable, "-m", "m3edge.bench", "worker", json.dumps(config)], capture_output=True,
                       text=True, timeout=timeout, env=os.environ | {"OMP_NUM_THREADS": str(config["threads"])})
    if r.returncode != 0:
        raise RuntimeError(f"bench worker failed for {config['engine']}: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout)


def run_bench(bundle: str | Path, data_dir: Path, threads: int = 2, n_prompts: int = 4, n_bytes: int = 64,
              cache_sizes=(1, 8, 16, 32, 64), policies=("lru", "lfu"), with_torch: bool = True,
              progress=None) -> dict:
    from m3edge.bundle import open_bundle

    b = open_bundle(bundle)
    cfg = b.manifest["model_config"]
    base = {"bundle": str(bundle), "threads": threads, "bytes": n_bytes,
            "prompts": [p.hex() for p in prompts(data_dir, n_prompts)]}
    precision = sorted(set(b.manifest["precision"]["graphs"].values()))
    rows, sweep = [], []
    engines = ([("torch-eager", {"engine": "torch"})] if with_torch else []) + [
        ("m3edge-runtime", {"engine": "runtime", "cache": cfg["n_experts"], "policy": "lru", "prefetch": False})]
    for name, extra in engines:
        r = measure(base | extra | {"temperature": 0.0})
        rows.append({"engine": name, "precision": "fp32" if name == "torch-eager" else "/".join(precision),
                     "batch": 1, "bytes_per_s": r["bytes_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                     "cold_start_s": r["cold_start_s"], "outputs_sha": r["outputs_sha"]})
        if progress:
            progress(f"{name}: {r['bytes_per_s']:.1f} bytes/s")
    for size in [s for s in cache_sizes if s <= cfg["n_experts"]]:
        for policy in policies:
            for prefetch in (False, True):
                r = measure(base | {"engine": "runtime", "cache": size, "policy": policy, "prefetch": prefetch,
                                    "temperature": 0.8})
                sweep.append({"experts_per_layer": size, "policy": policy, "prefetch": prefetch,
                              "hit_rate": r["cache"]["hit_rate"], "bytes_per_s": r["bytes_per_s"],
                              "peak_rss_mb": r["peak_rss_mb"], "evictions": r["cache"]["evictions"]})
                if progress:
                    progress(f"cache {size}/{policy}/{'prefetch' if prefetch else 'no prefetch'}: "
                             f"hit rate {r['cache']['hit_rate']:.2f}, {r['bytes_per_s']:.1f} bytes/s")
    return {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version()},
            "threads": threads, "bundle": str(bundle), "target": b.manifest["target"]["name"],
            "workload": {"prompts": n_prompts, "prompt_bytes": PROMPT_BYTES, "bytes_per_prompt": n_bytes},
            "rows": rows, "cache_sweep": sweep}


def format_report(r: dict) -> str:
    lines = [f"machine: {r['machine']['processor']}, {r['machine']['cpus']} cpus, {r['threads']} threads; "
             f"bundle {r['bundle']} ({r['target']})",
             f"{'engine':<16} {'precision':<9} {'batch':>5} {'bytes/s':>9} {'cold start s':>12} {'peak RSS MB':>11}"]
    for row in r["rows"]:
        lines.append(f"{row['engine']:<16} {row['precision']:<9} {row['batch']:>5} {row['bytes_per_s']:>9.1f} "
                     f"{row['cold_start_s']:>12.2f} {row['peak_rss_mb']:>11.1f}")
    if r["cache_sweep"]:
        lines.append(f"{'experts/layer':>13} {'policy':<6} {'prefetch':<8} {'hit rate':>8} {'bytes/s':>9} {'peak RSS MB':>11}")
        for s in r["cache_sweep"]:
            lines.append(f"{s['experts_per_layer']:>13} {s['policy']:<6} {str(s['prefetch']):<8} {s['hit_rate']:>8.3f} "
                         f"{s['bytes_per_s']:>9.1f} {s['peak_rss_mb']:>11.1f}")
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    print(json.dumps(worker(json.loads(sys.argv[2]))))


def batching_bench(bundle: str | Path, data_dir: Path, callers=(1, 4, 16, 32), steps_per_caller: int = 40,
                   threads: int = 2, max_queue_delay_ms: float = 2.0, progress=None) -> dict:
    """Concurrent callers each issue single-window ``step`` calls; batching off vs on, in one process.

    Reports throughput (steps/s) and p50/p99 latency per step, and the compute time of one batch of each
    size so the p99 goal (max_queue_delay + 2 x single-batch compute) can be checked.
    """
    import threading

    from m3edge.data import load_split
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.batcher import BatcherConfig

    text = load_split(data_dir, "eval").tobytes()
    rows = []
    for batching in (False, True):
        agent = EdgeAgent.open(bundle, cache_experts=None, cache_bytes=None, threads=threads, clock=lambda: 0.0)
        agent.executor.cache.max_items = None  # every expert resident: measure batching, not the cache
        if batching:
            buckets = tuple(agent.executor.token_buckets)
            agent.enable_batching(BatcherConfig(max_batch_size=max(buckets), preferred_batch_sizes=buckets,
                                                max_queue_delay_ms=max_queue_delay_ms, max_queue_size=4096))
        for pos in range(0, 4000, 97):  # warm-up: load every expert the workload touches
            agent._forward(agent._windows(text, np.arange(pos, pos + 64)), False)
        for n in callers:
            lat, lock = [], threading.Lock()

            def caller(c):
                mine = []
                for s in range(steps_per_caller):
                    at = (c * 7919 + s * 131) % (len(text) - 64)
                    t = time.perf_counter()
                    agent.step(text[at:at + 32], use_memory=False)
                    mine.append(time.perf_counter() - t)
                with lock:
                    lat.extend(mine)

            ts = [threading.Thread(target=caller, args=(c,)) for c in range(n)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            row = {"batching": batching, "callers": n, "steps_per_s": len(lat) / wall,
                   "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3)}
            if batching:
                m = agent.batcher.metrics()
                row["avg_batch_size"] = m["avg_batch_size"]
            rows.append(row)
            if progress:
                progress(f"batching {'on' if batching else 'off'}, {n} callers: {row['steps_per_s']:.1f} steps/s, "
                         f"p99 {row['p99_ms']:.1f} ms")
        compute = {}
        if not batching:
            for b in (1, 16, 32):
                w = agent._windows(text, np.arange(1000, 1000 + b))
                agent._forward(w, False)
                t = time.perf_counter()
                for _ in range(5):
                    agent._forward(w, False)
                compute[str(b)] = (time.perf_counter() - t) / 5 * 1e3
            compute_ms = compute
        agent.close()
    return {"threads": threads, "max_queue_delay_ms": max_queue_delay_ms, "steps_per_caller": steps_per_caller,
            "single_batch_compute_ms": compute_ms, "rows": rows}


def format_batching(r: dict) -> str:
    lines = [f"{'callers':>7} {'batching':<8} {'steps/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'avg batch':>9}"]
    for row in r["rows"]:
        lines.append(f"{row['callers']:>7} {('on' if row['batching'] else 'off'):<8} {row['steps_per_s']:>9.1f} "
                     f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row.get('avg_batch_size', 1):>9.2f}")
    c = r["single_batch_compute_ms"]
    lines.append("single-batch compute: " + ", ".join(f"batch {k}: {v:.2f} ms" for k, v in c.items()))
    return "\n".join(lines)
