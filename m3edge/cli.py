"""The ``m3edge`` command line. Commands import their heavy modules lazily: a device without torch can
still run ``m3edge targets``, ``inspect`` and ``run``.

Exit codes: 0 success, 1 a checked property failed, 2 bad usage or bad input (one line on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from m3edge.errors import BadInput, M3EdgeError
from m3edge.memory.retrieval import MODES as RETRIEVAL_MODES, TASK_TYPES


class Group(click.Group):
    """Turns the project's typed errors into one stderr line and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except M3EdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in ("torch", "onnx", "safetensors", "tqdm", "onnxscript"):
                click.echo(f"error: this command needs the host-side extra ({e.name} is missing): "
                           f"pip install 'm3edge[export]'", err=True)
                ctx.exit(2)
            raise
        except OSError as e:
            click.echo(f"error: {e.filename or ''}: {e.strerror or e}", err=True)
            ctx.exit(2)


def exit_on_sigterm() -> None:
    """SIGTERM (systemd, docker stop, a timeout) ends the command as Ctrl-C would, through its cleanup: an export
    removes its temporary folder, a run rolls back its open memory transaction and closes the store. Python's
    default is to die on the spot. Exit status 143, as for a process the signal killed."""
    import signal
    import threading

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():  # only there can Python set a handler
        signal.signal(signal.SIGTERM, stop)


def emit(obj: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, sort_keys=True) if as_json else text)


# Progress goes to stderr (m3edge/progress.py): a bar on a terminal, n/N lines with an ETA otherwise.
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress on stderr (errors still are).")


