"""Benchmark of the device's long-term memory at 100,000 memories (the seed's medical agent's capacity).

    python -m m3edge.bench memory-store [--memories 100000] [-o bench/results-memory.json]

Measures, on this machine (wall time, and this process's CPU time: on a shared host the wall time includes
waiting for a core; run with OPENBLAS_NUM_THREADS=1 there, as threaded BLAS spins against the other load):
  insert rate      the agent's batched store path (importance, associations, consolidation, crossbar write),
                   one durable transaction (synchronous=FULL) per batch of 1,000, into an empty store up to N
  retrieval        top-10 by the fused score (crossbar read + temporal + context), p50 / p99 over queries
  recall@10        per device preset, against the same retrieval in exact float (and the crossbar read alone)
  bytes on disk    the SQLite store after the inserts
  energy           the crossbar model's ledger against a DRAM baseline (m3edge/memory/crossbar.py cites the figures)
  retention        the seed's forgetting policy against FIFO of the same capacity on a stream of memories of
                   mixed importance (runtime semantics: m3edge.memory.synaptic.SynapticStorage)

Data: keys are 128-d (the seed's sensory code) drawn around 2,000 topics, so neighbours, associations and
merges exist as with real experiences; values are 64-d (the small reference agent's d_model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from m3edge.bench.common import ROOT
from m3edge.memory import crossbar as xb
from m3edge.memory.synaptic import SynapticStorage, unit
from m3edge.runtime.store import MemoryStore, fuse, topk_stable

KEY, VALUE, CTX = 128, 64, 128


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(2000, KEY)).astype(np.float32)
    which = rng.integers(0, len(topics), n)
    keys = topics[which] + 1.1 * rng.normal(size=(n, KEY)).astype(np.float32)
    ctx = unit(topics[which] @ rng.normal(size=(KEY, CTX)).astype(np.float32) / KEY ** 0.5
               + 0.5 * rng.normal(size=(n, CTX)).astype(np.float32))
    values = rng.normal(size=(n, VALUE)).astype(np.float32)
    complexity, surprise = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
    return keys, ctx.astype(np.float32), values, complexity, surprise


def insert(directory: Path, data, batch: int, clock: Clock, device: str) -> tuple[MemoryStore, float, float]:
    """Fill an empty store; returns (store, wall seconds, CPU seconds of this process)."""
    keys, ctx, values, complexity, surprise = data
    store = MemoryStore.open(directory, KEY, VALUE, CTX, capacity=len(keys), device=device, clock=clock)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(keys), batch):
        e = s + batch
        store.store_experiences(keys[s:e], values[s:e], complexity[s:e], surprise[s:e], ctx[s:e])
        clock.t += 60.0  # a batch a minute
    return store, time.perf_counter() - t0, time.process_time() - c0


def timed(fn) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) of one call. On a shared host the wall time includes waiting for a
    core; the CPU time is what the call itself costs (with one BLAS thread, about its wall time on an idle
    machine)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def pcts(ms: list[float]) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def queries(data, n: int, seed: int = 1):
    keys, ctx = data[0], data[1]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(keys), n)
    q = keys[pick] + 0.3 * rng.normal(size=(n, KEY)).astype(np.float32)
    qc = unit(ctx[pick] + 0.1 * rng.normal(size=(n, CTX)).astype(np.float32))
    return q, qc


def recall(got: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(e)) / len(e) for g, e in zip(got.tolist(), exact.tolist())]))


def per_preset(store: MemoryStore, q: np.ndarray, qc: np.ndarray, now: float) -> dict:
    """Recall@10 and energy per preset on the same memories, against exact float retrieval."""
    st = store.storage
    ids, _, _, ages = st.arrays()
    units, key_ctx, created = st.unit_keys(), st.extra_array("context_key"), st.extra_array("created")
    uq = unit(q)
    exact_spatial = uq @ units.T
    exact_fused = fuse(exact_spatial, qc, key_ctx, ages).astype(np.float32)
    exact_top = topk_stable(exact_fused, 10)[1]
    exact_spatial_top = topk_stable(exact_spatial, 10)[1]
    out = {}
    for name in xb.DEVICES:
        arr = xb.CrossbarArray(KEY, name, seed=0)
        arr.write(np.asarray(ids), units, created)
        w_pj = arr.ledger.write_pj
        lat = []
        got, got_spatial = [], []
        for i in range(len(q)):
            t0 = time.perf_counter()
            spatial = arr.read(uq[i:i + 1], units, now)
            fused = fuse(spatial, qc[i:i + 1], key_ctx, ages).astype(np.float32)
            got.append(topk_stable(fused, 10)[1][0])
            lat.append(time.perf_counter() - t0)
            got_spatial.append(topk_stable(spatial, 10)[1][0])
        lat_ms = np.array(lat) * 1e3
        out[name] = {"recall_at_10": recall(np.array(got), exact_top),
                     "recall_at_10_spatial_only": recall(np.array(got_spatial), exact_spatial_top),
                     "retrieval_ms": pcts(lat_ms),
                     "energy_pj": {"write_per_memory": w_pj / len(ids), "read_per_query": arr.ledger.read_pj / len(q)},
                     "latency_ns": {"write_per_memory": arr.ledger.write_ns / len(ids),
                                    "read_per_query": arr.ledger.read_ns / len(q)}}
    return out


def energy_vs_dram(presets: dict, n: int) -> dict:
    """The crossbar's modelled energy against keeping the same keys in DRAM and scanning them on a CPU."""
    dram = xb.dram_cost(1, 1, n, KEY)  # one write of one memory; one read scanning n memories
    rows = {}
    for name, p in presets.items():
        w, r = p["energy_pj"]["write_per_memory"], p["energy_pj"]["read_per_query"]
        rows[name] = {"write_pj": w, "read_pj": r,
                      "write_saving": 1 - w / dram["write"], "read_saving": 1 - r / dram["read"],
                      # the agent stores one experience and reads memory once per generated byte
                      "one_write_one_read_saving": 1 - (w + r) / (dram["write"] + dram["read"])}
    return {"dram": {"write_pj": dram["write"], "read_pj": dram["read"], "pj_per_bit": xb.DRAM_PJ_PER_BIT,
                     "fp32_mac_pj": xb.FP32_MAC_PJ}, "crossbar": rows}


