"""The full suite (issue 8, issue 17): every engine side by side on each model, the bandwidth floor and every
sweep, into one JSON that ``m3edge.bench.report`` turns into the performance tables and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3edge.bench.artefacts import BUNDLES, build_artefacts
from m3edge.bench.common import machine, prompts, spread
from m3edge.bench.floor import (DENSE_ROLES, all_weights_per_token, bytes_per_token, floor_bytes_per_s,
                                memory_bandwidth, module_bytes)
from m3edge.bench.goals import goals
from m3edge.bench.budget import over_budget
from m3edge.bench.sweeps import batching_bench, cache_sweep
from m3edge.bench.workloads import measure


@dataclass(frozen=True)
class ModelPlan:
    """One model the full suite measures."""

    name: str
    checkpoint: str | None = None  # a trained checkpoint (the small reference) ...
    preset: str | None = None  # ... or a random-init preset
    overrides: dict = field(default_factory=dict)  # config changes to the preset: a documented subset
    buckets: tuple | None = None  # (token buckets, capacity buckets) for its bundles; None: the profiles'
    prompts: int = 4
    bytes: int = 64  # greedy bytes per prompt at batch 1
    batch: int = 16  # streams decoded in lockstep
    batch_bytes: int = 32
    passes: int = 1  # timed passes per process (each run is a fresh process)
    parity_tokens: int = 64  # eval tokens for the monolithic graph's parity check, at each of 3 batch sizes
    skip: dict = field(default_factory=dict)  # artefact key -> why this model does not build it
    note: str = ""


@dataclass(frozen=True)
class BudgetPlan:
    """A model larger than its expert budget (issue 17): the budget holds ``fraction`` of the bundle's expert
    bytes; experts are read from their weights files on a miss, each way in ``io`` and each prefetch mode."""

    model: str = "seed"
    bundles: tuple = ("bundle-int8", "bundle-fp32")  # the first of these the run built (a Pi's INT8 bundle first)
    fraction: float = 0.25
    io: tuple = ("read", "mmap")
    # "thread" is left out by default: on 2 cores a background loader stalls the decoding thread at every
    # onnxruntime call (the GIL) more than it hides (small reference, docs/performance.md).
    prefetch: tuple = ("off", "inline")
    prompts: int = 2
    bytes: int = 64
    passes: int = 2  # timed passes per process: the cache's steady state, not one pass's luck; runs: cfg.runs
    storage_mb_s: tuple = (("SD card, slow (UHS-I class 10)", 40.0), ("SD card, fast (Pi 5 SDR104)", 85.0),
                           ("NVMe on a Pi 5 (PCIe 2.0 x1)", 800.0))


@dataclass(frozen=True)
class FullConfig:
    models: tuple
    work_dir: str = "runs/bench"
    data_dir: str = "calibration_data"
    threads: int = 2
    runs: int = 3  # fresh processes per engine row: figures are medians with min-max spread
    bundles: tuple = BUNDLES  # the bundles each model is exported to and measured on, one row each
    rebuild: bool = False  # re-export artefacts that exist already
    sweeps_model: str | None = "small"  # the cache and batching sweeps run on this model (None: skip)
    cache_sizes: tuple = (1, 8, 16, 32, 64)
    policies: tuple = ("lru", "lfu")
    cache_prompts: int = 4
    cache_bytes: int = 128  # per prompt: long enough that decoding, not the prompt's batch, sets the hit rate
    cache_passes: int = 2
    callers: tuple = (1, 4, 16, 32)
    steps_per_caller: int = 160  # a 16-caller batched run lasts ~0.6 s: steady state, not threads starting
    batching_repeats: int = 3
    max_queue_delay_ms: float = 2.0
    bandwidth_mb: int = 512
    memory_store: bool = True
    memory_store_args: tuple = ()  # passed to m3edge.bench.memory_store
    skip: tuple = ()  # artefact keys not to build: their rows are reported as skipped
    budget: BudgetPlan | None = BudgetPlan()  # None: no over-budget run


SEED_NOTE = ("the seed preset as specified: d_model 1024, 2 MoE layers x 64 experts, top-4 (726 M parameters, "
             "2.9 GB fp32), exported with each profile's own buckets as a user would. Random init, so its routing "
             "is not a trained model's.")


FULL = FullConfig(models=(
    ModelPlan("small", checkpoint="checkpoints/small", note="the trained reference (checkpoints/small)"),
    # 64 bytes a prompt, as `small`: with 16, two full runs of the same code gave the INT8 runtime 1.7x and 2.7x
    # the fp32 one (32 steps a process are too few against this host's drift).
    # The seed's LiteRT bundle is built too: 11 minutes (a seed expert converts in 3.5-7.6 s,
    # bench/results-litert-profile-seed-slice.json), not 16x small's 12 as once guessed.
    ModelPlan("seed", preset="seed", prompts=2, bytes=64, batch=16, batch_bytes=4, parity_tokens=16, note=SEED_NOTE),
))


ROW_ENGINE = {"torch-eager": "torch", "onnx-monolithic": "monolithic", "m3edge-runtime": "runtime",
              "m3edge-runtime-litert": "runtime"}


@dataclass(frozen=True)
class Row:
    engine: str  # as reported
    precision: str
    artefact: str  # the artefact key it runs on


def rows_for(bundles) -> tuple:
    """torch eager and the monolithic graph, then one runtime row per bundle, in the bundles' order."""
    return ((Row("torch-eager", "fp32", "checkpoint"), Row("onnx-monolithic", "fp32", "monolithic"))
            + tuple(Row(b.engine, b.row_precision, b.key) for b in bundles))


