"""The target profile schema, as data, and its validator (stdlib only: the device has no jsonschema).

Every error is one line naming the file and the key, because it ends up on the CLI's stderr.
"""

from __future__ import annotations

import re

from m3edge.errors import BadInput
from m3edge.manifest import PRECISIONS  # noqa: F401 (also read from here: the names a profile may ask for)

SCHEMA_VERSION = 1
ARCHS = ("aarch64", "x86_64")
ROLES = ("encoder", "alignment", "router", "expert", "head")
# Per-channel int8 QDQ (what export quantizes to) needs opset 13.
MIN_OPSET = 13
# Option keys that are instructions to m3edge's runtime, not ONNX Runtime options: ORT rejects unknown
# provider options, so the runtime removes these (see Target.ort_providers) before creating a session.
RUNTIME_ONLY_OPTIONS = ("static_shape_profiles",)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# A bucket is a static graph dimension (rows per call); one of 1e9 rows asks the allocator for terabytes.
MAX_BUCKET = 1 << 16
MAX_BUCKETS = 16  # a graph per bucket per module: more would multiply a bundle for nothing

# What a profile (and so a bundle's manifest, which records its resolved profile) may pass to each ONNX
# Runtime execution provider. Allow-listed, not deny-listed: an option this list does not name is refused,
# because several load code or read files (TensorRT's trt_engine_decryption_lib_path loads a shared library,
# trt_ep_context_file_path and trt_int8_calibration_table_name read files a bundle could ship, a prebuilt
# engine runs weights that were never verified). Kinds: bool, int (>= 0), shapes (TensorRT's
# "input:1x16x64,..." profile strings), path (relative, placed and confined inside the engine cache
# directory the user chose: ``Target.ort_providers``), or a tuple of allowed strings.
TRT_PATH_OPTIONS = ("trt_engine_cache_path", "trt_timing_cache_path")
PROVIDER_OPTIONS: dict[str, dict[str, object]] = {
    "TensorrtExecutionProvider": {
        "device_id": "int", "trt_fp16_enable": "bool", "trt_int8_enable": "bool", "trt_bf16_enable": "bool",
        "trt_engine_cache_enable": "bool", "trt_engine_cache_path": "path", "trt_timing_cache_enable": "bool",
        "trt_timing_cache_path": "path", "trt_max_workspace_size": "int", "trt_builder_optimization_level": "int",
        "trt_profile_min_shapes": "shapes", "trt_profile_opt_shapes": "shapes", "trt_profile_max_shapes": "shapes",
        "trt_max_partition_iterations": "int", "trt_min_subgraph_size": "int", "trt_force_sequential_engine_build":
        "bool", "trt_cuda_graph_enable": "bool", "trt_sparsity_enable": "bool", "trt_layer_norm_fp32_fallback":
        "bool", "trt_dla_enable": "bool", "trt_dla_core": "int", "trt_auxiliary_streams": "int",
        "trt_build_heuristics_enable": "bool", "trt_context_memory_sharing_enable": "bool",
        "trt_detailed_build_log": "bool",
        "static_shape_profiles": "bool",  # m3edge's own (RUNTIME_ONLY_OPTIONS)
    },
    "CUDAExecutionProvider": {
        "device_id": "int", "gpu_mem_limit": "int", "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
        "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"), "do_copy_in_default_stream": "bool",
        "cudnn_conv_use_max_workspace": "bool", "cudnn_conv1d_pad_to_nc1d": "bool", "enable_cuda_graph": "bool",
        "use_tf32": "bool", "prefer_nhwc": "bool",
    },
    "CPUExecutionProvider": {},
    "XnnpackExecutionProvider": {"intra_op_num_threads": "int"},
}
# Options m3edge itself adds for TensorRT (per graph), which a profile may not set: the engine cache name
# prefix is derived from the graph and its verified weights.
GENERATED_OPTIONS = {"TensorrtExecutionProvider": ("trt_engine_cache_prefix",)}
SHAPES_RE = re.compile(r"^[A-Za-z0-9_.:/-]+:\d+(x\d+)*(,[A-Za-z0-9_.:/-]+:\d+(x\d+)*)*$")


def provider_option_error(provider: str, key: str, value) -> str | None:
    """What ``provider``'s option ``key`` must be, when ``value`` is not allowed ("must be ..."); else None."""
    allowed = PROVIDER_OPTIONS.get(provider, {})
    kind = allowed.get(key)
    if kind is None:
        return (f"an option m3edge passes to {provider} (allowed: {', '.join(allowed) or 'none'}); "
                f"{key!r} is not")
    ok = {"bool": lambda v: isinstance(v, bool),
          "int": lambda v: _is_int(v) and 0 <= v < 1 << 48,
          "shapes": lambda v: isinstance(v, str) and len(v) < 4096 and bool(SHAPES_RE.match(v)),
          "path": lambda v: isinstance(v, str) and 0 < len(v) < 256 and relative_error(v) is None}
    if not (ok[kind](value) if isinstance(kind, str) else value in kind):
        want = {"bool": "true or false", "int": "a non-negative integer", "shapes": "name:1x2x3,... shapes",
                "path": "a path relative to the engine cache directory, without '..'"}.get(kind) \
            if isinstance(kind, str) else f"one of {', '.join(kind)}"
        return f"{want}, got {value!r}"
    return None