@click.group(cls=Group)
@click.version_option(package_name="m3edge")
def cli():
    """m3edge: export a memory-augmented MoE agent to edge devices and run it there."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def targets(as_json):
    """List the target profiles."""
    from m3edge import backends, targets as t

    rows = [{"name": p.name, "aliases": list(p.aliases), "arch": p.arch, "backend": p.backend,
             "providers": [pr["name"] for pr in p.providers]} for p in t.all_targets()]
    # A backend without execution providers (LiteRT: its interpreter with the XNNPACK delegate) names its engine.
    lines = [f"{r['name']:<18} {','.join(r['aliases']) or '-':<10} {r['arch']:<8} {r['backend']:<12} "
             f"{' > '.join(r['providers']) or backends.capabilities(r['backend']).engine}" for r in rows]
    emit({"targets": rows}, as_json, "\n".join(lines))


@cli.command()
@click.option("--preset", "preset_name", default="small", show_default=True, help="tiny | small | seed")
@click.option("--config", "config_file", type=click.Path(), help="Model config JSON instead of a preset.")
@click.option("--data", "data_dir", type=click.Path(), help="Folder with train.txt and eval.txt.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option("--steps", default=3600, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eval-bytes", type=click.IntRange(2), help="Evaluate on the first N bytes only (default: all, "
                                                           "with and without memory, which takes minutes).")
@click.option("--init", "init_dir", type=click.Path(), help="Continue from this checkpoint's weights (its config "
                                                              "is used; a second training stage).")
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--fact-every", default=2048, show_default=True, type=click.IntRange(0),
              help="Memory steps read the text with one copy exercise per this many bytes (0: none).")
@click.option("--memory-prob", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Share of steps that read memory; the others train the model without it.")
@click.option("--only", default=None, help="Train only these comma-separated modules of the agent (e.g. reader), "
                                        "the rest frozen; with reader alone, every step reads memory.")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
@click.option("--json", "as_json", is_flag=True)
@quiet_option
def train(preset_name, config_file, data_dir, output, steps, batch, seed, eval_bytes, init_dir, lr, fact_every,
          memory_prob, only, force, as_json, quiet):
    """Train the reference agent on bytes of real text; writes a checkpoint and training_report.json."""
    import torch

    from m3edge import checkpoint
    from m3edge.progress import Progress
    from m3edge.config import ModelConfig, preset
    from m3edge.data import default_data_dir
    from m3edge import limits
    from m3edge.train import TrainConfig, train as run

    if init_dir:
        if config_file:
            raise BadInput("pass either --init or --config, not both (--init uses its checkpoint's config)")
        cfg = checkpoint.read_meta(init_dir)[0]
    else:
        cfg = ModelConfig.load(config_file) if config_file else preset(preset_name)
    limits.check_fits(cfg, str(init_dir or config_file or f"preset {preset_name}"), "train")
    limits.outside_bundles("-o", output, replaces=True)
    data = Path(data_dir) if data_dir else default_data_dir()
    out_dir = Path(output)
    if out_dir.exists() and not force:  # before training, not after
        raise BadInput(f"{out_dir}: already exists (pass --force to replace it)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    init = str(Path(init_dir).resolve()) if init_dir else None
    names = () if only is None else tuple(n.strip() for n in only.split(",") if n.strip())
    if only is not None and not names:
        raise BadInput("--only: name at least one module (e.g. reader)")
    tc = TrainConfig(steps=steps, batch=batch, seed=seed, eval_bytes=eval_bytes, init=init, lr=lr,
                     fact_every=fact_every, memory_prob=memory_prob, only=names,
                     warmup=min(100, steps // 10) if init else 100)
    bar = Progress("train", steps, "step", quiet)

    def progress(step, loss):
        bar.update(1, f"loss {loss / 0.6931:.3f} bits/byte")
        if step == steps - 1:  # train() evaluates next, with and without memory: minutes on the whole split
            bar.close()
            bar.note(f"evaluating on {eval_bytes or 'all the'} eval bytes, with and without memory")

    agent, report = run(cfg, data, tc, progress)
    bar.close()
    info = {"preset": None if config_file else preset_name, "seed": seed, "data": "calibration_data/train.txt",
            "steps": steps}
    if init_dir:  # the stage before this one, as its checkpoint.json said (read before it is replaced)
        info["init"] = {k: v for k, v in checkpoint.read_meta(init_dir)[1].items() if k not in ("format", "m3edge_version")}
        info["preset"] = info["init"].get("preset")
    out = checkpoint.save(agent, output, info, force=force)
    (out / "training_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    ev = report["eval"]
    emit({"checkpoint": str(out), **ev, "baselines": report["baselines"]}, as_json,
         f"wrote {out}: eval {ev['bits_per_byte']:.3f} bits/byte "
         f"(unigram {report['baselines']['unigram_bits_per_byte']:.3f}, "
         f"bigram {report['baselines']['bigram_bits_per_byte']:.3f})")


@cli.command("eval")
@click.argument("path", type=click.Path())
@click.option("--split", default="eval", show_default=True, type=click.Choice(["train", "calibration", "eval"]))
@click.option("--data", "text_file", type=click.Path(), help="Any text file instead of a split.")
@click.option("--data-dir", type=click.Path(), help="Folder holding the splits (default: calibration_data).")
@click.option("--max-bytes", type=click.IntRange(2), help="Evaluate only the first N bytes.")
@click.option("--memory", "with_memory", is_flag=True,
              help="Also run online with long-term memory, as generate does: each byte predicted, then stored.")
@click.option("--retrieval-mode", default="hybrid", show_default=True, type=click.Choice(RETRIEVAL_MODES))
@click.option("--task-type", default="general", show_default=True, type=click.Choice(TASK_TYPES))
@click.option("--json", "as_json", is_flag=True)
@quiet_option
def eval_cmd(path, split, text_file, data_dir, max_bytes, with_memory, retrieval_mode, task_type, as_json, quiet):
    """Bits per byte, top-1 accuracy and expert usage of a checkpoint or a bundle, with n-gram baselines.

    With --memory, the same text again online with memory on (a fresh store at the seed's 100,000 capacity)."""
    from m3edge.bundle import MANIFEST
    from m3edge.data import default_data_dir, load_split, read_bytes, train_counts
    from m3edge.evaluate import baselines, bundle_forward, evaluate_with, torch_forward
    from m3edge.progress import Progress

    if (Path(path) / MANIFEST).is_file():  # a bundle: evaluated through the runtime, no torch needed
        from m3edge.bundle import open_bundle
        from m3edge.runtime.executor import BundleExecutor

        executor = BundleExecutor(open_bundle(path))
        forward, cfg = bundle_forward(executor), executor.cfg
        online = None
        if with_memory:
            from m3edge.runtime.agent import EdgeAgent, Recall

            edge = EdgeAgent.open(path)
            recall = Recall.of(retrieval_mode, task_type)
            online = (lambda w, nb: edge.online_chunk(w, nb, recall)), (lambda: len(edge.memory))
    else:
        from m3edge import checkpoint
        from m3edge.evaluate import torch_online

        agent = checkpoint.load(path)
        agent.memory.reset(capacity=100_000)
        forward, cfg = torch_forward(agent), agent.cfg
        online = torch_online(agent, retrieval_mode, task_type) if with_memory else None
    data = Path(data_dir) if data_dir else default_data_dir()
    text = read_bytes(text_file) if text_file else load_split(data, split)
    n = len(text) if max_bytes is None else min(len(text), max_bytes)
    with Progress("eval", n, "byte", quiet) as bar:
        res = evaluate_with(forward, cfg, text, max_bytes=max_bytes, progress=bar.update)
    if online is not None:
        from m3edge.evaluate import evaluate_online_with

        with Progress("eval with memory", n, "byte", quiet) as bar:
            m = evaluate_online_with(*online, cfg, text, max_bytes=max_bytes, progress=bar.update)
        res["memory"] = {"bits_per_byte": m["bits_per_byte"], "bits_per_byte_without": res["bits_per_byte"],
                         "ratio": m["bits_per_byte"] / res["bits_per_byte"], "top1_accuracy": m["top1_accuracy"],
                         "memories": m["memories"], "retrieval_mode": retrieval_mode, "task_type": task_type}
    scored = text[: res["bytes"]]
    # train.txt when the data folder has it, else the shipped counts of the train split (a wheel install).
    res["baselines"] = baselines(train_counts(data), scored)
    res["data"] = str(text_file) if text_file else f"{data}/{split}.txt"
    b = res["baselines"]
    lines = [f"data            {res['data']} ({res['bytes']} bytes)",
             f"bits/byte       {res['bits_per_byte']:.4f}  (unigram {b['unigram_bits_per_byte']:.4f}, "
             f"bigram {b['bigram_bits_per_byte']:.4f})",
             f"top-1 accuracy  {res['top1_accuracy']:.4f}"]
    if "memory" in res:
        m = res["memory"]
        lines.append(f"with memory     {m['bits_per_byte']:.4f} bits/byte ({m['ratio']:.3f}x without), top-1 "
                     f"{m['top1_accuracy']:.4f}, {m['memories']} memories ({m['retrieval_mode']}, {m['task_type']})")
    for layer, (used, ent) in enumerate(zip(res["experts_used"], res["expert_usage_entropy"])):
        lines.append(f"layer {layer}         {used}/{cfg.n_experts} experts used, "
                     f"usage entropy {ent:.3f} of {res['max_usage_entropy']:.3f} bits")
    res.pop("expert_usage")
    emit(res, as_json, "\n".join(lines))


@cli.command()
@click.option("--target", "target_name", required=True, help="Profile name, alias, or path of a profile JSON.")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(), help="Checkpoint directory to export.")
@click.option("--preset", "preset_name", help="Export a seeded random-init preset instead.")
@click.option("--config", "config_file", type=click.Path(), help="Model config JSON for a seeded random init.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--precision", default="auto", show_default=True,
              help="auto (the profile's per role) | fp32 | fp16 (onnxruntime backend) | int8 | int8-weight-only | "
                   "int4 (the last two: onnxruntime MatMulNBits, weights only)")