ROWS = rows_for(BUNDLES)


def _artefact_arg(key: str, path) -> dict:
    if key == "checkpoint":
        return {"checkpoint": str(path)}
    if key == "monolithic":
        return {"onnx": str(path)}
    return {"bundle": str(path)}


def _module_bytes(artefacts: dict) -> dict:
    """Weight bytes per module for each bundle (floor.module_bytes); torch and the monolithic graph read what
    the fp32 bundle holds."""
    out = {key: module_bytes(path) for key, path in artefacts.items() if key.startswith("bundle-")}
    if "bundle-fp32" in out:
        out["checkpoint"] = out["monolithic"] = out["bundle-fp32"]
    return out


def _floor_fields(mb: dict, touched, batch: int, bandwidth_gbps: float, speed: float) -> dict:
    """The old expert-only floor and the all-weights one, as bytes per token, a speed and a ratio to ``speed``."""
    w = all_weights_per_token(mb, touched, batch)
    out = {"expert_bytes_per_token": w["experts"], "dense_bytes_per_token": w["dense"],
           "all_bytes_per_token": w["all"],
           "floor_bytes_per_s": floor_bytes_per_s(w["experts"], bandwidth_gbps),
           "floor_all_bytes_per_s": floor_bytes_per_s(w["all"], bandwidth_gbps)}
    out["floor_ratio"] = out["floor_bytes_per_s"] / speed  # x slower than the (expert-only) floor
    out["floor_all_ratio"] = out["floor_all_bytes_per_s"] / speed
    return out


