"""Bounds and checks for every input m3edge reads other than a bundle's manifest: JSON files (profiles, model
configs), model sizes against the RAM they will need, and CLI values. Stdlib only (the device runs it).

Two kinds of bound:

- absolute caps on each field (``MODEL_CAPS``), far above any model m3edge targets, so that arithmetic on
  a hostile but well-typed value (``expert_hidden_ratio`` 1e308, ``context`` 1e8) never overflows, hangs or
  asks an allocator for terabytes;
- a size check before anything is allocated: the model's parameters are estimated from its config alone
  (``estimate_params``, within a few percent of the real count) and the bytes a step needs must fit in the
  RAM of the profile it is exported for and of the machine doing the work (``check_fits``).

Every failure is a ``BadInput``: one line naming the file and the field, exit 2 on the CLI.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from m3edge.errors import BadInput

# Nesting deeper than this is not a profile or a config: refused before Python's recursion limit is near.
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 16 << 20  # a profile or a config is a few kB; a manifest with 64 x 5 graphs is ~200 kB

# Per-field caps of a model config: an order of magnitude above the seed (d_model 1024, 64 experts, context 16).
MODEL_CAPS = {"d_model": 16384, "n_layers": 256, "n_experts": 1024, "top_k": 1024, "expert_capacity": 1 << 16,
              "context": 4096, "n_heads": 1024, "memory_top_k": 1024, "memory_read_k": 1024,
              "sensory_dims": 16384, "expert_hidden_ratio": 16.0}
MAX_PARAMS = 1 << 34  # 16 G parameters (64 GB in fp32): no edge model, whatever the machine
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
# What a job holds besides the fp32 weights, as a multiple of them: training keeps gradients and Adam's two
# moments; export holds the torch model, the graphs being written and a session checking them.
WORK_FACTOR = {"train": 4, "export": 3}


def _depth(obj) -> int:
    """Nesting depth without recursion (a hostile file must not be able to blow the stack here either)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def parse_json(text: str | bytes, source: str, what: str):
    """``json.loads`` with one-line errors for everything a hostile file can do to it: bad syntax, bad UTF-8,
    nesting deep enough to exhaust the parser's recursion, or merely deeper than any m3edge file."""
    if len(text) > MAX_JSON_BYTES:
        raise BadInput(f"{source}: {what} is {len(text)} bytes; the limit is {MAX_JSON_BYTES}")
    try:
        data = json.loads(text)
    except RecursionError:
        raise BadInput(f"{source}: {what} is nested too deeply to be one (limit {MAX_JSON_DEPTH} levels)") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"{source}: {what} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadInput(f"{source}: {what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's int-parsing limit
        raise BadInput(f"{source}: {what} is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise BadInput(f"{source}: {what} is nested too deeply to be one (limit {MAX_JSON_DEPTH} levels)")
    return data


def load_json(path: str | Path, what: str, source: str | None = None):
    path = Path(path)
    source = source or str(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise BadInput(f"{source}: no such file") from None
    except OSError as e:
        raise BadInput(f"{source}: cannot read {what} ({e.strerror})") from None
    return parse_json(text, source, what)


# ---- model sizes ------------------------------------------------------------------------------------------


def check_model_caps(cfg, source: str) -> None:
    """Each field under its cap; called by ``ModelConfig.validate`` once the types are known good."""
    for name, cap in MODEL_CAPS.items():
        values = getattr(cfg, name)
        for v in values if isinstance(values, tuple) else (values,):
            if v > cap:
                raise BadInput(f"{source}: {name!r} is {v!r}; the most m3edge builds is {cap:g}")
    params = estimate_params(cfg)
    if params > MAX_PARAMS:
        raise BadInput(f"{source}: the model would have about {params:.3g} parameters; the limit is {MAX_PARAMS:.3g}")


def _linear(i: int, o: int) -> int:
    return i * o + o


def estimate_params(cfg) -> int:
    """The parameter count of ``MemoryMoEAgent(cfg)`` from the config alone (nothing allocated); exact for the
    dominant terms (front end, experts, gates, head), tests/test_faults.py holds it within 5% of torch's."""
    d, h, lh, v, c, e = cfg.d_model, cfg.expert_hidden, cfg.lstm_hidden, cfg.vocab, cfg.context, cfg.n_experts
    s = list(cfg.sensory_dims)
    ln = 2  # a LayerNorm's weight and bias, per feature
    total = v * d + c * d + _linear(c * d, d)  # byte embedding, positions, window projection
    prev = d
    for w in s:  # the sensory buffer: Linear, LayerNorm, GELU per width, then a complexity head
        total += _linear(prev, w) + ln * w
        prev = w
    total += _linear(prev, 1) + _linear(s[-1], d)  # complexity, expansion back to d
    total += _linear(d + v, d) + ln * d + 2 * _linear(s[-1], s[-1])  # memory encoder, context encoder
    total += _linear(2 * d, d // 2) + _linear(d // 2, 6) + 6 * e  # alignment (six memory types)
    total += _linear(d, d) + ln * d  # distiller
    lstm = 2 * (4 * lh * (d + lh) + 8 * lh) + _linear(2 * lh, d)
    attn = 4 * d * d + 4 * d + _linear(d, h) + _linear(h, d) + 2 * ln * d
    mlp = _linear(d, h) + _linear(h, d)
    per_kind = {0: lstm, 1: attn, 3: mlp + ln * d}  # by e % 6: episodic, semantic, emotional; the rest MLPs
    experts = sum(per_kind.get(i % 6, mlp) for i in range(e))
    gate = _linear(d, d // 2) + ln * (d // 2) + _linear(d // 2, e)
    total += cfg.n_layers * (experts + gate)
    total += _linear(d, v) + 100  # head, the reader's few dozen
    return total


def ram_bytes() -> int | None:
    """Physical RAM of this machine (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(cfg, source: str, job: str, target=None) -> None:
    """Refuse, before anything is allocated, a model whose ``job`` (train | export) cannot fit: its estimated
    fp32 weights times what the job holds besides must fit in this machine's RAM, and (export) its weights at
    the profile's precisions plus one step's activations in the profile's RAM."""
    params = estimate_params(cfg)
    need = params * 4 * WORK_FACTOR[job]
    have = ram_bytes()
    if have is not None and need > have:
        raise BadInput(f"{source}: {job} needs about {need / 2**30:.3g} GiB ({params:.3g} parameters); this machine "
                       f"has {have / 2**30:.3g} GiB of RAM")
    if target is not None:
        on_device = device_bytes(cfg, target)
        if on_device > target.ram_gb * 2**30:
            raise BadInput(f"{source}: the model needs about {on_device / 2**30:.3g} GiB on {target.name}, which has "
                           f"ram_gb {target.ram_gb:g}")


def device_bytes(cfg, target) -> int:
    """Weights at the profile's precisions (experts dominate: the expert role's) plus one step's activations at
    the largest buckets (the window projection's input, an expert's hidden rows)."""
    weights = estimate_params(cfg) * BYTES.get(target.precision.get("expert", "fp32"), 4)
    rows, cap = max(target.token_buckets), max(target.capacity_buckets)
    acts = 4 * (rows * cfg.context * cfg.d_model + cap * max(cfg.expert_hidden, 4 * cfg.lstm_hidden) * cfg.n_layers)
    return weights + 4 * acts  # inputs, outputs and onnxruntime's arena copies


# ---- CLI values -------------------------------------------------------------------------------------------


def finite(name: str, value: float, lo: float = 0.0, hi: float = math.inf) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise BadInput(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def utf8_text(name: str, value: str) -> str:
    """A CLI string as UTF-8: Python hands non-UTF-8 argv bytes over as lone surrogates (surrogateescape),
    which cannot be encoded; say where they are instead of tracing back at the first ``.encode()``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        try:
            off = len(value[:e.start].encode("utf-8", "surrogateescape"))
            what = f"byte 0x{value[e.start:e.start + 1].encode('utf-8', 'surrogateescape')[0]:02x} at offset {off}"
        except UnicodeEncodeError:  # a lone surrogate that was not an escaped byte
            what = f"a lone surrogate at character {e.start}"
        raise BadInput(f"{name} is not valid UTF-8 ({what})") from None
    return value


def bundle_around(path: str | Path) -> Path | None:
    """The m3edge bundle ``path`` is in or below (its nearest ancestor holding a bundle manifest), if any."""
    from m3edge.bundle import is_bundle

    p = Path(path).resolve()
    for d in (p, *p.parents):
        if d.is_dir() and is_bundle(d):
            return d
    return None


def outside_bundles(option: str, path: str | Path, replaces: bool = False) -> None:
    """Refuse a path for writing that lies inside a bundle: any file added there makes the bundle fail its
    check (an unlisted file), so writing there would brick it. ``replaces``: ``path`` itself is replaced
    whole (``export -o B --force`` over a bundle B), so only its parents count."""
    b = bundle_around(Path(path).resolve().parent if replaces else path)
    if b is not None:
        raise BadInput(f"{option} {path}: inside the m3edge bundle {b}; writing there would make the bundle fail "
                       f"verification (choose a directory outside it)")
