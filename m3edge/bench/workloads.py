"""What a worker process does with an engine, and how the parent starts one (``measure``).

Every measurement runs in a fresh process (``python -m m3edge.bench worker CONFIG_JSON``), so cold start
and peak RSS belong to that configuration alone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

from m3edge.bench.common import peak_rss_mb
from m3edge.bench.engines import ENGINES


def greedy(engine, prompts: list[bytes], n: int, context: int) -> list[bytes]:
    """Greedy decoding of equal-length prompts in lockstep: one engine call per step for all streams."""
    b, length = len(prompts), len(prompts[0])
    buf = np.zeros((b, context + length + n), dtype=np.int64)  # left zero padding, as data.windows does
    buf[:, context:context + length] = np.frombuffer(b"".join(prompts), dtype=np.uint8).reshape(b, length)
    for i in range(n):
        end = context + length + i
        buf[:, end] = engine.step(buf[:, end - context:end]).argmax(-1)
    return [bytes(row[context + length:].astype(np.uint8)) for row in buf]


def _generate_workload(eng, args: dict, t0: float, t_open: float) -> dict:
    ps = [bytes.fromhex(p) for p in args["prompts"]]
    n, temp = args["bytes"], args["temperature"]
    first = eng.generate(ps[0][:8], n, temp)[:1]  # cold start: open to the first answered byte
    t_first = time.perf_counter()
    for p in ps[:args.get("warmup", len(ps))]:  # warm-up, not timed: loads, caches and allocators settle
        eng.generate(p, n, temp)
    before = eng.stats()
    outs, times = [], []
    for _ in range(args.get("passes", 1)):
        outs, t1 = [], time.perf_counter()
        for p in ps:
            outs.append(eng.generate(p, n, temp))
        times.append(time.perf_counter() - t1)
    after = eng.stats()
    cache = {k: after[k] - before[k] for k in ("hits", "misses", "evictions", "prefetched", "prefetch_hits")} if after else {}
    if cache:  # the timed passes alone
        cache["hit_rate"] = cache["hits"] / max(1, cache["hits"] + cache["misses"])
    speeds = [len(ps) * n / t for t in times]
    return {"bytes_per_s": float(np.median(speeds)), "bytes_per_s_runs": speeds, "open_s": t_open - t0,
            "cold_start_s": t_first - t0, "peak_rss_mb": peak_rss_mb(), "cache": cache, "first": first.hex(),
            "outputs_sha": hashlib.sha256(b"".join(outs)).hexdigest()[:16]}


def _decode_workload(eng, args: dict, t0: float, t_open: float) -> dict:
    """Greedy, memory off: batch 1 (each of ``prompts`` on its own), then ``batch_prompts`` in lockstep."""
    ps = [bytes.fromhex(p) for p in args["prompts"]]
    bs = [bytes.fromhex(p) for p in args.get("batch_prompts", args["prompts"])]
    k = args["context"]
    greedy(eng, [ps[0]], 1, k)  # cold start: open to the first answer
    out = {"open_s": t_open - t0, "cold_start_s": time.perf_counter() - t0}
    phases = {"batch1": (lambda: [greedy(eng, [p], args["bytes"], k)[0] for p in ps], 1,
                         len(ps) * args["bytes"], len(ps) * args["bytes"]),
              "batched": (lambda: greedy(eng, bs, args["batch_bytes"], k), len(bs),
                          len(bs) * args["batch_bytes"], args["batch_bytes"])}
    for name, (run, streams, n_bytes, steps) in phases.items():
        run()  # warm-up pass, not timed
        touched = getattr(eng, "touched", None)
        if touched is not None:
            touched[:] = 0
        times = []
        for _ in range(args.get("passes", 1)):
            t = time.perf_counter()
            outs = run()
            times.append(time.perf_counter() - t)
        out[name] = {"bytes_per_s_runs": [n_bytes / t for t in times], "bytes": n_bytes, "streams": streams,
                     "outputs_sha": hashlib.sha256(b"".join(outs)).hexdigest()[:16],
                     "peak_rss_mb": peak_rss_mb()}  # the high-water mark only grows: the peak up to this phase
        if touched is not None:  # per step, the fraction of steps in which each expert ran
            out[name]["touched"] = (touched / (len(times) * steps)).tolist()
    return out


def _budget_workload(eng, args: dict, t0: float, t_open: float) -> dict:
    """Greedy decoding at batch 1, memory off, through a bounded expert cache: speed, the cache's counters and
    load time over the timed passes, this process's peak RSS (warm-up included: the budget must hold throughout)."""
    ps = [bytes.fromhex(p) for p in args["prompts"]]
    k, n = args["context"], args["bytes"]
    greedy(eng, [ps[0]], 1, k)
    out = {"open_s": t_open - t0, "cold_start_s": time.perf_counter() - t0}
    for p in ps:  # warm-up pass, not timed: the cache reaches its steady state
        greedy(eng, [p], n, k)
    cache = eng.agent.executor.cache
    before = cache.stats.to_dict()
    times, outs = [], []
    for _ in range(args.get("passes", 1)):
        t = time.perf_counter()
        outs = [greedy(eng, [p], n, k)[0] for p in ps]
        times.append(time.perf_counter() - t)
    cache.wait()
    after = cache.stats.to_dict()
    delta = {key: after[key] - before[key] for key in ("hits", "misses", "evictions", "prefetched", "prefetch_hits",
                                                       "load_ms")}
    delta["hit_rate"] = delta["hits"] / max(1, delta["hits"] + delta["misses"])
    return out | {"bytes": len(ps) * n * len(times), "seconds": float(sum(times)),
                  "bytes_per_s_runs": [len(ps) * n / t for t in times], "cache": delta,
                  "resident_bytes": cache.bytes, "resident_experts": len(cache),
                  "shares_sessions": bool(eng.agent.executor.shares_sessions), "peak_rss_mb": peak_rss_mb(),
                  "outputs_sha": hashlib.sha256(b"".join(outs)).hexdigest()[:16]}


WORKLOADS = {"generate": _generate_workload, "decode": _decode_workload, "budget": _budget_workload}


def worker(args: dict) -> dict:
    """One configuration, in this (fresh) process."""
    t0 = time.perf_counter()
    eng = ENGINES[args["engine"]](args)
    return WORKLOADS[args.get("workload", "generate")](eng, args, t0, time.perf_counter())


def measure(config: dict, timeout: int = 900) -> dict:
    # OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of spinning at each barrier, as the runtime's
    # onnxruntime sessions do (allow_spinning 0). With any other load on the cores, spinning barriers made torch
    # eager ~90x slower (small reference, batch 1: 229 ms per step spinning, 2.5 ms passive, same machine, same
    # minute). A shared development machine is the normal case here, and the baseline should not lose to it.
    env = os.environ | {"OMP_NUM_THREADS": str(config["threads"]), "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, "-m", "m3edge.bench", "worker", json.dumps(config)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"bench worker failed for {config['engine']}: {r.stderr.strip().splitlines()[-1:]}")
    # The last line: libraries may print to stdout before it.
    return json.loads(r.stdout.strip().splitlines()[-1])