@click.option("--calibration-method", default="percentile", show_default=True,
              type=click.Choice(["minmax", "entropy", "percentile"]), help="INT8 calibration (onnxruntime).")
@click.option("--allow-accuracy-drop", is_flag=True, help="Keep a quantized bundle that misses the accuracy gates.")
@click.option("--data-dir", type=click.Path(), help="Folder holding the splits (default: calibration_data).")
@click.option("--parity-tokens", default=2048, show_default=True, type=click.IntRange(1),
              help="Eval tokens for the end-to-end parity check.")
@click.option("--bank-rows", default=4, show_default=True, type=click.IntRange(0),
              help="Add each layer's expert bank (all its experts in one graph, for large batches) at the smallest "
                   "capacity bucket holding this many rows per expert; 0: no banks.")
@click.option("--compact-names", is_flag=True,
              help="Positional tensor names and no node names (smaller ONNX graph files; unreadable in Netron).")
@click.option("--json", "as_json", is_flag=True)
@quiet_option
def export(target_name, checkpoint_dir, preset_name, config_file, seed, output, force, precision, calibration_method,
           allow_accuracy_drop, data_dir, parity_tokens, bank_rows, compact_names, as_json, quiet):
    """Export per-expert static-shape graphs (ONNX or TFLite, as the target says), validated against torch."""
    exit_on_sigterm()
    import time

    from m3edge import checkpoint, targets
    from m3edge.progress import Progress
    from m3edge.data import default_data_dir
    from m3edge.export.pipeline import ExportFailed, ExportOptions, bank_rows as banks_at, export_bundle
    from m3edge.export.validate import format_table
    from m3edge.export.graphs import split
    from m3edge.export.parity import E2E_STEPS, format_end_to_end
    from m3edge import limits

    t0 = time.time()
    limits.outside_bundles("-o", output, replaces=True)
    target = targets.load(target_name)
    limits.check_fits(*_model_to_build(checkpoint_dir, preset_name, config_file), "export", target)
    agent, source = checkpoint.build_agent(checkpoint_dir, preset_name, config_file, seed)
    data = Path(data_dir) if data_dir else default_data_dir()
    opts = ExportOptions(precision=precision, parity_tokens=parity_tokens, calibration_method=calibration_method,
                         allow_accuracy_drop=allow_accuracy_drop, bank_rows=bank_rows, compact_names=compact_names)
    # export_bundle reports once per module of the split (every role, banks included), then the end-to-end steps.
    n_graphs = len(split(agent, target.token_buckets, target.capacity_buckets, banks_at(agent, target, opts)))
    # The end-to-end check's steps count too: the bar reaches its end when the bundle is checked, not before.
    bar = Progress(f"export {target.name}", n_graphs + E2E_STEPS, "step", quiet)
    try:
        report = export_bundle(agent, source, target, output, data, force, opts,
                               lambda label: bar.update(1, label, force=label.startswith("end-to-end")))
        ok = True
    except ExportFailed as e:
        report, ok, err = e.report, False, e
    finally:
        bar.close()
    seconds = round(time.time() - t0, 1)
    text = "\n".join([format_table(report["summary"]), format_end_to_end(report["end_to_end"])])
    if ok:
        text += f"\nwrote {output} for {target.name} in {seconds} s"
    emit({"bundle": str(output) if ok else None, "passed": report["passed"], "seconds": seconds,
          "summary": report["summary"], "end_to_end": report["end_to_end"]}, as_json, text)
    if not ok:
        raise err


def _model_to_build(checkpoint_dir, preset_name, config_file):
    """(config, its source) of the model ``build_agent`` would make, read without building it."""
    from m3edge.config import ModelConfig, preset

    if checkpoint_dir:
        from m3edge.checkpoint import CONFIG, read_meta

        return read_meta(checkpoint_dir)[0], str(Path(checkpoint_dir) / CONFIG)
    if config_file:
        return ModelConfig.load(config_file), str(config_file)
    return preset(preset_name or "small"), f"preset {preset_name or 'small'}"