def run_model(plan: ModelPlan, cfg: FullConfig, bandwidth_gbps: float, progress=None) -> dict:
    """Every engine row for one model: ``cfg.runs`` fresh processes each, interleaved so that a slow spell
    of a shared machine spreads over all rows instead of landing on one."""
    from m3edge.config import ModelConfig

    report = {"name": plan.name, "note": plan.note}
    arts = build_artefacts(plan, cfg, report, progress)
    mcfg = ModelConfig.load(Path(arts["checkpoint"]) / "config.json")
    report["config"] = mcfg.to_dict()
    n_streams = max(plan.prompts, plan.batch)
    ps = [p.hex() for p in prompts(Path(cfg.data_dir), n_streams)]
    base = {"threads": cfg.threads, "workload": "decode", "context": mcfg.context, "passes": plan.passes,
            "prompts": ps[:plan.prompts], "batch_prompts": ps[:plan.batch], "bytes": plan.bytes,
            "batch": plan.batch, "batch_bytes": plan.batch_bytes, "temperature": 0.0}
    rows_plan = rows_for(cfg.bundles)
    results: dict = {row: [] for row in rows_plan}
    skipped: dict = {}
    for run in range(cfg.runs):
        for row in rows_plan:
            if row.artefact not in arts:
                skipped[row] = report["artefacts"][row.artefact]["skipped"]
                continue
            if row in skipped:
                continue
            args = base | {"engine": ROW_ENGINE[row.engine]} | _artefact_arg(row.artefact, arts[row.artefact])
            try:
                r = measure(args, timeout=1800)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                skipped[row] = f"worker failed: {e}"
                continue
            results[row].append(r)
            if progress:
                progress(f"{plan.name} run {run + 1}/{cfg.runs}: {row.engine} {row.precision}: "
                         f"{np.median(r['batch1']['bytes_per_s_runs']):.1f} bytes/s at batch 1, "
                         f"{np.median(r['batched']['bytes_per_s_runs']):.1f} at batch {plan.batch}")
    mbs = _module_bytes(arts)
    fp32_runs = next((results[r] for r in rows_plan if r.artefact == "bundle-fp32"), [])
    fp32_touched = {ph: fp32_runs[0][ph]["touched"] for ph in ("batch1", "batched")} if fp32_runs else {}
    rows = []
    for row in rows_plan:
        if row in skipped or not results[row]:
            rows.append({"model": plan.name, "engine": row.engine, "precision": row.precision,
                         "skipped": skipped.get(row, "not measured")})
            continue
        rs = results[row]
        for phase in ("batch1", "batched"):
            batch = rs[0][phase]["streams"]
            speed = spread([v for r in rs for v in r[phase]["bytes_per_s_runs"]])
            cold = spread([r["cold_start_s"] for r in rs])
            out = {"model": plan.name, "engine": row.engine, "precision": row.precision, "batch": batch,
                   "bytes_per_s": speed["median"], "bytes_per_s_spread": speed,
                   "cold_start_s": cold["median"], "cold_start_spread": cold,
                   "peak_rss_mb": spread([r[phase]["peak_rss_mb"] for r in rs])["median"],
                   "outputs_sha": rs[0][phase]["outputs_sha"]}
            # torch and the monolithic graph route like the fp32 runtime (identical greedy outputs): its routing
            touched = rs[0][phase].get("touched") or fp32_touched.get(phase)
            if row.artefact in mbs and touched is not None:
                out |= _floor_fields(mbs[row.artefact], touched, batch, bandwidth_gbps, out["bytes_per_s"])
            rows.append(out)
    report["rows"] = rows
    fp32 = [r for r in rows if r.get("precision") == "fp32" and r.get("batch") == 1 and "outputs_sha" in r]
    report["fp32_outputs_identical"] = len({r["outputs_sha"] for r in fp32}) == 1 if fp32 else None
    report["weight_bytes"] = {k: {"dense": v["dense"], "experts": int(np.sum(v["experts"])),
                                  "precision": v["precision"]} for k, v in mbs.items() if k.startswith("bundle-")}
    report["target_floors"] = target_floors(mbs, fp32_touched.get("batch1"))
    report["bundle_bytes"] = {k: v["bytes"] for k, v in report["artefacts"].items() if "bytes" in v}
    return report


def _role_sources(mbs: dict) -> dict:
    """(role, precision) -> (weight bytes, the bundle they come from): experts as a [layer][expert] matrix,
    dense roles summed over layers. The first bundle built at that precision for that role wins (the onnx
    bundles come before LiteRT's in ``BUNDLES``)."""
    src: dict = {}
    for key, mb in mbs.items():
        if not key.startswith("bundle-"):
            continue
        for role, precs in mb["precision"].items():
            if len(precs) == 1:
                src.setdefault((role, precs[0]), (mb["experts"] if role == "expert" else mb["dense"].get(role, 0), key))
    return src


