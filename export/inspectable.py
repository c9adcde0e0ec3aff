"""Graphs a person can read: names from the torch module path, provenance in ``metadata_props``, and
``m3edge extract``'s self-contained copy of one module's graph (Netron, ``onnx.checker``, a plain
``onnxruntime.InferenceSession`` open it with no other file).

Names. The TorchScript exporter names nodes after the module path (``/fc1/Gemm``) and parameters after
their state_dict key (``fc1.weight``); what it leaves generic (``onnx::Gemm_12``, bare numbers, empty node
names) is renamed after the node that makes it (``/fc1/Gemm_output_0``) or, for a constant, the node input it
feeds (``/fc1/Gemm.B``, the operator schema's input name). Names depend on the graph's structure only, never
on which expert or layer it was exported from: the experts of a kind still write the same bytes and share
one graph file (m3edge.bundle). Doc strings (the exporter's source locations) are dropped for the same reason.

Metadata. A bundle graph file is shared by every module of its kind (64 experts, every layer's router), so
it carries what they share: m3edge's version, role, kind, bucket, precision, the model config's sha256 and the
checkpoint weights' sha256 (or the random init's preset and seed). The extracted copy is one module's, and
adds its layer, expert, memory type, the sha256 of the manifest it came from (a hash a graph inside the
manifest cannot hold), the bundle path of its graph and weights files, and their sha256.
"""

from __future__ import annotations

import hashlib
import json
import re

import onnx

import m3edge

PREFIX = "m3edge."
# What the TorchScript exporter calls a value it has no module-path name for.
GENERIC = re.compile(r"^(onnx::.*|\d+|)$")