@cli.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def inspect(bundle_dir, as_json):
    """Summarise a bundle: target, routing, graphs by role, sizes, precisions, parity."""
    from m3edge.bundle import open_bundle

    b = open_bundle(bundle_dir)
    m, spec = b.manifest, b.spec
    graphs = [{k: g[k] for k in ("role", "layer", "expert", "bucket", "path", "sha256", "bytes", "precision")}
              for g in m["graphs"]]
    total = sum(f.bytes for f in spec.files)
    parity = b.report("parity")
    summary = None if parity is None else {
        "passed": parity["passed"], "logits_max_abs_diff": parity["end_to_end"]["logits_max_abs_diff"],
        "routing_agreement": parity["end_to_end"]["routing_agreement"],
        "graph_max_abs_diff": max((r["max_abs_diff"] or 0) for r in parity["summary"])}
    roles, counted = {}, set()
    for g in m["graphs"]:
        r = roles.setdefault(g["role"], {"graphs": 0, "files": 0, "bytes": 0, "precision": set()})
        r["graphs"] += 1
        # Experts of a kind share their graph files; a TFLite file holds a module's buckets as signatures.
        if g["path"] not in counted:
            counted.add(g["path"])
            r["files"] += 1
            r["bytes"] += g["bytes"]
        r["precision"].add(g["precision"])
    # Weights: ONNX's shared external-data files; a TFLite flatbuffer carries its weights inside.
    weights = sum(f.bytes for f in spec.files if f.path.endswith(".weights"))
    out = {"schema_version": spec.schema_version, "target": spec.target.name, "routing": spec.routing.to_dict(),
           "total_bytes": total, "weights_bytes": weights, "versions": spec.versions, "source": spec.source,
           "precision": spec.precision.to_dict(), "graphs": graphs, "parity": summary,
           "roles": {k: {**v, "precision": sorted(v["precision"])} for k, v in roles.items()}}
    cfg, t, r = spec.model_config, spec.target, spec.routing
    lines = [f"bundle     {bundle_dir}  (schema {spec.schema_version}, sha256 verified)",
             f"target     {t.name} ({t.arch}, {t.backend})",
             f"model      d_model {cfg.d_model}, {cfg.n_layers} layers x {cfg.n_experts} experts, top-{cfg.top_k}",
             f"routing    {r.mode}, token buckets {list(r.token_buckets)}, "
             f"capacity buckets {list(r.capacity_buckets)}",
             f"size       {total / 1e6:.2f} MB" + (f" ({weights / 1e6:.2f} MB weights, shared across buckets)"
                                                      if weights else " (weights inside the graph files)")]
    for role, r in out["roles"].items():
        lines.append(f"  {role:<10} {r['graphs']:>5} graphs in {r['files']:>3} files  {r['bytes'] / 1e3:>8.1f} kB  "
                     f"{'/'.join(r['precision'])}")
    for note in spec.precision.notes:
        lines.append(f"  note: {note}")
    if summary:
        lines.append(f"parity     {'PASS' if summary['passed'] else 'FAIL'}: per-graph max |diff| "
                     f"{summary['graph_max_abs_diff']:.2e}, logits {summary['logits_max_abs_diff']:.2e}, "
                     f"routing agreement {summary['routing_agreement']:.4%}")
    emit(out, as_json, "\n".join(lines))


@cli.command()
@click.argument("bundle_dir", type=click.Path())
@click.argument("module")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Graph file to write (.onnx; .tflite for a TFLite bundle).")
@click.option("--bucket", type=click.IntRange(1), help="Which of the module's static shapes (default: its smallest).")
@click.option("--external-data", is_flag=True,
              help="Weights in OUTPUT.data beside the graph instead of inside it (always so above 2 GiB).")
@click.option("--json", "as_json", is_flag=True)
def extract(bundle_dir, module, output, bucket, external_data, as_json):
    """Write one module's graph as a self-contained file (Netron, onnx.checker, a plain InferenceSession).

    MODULE as export names it: encoder, memory, alignment, layer0.router, layer0.expert_07, layer0.experts (a
    bank), head, reader. Its metadata_props say which module, bucket, precision and bundle it came from."""
    from m3edge.bundle import open_bundle
    from m3edge.export.inspectable import extract as run, find_module

    b = open_bundle(bundle_dir)
    entry = find_module(b, module, bucket)
    r = run(b, entry, output, external_data)
    r |= {"module": module.replace("/", "."), "bucket": entry["bucket"], "precision": entry["precision"]}
    emit(r, as_json, f"wrote {r['path']}: {r['module']} at bucket {r['bucket']} ({r['precision']}, "
                     f"{r['bytes'] / 1e3:.1f} kB{', weights in ' + r['files'][1] if len(r['files']) > 1 else ''})")


@cli.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--data", "text_file", type=click.Path(), help="Any text file instead of the eval split.")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(), help="Compare against this checkpoint.")
@click.option("--data-dir", type=click.Path(), help="Folder holding the splits (default: calibration_data).")
@click.option("--tokens", default=2048, show_default=True, type=click.IntRange(1))
@click.option("--logits-atol", default=1e-4, show_default=True, type=click.FloatRange(0),
              help="End-to-end logits gate (DESIGN.md's default).")
@click.option("--backend", "backend_name", help="Run the graphs with this backend instead of the bundle's own, e.g. "
                                                "reference (onnx's ReferenceEvaluator: slow, an independent oracle).")