def target_floors(mbs: dict, touched) -> list[dict]:
    """Each target profile's floor at batch 1: its DRAM bandwidth over the weight bytes a token reads at the
    precision its profile gives each role, the old expert-only figure beside the all-weights one. Bytes are
    measured bundles' (a role at fp16 with no fp16 bundle measured: the fp32 bytes / 2, and it says so)."""
    from m3edge import targets

    if touched is None or "bundle-fp32" not in mbs:
        return []
    src = _role_sources(mbs)
    out = []
    for t in targets.all_targets():
        parts, basis, sources = {}, [], {}
        for role in ("expert",) + DENSE_ROLES:
            p = t.precision.get(role, "fp32")
            if (role, p) in src:
                val, sources[role] = src[role, p]
                factor = 1.0
            else:
                (val, sources[role]), factor = src[role, "fp32"], (0.5 if p == "fp16" else 1.0)
                basis.append(f"{role} {p}: {'fp32 bytes / 2' if p == 'fp16' else 'fp32 bytes'} (no {p} bundle)")
            if role == "expert":
                parts[role] = bytes_per_token(val, touched) * factor
            else:
                parts[role] = val * factor
        dense = sum(v for r, v in parts.items() if r != "expert")
        out.append({"target": t.name, "dram_bandwidth_gbps": t.dram_bandwidth_gbps, "precision": t.precision["expert"],
                    "precisions": dict(t.precision), "expert_bytes_per_token": parts["expert"],
                    "dense_bytes_per_token": dense, "all_bytes_per_token": parts["expert"] + dense,
                    "bytes_basis": "; ".join(basis) or "measured bundles", "bytes_from": sources,
                    "floor_bytes_per_s": floor_bytes_per_s(parts["expert"], t.dram_bandwidth_gbps),
                    "floor_all_bytes_per_s": floor_bytes_per_s(parts["expert"] + dense, t.dram_bandwidth_gbps)})
    return out


def memory_store_bench(cfg: FullConfig, progress=None) -> dict:
    """The memory-store benchmark of its own issue (``m3edge.bench.memory_store``), in its own process. Its
    result goes to the work dir (bench/results-memory.json is that issue's own committed result)."""
    if not cfg.memory_store:
        return {"skipped": "not requested"}
    out = Path(cfg.work_dir).resolve() / "memory_store.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "m3edge.bench", "memory-store", *cfg.memory_store_args, "-o", str(out)],
                       capture_output=True, text=True, timeout=1800,
                       env=os.environ | {"OMP_NUM_THREADS": str(cfg.threads)})
    if r.returncode != 0 or not out.is_file():
        return {"skipped": f"memory-store failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}"}
    if progress:
        progress(f"memory store: {time.perf_counter() - t:.0f} s")
    return json.loads(out.read_text()) | {"source": "m3edge.bench.memory_store", "run_s": time.perf_counter() - t}


def _settings(cfg: FullConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)  # nested dataclasses (models, bundles, budget) become dicts too


