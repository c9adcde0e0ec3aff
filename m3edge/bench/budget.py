"""A model larger than its expert budget (issue 17): the expert cache holds a fraction of the bundle's expert
bytes, experts are read from their weights files on a miss, and prefetch runs as the runtime offers it.

Measured, each setting in a fresh process on the same bundle and prompts (greedy, batch 1, memory off):
  all-resident    every expert in the cache: the speed to keep
  over budget     each expert I/O (``read`` copies the file, ``mmap`` maps it) x each prefetch mode: hit rate,
                  bytes/s against all-resident, peak RSS against budget + dense weights + 150 MB, load time
  miss cost       from the page cache (the measured load time per loaded expert) and from cold storage: this
                  machine's own cold read (the file dropped from the page cache, then read with O_DIRECT where
                  the filesystem allows it) and a storage model: every loaded expert's bytes at each medium's
                  read speed and at each profile's ``storage_read_mb_s``, added on the decoding thread (serial,
                  no overlap credited to prefetch: an upper bound on the cost).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np

from m3edge.bench.common import prompts
from m3edge.bench.floor import module_bytes
from m3edge.bench.workloads import measure

RSS_SLACK_MB = 150  # the goal's allowance over budget + dense weights: interpreter, numpy, onnxruntime arenas


def _expert_files(bundle_dir) -> list[Path]:
    from m3edge.bundle import open_bundle, weights_files

    b = open_bundle(bundle_dir)
    files = {w for g in b.graphs if g["role"] == "expert" for w in weights_files(g)}
    return [Path(bundle_dir, f) for f in sorted(files)]


def cold_read(files: list[Path], limit: int = 8) -> dict:
    """This machine's read speed for expert files that are not in the page cache: each file is dropped from it
    (``posix_fadvise DONTNEED``; clean pages go), then read with O_DIRECT where the filesystem supports it, else
    with plain reads (then the drop is what makes it cold)."""
    block = 1 << 20
    import mmap

    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    total, secs, direct = 0, 0.0, True
    for p in files[:limit]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0)
        try:
            fd = os.open(p, flags)
        except OSError:
            direct, fd = False, os.open(p, os.O_RDONLY)
        t = time.perf_counter()
        try:
            while True:
                try:
                    n = os.readv(fd, [buf])
                except OSError:  # O_DIRECT refused at read time (tmpfs, some overlays): plain reads
                    if not direct:
                        raise
                    direct = False
                    os.close(fd)
                    fd = os.open(p, os.O_RDONLY)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    t = time.perf_counter()
                    continue
                total += n
                if n < block:
                    break
        finally:
            os.close(fd)
        secs += time.perf_counter() - t
    return {"files": min(limit, len(files)), "bytes": total, "seconds": secs,
            "mb_s": total / 1e6 / secs if secs else None, "o_direct": direct, "filesystem": _filesystem(files[0])}


def _filesystem(p: Path) -> str:
    try:
        r = subprocess.run(["df", "--output=fstype", str(p)], capture_output=True, text=True, timeout=10)
        return r.stdout.split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def storage_model(row: dict, expert_mean_bytes: float, mb_s: float) -> dict:
    """Bytes/s if every expert this row loaded had come from storage at ``mb_s``: the measured time plus each
    load's bytes at that speed, on the decoding thread."""
    loads = row["cache"]["misses"] + row["cache"]["prefetched"]
    extra = loads * expert_mean_bytes / (mb_s * 1e6)
    return {"mb_s": mb_s, "loads": loads, "storage_s": extra,
            "bytes_per_s": row["bytes"] / (row["seconds"] + extra)}


