"""Target profiles: one JSON data file per device, validated by ``schema.py``; stdlib only.

``load`` takes a built-in name, an alias, or the path of a user's own profile file.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, fields
from pathlib import Path

from m3edge.errors import BadInput
from m3edge.targets.schema import FIELDS, RUNTIME_ONLY_OPTIONS, check_provider_option, validate

__all__ = ["Target", "names", "aliases", "load", "all_targets", "validate"]

# The profiles ship as package data next to this module, in editable and wheel installs alike.
_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Target:
    schema_version: int
    name: str
    aliases: tuple[str, ...]
    description: str
    sources: tuple[str, ...]
    arch: str
    ram_gb: float
    expert_memory_budget_mb: float
    dram_bandwidth_gbps: float
    cores: int
    threads: int
    backend: str
    providers: tuple[dict, ...]  # ({"name": ..., "options": {...}}, ...), in priority order
    precision: dict  # graph role -> a schema.PRECISIONS name
    opset: int
    token_buckets: tuple[int, ...]
    capacity_buckets: tuple[int, ...]
    expert_cache_size: int
    expert_banks: bool = True
    memory_capacity: int = 100_000
    memory_budget_mb: float = 512
    storage_read_mb_s: float = 40

    @classmethod
    def from_dict(cls, data: dict, source: str = "<target profile>") -> "Target":
        validate(data, source)
        # Deep copy so a caller mutating its dict (or ours) cannot change a frozen Target.
        d = {k: spec["default"] for k, spec in FIELDS.items() if "default" in spec} | copy.deepcopy(data)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        """JSON-ready, in the schema's key order: what a bundle's manifest records as the resolved target."""
        return {
            f.name: copy.deepcopy(list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
        }

    def ort_providers(self, input_shapes: dict | None = None, cache_dir: str | os.PathLike | None = None,
                      graph: str | None = None) -> list[tuple[str, dict]]:
        """The ``providers=`` argument for ``onnxruntime.InferenceSession`` for one graph.

        ``input_shapes`` (input name -> static shape) fills TensorRT's min/opt/max profile shapes, all the
        same, where the profile asks for static shape profiles; engine and timing cache paths (relative in a
        profile) are placed and confined under ``cache_dir`` (default: ``runtime.engines.default_engine_cache``).
        ``graph`` names the module's graph (its file and weights): TensorRT builds the weights into an engine, and experts share graph files,
        so it prefixes the engine's cache name; without it two experts would share one engine.
        """
        from m3edge.runtime.engines import confine, default_engine_cache

        out = []
        for p in self.providers:
            at = f"target {self.name} provider {p['name']}"
            for k, v in p["options"].items():  # again here: a Target can be built without from_dict
                check_provider_option(p["name"], k, v, at)
            opts = {k: v for k, v in p["options"].items() if k not in RUNTIME_ONLY_OPTIONS}
            if p["name"] == "TensorrtExecutionProvider":
                if p["options"].get("static_shape_profiles") and input_shapes:
                    spec = ",".join(f"{n}:{'x'.join(str(int(d)) for d in s)}" for n, s in input_shapes.items())
                    for k in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
                        opts[k] = spec
                # Engines and timing caches go inside the user's cache directory, never elsewhere: TensorRT
                # writes to the working directory when a cache is enabled without a path, so one is always set.
                root = cache_dir if cache_dir is not None else default_engine_cache()
                for enable, key in (("trt_engine_cache_enable", "trt_engine_cache_path"),
                                    ("trt_timing_cache_enable", "trt_timing_cache_path")):
                    if opts.get(enable) or key in opts:
                        opts[key] = confine(root, opts.get(key, ""), f"{at}: {key!r}")
                if graph:  # a bank's key lists 64 weights files: hashed, to stay a valid file name
                    opts["trt_engine_cache_prefix"] = "m3edge_" + hashlib.sha256(graph.encode()).hexdigest()[:16]
            out.append((p["name"], opts))
        return out


def _read(path: Path, source: str) -> dict:
    from m3edge.limits import load_json

    return load_json(path, "a target profile", source)


def _builtin() -> dict[str, Target]:
    out = {}
    for path in sorted(_DIR.glob("*.json")):
        t = Target.from_dict(_read(path, str(path)), str(path))
        if t.name != path.stem:  # the file name is how people find a profile; keep them the same
            raise BadInput(f"{path}: target profile name {t.name!r} does not match its file name")
        out[t.name] = t
    return out


def names() -> list[str]:
    """Canonical names of the built-in profiles, sorted."""
    return sorted(_builtin())


def aliases() -> dict[str, str]:
    """Alias -> canonical name, for the built-in profiles."""
    return {a: t.name for t in _builtin().values() for a in t.aliases}


def all_targets() -> list[Target]:
    return [t for _, t in sorted(_builtin().items())]


def load(name_or_path: str | os.PathLike) -> Target:
    """A built-in profile by name or alias, else a user's profile file (anything ending in .json or on disk)."""
    key = os.fspath(name_or_path)
    builtin = _builtin()
    # Names win over same-named files in the current directory; a user can still say ./rpi5 for the file.
    canonical = key if key in builtin else aliases().get(key)
    if canonical is not None:
        return builtin[canonical]
    path = Path(key).expanduser()
    if key.endswith(".json") or path.exists():
        if not path.is_file():
            raise BadInput(f"target profile file {'is not a file' if path.exists() else 'not found'}: {key}")
        return Target.from_dict(_read(path, key), key)
    valid = ", ".join(names())
    alias_list = ", ".join(f"{a} -> {n}" for a, n in sorted(aliases().items()))
    raise BadInput(f"unknown target {key!r}; valid targets: {valid} (aliases: {alias_list}), "
                   f"or the path of a profile .json file")