def run_full(cfg: FullConfig = FULL, progress=None, command: str = "", partial=None) -> dict:
    """Every model, the sweeps, the memory store and the over-budget run. ``partial(res)`` is called after each
    model and stage with the result so far (the CLI writes it, so a run cut short keeps what it measured)."""
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    res = {"suite": "full", "machine": machine(), "threads": cfg.threads,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": _settings(cfg)}
    if command:
        res["command"] = command
    res["memory_bandwidth"] = memory_bandwidth(cfg.bandwidth_mb)  # first, before any of our workers run
    say(f"memory bandwidth: {res['memory_bandwidth']['median']:.1f} GB/s")
    res["models"], res["rows"] = {}, []
    for plan in cfg.models:
        m = run_model(plan, cfg, res["memory_bandwidth"]["median"], progress) | {
            "measured": {"started": res["started"], "command": command or "run_full",
                         "memory_bandwidth_gbps": res["memory_bandwidth"]["median"]}}
        res["models"][plan.name] = m
        res["rows"] += m["rows"]
        if partial:
            partial(res | {"partial": f"measured up to model {plan.name}", "goals": goals(res),
                           "duration_s": time.perf_counter() - t0})
    sweep_bundle = res["models"].get(cfg.sweeps_model, {}).get("artefacts", {}).get("bundle-fp32", {}).get("path")
    if sweep_bundle:
        from m3edge.bundle import open_bundle

        n_experts = open_bundle(sweep_bundle).manifest["model_config"]["n_experts"]
        base = {"threads": cfg.threads, "bytes": cfg.cache_bytes,
                "prompts": [p.hex() for p in prompts(Path(cfg.data_dir), cfg.cache_prompts)]}
        res["cache_sweep"] = {"model": cfg.sweeps_model, "n_experts": n_experts, "passes": cfg.cache_passes,
                              "rows": cache_sweep(sweep_bundle, base, n_experts, cfg.cache_sizes, cfg.policies,
                                                  passes=cfg.cache_passes, warmup=1, progress=progress)}
        res["batching"] = batching_bench(sweep_bundle, Path(cfg.data_dir), cfg.callers, cfg.steps_per_caller,
                                         cfg.threads, cfg.max_queue_delay_ms, cfg.batching_repeats, progress) \
            | {"model": cfg.sweeps_model}
    else:
        reason = (f"no fp32 bundle of model {cfg.sweeps_model!r} in this run" if cfg.sweeps_model
                  else "not requested in this run")
        res["cache_sweep"], res["batching"] = {"skipped": reason}, {"skipped": reason}
    res["memory_store"] = memory_store_bench(cfg, progress)
    res["budget"] = over_budget(cfg, res["models"], progress)
    res["goals"] = goals(res)
    res["duration_s"] = time.perf_counter() - t0
    return res


def merge_results(old: dict, new: dict) -> dict:
    """``new`` with the models of ``old`` it did not measure (in ``old``'s order, then new ones), and ``old``'s
    sweeps, memory store and over-budget run where ``new`` skipped them; goals judged again on the whole. A
    model carried over keeps its own ``measured`` record (an older result without one gets ``old``'s)."""
    models = {}
    for name, m in old.get("models", {}).items():
        models[name] = new["models"].get(name) or m | {"measured": m.get("measured") or {
            "started": old.get("started"), "command": old.get("command", "make bench"),
            "memory_bandwidth_gbps": old.get("memory_bandwidth", {}).get("median")}}
    models |= {k: v for k, v in new["models"].items() if k not in models}
    out = dict(new) | {"models": models, "rows": [r for m in models.values() for r in m["rows"]]}
    for key in ("cache_sweep", "batching", "memory_store", "budget", "litert_profile"):
        if "skipped" in new.get(key, {"skipped": "absent"}) and key in old and "skipped" not in old[key]:
            out[key] = old[key] | {"carried_over_from": old.get("started")}
    out["merged_from"] = {"started": old.get("started"), "command": old.get("command")}
    out["goals"] = goals(out)
    return out


def format_full(res: dict) -> str:
    lines = [f"machine: {res['machine']['processor']}, {res['machine']['cpus']} cpus, {res['threads']} threads; "
             f"memory bandwidth {res['memory_bandwidth']['median']:.1f} GB/s"]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['model']:<6} {r['engine']:<22} {r['precision']:<5} skipped: {r['skipped']}")
            continue
        s = r["bytes_per_s_spread"]
        floor = f", floor x{r['floor_ratio']:.1f}" if "floor_ratio" in r else ""
        lines.append(f"{r['model']:<6} {r['engine']:<22} {r['precision']:<5} batch {r['batch']:>3} "
                     f"{r['bytes_per_s']:>9.1f} bytes/s [{s['min']:.1f}-{s['max']:.1f}], cold start "
                     f"{r['cold_start_s']:.2f} s, RSS {r['peak_rss_mb']:.0f} MB{floor}"
                     + (f" (all weights x{r['floor_all_ratio']:.1f})" if "floor_all_ratio" in r else ""))
    for g in res.get("goals", []):
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "MISSED")
        lines.append(f"goal {state}: {g['goal']} (measured {g['measured']}, target {g['target']})")
    return "\n".join(lines)