@click.option("--json", "as_json", is_flag=True)
@quiet_option
def verify(bundle_dir, text_file, checkpoint_dir, data_dir, tokens, logits_atol, backend_name, as_json, quiet):
    """Re-run end-to-end parity of a bundle against torch; exit 1 when a gate fails."""
    from m3edge import backends, checkpoint
    from m3edge.bundle import open_bundle
    from m3edge.data import default_data_dir, load_split, read_bytes
    from m3edge.errors import CheckFailed
    from m3edge.export.parity import E2E_STEPS, Gates, end_to_end, format_end_to_end
    from m3edge.progress import Progress
    from m3edge.runtime.executor import BundleExecutor

    b = open_bundle(bundle_dir)
    session = backends.SessionConfig(backend=backend_name)
    if backend_name:  # refused before torch is loaded: an unknown name, or one that cannot read these graphs
        backends.runtime(backends.graph_backend(b.graphs[0], session))
    agent = checkpoint.agent_from_source(b.spec.source, checkpoint_dir)
    if agent.cfg != b.spec.model_config:
        raise CheckFailed("the torch agent's config differs from the bundle's model_config")
    text = read_bytes(text_file) if text_file else load_split(Path(data_dir) if data_dir else default_data_dir(), "eval")
    # The user's gates, never the ones a bundle carries; weight-only graphs get DESIGN.md's weight-only gates.
    gates = Gates(logits_atol=logits_atol).for_precisions({g["precision"] for g in b.graphs})
    quantized = any(g["precision"] != "fp32" for g in b.graphs)  # judged by the accuracy gates, not atol
    with Progress("verify", E2E_STEPS, "step", quiet) as bar:
        r = end_to_end(agent, BundleExecutor(b, session), text, tokens, gates, quantized,
                       lambda label: bar.update(1, label, force=True))
    out = {k: r[k] for k in ("passed", "logits_max_abs_diff", "routing_agreement", "top1_agreement", "bits_per_byte",
                             "tokens", "passes", "gates")}
    out["backend"] = backends.graph_backend(b.graphs[0], session)
    emit(out, as_json, format_end_to_end(r))
    if not r["passed"]:
        raise CheckFailed("parity gates failed")


@cli.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-bytes", default=64, show_default=True, type=click.IntRange(0, 1 << 20))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0, 1e6))
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Seed for sampling (temperature > 0).")
@click.option("--memory-dir", type=click.Path(), help="Keep long-term memory here across runs.")
@click.option("--engine-cache", type=click.Path(), help="Where TensorRT builds its engines (default "
                                                         "~/.cache/m3edge/engines; never inside a bundle).")
@click.option("--cache-experts", type=click.IntRange(1),
              help="Experts kept loaded per layer (default: the profile's expert_cache_size).")
@click.option("--policy", type=click.Choice(["lru", "lfu"]),
              help="Expert-cache eviction policy (default, as measured on the reference: LRU with prefetch, LFU "
                   "without).")
@click.option("--prefetch", type=click.Choice(["off", "thread", "inline"]), default="off", show_default=True,
              is_flag=False, flag_value="thread",
              help="After each router, load the experts the next layer (or step) will likely need: in a background "
                   "thread, or inline. --prefetch alone means thread.")
@click.option("--strict", is_flag=True, help="Fail when a profile's execution provider is missing.")
@click.option("--task-type", default="general", show_default=True, type=click.Choice(TASK_TYPES),
              help="The seed's task types: preferences over memory types and importance weights.")
@click.option("--retrieval-mode", default="hybrid", show_default=True, type=click.Choice(RETRIEVAL_MODES),
              help="factual: exact context matches only; experiential: semantic + scene; hybrid: both.")
@click.option("--scene", default="", help="A scene / context string memories are stored under and matched on.")
@click.option("--no-memory", is_flag=True, help="Run without long-term memory (nothing read, nothing stored).")
@click.option("--json", "as_json", is_flag=True)
def run(bundle_dir, prompt, max_bytes, temperature, seed, memory_dir, engine_cache, cache_experts, policy, prefetch,
        strict, task_type, retrieval_mode, scene, no_memory, as_json):
    """Continue a prompt with a bundle on this device (no torch needed); the text prints as it is generated."""
    import codecs
    import time

    from m3edge import limits
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.options import RuntimeOptions

    exit_on_sigterm()

    limits.finite("--temperature", temperature, 0.0, 1e6)  # click's FloatRange lets nan through
    limits.utf8_text("--prompt", prompt)
    limits.utf8_text("--scene", scene)
    if len(scene.encode()) > 256:
        raise BadInput(f"--scene is {len(scene.encode())} bytes; the limit is 256")
    if memory_dir is not None:
        limits.outside_bundles("--memory-dir", memory_dir)
    t0 = time.perf_counter()
    options = RuntimeOptions(cache_experts=cache_experts, policy=policy, prefetch=prefetch, strict=strict,
                             engine_cache=engine_cache)
    agent = EdgeAgent.open(bundle_dir, memory_dir=memory_dir, options=options)
    try:
        with agent:
            t1 = time.perf_counter()
            stream = agent.stream(prompt, max_bytes, temperature, seed, not no_memory, retrieval_mode, task_type, scene)
            out = bytearray()
            if as_json:  # one object at the end, as before
                for b in stream:
                    out += b
            else:  # the text as it is generated: whole UTF-8 characters, flushed each time one completes
                decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
                sys.stdout.write(prompt)
                sys.stdout.flush()
                for b in stream:
                    out += b
                    piece = decode(b)
                    if piece:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                sys.stdout.write(decode(b"", final=True) + "\n")
                sys.stdout.flush()
            out = bytes(out)
            t2 = time.perf_counter()
            stats = agent.stats()
    finally:  # after the agent's close (which records the read energy): the store merges its log and closes
        agent.memory.close()
    text = out.decode("utf-8", errors="replace")
    res = {"text": text, "bytes": len(out), "bytes_per_s": len(out) / (t2 - t1) if t2 > t1 else 0.0,
           "open_s": t1 - t0, "cache": {k: stats["cache"][k] for k in ("hits", "misses", "evictions", "load_ms",
                                                                        "prefetched", "prefetch_hits", "hit_rate")},
           "experts_used": stats["experts_used"], "memories": stats["memories"], "task_type": task_type,
           "retrieval_mode": retrieval_mode}
    if as_json:
        emit(res, True, "")
    else:
        c = res["cache"]
        click.echo(f"-- {len(out)} bytes at {res['bytes_per_s']:.1f} bytes/s; cache {c['hits']} hits, "
                   f"{c['misses']} misses, {c['evictions']} evictions; experts used per layer "
                   f"{res['experts_used']}", err=True)


