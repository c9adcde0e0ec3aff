"""``m3edge bench BUNDLE``: torch eager against the runtime, the expert-cache sweep and batching, on one bundle.

Workloads, on prompts cut from the eval split:
  engines   greedy decoding at batch 1 (the torch agent and the runtime produce the same bytes, so they do
            the same work): torch eager fp32 vs the runtime with every expert resident
  cache     sampled decoding (temperature 0.8, fixed seed): the runtime at several experts-per-layer cache
            sizes, each eviction policy, prefetch off and on; hit rate and bytes/s
  batching  concurrent callers, the dynamic batcher off and on, in one process
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from m3edge.bench.common import PROMPT_BYTES, machine, prompts, spread
from m3edge.bench.workloads import measure


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
        ("m3edge-runtime", {"engine": "runtime", "cache": cfg["n_experts"], "policy": "lru", "prefetch": "off"})]
    for name, extra in engines:
        r = measure(base | extra | {"temperature": 0.0})
        rows.append({"engine": name, "precision": "fp32" if name == "torch-eager" else "/".join(precision),
                     "batch": 1, "bytes_per_s": r["bytes_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                     "cold_start_s": r["cold_start_s"], "outputs_sha": r["outputs_sha"]})
        if progress:
            progress(f"{name}: {r['bytes_per_s']:.1f} bytes/s")
    sweep = cache_sweep(bundle, base, cfg["n_experts"], cache_sizes, policies, progress=progress)
    return {"machine": machine(), "threads": threads, "bundle": str(bundle), "target": b.manifest["target"]["name"],
            "workload": {"prompts": n_prompts, "prompt_bytes": PROMPT_BYTES, "bytes_per_prompt": n_bytes},
            "rows": rows, "cache_sweep": sweep}


def cache_sweep(bundle, base: dict, n_experts: int, cache_sizes=(1, 8, 16, 32, 64), policies=("lru", "lfu"),
                prefetch=("off", "thread", "inline"), passes: int = 1, warmup: int | None = None, progress=None) -> list[dict]:
    """Sampled decoding (temperature 0.8, fixed seed) at each experts-per-layer cache size, policy and prefetch
    setting, each in a fresh process; ``passes`` timed passes after the warm-up, bytes/s their median."""
    sweep = []
    for size in [s for s in cache_sizes if s <= n_experts]:
        for policy in policies:
            for pf in prefetch:
                cfg = base | {"bundle": str(bundle), "engine": "runtime", "cache": size, "policy": policy,
                              "prefetch": pf, "temperature": 0.8, "passes": passes}
                if warmup is not None:
                    cfg["warmup"] = warmup
                r = measure(cfg)
                sweep.append({"experts_per_layer": size, "policy": policy, "prefetch": pf,
                              "hit_rate": r["cache"]["hit_rate"], "bytes_per_s": r["bytes_per_s"],
                              "bytes_per_s_spread": spread(r["bytes_per_s_runs"]),
                              "peak_rss_mb": r["peak_rss_mb"], "evictions": r["cache"]["evictions"]})
                if progress:
                    progress(f"cache {size}/{policy}/prefetch {pf}: "
                             f"hit rate {r['cache']['hit_rate']:.2f}, {r['bytes_per_s']:.1f} bytes/s")
    return sweep


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
            lines.append(f"{s['experts_per_layer']:>13} {s['policy']:<6} {s['prefetch']:<8} {s['hit_rate']:>8.3f} "
                         f"{s['bytes_per_s']:>9.1f} {s['peak_rss_mb']:>11.1f}")
    return "\n".join(lines)


def batching_bench(bundle: str | Path, data_dir: Path, callers=(1, 4, 16, 32), steps_per_caller: int = 160,
                   threads: int = 2, max_queue_delay_ms: float = 2.0, repeats: int = 1, progress=None) -> dict:
    """Concurrent callers each issue single-window ``step`` calls; batching off vs on, in one process.

    Reports throughput (steps/s) and p50/p99 latency per step, and the compute time of one batch of each
    size so the p99 goal (max_queue_delay + 2 x single-batch compute) can be checked. With ``repeats`` > 1
    each figure is the median of that many runs, with its spread.
    """
    import threading

    from m3edge.data import load_split
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.batcher import BatcherConfig
    from m3edge.runtime.options import RuntimeOptions

    text = load_split(data_dir, "eval").tobytes()
    agents = {}
    for batching in (False, True):
        agent = agents[batching] = EdgeAgent.open(bundle, options=RuntimeOptions(threads=threads, clock=lambda: 0.0))
        agent.executor.cache.unbounded()  # every expert resident: measure batching, not the cache
        if batching:
            buckets = tuple(agent.executor.token_buckets)
            agent.enable_batching(BatcherConfig(max_batch_size=max(buckets), preferred_batch_sizes=buckets,
                                                max_queue_delay_ms=max_queue_delay_ms, max_queue_size=4096))
        for pos in range(0, 4000, 97):  # warm-up: load every expert the workload touches
            agent._forward(agent._windows(text, np.arange(pos, pos + 64)), False)
        for b in agent.executor.token_buckets:  # and every per-token graph a batch size opens on first use
            agent._forward(agent._windows(text, np.arange(1000, 1000 + b)), False)

    def one_run(batching: bool, n: int) -> dict:
        agent = agents[batching]
        lat, lock, together = [], threading.Lock(), threading.Barrier(n)

        def caller(c):
            mine = []
            together.wait()  # steady state from the first step, not threads trickling in as they start
            for s in range(steps_per_caller):
                at = (c * 7919 + s * 131) % (len(text) - 64)
                t = time.perf_counter()
                agent.step(text[at:at + 32], use_memory=False)
                mine.append(time.perf_counter() - t)
            with lock:
                lat.extend(mine)

        before = agent.batcher.metrics() if batching else None
        ts = [threading.Thread(target=caller, args=(c,)) for c in range(n)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        run = {"steps_per_s": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50) * 1e3),
               "p99_ms": float(np.percentile(lat, 99) * 1e3)}
        if batching:  # this run's batches alone (the batcher's counters are cumulative)
            m = agent.batcher.metrics()
            run["avg_batch_size"] = ((m["inference_count"] - before["inference_count"])
                                     / max(1, m["execution_count"] - before["execution_count"]))
        return run

    # Off and on alternate, each repeat and caller count side by side, with the single-batch compute measured
    # in between: the host's speed drifts over minutes, and a slow spell must not land on one side only.
    runs = {(batching, n): [] for batching in (False, True) for n in callers}
    times = {str(b): [] for b in (1, 16, 32)}
    for _ in range(repeats):
        for n in callers:
            for batching in (False, True):
                runs[batching, n].append(one_run(batching, n))
        for b in (1, 16, 32):
            w = agents[False]._windows(text, np.arange(1000, 1000 + b))
            agents[False]._forward(w, False)
            for _ in range(5):
                t = time.perf_counter()
                agents[False]._forward(w, False)
                times[str(b)].append(time.perf_counter() - t)
    compute_ms = {b: float(np.median(t) * 1e3) for b, t in times.items()}
    rows = []
    for (batching, n), got in runs.items():
        row = {"batching": batching, "callers": n}
        for key in got[0]:
            row[key] = float(np.median([r[key] for r in got]))
            if repeats > 1:
                row[key + "_spread"] = spread([r[key] for r in got])
        rows.append(row)
        if progress:
            progress(f"batching {'on' if batching else 'off'}, {n} callers: {row['steps_per_s']:.1f} steps/s, "
                     f"p99 {row['p99_ms']:.1f} ms")
    for agent in agents.values():
        agent.close()
    return {"threads": threads, "max_queue_delay_ms": max_queue_delay_ms, "steps_per_caller": steps_per_caller,
            "repeats": repeats, "single_batch_compute_ms": compute_ms, "rows": rows}


def format_batching(r: dict) -> str:
    lines = [f"{'callers':>7} {'batching':<8} {'steps/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'avg batch':>9}"]
    for row in r["rows"]:
        lines.append(f"{row['callers']:>7} {('on' if row['batching'] else 'off'):<8} {row['steps_per_s']:>9.1f} "
                     f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row.get('avg_batch_size', 1):>9.2f}")
    c = r["single_batch_compute_ms"]
    lines.append("single-batch compute: " + ", ".join(f"batch {k}: {v:.2f} ms" for k, v in c.items()))
    return "\n".join(lines)