def check_provider_option(provider: str, key: str, value, at: str) -> None:
    """Raise BadInput unless ``provider`` may be given ``key`` = ``value``; ``at`` starts the message."""
    err = provider_option_error(provider, key, value)
    if err:
        raise BadInput(f"{at} option '{key}' must be {err}")


def relative_error(rel: str) -> str | None:
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "~")) or (len(rel) > 1 and rel[1] == ":") or ".." in parts or "\0" in rel:
        return f"a path relative to the engine cache directory, without '..', got {rel!r}"
    return None


def check_relative(rel: str, what: str) -> None:
    """A path a profile names for the device to write: relative, no '..', placed inside the user's cache."""
    err = relative_error(rel)
    if err:
        raise BadInput(f"{what} must be {err}")


# key -> kind (how the value is checked) and, for enums, the allowed values. Order is the files' key order.
FIELDS: dict[str, dict] = {
    "schema_version": {"kind": "int", "allowed": (SCHEMA_VERSION,)},
    "name": {"kind": "name"},
    "aliases": {"kind": "names"},
    "description": {"kind": "str"},
    "sources": {"kind": "strings"},
    "arch": {"kind": "str", "allowed": ARCHS},
    "ram_gb": {"kind": "number", "max": 4096},
    "expert_memory_budget_mb": {"kind": "number", "max": 4096 * 1024},
    "dram_bandwidth_gbps": {"kind": "number", "max": 100_000},
    "cores": {"kind": "int", "max": 1024},
    "threads": {"kind": "int", "max": 1024},  # and at most cores (below)
    "backend": {"kind": "backend"},  # a name m3edge.backends declares, with an export side
    "providers": {"kind": "providers"},
    "precision": {"kind": "precision"},
    "opset": {"kind": "int", "min": MIN_OPSET, "max": 64},
    "token_buckets": {"kind": "buckets", "max": MAX_BUCKET},
    "capacity_buckets": {"kind": "buckets", "max": MAX_BUCKET},
    "expert_cache_size": {"kind": "int", "max": 4096},
    # Expert banks (backends/onnxruntime/bank.py): one graph per layer running every expert, for batches from many
    # callers. Optional; a profile without the key gets them where they fit.
    "expert_banks": {"kind": "bool", "default": True},
    # Long-term memory: the seed's capacity and the RAM the store may use (runtime/memory.py turns the budget
    # into a count with its measured bytes per memory); the smaller of the two holds.
    "memory_capacity": {"kind": "int", "default": 100_000, "max": 10_000_000},
    "memory_budget_mb": {"kind": "number", "default": 512, "max": 4096 * 1024},
    # Sequential read speed of the storage the bundle lives on (MB/s): what an expert missing from the cache
    # costs when it is not in the page cache either (m3edge.bench.budget's storage model). A profile that does
    # not say gets the slowest common medium, an SD card.
    "storage_read_mb_s": {"kind": "number", "default": 40, "max": 100_000},
}