@cli.command()
@click.argument("bundle_dir", type=click.Path(), required=False)
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--prompts", "n_prompts", default=4, show_default=True, type=click.IntRange(1))
@click.option("--bytes", "n_bytes", default=64, show_default=True, type=click.IntRange(1))
@click.option("--cache-sizes", default="1,8,16,32,64", show_default=True, help="Experts per layer to sweep; '' for none.")
@click.option("--no-torch", is_flag=True, help="Skip the torch eager baseline (a device without torch).")
@click.option("--suite", default="all", show_default=True,
              type=click.Choice(["all", "engines", "batching", "full", "memory"]),
              help="engines: torch vs runtime and the cache sweep; batching: concurrent callers off/on; full: "
                   "builds its own bundles (no BUNDLE) and measures every engine, the floor and every sweep; "
                   "memory: online eval, recall and decode at 0-100k memories (--checkpoint and --bundle).")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(), help="memory: the torch reference.")
@click.option("--bundle", "named_bundles", multiple=True, help="memory: NAME=PATH, repeatable (the first one also "
                                                                "runs the reram and decode rows).")
@click.option("--recall-kb", default="1,4,16,64", show_default=True, help="memory: filler sizes in kB.")
@click.option("--trials", default=5, show_default=True, type=click.IntRange(1), help="memory: recall cases per size.")
@click.option("--models", default=None, help="full: comma-separated models to measure (default: small,seed).")
@click.option("--runs", type=click.IntRange(1), help="full: fresh processes per engine row (default 3).")
@click.option("--work-dir", default="runs/bench", show_default=True, type=click.Path(),
              help="full: where checkpoints, bundles and the monolithic graph are built.")
@click.option("--rebuild", is_flag=True, help="full: rebuild every artefact instead of reusing the work dir's.")
@click.option("--skip", "skip_artefacts", default="", help="full: comma-separated artefacts not to build (e.g. "
                                                             "bundle-jetson); their rows say so.")
@click.option("--parts", "memory_parts", default="eval,recall,decode", show_default=True,
              help="memory: the parts to measure; with --merge the others are kept from -o.")
@click.option("--merge", is_flag=True, help="full: keep the models (and sweeps), memory: the parts, of the existing -o JSON that this "
                                            "run does not measure; each model records when it was measured.")
@click.option("--data-dir", type=click.Path(), help="Folder holding the splits (default: calibration_data).")
@click.option("-o", "--output", type=click.Path(), help="Also write the JSON report here.")
@click.option("--engine-cache", type=click.Path(), help="Where TensorRT builds its engines (default "
                                                         "~/.cache/m3edge/engines; never inside a bundle).")