def retention(capacity: int = 1000, stream: int = 20_000, high_fraction: float = 0.2, seed: int = 0) -> dict:
    """Memories of mixed importance arrive one a minute; how long each survives before it is forgotten, under
    the seed's forgetting score (SynapticStorage) and under FIFO of the same capacity. One in ten steps
    retrieves (reconsolidates) a random surviving important memory, as an agent returns to what matters."""
    rng = np.random.default_rng(seed)
    clock = Clock(0.0)
    st = SynapticStorage(capacity, clock)
    keys = rng.normal(size=(stream, 32)).astype(np.float32)  # far apart: no associations, retention alone
    high = rng.random(stream) < high_fraction
    prio = np.where(high, rng.uniform(0.8, 1.0, stream), rng.uniform(0.0, 0.4, stream))
    born, died = {}, {}
    alive_before = set()
    for i in range(stream):
        clock.t = 60.0 * i
        mid = st.store(keys[i], keys[i, :4], float(prio[i]))
        born[mid] = i
        now_alive = set(st.memories)
        for gone in alive_before - now_alive:
            died[gone] = i
        alive_before = now_alive
        if i % 10 == 0:
            pool = [m for m in st.memories if high[m]]
            if pool:
                st.reconsolidate([int(rng.choice(pool))])
    # Lifetimes of memories stored in the second half (steady state), censored ones counted at the end.
    steady = [m for m in born if born[m] >= stream // 2 and born[m] < stream - 2 * capacity]
    life = np.array([died.get(m, stream) - born[m] for m in steady], dtype=float)
    hi = np.array([high[m] for m in steady])
    fifo = float(capacity)  # under FIFO every memory lives exactly `capacity` arrivals
    res = {"capacity": capacity, "stream": stream, "high_fraction": high_fraction,
           "minutes_per_memory": 1, "fifo_lifetime": fifo,
           "seed_policy": {"high_importance_mean": float(life[hi].mean()), "high_importance_median": float(np.median(life[hi])),
                           "low_importance_mean": float(life[~hi].mean()), "all_mean": float(life.mean())},
           "high_importance_vs_fifo": float(life[hi].mean() / fifo),
           "high_importance_kept_at_end": float(np.mean([high[m] for m in st.memories]))}
    res["high_importance_longer_than_fifo_percent"] = 100 * (res["high_importance_vs_fifo"] - 1)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m3edge.bench memory-store", description=__doc__.split("\n")[0])
    ap.add_argument("--memories", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--device", default="reram")
    ap.add_argument("-o", "--output", default=str(ROOT / "bench" / "results-memory.json"))
    args = ap.parse_args(argv)
    data = make_data(args.memories)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="m3edge-mem-"))
    try:
        clock = Clock(1_700_000_000.0)
        store, secs, cpu = insert(tmp / "mem", data, args.batch, clock, args.device)
        print(f"inserted {args.memories} in {secs:.1f} s ({cpu:.1f} s CPU): {args.memories / secs:.0f}/s",
              file=sys.stderr)
        store.save_ledger()
        disk = sum(p.stat().st_size for p in (tmp / "mem").iterdir())
        q, qc = queries(data, args.queries)
        # The store programs its crossbar lazily: the first read writes every column (reported apart).
        program_ms = timed(lambda: store.search(q[0], qc[0], k=10))
        wall, cpu_ms = [], []
        for i in range(len(q)):  # the store's own search: durable store, default device, fused top-10
            w, c = timed(lambda: store.search(q[i], qc[i], k=10))
            wall.append(w)
            cpu_ms.append(c)
        st = store.stats()
        clock.t += 3600.0  # read an hour after the last write: drift has acted
        presets = per_preset(store, q, qc, clock.t)
        store.close()
        t0 = time.perf_counter()
        reopened = MemoryStore.open(tmp / "mem")
        open_s = time.perf_counter() - t0
        reopened.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    report = {
        "command": ("OPENBLAS_NUM_THREADS=" + blas + " " if blas else "") + "python -m m3edge.bench memory-store "
                   + " ".join(sys.argv[2:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "blas_threads": blas or "default", "load_avg_1m_start": load_before[0],
                    "load_avg_1m": os.getloadavg()[0]},
        "memories": args.memories, "batch": args.batch, "device": args.device, "key_dim": KEY, "value_dim": VALUE,
        "insert": {"seconds": secs, "per_s": args.memories / secs, "cpu_seconds": cpu,
                   "per_cpu_s": args.memories / cpu, "durable": "one transaction per batch, synchronous=FULL"},
        "crossbar_programming_ms": {"wall": program_ms[0], "cpu": program_ms[1],
                                    "what": "the first read programs all columns (the store writes its array lazily)"},
        "retrieval_top10_ms": pcts(wall) | {"queries": len(q), "cpu": pcts(cpu_ms)},
        "bytes_on_disk": disk, "bytes_per_memory": disk / args.memories, "reopen_s": open_s,
        "associations": st["associations"], "consolidated": st["consolidated"],
        "presets": presets, "energy": energy_vs_dram(presets, args.memories), "retention": retention(),
        "goals": {"insert_per_s": 5000, "p50_ms": 20},
    }
    Path(args.output).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: report[k] for k in ("insert", "retrieval_top10_ms", "bytes_on_disk")}, indent=1))
    for name, p in presets.items():
        e = report["energy"]["crossbar"][name]
        print(f"{name:6} recall@10 {p['recall_at_10']:.3f} (spatial {p['recall_at_10_spatial_only']:.3f}) "
              f"p50 {p['retrieval_ms']['p50']:.1f} ms; energy saving vs DRAM: write {e['write_saving']:.1%}, "
              f"read {e['read_saving']:.4%}, 1:1 {e['one_write_one_read_saving']:.4%}")
    r = report["retention"]
    print(f"retention: important memories live {r['seed_policy']['high_importance_mean']:.0f} arrivals vs FIFO "
          f"{r['fifo_lifetime']:.0f} ({r['high_importance_longer_than_fifo_percent']:+.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