def config_sha256(model_config: dict) -> str:
    """The model config's sha256 over its canonical JSON (sorted keys, no spaces): equal configs, equal hashes."""
    return hashlib.sha256(json.dumps(model_config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def provenance(model_config: dict, source: dict) -> dict[str, str]:
    """What every graph of one export shares: version, config and weights identity (never a local path)."""
    props = {"version": m3edge.__version__, "model_config_sha256": config_sha256(model_config)}
    if source.get("weights_sha256"):
        props["checkpoint_weights_sha256"] = source["weights_sha256"]
    else:
        props["init"] = f"{source.get('kind', 'random-init')} preset={source.get('preset')} seed={source.get('seed')}"
    return props


def stamp(model: onnx.ModelProto, props: dict) -> onnx.ModelProto:
    """Set producer name and version to m3edge's and merge ``props`` (None values skipped) into
    ``metadata_props`` as ``m3edge.<key>``, sorted, so the same props give the same bytes."""
    model.producer_name = "m3edge"
    model.producer_version = m3edge.__version__
    have = {p.key: p.value for p in model.metadata_props}
    have.update({PREFIX + k: str(v) for k, v in props.items() if v is not None})
    del model.metadata_props[:]
    for k in sorted(have):
        model.metadata_props.add(key=k, value=have[k])
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """A graph's m3edge metadata, prefix stripped."""
    return {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def _schema_input(node: onnx.NodeProto, slot: int) -> str:
    try:
        inputs = onnx.defs.get_schema(node.op_type, domain=node.domain).inputs
    except onnx.defs.SchemaError:
        return str(slot)
    if not inputs:
        return str(slot)
    # A variadic last input (Concat's inputs) covers every later slot.
    return inputs[min(slot, len(inputs) - 1)].name + ("" if slot < len(inputs) else f"_{slot}")


def name_graph(model: onnx.ModelProto, graph_name: str) -> onnx.ModelProto:
    """Readable, unique, deterministic node and tensor names (see the module docstring); graph inputs and
    outputs keep theirs (the manifest's ports). Drops doc strings and value_info (shape inference restores
    the latter; the exporter's carries its generic names)."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        # A subgraph may read outer names this renaming would not follow; m3edge's graphs have none (If, Loop).
        raise ValueError(f"{graph_name}: graphs with subgraphs are not renamed")
    ports = {v.name for v in g.input} | {v.name for v in g.output}
    used_nodes: set[str] = set()
    for i, n in enumerate(g.node):
        base = n.name or f"/{n.op_type}"
        name, k = base, 1
        while name in used_nodes:
            name, k = f"{base}_{k}", k + 1
        used_nodes.add(name)
        n.name, n.doc_string = name, ""
    renames: dict[str, str] = {}
    taken = {t.name for t in g.initializer if not GENERIC.match(t.name)} | ports
    taken |= {o for n in g.node for o in n.output if not GENERIC.match(o)}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    for n in g.node:
        for k, o in enumerate(n.output):
            if o and GENERIC.match(o) and o not in ports and o not in renames:
                renames[o] = fresh(f"{n.name}_output_{k}")
    consumers: dict[str, tuple[onnx.NodeProto, int]] = {}
    for n in g.node:
        for slot, x in enumerate(n.input):
            consumers.setdefault(x, (n, slot))
    for t in g.initializer:
        if GENERIC.match(t.name) and t.name not in renames:
            node, slot = consumers.get(t.name, (None, 0))
            renames[t.name] = fresh(f"{node.name}.{_schema_input(node, slot)}" if node else "/constant")
    for t in g.initializer:
        t.name = renames.get(t.name, t.name)
        t.doc_string = ""
    for n in g.node:
        ins, outs = [renames.get(x, x) for x in n.input], [renames.get(x, x) for x in n.output]
        del n.input[:], n.output[:]
        n.input.extend(ins)
        n.output.extend(outs)
    del g.value_info[:]
    g.name, g.doc_string, model.doc_string = graph_name, "", ""
    return model


def module_label(entry: dict) -> str:
    """A manifest entry's module as export names it (``GraphSpec.label``: encoder, layer0.router,
    layer0.expert_07, layer0.experts for a bank, head...). Written out here because graphs.py imports torch and
    ``extract`` does not need it; a test holds the two to the same names."""
    stem = {"expert": "layer{layer}.expert_{expert:02d}", "router": "layer{layer}.router",
            "bank": "layer{layer}.experts"}.get(entry["role"], entry["role"])
    return stem.format(layer=entry["layer"], expert=entry["expert"])


def find_module(bundle, module: str, bucket: int | None) -> dict:
    """The manifest entry of ``module`` (a label; ``/`` works as ``.``) at ``bucket`` (default: its smallest)."""
    from m3edge.errors import BadInput

    want = module.replace("/", ".")
    entries = [e for e in bundle.graphs if module_label(e) == want]
    if not entries:
        labels = list(dict.fromkeys(module_label(e) for e in bundle.graphs))
        shown = ", ".join(labels if len(labels) <= 8 else labels[:6] + ["..."] + labels[-2:])
        raise BadInput(f"{bundle.root}: no module {module!r} (modules: {shown})")
    buckets = sorted(e["bucket"] for e in entries)
    if bucket is None:
        bucket = buckets[0]
    match = [e for e in entries if e["bucket"] == bucket]
    if not match:
        raise BadInput(f"{want}: no bucket {bucket} (buckets: {', '.join(map(str, buckets))})")
    return match[0]


# protobuf's 2 GiB limit on one message, less room for the graph's structure.
INLINE_LIMIT = 2 ** 31 - 2 ** 24


def extract(bundle, entry: dict, out, external_data: bool = False) -> dict:
    """Write ``entry``'s graph to ``out`` as a graph that opens on its own: weights inlined, or with
    ``external_data`` (forced above protobuf's 2 GiB) in ``<out name>.data`` beside it. A .tflite module is
    copied (its flatbuffer holds its weights). Returns what was written."""
    from pathlib import Path

    from m3edge import backends
    from m3edge import bundle as bfmt
    from m3edge.errors import BadInput

    out = Path(out)
    src = entry["path"]
    # Only ONNX graphs are rewritten (weights inlined, stamped); any other format is copied as it is.
    if backends.capabilities(entry["backend"]).graph_format != "onnx" or not src.endswith(".onnx"):
        if out.suffix != Path(src).suffix:
            raise BadInput(f"{module_label(entry)} is a {Path(src).suffix} graph ({entry['backend']}): "
                           f"write it to a {Path(src).suffix} file")
        out.write_bytes(bundle.read(src))
        return {"path": str(out), "bytes": out.stat().st_size, "files": [str(out)], "source": src}
    if out.suffix != ".onnx":
        raise BadInput(f"{out}: an ONNX graph is written to a .onnx file")
    gf = bundle.graph_file(entry)
    from m3edge.backends.onnxruntime.onnx_export import attach

    model = attach(onnx.load_model_from_string(gf.model), gf.data)
    weights = bfmt.weights_files(entry)
    listed = {f["path"]: f for f in bundle.manifest["files"]}
    stamp(model, {"layer": entry["layer"], "expert": entry["expert"], "memory_type": entry.get("memory_type"),
                  "module": module_label(entry),
                  "manifest_sha256": bfmt.sha256_file(bundle.root / bfmt.MANIFEST),
                  "bundle_graph": f"{src} sha256={entry['sha256']}",
                  "bundle_weights": " ".join(f"{w} sha256={listed[w]['sha256']}" for w in weights) or None})
    big = model.ByteSize() > INLINE_LIMIT
    if not big:  # before anything is written: a graph m3edge hands out must pass the checker
        onnx.checker.check_model(model)
    data_file = out.with_name(out.name + ".data")
    if data_file.exists():  # a stale copy would confuse a later reader; this run decides whether one exists
        data_file.unlink()
    if external_data or big:
        onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file.name, size_threshold=0)
        files = [str(out), str(data_file)]
    else:
        out.write_bytes(model.SerializeToString(deterministic=True))
        files = [str(out)]
    return {"path": str(out), "bytes": sum(Path(f).stat().st_size for f in files), "files": files, "source": src,
            "metadata": metadata(model)}