@click.option("--json", "as_json", is_flag=True)
@quiet_option
def bench(bundle_dir, threads, n_prompts, n_bytes, cache_sizes, no_torch, suite, checkpoint_dir, named_bundles,
          recall_kb, trials, models, runs, work_dir, rebuild, skip_artefacts, memory_parts, merge, data_dir, output,
          engine_cache, as_json, quiet):
    """Torch eager vs the runtime, the expert-cache sweep and batching, side by side on this machine."""
    import os

    from m3edge.runtime.engines import ENV

    if engine_cache:  # the benchmark's workers are separate processes: they read it from the environment
        os.environ[ENV] = str(Path(engine_cache).expanduser().resolve())
    if threads > 4 * (os.cpu_count() or 1):
        raise BadInput(f"--threads {threads}: this machine has {os.cpu_count()} cores (at most 4 threads a core)")
    from m3edge.bench import batching_bench, format_batching, format_report, run_bench
    from m3edge.bundle import open_bundle
    from m3edge.data import default_data_dir
    from m3edge.progress import Progress

    data = Path(data_dir) if data_dir else default_data_dir()
    bar = Progress(f"bench {suite}", None, "row", quiet)  # full and memory: rows not known ahead

    def say(msg):  # each measured row (stderr: stdout is the report's)
        bar.update(1, msg, force=True)
    if suite == "full":
        import dataclasses

        from m3edge.bench import FULL, format_full, merge_results, run_full

        if bundle_dir:
            raise BadInput("--suite full builds its own bundles: pass no BUNDLE (see --work-dir)")
        plans = {m.name: m for m in FULL.models}
        wanted = [m.strip() for m in (models or ",".join(plans)).split(",") if m.strip()]
        unknown = [m for m in wanted if m not in plans]
        if unknown or not wanted:
            raise BadInput(f"--models: unknown model {unknown[0] if unknown else '(none)'!r}; "
                           f"choose from {', '.join(plans)}")
        skip = tuple(k.strip() for k in skip_artefacts.split(",") if k.strip())
        known = {"checkpoint", "monolithic", *(b.key for b in FULL.bundles)}
        if set(skip) - known:
            raise BadInput(f"--skip: unknown artefact {sorted(set(skip) - known)[0]!r}; choose from {', '.join(sorted(known))}")
        cfg = dataclasses.replace(FULL, models=tuple(plans[m] for m in wanted), work_dir=work_dir, data_dir=str(data),
                                  threads=threads, rebuild=rebuild, runs=runs or FULL.runs, skip=FULL.skip + skip)
        if merge and not (output and Path(output).is_file()):
            raise BadInput("--merge needs -o FILE naming an existing full-suite result")
        if merge:  # re-measure the named models only: sweeps of a model not named and the memory store are kept
            cfg = dataclasses.replace(cfg, memory_store=False,
                                      sweeps_model=cfg.sweeps_model if cfg.sweeps_model in wanted else None)
        previous = json.loads(Path(output).read_text()) if merge else None

        def keep(res):  # what has been measured so far, written as it comes
            if output:
                res = merge_results(previous, res) if merge else res
                Path(output).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")

        report = run_full(cfg, progress=say, command=" ".join(["m3edge", *sys.argv[1:]]), partial=keep)
        if merge:
            report = merge_results(previous, report)
        if output:
            Path(output).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        bar.close()
        emit(report, as_json, format_full(report))
        return
    if suite == "memory":
        from m3edge.bench.memory import format_memory, run_memory

        if not checkpoint_dir or not named_bundles:
            raise BadInput("--suite memory needs --checkpoint DIR and at least one --bundle NAME=PATH")
        bundles = {}
        for item in named_bundles:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise BadInput(f"--bundle must be NAME=PATH, got {item!r}")
            open_bundle(path)
            bundles[name] = path
        try:
            sizes_kb = tuple(int(v) for v in recall_kb.split(",") if v.strip())
        except ValueError:
            raise BadInput(f"--recall-kb must be comma-separated integers, got {recall_kb!r}") from None
        from m3edge.bench.memory import PARTS

        parts = tuple(p.strip() for p in memory_parts.split(",") if p.strip())
        if not parts or set(parts) - set(PARTS):
            raise BadInput(f"--parts must name some of {', '.join(PARTS)}, got {memory_parts!r}")
        if merge and not (output and Path(output).is_file()):
            raise BadInput("--merge needs -o FILE naming an existing memory-suite result")
        previous = json.loads(Path(output).read_text()) if merge else None
        report = run_memory(checkpoint_dir, bundles, data, sizes_kb, trials, progress=say, parts=parts,
                            previous=previous)
        report["command"] = " ".join(["m3edge", *sys.argv[1:]])
        if output:
            Path(output).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        bar.close()
        emit(report, as_json, format_memory(report))
        return
    if not bundle_dir:
        raise BadInput(f"--suite {suite} measures a bundle: pass BUNDLE")
    open_bundle(bundle_dir)  # refuse an untrusted bundle before spawning workers
    try:
        sizes = tuple(int(s) for s in cache_sizes.split(",") if s.strip())
    except ValueError:
        raise BadInput(f"--cache-sizes must be comma-separated integers, got {cache_sizes!r}") from None
    # Rows each suite measures, as m3edge.bench runs them: the engines (torch unless --no-torch, the runtime),
    # the cache sweep (sizes up to the model's experts x 2 policies x 3 prefetch settings), batching off and on
    # at 4 caller counts. Progress.update grows the total if the bench measures more.
    n_experts = open_bundle(bundle_dir, verify=False).manifest["model_config"]["n_experts"]
    bar.total = ((suite in ("all", "engines")) * ((not no_torch) + 1 + 6 * sum(s <= n_experts for s in sizes))
                 + (suite in ("all", "batching")) * 8)
    report, text = {"threads": threads, "rows": []}, []
    if suite in ("all", "engines"):
        report = run_bench(bundle_dir, data, threads, n_prompts, n_bytes, sizes, with_torch=not no_torch, progress=say)
        text.append(format_report(report))
    if suite in ("all", "batching"):
        report["batching"] = batching_bench(bundle_dir, data, threads=threads, progress=say)
        text.append(format_batching(report["batching"]))
    bar.close()
    if output:
        Path(output).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    emit(report, as_json, "\n".join(text))


@cli.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--memory-dir", type=click.Path(), help="Keep long-term memory here across restarts.")
@click.option("--engine-cache", type=click.Path(), help="Where TensorRT builds its engines (default "
                                                         "~/.cache/m3edge/engines; never inside a bundle).")
@click.option("--cache-experts", type=click.IntRange(1), help="Experts kept loaded per layer.")
@click.option("--batching/--no-batching", default=True, show_default=True, help="Merge concurrent steps into batches.")
@click.option("--max-batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--max-queue-delay-ms", default=2.0, show_default=True, type=click.FloatRange(0))
@click.option("--max-queue-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--timeout-ms", type=click.FloatRange(0), help="Reject a step still queued after this long.")
@click.option("--expert-workers", default=1, show_default=True, type=click.IntRange(1),
              help="Threads running a batch's distinct experts side by side (the profile's threads are split).")
@click.option("--cors", "cors", default="", help="Comma-separated browser origins allowed to call the API ('*': any).")
@click.option("--shutdown-timeout", default=5.0, show_default=True, type=click.FloatRange(0, 3600),
              help="On SIGTERM, seconds in-flight generations get to finish before they are cancelled.")
