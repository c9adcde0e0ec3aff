"""m3edge bench runs every configuration through its real path; no assertion on time."""

import json

from m3edge.bench import format_report, run_bench

from conftest import DATA, run_cli


def test_engines_do_the_same_work_and_the_sweep_is_reported(tiny_bundle):
    r = run_bench(tiny_bundle, DATA, threads=1, n_prompts=1, n_bytes=4, cache_sizes=(1, 4), policies=("lru",))
    torch_row, runtime_row = r["rows"]
    assert (torch_row["engine"], runtime_row["engine"]) == ("torch-eager", "m3edge-runtime")
    assert torch_row["outputs_sha"] == runtime_row["outputs_sha"]  # identical greedy bytes: equal work
    assert all(row["bytes_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in r["rows"])
    assert [(s["experts_per_layer"], s["prefetch"]) for s in r["cache_sweep"]] == [
        (1, "off"), (1, "thread"), (1, "inline"), (4, "off"), (4, "thread"), (4, "inline")]
    assert all(0 <= s["hit_rate"] <= 1 for s in r["cache_sweep"])
    assert "torch-eager" in format_report(r)


def test_bench_cli_json(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", tiny_bundle, "--prompts", "1", "--bytes", "2", "--cache-sizes", "", "--no-torch",
                "--json", "-o", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) >= {"machine", "threads", "rows"} and res["threads"] == 2
    assert set(res["rows"][0]) >= {"engine", "precision", "batch", "bytes_per_s", "peak_rss_mb"}
    assert json.loads(out.read_text())["rows"] == res["rows"]


# --- the full suite (issue 8) ------------------------------------------------------------------------------

import pytest  # noqa: E402

from m3edge.bench import FullConfig, ModelPlan, bytes_per_token, floor_bytes_per_s, goals, run_full  # noqa: E402
from m3edge.bench.suite import BudgetPlan  # noqa: E402


def load_report():
    from m3edge.bench import report

    return report


def test_floor_arithmetic():
    eb = [[100, 200], [300, 400]]  # bytes of expert (layer, expert)
    touched = [[1.0, 0.0], [0.5, 0.5]]  # fraction of steps in which each expert ran
    assert bytes_per_token(eb, touched) == 100 + 150 + 200
    assert bytes_per_token(eb, touched, tokens_per_step=2) == 225  # a batch reads each expert once
    assert floor_bytes_per_s(450, 0.45) == pytest.approx(1e6)  # 0.45 GB/s over 450 bytes a token
    with pytest.raises(ValueError):
        bytes_per_token(eb, [[1.0, 0.0]])
    with pytest.raises(ValueError):
        floor_bytes_per_s(0, 10)


def small_result():
    """A hand-made full-suite result: what report.py reads."""
    def row(engine, precision, batch, speed, **extra):
        return {"model": "m", "engine": engine, "precision": precision, "batch": batch, "bytes_per_s": speed,
                "bytes_per_s_spread": {"median": speed, "min": speed * 0.9, "max": speed * 1.1, "runs": [speed]},
                "cold_start_s": 0.5, "peak_rss_mb": 100.0, "outputs_sha": "x"} | extra
    rows = [row("torch-eager", "fp32", 1, 100.0), row("onnx-monolithic", "fp32", 1, 150.0),
            row("m3edge-runtime", "int8", 1, 250.0, expert_bytes_per_token=1e6, floor_bytes_per_s=1000.0,
                floor_ratio=4.0, dense_bytes_per_token=1e6, floor_all_bytes_per_s=500.0, floor_all_ratio=2.0),
            {"model": "m", "engine": "m3edge-runtime-litert", "precision": "int8", "skipped": "no tflite profile"}]
    res = {"machine": {"processor": "cpu", "platform": "linux", "cpus": 2, "python": "3.11"}, "threads": 2,
           "started": "2026-01-01T00:00:00", "duration_s": 60.0, "settings": {"runs": 3},
           "memory_bandwidth": {"median": 10.0, "min": 9.0, "max": 11.0, "runs": [10.0], "method": "copy"},
           "models": {"m": {"note": "a test model", "rows": rows, "fp32_outputs_identical": True,
                            "config": {"d_model": 8, "n_layers": 1, "n_experts": 4, "top_k": 2},
                            "artefacts": {"checkpoint": {"path": "c", "bytes": 1000, "build_s": 0.0},
                                          "bundle-int8": {"path": "b", "bytes": 500, "build_s": 3.0,
                                                          "build_wall_s": 3.0, "build_peak_rss_mb": 2048.0},
                                          "bundle-litert": {"skipped": "no tflite profile"}},
                            "accuracy": {"int8": {"passed": False, "top1_agreement": 0.95, "routing_agreement": 0.98,
                                                  "bits_per_byte_increase": 0.001}},
                            "target_floors": [{"target": "rpi5", "dram_bandwidth_gbps": 17, "precision": "int8",
                                               "expert_bytes_per_token": 1e6, "bytes_basis": "measured bundles",
                                               "floor_bytes_per_s": 17000.0, "dense_bytes_per_token": 1e6,
                                               "all_bytes_per_token": 2e6, "floor_all_bytes_per_s": 8500.0}]}},
           "rows": rows,
           "cache_sweep": {"model": "m", "n_experts": 4, "passes": 2, "rows": [
               {"experts_per_layer": s, "policy": "lfu", "prefetch": "off", "hit_rate": h, "bytes_per_s": v}
               for s, h, v in ((1, 0.5, 50.0), (4, 1.0, 100.0))]},
           "batching": {"model": "m", "steps_per_caller": 4, "max_queue_delay_ms": 2.0, "repeats": 1,
                        "single_batch_compute_ms": {"1": 1.0, "16": 4.0},
                        "rows": [{"callers": 16, "batching": False, "steps_per_s": 100.0, "p50_ms": 1.0, "p99_ms": 20.0},
                                 {"callers": 16, "batching": True, "steps_per_s": 200.0, "p50_ms": 1.0, "p99_ms": 9.0,
                                  "avg_batch_size": 4.0}]},
           "memory_store": {"memories": 1000, "batch": 100, "device": "reram", "bytes_on_disk": 10 ** 6,
                            "bytes_per_memory": 1000.0, "insert": {"per_s": 6000.0},
                            "retrieval_top10_ms": {"p50": 25.0, "p99": 40.0},
                            "goals": {"insert_per_s": 5000, "p50_ms": 20}}}
    res["goals"] = goals(res)
    return res


def test_goals_are_judged_from_the_result():
    g = {x["goal"]: x for x in small_result()["goals"]}
    assert g["m: runtime INT8 >= 2x torch eager at batch 1"]["met"] is True  # 2.5x
    assert g["m: runtime INT8 ahead of the monolithic onnx export at batch 1"]["measured"] == pytest.approx(250 / 150)
    assert g["m: runtime int8 within 3x of this machine's bandwidth floor at batch 1"]["met"] is False  # 4x
    assert g["batching: 16 callers get >= 3x the unbatched throughput"]["met"] is False  # 2x
    assert g["batching: 16 callers' p99 <= max queue delay + 2 x single-batch compute"]["met"] is True  # 9 <= 10


def test_report_regenerates_readme_tables_and_plots(tmp_path):
    report = load_report()
    res = small_result()
    (tmp_path / "r.json").write_text(json.dumps(res))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\nhand-written\n\n{report.BEGIN}\nstale\n{report.END}\n\n## Next\n")
    front = tmp_path / "FRONT.md"
    front.write_text(f"# y\n\n{report.HEAD_BEGIN}\nold\n{report.HEAD_END}\nafter\n")
    args = [str(tmp_path / "r.json"), "--readme", str(readme), "--front", str(front)]
    assert report.main(args + ["--check"]) == 1  # stale
    assert report.main(args + ["--plots", str(tmp_path / "plots")]) == 0
    head = front.read_text()  # the headline: one model at batch 1, against torch and the fp32 runtime
    assert "old" not in head and head.endswith(f"{report.HEAD_END}\nafter\n")
    assert "| m3edge runtime | int8 | 250 | 2.5x |" in head and "from the all-weights floor" in head
    text = readme.read_text()
    assert "stale" not in text and "hand-written" in text and text.endswith("## Next\n")
    assert "| m3edge runtime | int8 | 1 | 250 (225-275) | 2.5x |" in text
    assert "skipped: no tflite profile" in text and "- **missed**: m: runtime int8 within 3x" in text
    assert "| bundle INT8 (onnxruntime) | 0.0 MB | 3.00 s | 2.00 GB | **missed** (built with --allow-accuracy-drop" in text
    # the old expert-only floor beside the all-weights one, on this machine and on each target
    assert "| 1.0 MB | 1,000 | 4.0x | 1.0 MB | 500 | 2.0x |" in text
    assert "| rpi5 | 17.0 | int8 | 1.0 MB | 17,000 | 1.0 MB | 8,500 | measured bundles |" in text
    assert "top-1 95.0%, routing 98.0% |" in text  # a bundle that failed its gates says so next to its speed
    assert "(goal <= 3.00x; 1.3x over it)" in text  # by how much
    assert "- **met**: memory store: >= 5,000 durable inserts/s" in text  # issue 6's goals, from its own result
    assert "- **missed**: memory store: top-10 retrieval p50 <= 20 ms at 1,000 memories (reram)" in text
    assert report.main(args + ["--check"]) == 0  # in sync
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["batching.png", "cache.png", "engines.png"]
    assert "measured 2026-01-01 (median of 3" in head
    # a model kept from an earlier run (--merge) is dated by its own run, not by the file's last one
    res["models"]["m"]["measured"] = {"started": "2025-12-31T23:00:00", "command": "earlier", "memory_bandwidth_gbps": 9.0}
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert report.main(args + ["--plots", ""]) == 0 and "measured 2025-12-31 (median of 3" in front.read_text()


def test_full_suite_structure_on_a_tiny_model(tiny_checkpoint, tmp_path):
    plan = ModelPlan("tiny", checkpoint=str(tiny_checkpoint), buckets=((1, 8), (2, 8)), prompts=2, bytes=2,
                     batch=2, batch_bytes=2, note="tiny")
    cfg = FullConfig(models=(plan,), work_dir=str(tmp_path / "work"), data_dir=str(DATA), runs=1,
                     sweeps_model="tiny", cache_sizes=(2, 8), policies=("lfu",), cache_prompts=1, cache_bytes=2,
                     cache_passes=1, callers=(1, 2), steps_per_caller=2, batching_repeats=1, bandwidth_mb=8,
                     memory_store=False, skip=("bundle-litert",),  # LiteRT conversion: minutes, not seconds
                     budget=BudgetPlan(model="tiny", bundles=("bundle-int8",), io=("read", "mmap"), prefetch=("off",),
                                       prompts=1, bytes=4))
    res = run_full(cfg)
    m = res["models"]["tiny"]
    measured = {(r["engine"], r["precision"], r["batch"]) for r in m["rows"] if "skipped" not in r}
    assert measured >= {(e, p, b) for e, p in (("torch-eager", "fp32"), ("onnx-monolithic", "fp32"),
                                               ("m3edge-runtime", "fp32"), ("m3edge-runtime", "int8"),
                                               ("m3edge-runtime", "int8 (host-cpu)"))
                        for b in (1, 2)}
    litert = [r for r in m["rows"] if r["engine"] == "m3edge-runtime-litert"]
    assert litert == [{"model": "tiny", "engine": "m3edge-runtime-litert", "precision": "int8",
                       "skipped": "not requested in this run's settings"}]  # a row that is not measured says why
    assert m["fp32_outputs_identical"] is True  # torch, monolithic and runtime decode the same bytes
    assert m["monolithic_parity"]["logits_max_abs_diff"] <= 1e-4
    from m3edge import checkpoint  # the graph says which weights it was built from (a retrained one is rebuilt)
    assert m["monolithic_parity"]["weights_sha256"] == checkpoint.read_meta(tiny_checkpoint)[1]["weights_sha256"]
    rt = next(r for r in m["rows"] if (r["engine"], r["precision"], r.get("batch")) == ("m3edge-runtime", "fp32", 1))
    assert rt["floor_ratio"] == pytest.approx(rt["floor_bytes_per_s"] / rt["bytes_per_s"])
    assert {t["target"] for t in m["target_floors"]} >= {"rpi5", "host-cpu"}
    assert {"checkpoint", "monolithic", "bundle-fp32", "bundle-int8"} <= {k for k, v in m["artefacts"].items()
                                                                          if "bytes" in v}
    assert [(r["experts_per_layer"], r["prefetch"]) for r in res["cache_sweep"]["rows"]] == [
        (2, "off"), (2, "thread"), (2, "inline"), (8, "off"), (8, "thread"), (8, "inline")]
    assert {(r["callers"], r["batching"]) for r in res["batching"]["rows"]} == {(1, False), (2, False), (1, True),
                                                                               (2, True)}
    assert res["memory_store"] == {"skipped": "not requested"}
    # every export ran in its own measured process: wall time and peak RSS beside the artefact
    for key in ("bundle-fp32", "bundle-int8", "monolithic"):
        assert m["artefacts"][key]["build_wall_s"] > 0 and m["artefacts"][key]["build_peak_rss_mb"] > 50, key
    # the all-weights floor is the expert-only one plus the dense graphs a step runs
    assert rt["all_bytes_per_token"] == pytest.approx(rt["expert_bytes_per_token"] + rt["dense_bytes_per_token"])
    assert rt["dense_bytes_per_token"] > 0 and rt["floor_all_bytes_per_s"] < rt["floor_bytes_per_s"]
    rpi5 = next(t for t in m["target_floors"] if t["target"] == "rpi5")
    assert rpi5["bytes_from"]["expert"] == "bundle-int8" and rpi5["floor_all_bytes_per_s"] < rpi5["floor_bytes_per_s"]
    # a precision the export does not build is a row that says so, not a crash
    known = {r["precision"] for r in m["rows"]}
    assert {"int4", "int8-weight-only"} <= known
    # over budget: a quarter of the expert bytes, read and mmap, against all-resident on the same bundle
    b = res["budget"]
    assert b["budget_bytes"] == int(b["expert_bytes"] * 0.25)
    assert [(r["io"], r["prefetch"]) for r in b["rows"]] == [("read", "off"), ("mmap", "off")]
    for r in b["rows"]:
        assert r["shares_sessions"] and r["resident_bytes"] <= b["budget_bytes"] and r["cache"]["misses"] > 0
        assert 0 <= r["cache"]["hit_rate"] < 1 and r["same_outputs"]  # the same bytes as all-resident
        assert [s["mb_s"] for s in r["storage"]] == [40.0, 85.0, 800.0]
        assert r["storage"][0]["bytes_per_s"] < r["storage"][2]["bytes_per_s"] < r["bytes_per_s"]
    assert {p["target"] for p in b["profiles"]} >= {"rpi4", "rpi5"}
    assert b["cold_read"].get("mb_s", 0) > 0 or "skipped" in b["cold_read"]
    text = load_report().render(json.loads(json.dumps(res)))
    assert "Larger than the budget: `tiny` with 25% of its expert bytes resident" in text
    assert any(g["goal"].startswith("tiny: runtime INT8 >= 2x") for g in res["goals"])
    assert set(res) >= {"machine", "threads", "rows"} and res["threads"] == 2  # DESIGN's bench keys
    assert "| m3edge runtime | int8 | 1 |" in load_report().render(json.loads(json.dumps(res)))


def test_full_suite_cli_usage_errors(tiny_bundle):
    r = run_cli("bench", tiny_bundle, "--suite", "full")
    assert r.returncode == 2 and "pass no BUNDLE" in r.stderr
    r = run_cli("bench", "--suite", "engines")
    assert r.returncode == 2 and "pass BUNDLE" in r.stderr
    r = run_cli("bench", "--suite", "full", "--models", "nope")
    assert r.returncode == 2 and "unknown model 'nope'" in r.stderr
    r = run_cli("bench", "--suite", "full", "--models", "seed", "--merge", "-o", "no-such-result.json")
    assert r.returncode == 2 and "--merge needs -o FILE naming an existing full-suite result" in r.stderr
    r = run_cli("bench", "--suite", "full", "--skip", "bundle-nope")
    assert r.returncode == 2 and "--skip: unknown artefact 'bundle-nope'" in r.stderr


def test_the_package_runs_its_scripts(tmp_path):
    """``python -m m3edge.bench``: the worker entry and the scripts that used to live in bench/."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "m3edge.bench", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: python -m m3edge.bench worker CONFIG_JSON | report" in r.stderr
    res = small_result()
    (tmp_path / "r.json").write_text(json.dumps(res))
    page = tmp_path / "perf.md"
    report = load_report()
    page.write_text(f"{report.BEGIN}\n{report.END}\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "m3edge.bench", "report", str(tmp_path / "r.json"),  # noqa: E731
                                     "--readme", str(page), "--front", "", "--plots", "", "--litert", "", *a],
                                    capture_output=True, text=True)
    assert run("--check").returncode == 1
    assert run().returncode == 0 and "| m3edge runtime | int8 | 1 |" in page.read_text()
    assert run("--check").returncode == 0


def test_a_model_without_a_note_gets_no_note_line():
    report = load_report()
    m = small_result()["models"]["m"] | {"note": ""}  # ModelPlan.note defaults to ""
    lines = report.model_section("m", m, 10.0)
    assert lines[0].startswith("#### `m`") and lines[2].startswith("| engine")


def test_a_cached_bundle_is_reused_only_if_built_from_these_weights_in_this_format(tiny_bundle, tiny_checkpoint,
                                                                                    tmp_path):
    import shutil

    from m3edge.bench import _current

    assert _current(tiny_bundle, tiny_checkpoint)
    for name, edit in (("other weights", lambda m: m["source"].update(weights_sha256="0" * 64)),
                       ("older format", lambda m: m.update(schema_version=1)),
                       ("a preset", lambda m: m.update(source={"kind": "random-init"}))):
        b = tmp_path / name
        shutil.copytree(tiny_bundle, b)
        m = json.loads((b / "manifest.json").read_text())
        edit(m)
        (b / "manifest.json").write_text(json.dumps(m))
        assert not _current(b, tiny_checkpoint), name
    assert not _current(tmp_path / "none", tiny_checkpoint)


def test_merge_keeps_the_models_this_run_did_not_measure():
    from m3edge.bench import merge_results

    old = small_result() | {"command": "make bench"}
    old["models"]["old"] = dict(old["models"]["m"]) | {"rows": [dict(r, model="old") for r in old["rows"]]}
    new = small_result() | {"started": "2026-02-02T00:00:00", "cache_sweep": {"skipped": "not in this run"},
                            "batching": {"skipped": "not in this run"}, "memory_store": {"skipped": "not requested"}}
    new["models"]["m"] = dict(new["models"]["m"]) | {"note": "remeasured"}
    merged = merge_results(old, new)
    assert list(merged["models"]) == ["m", "old"] and merged["models"]["m"]["note"] == "remeasured"
    assert merged["models"]["old"]["measured"]["started"] == old["started"]  # carried over, with its own date
    assert {r["model"] for r in merged["rows"]} == {"m", "old"}
    assert merged["cache_sweep"]["rows"] == old["cache_sweep"]["rows"]  # skipped in the new run: kept
    assert merged["memory_store"]["insert"] == old["memory_store"]["insert"]
    assert any(g["goal"].startswith("old: runtime INT8") for g in merged["goals"])  # judged again on the whole
    text = load_report().render(merged)
    assert "carried into this result unchanged" in text


def test_seed_goals_come_from_the_seed_rows_artefacts_and_budget():
    from m3edge.bench.goals import seed_goals

    res = small_result()
    seed = res["models"].pop("m")
    res["models"]["seed"] = seed
    res["rows"] = [dict(r, model="seed") for r in res["rows"]] + [
        {"model": "seed", "engine": "m3edge-runtime", "precision": "fp32", "batch": 1, "bytes_per_s": 50.0},
        {"model": "seed", "engine": "m3edge-runtime", "precision": "int8 (host-cpu)", "batch": 1, "bytes_per_s": 150.0,
         "floor_all_ratio": 1.2}]
    seed["artefacts"]["bundle-int8"]["build_wall_s"] = 240.0
    res["budget"] = {"model": "seed", "rss_slack_mb": 150, "rss_limit_mb": 400.0, "rows": [
        {"io": "read", "prefetch": "off", "bytes_per_s": 30.0, "vs_all_resident": 0.6, "peak_rss_mb": 380.0,
         "rss_within_limit": True},
        {"io": "read", "prefetch": "inline", "bytes_per_s": 40.0, "vs_all_resident": 0.8, "peak_rss_mb": 420.0,
         "rss_within_limit": False},  # faster, over the RSS limit: not the setting judged
        {"io": "mmap", "prefetch": "off", "skipped": "worker failed"}]}
    g = {x["goal"]: x for x in seed_goals(res)}
    assert g["seed: runtime INT8 >= 3x torch eager at batch 1"]["measured"] == pytest.approx(2.5)
    assert g["seed: runtime INT8 >= 2.5x the fp32 runtime at batch 1"]["measured"] == pytest.approx(5.0)
    assert g["seed: runtime INT8 (host-cpu) >= 2.5x the fp32 runtime at batch 1"]["measured"] == pytest.approx(3.0)
    assert g["seed: runtime int8 (host-cpu) within 1.3x of the all-weights bandwidth floor at batch 1"]["met"] is True
    assert g["seed: runtime INT4 >= 4x the fp32 runtime at batch 1"]["met"] is None  # no INT4 row: not measured
    assert g["seed: runtime int8 within 1.3x of the all-weights bandwidth floor at batch 1"]["met"] is False  # 2x
    assert g["seed: bundle-int8 export (validation included) <= 3 minutes on 2 cores"]["met"] is False
    assert g["seed: a quarter of the expert bytes resident (read, prefetch off) keeps >= 50% of the all-resident "
             "speed (page cache)"]["met"] is True
    assert g["seed: its peak RSS <= budget + dense weights + 150 MB"]["met"] is True


def test_an_mmapped_expert_is_checked_like_a_read_one(tiny_bundle, tmp_path):
    import shutil

    from m3edge.bundle import open_bundle
    from m3edge.errors import BadInput

    b = open_bundle(tiny_bundle)
    rel = next(g["weights"] for g in b.graphs if g["role"] == "expert")
    assert bytes(b.map(rel)) == b.read(rel)
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    b2 = open_bundle(copy)
    data = bytearray((copy / rel).read_bytes())
    data[0] ^= 0xFF
    (copy / rel).write_bytes(bytes(data))
    with pytest.raises(BadInput, match="sha256 does not match"):
        b2.map(rel)


def test_storage_model_and_cold_read(tmp_path):
    from m3edge.bench.budget import cold_read, storage_model

    row = {"bytes": 100, "seconds": 1.0, "cache": {"misses": 10, "prefetched": 0}}
    m = storage_model(row, 4e6, 40.0)  # 10 loads of 4 MB at 40 MB/s: one more second
    assert m["storage_s"] == pytest.approx(1.0) and m["bytes_per_s"] == pytest.approx(50.0)
    f = tmp_path / "e.weights"
    f.write_bytes(b"\1" * (3 << 20))
    r = cold_read([f])
    assert r["bytes"] == 3 << 20 and r["mb_s"] > 0 and r["files"] == 1


def test_a_budget_setting_is_its_median_run_and_the_choice_keeps_within_the_rss_limit():
    from m3edge.bench.budget import chosen, median_run

    runs = [{"bytes": 100, "seconds": s, "peak_rss_mb": rss, "cache": {"hit_rate": h}}
            for s, rss, h in ((1.0, 300.0, 0.5), (4.0, 280.0, 0.6), (2.0, 290.0, 0.7))]
    r = median_run(runs)
    assert r["bytes_per_s"] == 50.0 and r["cache"]["hit_rate"] == 0.7  # the median run's own counts
    assert r["bytes_per_s_runs"] == [100.0, 25.0, 50.0] and r["peak_rss_mb"] == 300.0  # the worst RSS of any run
    rows = [{"io": "read", "bytes_per_s": 80.0, "rss_within_limit": False},
            {"io": "mmap", "bytes_per_s": 70.0, "rss_within_limit": True},
            {"io": "mmap", "skipped": "worker failed"}]
    assert chosen({"rows": rows})["io"] == "mmap"  # the fastest that keeps the budget
    assert chosen({"rows": rows[:1]})["io"] == "read"  # none keeps it: the fastest
    assert chosen({"rows": rows[2:]}) is None and chosen({}) is None


def test_the_suite_knows_what_each_backend_builds_from_its_declaration():
    """A bundle row is skipped only for a precision the backend does not declare (not a guess from the schema)."""
    from m3edge.bench.artefacts import known_precisions

    assert {"int8", "int4", "int8-weight-only"} <= set(known_precisions("onnxruntime"))
    assert "int4" not in known_precisions("tflite") and "int8" in known_precisions("tflite")