def median_run(runs: list[dict]) -> dict:
    """A setting's runs as one row: the run of median speed (its cache counts and timings), every run's speed
    beside it, and the highest peak RSS of any run (the limit must hold in each)."""
    speeds = [r["bytes"] / r["seconds"] for r in runs]
    mid = runs[int(np.argsort(speeds, kind="stable")[(len(speeds) - 1) // 2])]
    return mid | {"bytes_per_s": mid["bytes"] / mid["seconds"], "bytes_per_s_runs": speeds,
                  "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def chosen(b: dict) -> dict | None:
    """The setting a device should run: the fastest of those within the RSS limit (the fastest of all when
    none is); None when no setting was measured."""
    ok = [r for r in b.get("rows", []) if "skipped" not in r]
    within = [r for r in ok if r.get("rss_within_limit", True)]
    return max(within or ok, key=lambda r: r["bytes_per_s"]) if ok else None


def over_budget(cfg, models: dict, progress=None) -> dict:
    """The over-budget run of ``cfg.budget`` on an artefact the suite built; skipped (with why) otherwise."""
    from m3edge import targets
    from m3edge.config import ModelConfig

    plan = cfg.budget
    if plan is None:
        return {"skipped": "not requested"}
    arts = models.get(plan.model, {}).get("artefacts", {})
    key = next((k for k in plan.bundles if "path" in arts.get(k, {})), None)
    if key is None:
        return {"skipped": f"none of {', '.join(plan.bundles)} of model {plan.model!r} was built in this run"}
    bundle = arts[key]["path"]
    mb = module_bytes(bundle)
    experts = np.asarray(mb["experts"], dtype=np.float64)
    expert_total = float(experts.sum())
    dense_total = float(sum(mb["dense"].values()))
    budget = int(expert_total * plan.fraction)
    mcfg = ModelConfig.from_dict(models[plan.model]["config"])
    base = {"engine": "runtime", "bundle": bundle, "threads": cfg.threads, "workload": "budget",
            "context": mcfg.context, "bytes": plan.bytes, "passes": plan.passes,
            "prompts": [p.hex() for p in prompts(Path(cfg.data_dir), plan.prompts)]}
    say = progress or (lambda m: None)
    res = {"model": plan.model, "bundle": key, "fraction": plan.fraction, "budget_bytes": budget,
           "expert_bytes": expert_total, "dense_bytes": dense_total, "expert_mean_bytes": float(experts.mean()),
           "rss_limit_mb": (budget + dense_total) / 2 ** 20 + RSS_SLACK_MB, "rss_slack_mb": RSS_SLACK_MB}
    # Each setting ``cfg.runs`` times in fresh processes, the settings interleaved with the all-resident run so a
    # slow spell of a shared host lands on all of them; a setting reports its median run (one 4 s run swung a
    # setting from 20% to 30% of all-resident between bench runs).
    settings = [None] + [(io, pf) for io in plan.io for pf in plan.prefetch]
    runs: dict = {s: [] for s in settings}
    failed: dict = {}
    for _ in range(max(1, cfg.runs)):
        for s in settings:
            if s in failed:
                continue
            extra = {} if s is None else {"cache_bytes": budget, "expert_io": s[0], "prefetch": s[1]}
            try:
                runs[s].append(measure(base | extra, timeout=3600))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                failed[s] = str(e)
    if None in failed:
        return res | {"skipped": f"all-resident worker failed: {failed[None]}"}
    res["all_resident"] = median_run(runs[None])
    full_speed = res["all_resident"]["bytes_per_s"]
    say(f"budget: all resident {full_speed:.1f} bytes/s, RSS {res['all_resident']['peak_rss_mb']:.0f} MB")
    rows = []
    for io, pf in settings[1:]:
        if (io, pf) in failed:
            rows.append({"io": io, "prefetch": pf, "skipped": f"worker failed: {failed[io, pf]}"})
            continue
        r = median_run(runs[io, pf])
        loads = r["cache"]["misses"] + r["cache"]["prefetched"]
        row = {"io": io, "prefetch": pf, **r, "vs_all_resident": r["bytes_per_s"] / full_speed,
               "rss_within_limit": r["peak_rss_mb"] <= res["rss_limit_mb"],
               "load_ms_per_expert": r["cache"]["load_ms"] / loads if loads else None,
               "same_outputs": r["outputs_sha"] == res["all_resident"]["outputs_sha"]}
        row["storage"] = [storage_model(row, res["expert_mean_bytes"], s) | {"medium": name}
                          for name, s in plan.storage_mb_s]
        rows.append(row)
        say(f"budget {io}/prefetch {pf}: hit rate {r['cache']['hit_rate']:.2f}, {row['bytes_per_s']:.1f} bytes/s "
            f"({row['vs_all_resident']:.0%} of all-resident), RSS {r['peak_rss_mb']:.0f} MB "
            f"(limit {res['rss_limit_mb']:.0f})")
    res["rows"] = rows
    best = chosen(res)
    if best is not None:
        res["chosen"] = {"io": best["io"], "prefetch": best["prefetch"]}
        res["profiles"] = [storage_model(best, res["expert_mean_bytes"], t.storage_read_mb_s)
                           | {"target": t.name} for t in targets.all_targets()]
    try:
        res["cold_read"] = cold_read(_expert_files(bundle))
    except OSError as e:
        res["cold_read"] = {"skipped": f"{type(e).__name__}: {e}"}
    if best is not None and res["cold_read"].get("mb_s"):
        res["cold_read"]["model"] = storage_model(best, res["expert_mean_bytes"], res["cold_read"]["mb_s"])
    return res