@click.option("--max-active", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Requests doing agent work at once.")
@click.option("--max-waiting", default=64, show_default=True, type=click.IntRange(0, 65536),
              help="Requests waiting for a slot; beyond this a request gets 503 at once.")
@click.option("--max-connections", type=click.IntRange(4), help="Open connections (default: from the file limit).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Close a connection that has not sent a whole request head within this many seconds.")
@click.option("--body-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Answer 408 when a request body has not arrived within this many seconds.")
@click.option("--backlog", default=128, show_default=True, type=click.IntRange(1, 65535))
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Serve on a Ray cluster as Ray Serve replicas: the head's ADDRESS (or 'auto'); none starts a "
                   "local Ray. Needs the ray extra (docs/runtime.md, Ray).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1), help="Ray Serve replicas (--ray).")
@click.option("--replica-cpus", default=1.0, show_default=True, type=click.FloatRange(0.01),
              help="CPUs Ray reserves per replica; its onnxruntime threads default to this (--ray).")
@click.option("--replica-max-ongoing", default=8, show_default=True, type=click.IntRange(1),
              help="Requests a replica takes at once; the proxy's own node's replica fills first (--ray).")
@click.option("--expert-parallel", is_flag=True, help="Place the experts on the cluster's nodes by their budgets (--ray).")
def serve(bundle_dir, host, port, memory_dir, engine_cache, cache_experts, batching, max_batch_size,
          max_queue_delay_ms, max_queue_size, timeout_ms, expert_workers, cors, shutdown_timeout, max_active,
          max_waiting, max_connections, header_timeout, body_timeout, backlog, ray_address, replicas, replica_cpus,
          replica_max_ongoing, expert_parallel):
    """Serve a bundle over HTTP: m3edge's JSON API, OpenAI-compatible /v1/completions and /v1/chat/completions
    (streaming), a web page at /, Prometheus /metrics; needs the `serve` extra. SIGTERM stops it gracefully."""
    from m3edge.errors import BadInput

    if ray_address is not None:
        from m3edge.runtime.ray_serve import serve_cli

        return serve_cli(bundle_dir, ray_address, replicas, replica_cpus, expert_parallel, host=host, port=port,
                         memory_dir=memory_dir, cache_experts=cache_experts, expert_workers=expert_workers,
                         batching=None if not batching else dict(
                             max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                             max_queue_size=max_queue_size, timeout_ms=timeout_ms), max_ongoing=replica_max_ongoing)
    if replicas != 1 or expert_parallel:
        raise BadInput("--replicas and --expert-parallel need --ray")

    try:
        from m3edge.runtime.server import AppOptions, Limits, create_app
        from m3edge.runtime.serving import ServeConfig, bind, serve as run_server
    except ImportError:
        raise BadInput("m3edge serve needs the serve extra: pip install 'm3edge[serve]'") from None
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.batcher import BatcherConfig
    from m3edge.runtime.options import RuntimeOptions

    if memory_dir is not None:
        from m3edge.limits import outside_bundles

        outside_bundles("--memory-dir", memory_dir)
    bind(host, port, backlog).close()  # a busy port is one line and exit 2 before the bundle is loaded
    agent = EdgeAgent.open(bundle_dir, memory_dir=memory_dir,
                           options=RuntimeOptions(cache_experts=cache_experts, expert_workers=expert_workers,
                                                  engine_cache=engine_cache))
    if batching:
        buckets = tuple(b for b in agent.executor.token_buckets if b <= max_batch_size) or (max_batch_size,)
        agent.enable_batching(BatcherConfig(max_batch_size=max_batch_size, preferred_batch_sizes=buckets,
                                            max_queue_delay_ms=max_queue_delay_ms, max_queue_size=max_queue_size,
                                            timeout_ms=timeout_ms))
    origins = tuple(o.strip() for o in cors.split(",") if o.strip())
    name = Path(bundle_dir).resolve().name
    target = agent.executor.bundle.manifest.get("target", {}).get("name", "")
    app = create_app(agent, Limits(max_active=max_active, max_waiting=max_waiting, body_timeout_s=body_timeout),
                     AppOptions(cors_origins=origins, model=name, target=target))
    cfg = ServeConfig(host=host, port=port, backlog=backlog, max_connections=max_connections,
                      header_timeout_s=header_timeout, shutdown_timeout_s=shutdown_timeout)

    def ready(bound_port, max_conn):
        click.echo(f"serving {bundle_dir} on http://{host}:{bound_port} (batching {'on' if batching else 'off'}, "
                   f"{max_conn} connections, {max_active} active + {max_waiting} waiting requests)", err=True)

    try:
        run_server(app, cfg, ready)
    except BaseException:
        agent.close()
        raise
    click.echo("stopped", err=True)


@cli.group()
def memory():
    """The long-term memory store a device keeps with --memory-dir."""


@memory.command("inspect")
@click.argument("memory_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def memory_inspect(memory_dir, as_json):
    """Count, size on disk, device preset, energy spent, oldest and newest memory of a memory store."""
    import datetime

    from m3edge.runtime.store import inspect as inspect_store

    r = inspect_store(memory_dir)

    def when(t):
        return "-" if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
            timespec="seconds")

    e = r["energy_pj"]
    lines = [f"store      {r['path']}  (schema {r['schema_version']}, {r['bytes'] / 1e6:.2f} MB on disk)",
             f"memories   {r['count']} of capacity {r['capacity']} ({r['forgotten']} forgotten), "
             f"{r['associations']} associations, {r['consolidated']['nodes']} consolidated nodes",
             f"device     {r['device']} (seed {r['seed']}), keys {r['key_dim']}, values {r['value_dim']}",
             f"energy     write {e['write'] / 1e6:.3f} uJ over {r['writes']} writes, read {e['read'] / 1e6:.3f} uJ "
             f"over {r['reads']} reads (modelled)",
             f"oldest     {when(r['oldest'])}",
             f"newest     {when(r['newest'])}"]
    emit(r, as_json, "\n".join(lines))


def main():
    cli(prog_name="m3edge")


if __name__ == "__main__":
    main()
