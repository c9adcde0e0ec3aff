"""The target profile schema, as data, and its validator (stdlib only: the device has no jsonschema).

Every error is one line naming the file and the key, because it ends up on the CLI's stderr.
"""

from __future__ import annotations

import re

from m3edge.errors import BadInput

SCHEMA_VERSION = 1
ARCHS = ("aarch64", "x86_64")
BACKENDS = ("onnxruntime", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")
ROLES = ("encoder", "alignment", "router", "expert", "head")
# Per-channel int8 QDQ (what export quantizes to) needs opset 13.
MIN_OPSET = 13
# Option keys that are instructions to m3edge's runtime, not ONNX Runtime options: ORT rejects unknown
# provider options, so the runtime removes these (see Target.ort_providers) before creating a session.
RUNTIME_ONLY_OPTIONS = ("static_shape_profiles",)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

# key -> kind (how the value is checked) and, for enums, the allowed values. Order is the files' key order.
FIELDS: dict[str, dict] = {
    "schema_version": {"kind": "int", "allowed": (SCHEMA_VERSION,)},
    "name": {"kind": "name"},
    "aliases": {"kind": "names"},
    "description": {"kind": "str"},
    "sources": {"kind": "strings"},
    "arch": {"kind": "str", "allowed": ARCHS},
    "ram_gb": {"kind": "number"},
    "expert_memory_budget_mb": {"kind": "number"},
    "dram_bandwidth_gbps": {"kind": "number"},
    "cores": {"kind": "int"},
    "threads": {"kind": "int"},
    "backend": {"kind": "str", "allowed": BACKENDS},
    "providers": {"kind": "providers"},
    "precision": {"kind": "precision"},
    "opset": {"kind": "int", "min": MIN_OPSET},
    "token_buckets": {"kind": "buckets"},
    "capacity_buckets": {"kind": "buckets"},
    "expert_cache_size": {"kind": "int"},
    # Expert banks (export/bank.py): one graph per layer running every expert, for batches from many
    # callers. Optional; a profile without the key gets them where they fit.
    "expert_banks": {"kind": "bool", "default": True},
    # Long-term memory: the seed's capacity and the RAM the store may use (runtime/memory.py turns the budget
    # into a count with its measured bytes per memory); the smaller of the two holds.
    "memory_capacity": {"kind": "int", "default": 100_000},
    "memory_budget_mb": {"kind": "number", "default": 512},
    # Sequential read speed of the storage the bundle lives on (MB/s): what an expert missing from the cache
    # costs when it is not in the page cache either (m3edge.bench.budget's storage model). A profile that does
    # not say gets the slowest common medium, an SD card.
    "storage_read_mb_s": {"kind": "number", "default": 40},
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
        lo = spec.get("min", 1)
        if v < lo:
            fail(key, f"an integer >= {lo}, got {v!r}")
    elif kind == "number":
        if not _is_number(v) or v <= 0 or v == float("inf"):
            fail(key, f"a positive number, got {v!r} ({_tname(v)})")
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
                if not isinstance(ov, (str, int, float, bool)):
                    fail(f"{at}.options.{ok}", f"a string, number or boolean, got {_tname(ov)}")
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
    if data["backend"] == "onnxruntime" and not data["providers"]:
        fail("providers", "at least one execution provider for the onnxruntime backend")