def _tname(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a count


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and v == v  # rejects NaN


def _check_field(key: str, spec: dict, v, fail) -> None:
    kind = spec["kind"]
    if kind == "bool":
        if not isinstance(v, bool):
            fail(key, f"true or false, got {v!r} ({_tname(v)})")
    elif kind == "int":
        if not _is_int(v):
            fail(key, f"an integer, got {v!r} ({_tname(v)})")
        lo, hi = spec.get("min", 1), spec.get("max", 1 << 62)
        if not lo <= v <= hi:
            fail(key, f"an integer in [{lo}, {hi}], got {v!r}")
    elif kind == "number":
        if not _is_number(v) or v <= 0 or v == float("inf"):
            fail(key, f"a positive number, got {v!r} ({_tname(v)})")
        if v > spec.get("max", float("inf")):
            fail(key, f"at most {spec['max']:g}, got {v!r}")
    elif kind in ("str", "name"):
        if not isinstance(v, str) or not v.strip():
            fail(key, f"a non-empty string, got {v!r} ({_tname(v)})")
        if kind == "name" and not NAME_RE.match(v):
            fail(key, f"a lower-case name matching {NAME_RE.pattern}, got {v!r}")
    elif kind in ("strings", "names"):
        if not isinstance(v, list):
            fail(key, f"a list of strings, got {_tname(v)}")
        for i, item in enumerate(v):
            if not isinstance(item, str) or not item.strip():
                fail(f"{key}[{i}]", f"a non-empty string, got {item!r} ({_tname(item)})")
            if kind == "names" and not NAME_RE.match(item):
                fail(f"{key}[{i}]", f"a lower-case name matching {NAME_RE.pattern}, got {item!r}")
        if len(set(v)) != len(v):
            fail(key, f"no duplicates, got {v!r}")
        if kind == "strings" and not v:
            fail(key, "at least one entry")
    elif kind == "buckets":
        if not isinstance(v, list) or not v or not all(_is_int(b) for b in v):
            fail(key, f"a non-empty list of integers, got {v!r}")
        if v[0] < 1 or any(a >= b for a, b in zip(v, v[1:])):
            fail(key, f"positive integers in strictly increasing order, got {v!r}")
        if v[-1] > spec["max"] or len(v) > MAX_BUCKETS:
            fail(key, f"at most {MAX_BUCKETS} buckets of at most {spec['max']} rows, got {v!r}")
    elif kind == "backend":
        from m3edge import backends  # stdlib only: a backend folder's declaration imports nothing else

        allowed = backends.names(exporting=True)
        if v not in allowed:
            fail(key, f"one of {', '.join(map(repr, allowed))}, got {v!r}")
    elif kind == "precision":
        if not isinstance(v, dict):
            fail(key, f"an object mapping {', '.join(ROLES)} to a precision, got {_tname(v)}")
        for role in v:
            if role not in ROLES:
                fail(f"{key}.{role}", f"a graph role, one of {', '.join(ROLES)} (unknown role)")
        for role in ROLES:
            if role not in v:
                fail(f"{key}.{role}", f"present (one of {', '.join(PRECISIONS)}); it is missing")
            if v[role] not in PRECISIONS:
                fail(f"{key}.{role}", f"one of {', '.join(PRECISIONS)}, got {v[role]!r}")
    elif kind == "providers":
        if not isinstance(v, list):
            fail(key, f"a list of {{name, options}} objects, got {_tname(v)}")
        seen = set()
        for i, p in enumerate(v):
            at = f"{key}[{i}]"
            if not isinstance(p, dict) or set(p) != {"name", "options"}:
                got = sorted(p) if isinstance(p, dict) else _tname(p)
                fail(at, f"an object with exactly the keys 'name' and 'options', got {got}")
            name, options = p["name"], p["options"]
            if not isinstance(name, str) or not name.endswith("ExecutionProvider"):
                fail(f"{at}.name", f"an ONNX Runtime provider name ending in 'ExecutionProvider', got {name!r}")
            if name in seen:
                fail(f"{at}.name", f"listed once, got {name!r} twice")
            seen.add(name)
            if not isinstance(options, dict):
                fail(f"{at}.options", f"an object, got {_tname(options)}")
            for ok, ov in options.items():
                err = provider_option_error(name, ok, ov)
                if err:
                    fail(f"{at}.options.{ok}", err)
    else:  # pragma: no cover - a typo in FIELDS
        raise AssertionError(kind)


def validate(data: dict, source: str) -> None:
    """Raise BadInput (one line: source, key, what was expected) unless ``data`` is a valid profile."""

    def fail(key: str, expected: str):
        raise BadInput(f"{source}: target profile key '{key}' must be {expected}")

    if not isinstance(data, dict):
        raise BadInput(f"{source}: a target profile must be a JSON object, got {_tname(data)}")
    for key in data:
        if key not in FIELDS:
            raise BadInput(f"{source}: unknown target profile key '{key}' (expected keys: {', '.join(FIELDS)})")
    for key, spec in FIELDS.items():
        if key not in data and "default" not in spec:
            raise BadInput(f"{source}: target profile is missing the key '{key}'")
    for key, spec in FIELDS.items():
        if key not in data:
            continue
        v = data[key]
        if "allowed" in spec and v not in spec["allowed"]:
            fail(key, f"one of {', '.join(map(repr, spec['allowed']))}, got {v!r}")
        _check_field(key, spec, v, fail)

    # Cross-field rules: things each key passes alone but that cannot run together.
    if data["name"] in data["aliases"]:
        fail("aliases", f"names other than the profile's own name {data['name']!r}")
    if data["expert_memory_budget_mb"] > data["ram_gb"] * 1024:
        fail("expert_memory_budget_mb", f"at most ram_gb * 1024 = {data['ram_gb'] * 1024:g}, got "
             f"{data['expert_memory_budget_mb']!r}")
    if data["threads"] > data["cores"]:
        fail("threads", f"at most cores ({data['cores']}): more intra-op threads than cores only contend, got "
             f"{data['threads']!r}")
    if data.get("memory_budget_mb", 0) > data["ram_gb"] * 1024:
        fail("memory_budget_mb", f"at most ram_gb * 1024 = {data['ram_gb'] * 1024:g}, got {data['memory_budget_mb']!r}")
    from m3edge import backends

    if backends.capabilities(data["backend"]).providers and not data["providers"]:
        fail("providers", f"at least one execution provider for the {data['backend']} backend")
