"""The bundle manifest as typed, frozen data: the one place that knows its fields, their types and defaults.

``Manifest.from_dict`` validates everything a bundle's manifest.json says (types, ranges, cross-references
between modules, graph sets and files, the model config against the routing block and the graphs' ports) and
refuses it with one line naming the field (``BadInput``: exit 2 on the CLI). ``to_dict`` gives back exactly the
dict it was read from, for every bundle export writes (``to_dict(from_dict(x)) == x``), so a bundle read and
written again keeps its bytes. Stdlib only.

    manifest.json
      schema_version, format, versions{lib: version}, opset
      model_config   a ModelConfig, every field present
      source         how verify rebuilds the torch agent {kind, ...}
      target         the resolved target profile (targets/schema.py)
      precision      {requested, graphs{role: precision}, notes[]}
      routing        {mode, top_k, n_experts, capacity, token_buckets, capacity_buckets, tie_break}
      expert_usage   {split, tokens, pairs[layer][expert], next_token[E][E]}   (optional)
      graphs[]       modules: {role, layer, expert, memory_type, precision, backend, weights, graphs: set name}
      graph_sets     {set name: {bucket: path | {path, signature, inputs, outputs}}}
      files[]        {path, sha256, bytes[, inputs, outputs]}; a port: {name, shape, dtype, scale, zero_point}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from m3edge.errors import BadInput

ROLES = ("encoder", "memory", "alignment", "router", "expert", "bank", "head", "reader")
PRECISIONS = ("fp32", "fp16", "int8", "int8-weight-only", "int4")  # the last two: onnxruntime MatMulNBits
# Per role, the ports whose last dimension the model config fixes: a bundle whose config says otherwise would
# run graphs of another model.
PORT_DIMS = {
    "encoder": {"windows": "context", "x": "d_model"},
    "memory": {"x": "d_model", "value": "d_model"},
    "alignment": {"x": "d_model", "memory": "d_model", "bias": "n_experts"},
    "router": {"x": "d_model", "bias": "n_experts", "h": "d_model", "logits": "n_experts"},
    "expert": {"h": "d_model", "y": "d_model"},
    "bank": {"x": "d_model", "y": "d_model"},
    "head": {"x": "d_model", "logits": "vocab"},
    "reader": {"logits": "vocab", "logp": "vocab"},
}
TOKEN_ROLES = ("encoder", "memory", "alignment", "router", "head", "reader")  # one graph per token bucket


class Invalid(BadInput):
    """A manifest field that fails validation; the message names the field."""


def _tname(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(v), type(v).__name__)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _At:
    """Where a value sits in the manifest, for messages: ``graphs[3].role``."""

    def __init__(self, where: str, path: str = ""):
        self.where, self.path = where, path

    def __getitem__(self, key) -> "_At":
        return _At(self.where, f"{self.path}[{key}]" if isinstance(key, int) else
                   (f"{self.path}.{key}" if self.path else str(key)))

    def fail(self, expected: str, got=None, show: bool = True):
        tail = f", got {got!r} ({_tname(got)})"[:120] if show else ""
        raise Invalid(f"{self.where}: {self.path or 'manifest'} must be {expected}{tail}")

    def obj(self, v, keys: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(v, dict):
            self.fail("an object", v)
        for k in keys:
            if k not in v:
                raise Invalid(f"{self.where}: {self[k].path} is missing")
        extra = sorted(set(v) - set(keys) - set(optional)) if keys or optional else []
        if extra:
            raise Invalid(f"{self.where}: {self[extra[0]].path} is not a manifest field")
        return v

    def str(self, v, allowed=None, optional: bool = False):
        if optional and v is None:
            return None
        if not isinstance(v, str) or not v:
            self.fail("a non-empty string" + (" or null" if optional else ""), v)
        if allowed is not None and v not in allowed:
            self.fail(f"one of {', '.join(allowed)}", v)
        return v

    def int(self, v, lo: int = 0, optional: bool = False):
        if optional and v is None:
            return None
        if not _int(v) or v < lo:
            self.fail(f"an integer >= {lo}" + (" or null" if optional else ""), v)
        return v

    def number(self, v, optional: bool = False):
        if optional and v is None:
            return None
        if not (_int(v) or isinstance(v, float)) or v != v:
            self.fail("a number" + (" or null" if optional else ""), v)
        return v

    def list(self, v, nonempty: bool = False) -> list:
        if not isinstance(v, list) or (nonempty and not v):
            self.fail("a non-empty list" if nonempty else "a list", v)
        return v

    def buckets(self, v) -> tuple[int, ...]:
        if (not isinstance(v, list) or not v or not all(_int(b) and b >= 1 for b in v)
                or any(a >= b for a, b in zip(v, v[1:]))):
            self.fail("a non-empty list of positive integers in increasing order", v)
        return tuple(v)


@dataclass(frozen=True)
class Port:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None  # set on a quantized port (LiteRT int8 I/O)
    zero_point: int | None = None

    @classmethod
    def from_dict(cls, d, at: _At) -> "Port":
        at.obj(d, ("name", "shape", "dtype", "scale", "zero_point"))
        shape = d["shape"]
        if not isinstance(shape, list) or not all(_int(s) and s >= 1 for s in shape):
            at["shape"].fail("a list of positive integers", shape)
        return cls(at["name"].str(d["name"]), tuple(shape), at["dtype"].str(d["dtype"]),
                   at["scale"].number(d["scale"], optional=True), at["zero_point"].int(d["zero_point"], -2 ** 31, True))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "scale": self.scale,
                "zero_point": self.zero_point}


def _ports(v, at: _At) -> tuple[Port, ...]:
    return tuple(Port.from_dict(p, at[i]) for i, p in enumerate(at.list(v, nonempty=True)))


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    bytes: int
    inputs: tuple[Port, ...] | None = None  # a graph file with one signature carries its ports
    outputs: tuple[Port, ...] | None = None

    @classmethod
    def from_dict(cls, d, at: _At) -> "FileRecord":
        at.obj(d, ("path", "sha256", "bytes"), ("inputs", "outputs"))
        sha = d["sha256"]
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            at["sha256"].fail("64 lower-case hex digits", sha)
        if ("inputs" in d) != ("outputs" in d):
            raise Invalid(f"{at.where}: {at.path} has {'inputs' if 'inputs' in d else 'outputs'} without the other")
        ports = {k: _ports(d[k], at[k]) for k in ("inputs", "outputs") if k in d}
        return cls(at["path"].str(d["path"]), sha, at["bytes"].int(d["bytes"]), **ports)

    def to_dict(self) -> dict:
        d = {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}
        if self.inputs is not None:
            d |= {"inputs": [p.to_dict() for p in self.inputs], "outputs": [p.to_dict() for p in self.outputs]}
        return d


@dataclass(frozen=True)
class GraphItem:
    """One bucket of a graph set: a graph file, or (a .tflite) one signature of a file with its own ports."""
    path: str
    signature: str | None = None
    inputs: tuple[Port, ...] | None = None
    outputs: tuple[Port, ...] | None = None

    @classmethod
    def from_dict(cls, d, at: _At) -> "GraphItem":
        if isinstance(d, str):
            return cls(at.str(d))
        at.obj(d, ("path", "signature", "inputs", "outputs"))
        return cls(at["path"].str(d["path"]), at["signature"].str(d["signature"]), _ports(d["inputs"], at["inputs"]),
                   _ports(d["outputs"], at["outputs"]))

    def to_dict(self):
        if self.signature is None:
            return self.path
        return {"path": self.path, "signature": self.signature, "inputs": [p.to_dict() for p in self.inputs],
                "outputs": [p.to_dict() for p in self.outputs]}


@dataclass(frozen=True)
class Module:
    """One module of the agent (a graph role, at a layer and expert where that applies) and its graph set."""
    role: str
    layer: int | None
    expert: int | None
    memory_type: str | None
    precision: str
    backend: str
    weights: str | tuple[str, ...] | None  # a bank lists its experts' weights files
    graphs: str  # the graph set's name

    @classmethod
    def from_dict(cls, d, at: _At) -> "Module":
        from m3edge import backends

        at.obj(d, ("role", "layer", "expert", "memory_type", "precision", "backend", "weights", "graphs"))
        role = at["role"].str(d["role"], ROLES)
        try:
            backends.get(d["backend"])
        except BadInput:
            at["backend"].fail(f"a backend this m3edge has ({', '.join(backends.names())})", d["backend"])
        w = d["weights"]
        if role == "bank":
            if not isinstance(w, list) or not w or not all(isinstance(x, str) and x for x in w):
                at["weights"].fail("a non-empty list of weights files (a bank reads its experts')", w)
            w = tuple(w)
        else:
            at["weights"].str(w, optional=True)
        return cls(role, at["layer"].int(d["layer"], optional=True), at["expert"].int(d["expert"], optional=True),
                   at["memory_type"].str(d["memory_type"], optional=True),
                   at["precision"].str(d["precision"], PRECISIONS), d["backend"], w, at["graphs"].str(d["graphs"]))

    def to_dict(self) -> dict:
        return {"role": self.role, "layer": self.layer, "expert": self.expert, "memory_type": self.memory_type,
                "precision": self.precision, "backend": self.backend,
                "weights": list(self.weights) if isinstance(self.weights, tuple) else self.weights,
                "graphs": self.graphs}


@dataclass(frozen=True)
class Routing:
    mode: str
    top_k: int
    n_experts: int
    capacity: int
    token_buckets: tuple[int, ...]
    capacity_buckets: tuple[int, ...]
    tie_break: str

    @classmethod
    def from_dict(cls, d, at: _At) -> "Routing":
        from m3edge import routing

        at.obj(d, ("mode", "top_k", "n_experts", "capacity", "token_buckets", "capacity_buckets", "tie_break"))
        return cls(at["mode"].str(d["mode"], routing.names()), at["top_k"].int(d["top_k"], 1),
                   at["n_experts"].int(d["n_experts"], 1), at["capacity"].int(d["capacity"], 1),
                   at["token_buckets"].buckets(d["token_buckets"]),
                   at["capacity_buckets"].buckets(d["capacity_buckets"]), at["tie_break"].str(d["tie_break"]))

    def to_dict(self) -> dict:
        return {"mode": self.mode, "top_k": self.top_k, "n_experts": self.n_experts, "capacity": self.capacity,
                "token_buckets": list(self.token_buckets), "capacity_buckets": list(self.capacity_buckets),
                "tie_break": self.tie_break}


def _table(v, rows: int, cols: int, at: _At) -> tuple[tuple[int, ...], ...]:
    if (not isinstance(v, list) or len(v) != rows
            or not all(isinstance(r, list) and len(r) == cols and all(_int(x) and x >= 0 for x in r) for r in v)):
        at.fail(f"a {rows} x {cols} table of counts", v)
    return tuple(tuple(r) for r in v)


@dataclass(frozen=True)
class ExpertUsage:
    """Routed pairs per layer and expert on the calibration split, and the (last layer, next token's first layer)
    counts the runtime prefetches from."""
    split: str
    tokens: int
    pairs: tuple[tuple[int, ...], ...]  # [layer][expert]
    next_token: tuple[tuple[int, ...], ...] | None  # [E][E]

    @classmethod
    def from_dict(cls, d, at: _At, n_layers: int, n_experts: int) -> "ExpertUsage":
        at.obj(d, ("split", "tokens", "pairs"), ("next_token",))
        nt = d.get("next_token")
        return cls(at["split"].str(d["split"]), at["tokens"].int(d["tokens"]),
                   _table(d["pairs"], n_layers, n_experts, at["pairs"]),
                   None if nt is None else _table(nt, n_experts, n_experts, at["next_token"]))

    def to_dict(self) -> dict:
        d = {"split": self.split, "tokens": self.tokens, "pairs": [list(r) for r in self.pairs]}
        if self.next_token is not None:
            d["next_token"] = [list(r) for r in self.next_token]
        return d


SCALE_DTYPES = ("float16", "float32")  # how weight-only block scales are stored (export/quantize.py)


@dataclass(frozen=True)
class Precision:
    requested: str
    graphs: dict  # role -> precision
    notes: tuple[str, ...] = ()
    # Weight-only precisions used: precision -> MatMulNBits settings {bits, block_size, symmetric, accuracy_level,
    # scale_dtype (optional: bundles before it stored float32 scales)}
    weight_only: dict | None = None

    @classmethod
    def from_dict(cls, d, at: _At) -> "Precision":
        at.obj(d, ("requested", "graphs", "notes"), ("weight_only",))
        graphs = at["graphs"].obj(d["graphs"])
        for role, p in graphs.items():
            at["graphs"][role].str(role, ROLES)
            at["graphs"][role].str(p, PRECISIONS)
        notes = at["notes"].list(d["notes"])
        for i, n in enumerate(notes):
            at["notes"][i].str(n)
        wo = None
        if "weight_only" in d:
            wo = at["weight_only"].obj(d["weight_only"])
            for p, settings in wo.items():
                w = at["weight_only"][p]
                w.str(p, PRECISIONS)
                w.obj(settings, ("bits", "block_size", "symmetric", "accuracy_level"), ("scale_dtype",))
                for k in ("bits", "block_size", "accuracy_level"):
                    w[k].int(settings[k])
                if not isinstance(settings["symmetric"], bool):
                    w["symmetric"].fail("true or false", settings["symmetric"])
                if "scale_dtype" in settings:
                    w["scale_dtype"].str(settings["scale_dtype"], SCALE_DTYPES)
        return cls(at["requested"].str(d["requested"]), dict(graphs), tuple(notes), wo)

    def to_dict(self) -> dict:
        return {"requested": self.requested, "graphs": dict(self.graphs), "notes": list(self.notes)} \
            | ({"weight_only": self.weight_only} if self.weight_only is not None else {})


KEYS = ("schema_version", "format", "versions", "opset", "model_config", "source", "target", "precision", "routing",
        "graphs", "graph_sets", "files")
OPTIONAL = ("expert_usage",)


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    format: str
    versions: dict
    opset: int
    model_config: object  # m3edge.config.ModelConfig
    source: dict
    target: object  # m3edge.targets.Target
    precision: Precision
    routing: Routing
    modules: tuple[Module, ...]
    graph_sets: dict  # set name -> {bucket: GraphItem}
    files: tuple[FileRecord, ...]
    expert_usage: ExpertUsage | None = None
    _entries: list = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d, where: str | Path = "manifest.json") -> "Manifest":
        """Validate every field of a manifest dict; ``Invalid`` (exit 2) names the first one that is wrong."""
        from m3edge.bundle import FORMAT, READS
        from m3edge.config import ModelConfig
        from m3edge.targets import Target

        at = _At(str(where))
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise Invalid(f"{where}: not an {FORMAT} manifest")
        if d.get("schema_version") not in READS:
            raise Invalid(f"{where}: schema_version {d.get('schema_version')!r}, this m3edge reads "
                          f"{' and '.join(map(str, READS))} (re-export the bundle with this m3edge)")
        at.obj(d, KEYS, OPTIONAL)
        versions = at["versions"].obj(d["versions"])
        for k, v in versions.items():
            at["versions"][k].str(v)
        mc = at["model_config"].obj(d["model_config"], tuple(ModelConfig.__dataclass_fields__))
        cfg = ModelConfig.from_dict(mc, f"{where}: model_config")
        if cfg.to_dict() != mc:
            at["model_config"].fail("a model config as export writes it", mc)
        source = at["source"].obj(d["source"])
        at["source"]["kind"].str(source.get("kind"))
        target = Target.from_dict(d["target"], f"{where}: target")
        routing = Routing.from_dict(d["routing"], at["routing"])
        for name, want in (("mode", cfg.routing), ("top_k", cfg.top_k), ("n_experts", cfg.n_experts),
                           ("capacity", cfg.expert_capacity)):
            if getattr(routing, name) != want:
                at["routing"][name].fail(f"{want!r}, as model_config says", getattr(routing, name))
        usage = None
        if "expert_usage" in d:
            usage = ExpertUsage.from_dict(d["expert_usage"], at["expert_usage"], cfg.n_layers, cfg.n_experts)
        files = tuple(FileRecord.from_dict(f, at["files"][i]) for i, f in enumerate(at["files"].list(d["files"], True)))
        listed = {f.path for f in files}
        sets = {}
        for name, buckets in at["graph_sets"].obj(d["graph_sets"]).items():
            sa = at["graph_sets"][name]
            if not isinstance(buckets, dict) or not buckets:
                sa.fail("a non-empty object mapping buckets to graphs", buckets)
            items = {}
            for b, item in buckets.items():
                if not (isinstance(b, str) and b.isdigit() and int(b) >= 1 and str(int(b)) == b):
                    sa.fail("keyed by positive bucket sizes", b)
                g = items[int(b)] = GraphItem.from_dict(item, sa[b])
                if g.path not in listed:
                    sa[b].fail("a graph file listed in files", g.path)
            sets[name] = items
        modules = []
        for i, m in enumerate(at["graphs"].list(d["graphs"], True)):
            mod = Module.from_dict(m, at["graphs"][i])
            if mod.graphs not in sets:
                at["graphs"][i]["graphs"].fail("the name of a graph set", mod.graphs)
            for w in (mod.weights if isinstance(mod.weights, tuple) else (mod.weights,) if mod.weights else ()):
                if w not in listed:
                    at["graphs"][i]["weights"].fail("weights files listed in files", w)
            modules.append(mod)
        m = cls(d["schema_version"], d["format"], dict(versions), at["opset"].int(d["opset"], 1), cfg, dict(source),
                target, Precision.from_dict(d["precision"], at["precision"]), routing, tuple(modules), sets, files, usage)
        m._check_graphs(at)
        return m

    def to_dict(self) -> dict:
        d = {"schema_version": self.schema_version, "format": self.format, "versions": dict(self.versions),
             "opset": self.opset, "model_config": self.model_config.to_dict(), "source": dict(self.source),
             "target": self.target.to_dict(), "precision": self.precision.to_dict(), "routing": self.routing.to_dict(),
             "graphs": [m.to_dict() for m in self.modules],
             "graph_sets": {name: {str(b): g.to_dict() for b, g in items.items()} for name, items in self.graph_sets.items()},
             "files": [f.to_dict() for f in self.files]}
        if self.expert_usage is not None:
            d["expert_usage"] = self.expert_usage.to_dict()
        return d

    def entries(self) -> list[dict]:
        """One dict per (module, bucket): the module's fields, the graph file's path, sha256, bytes and ports, and a
        signature where the file has several; what the executor and the backends load graphs from."""
        if self._entries is None:
            files = {f.path: f for f in self.files}
            out = []
            for m in self.modules:
                for bucket, g in sorted(self.graph_sets[m.graphs].items()):
                    f = files[g.path]
                    ports = g if g.signature is not None else f
                    e = m.to_dict()
                    del e["graphs"]
                    e |= {"inputs": [p.to_dict() for p in ports.inputs] if ports.inputs else None,
                          "outputs": [p.to_dict() for p in ports.outputs] if ports.outputs else None,
                          "bucket": bucket, "sha256": f.sha256, "bytes": f.bytes, "path": g.path}
                    if g.signature is not None:
                        e["signature"] = g.signature
                    out.append(e)
            object.__setattr__(self, "_entries", out)
        return self._entries

    def _check_graphs(self, at: _At) -> None:
        """Every graph the model and buckets need, each with ports of this model's shapes."""
        cfg, r = self.model_config, self.routing
        have = {}
        for e in self.entries():
            where = f"graph {e['path']} ({e['role']}, bucket {e['bucket']})"
            if e["role"] == "bank" and (e["layer"] not in range(cfg.n_layers) or len(e["weights"]) != cfg.n_experts):
                raise Invalid(f"{at.where}: bank {e['path']} does not fit the model ({cfg.n_layers} layers of "
                              f"{cfg.n_experts} experts)")
            if e["inputs"] is None:
                raise Invalid(f"{at.where}: {where} has no ports in files or its graph set")
            rows = e["bucket"] * (len(e["weights"]) if e["role"] == "bank" else 1)
            for kind in ("inputs", "outputs"):
                for p in e[kind]:
                    if p["shape"][0] != rows:
                        raise Invalid(f"{at.where}: {where} {kind[:-1]} {p['name']!r} has {p['shape'][0]} rows, "
                                      f"its bucket says {rows}")
                    dim = PORT_DIMS[e["role"]].get(p["name"])
                    if dim is not None and p["shape"][-1] != getattr(cfg, dim):
                        raise Invalid(f"{at.where}: model_config.{dim} is {getattr(cfg, dim)}, but {where} "
                                      f"{kind[:-1]} {p['name']!r} has shape {p['shape']}")
            have[(e["role"], e["bucket"], e["layer"], e["expert"])] = e
        need = [(role, b, None, None) for role in ("encoder", "memory", "alignment", "head") for b in r.token_buckets]
        need += [("router", b, layer, None) for layer in range(cfg.n_layers) for b in r.token_buckets]
        need += [("expert", b, layer, e) for layer in range(cfg.n_layers) for e in range(cfg.n_experts)
                 for b in r.capacity_buckets]
        missing = sorted(set(need) - set(have), key=str)
        if missing:
            role, bucket, layer, expert = missing[0]
            raise Invalid(f"{at.where}: incomplete bundle: no {role} graph for layer {layer}, expert {expert}, "
                          f"bucket {bucket}")
