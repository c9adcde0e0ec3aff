"""One registry of backends: declared by decorator in each backend folder, looked up by name. Stdlib only.

Backends are found by folder, as tinygrad finds its runtimes by file name: every package under
``m3edge/backends/`` is imported once (its ``__init__`` is stdlib only), and its ``@register`` declares it. A
backend's runtime and export sides are imported when first asked for, so listing backends imports neither
onnxruntime nor torch, and the runtime never imports an export side.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

from m3edge.errors import BadInput

_DECLARED: dict[str, type] = {}  # name -> Backend subclass (aliases included)
_RUNTIME: dict[str, type] = {}  # name -> RuntimeBackend subclass, filled when its runtime.py is imported
_EXPORT: dict[str, type] = {}  # name -> ExportBackend subclass, filled when its export.py is imported
_INSTANCES: dict[tuple[str, str], object] = {}
_lock = threading.Lock()
_discovered = False


class UnknownBackend(BadInput):
    """A name no backend folder declares (exit 2 on the CLI)."""


def register(cls):
    """Class decorator for a backend folder's ``Backend`` declaration."""
    for name in (cls.name, *cls.aliases):
        other = _DECLARED.get(name)
        if other is not None and other is not cls:
            raise RuntimeError(f"backend name {name!r} declared twice ({other.__module__}, {cls.__module__})")
        _DECLARED[name] = cls
    cls.package = cls.__module__
    return cls


def runtime_side(name: str):
    """Class decorator for a backend's ``RuntimeBackend`` (its runtime.py)."""
    def deco(cls):
        cls.name = name
        _RUNTIME[name] = cls
        return cls
    return deco


def export_side(name: str):
    """Class decorator for a backend's ``ExportBackend`` (its export.py)."""
    def deco(cls):
        cls.name = name
        _EXPORT[name] = cls
        return cls
    return deco


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _lock:
        if not _discovered:
            import m3edge.backends as pkg

            for info in pkgutil.iter_modules(pkg.__path__):
                if info.ispkg:
                    importlib.import_module(f"{pkg.__name__}.{info.name}")
            _discovered = True


def names(*, exporting: bool | None = None, device: bool | None = None) -> tuple[str, ...]:
    """Backend names (no aliases), sorted; ``exporting``: only those with an export side (a profile may name
    them); ``device``: only those the device install runs."""
    _discover()
    out = {cls.name for cls in _DECLARED.values()
           if (exporting is None or cls.capabilities.exports == exporting)
           and (device is None or cls.capabilities.device == device)}
    return tuple(sorted(out))


def get(name: str):
    """The ``Backend`` declared under ``name`` (or an alias); ``UnknownBackend`` names the ones there are."""
    _discover()
    cls = _DECLARED.get(name) if isinstance(name, str) else None
    if cls is None:
        raise UnknownBackend(f"unknown backend {name!r} (this m3edge has: {', '.join(names())})")
    return cls()


def capabilities(name: str):
    return get(name).capabilities


def _side(name: str, side: str, table: dict):
    backend = get(name)
    key = (backend.name, side)
    inst = _INSTANCES.get(key)
    if inst is None:
        if backend.name not in table:
            try:
                importlib.import_module(f"{backend.package}.{side}")
            except ModuleNotFoundError as e:
                if e.name != f"{backend.package}.{side}":
                    raise  # a library the side needs: the CLI names the extra to install
            if backend.name not in table:
                raise UnknownBackend(f"the {backend.name} backend has no {side} side")
        inst = _INSTANCES[key] = table[backend.name]()
    return inst


def runtime(name: str):
    """The ``RuntimeBackend`` of ``name``; imports its runtime.py on first use."""
    return _side(name, "runtime", _RUNTIME)


def export(name: str):
    """The ``ExportBackend`` of ``name``; imports its export.py (torch, onnx, converters) on first use."""
    return _side(name, "export", _EXPORT)


def graph_backend(entry: dict, cfg=None) -> str:
    """Which backend runs a manifest entry: the session's override (``verify --backend``) or the entry's own."""
    override = getattr(cfg, "backend", None)
    if override:
        chosen = get(override)
        if not chosen.runs(entry["backend"]):
            fmt = get(entry["backend"]).capabilities.graph_format
            raise BadInput(f"{entry['path']}: the {chosen.name} backend cannot run {fmt} graphs (this bundle's "
                           f"backend is {entry['backend']})")
        return chosen.name
    return entry["backend"]


def open_graph(src, entry: dict, cfg):
    """The graph a manifest entry describes, in the backend that runs it."""
    name = graph_backend(entry, cfg)
    try:
        backend = runtime(name)
    except UnknownBackend as e:
        raise BadInput(f"{entry['path']}: {e}") from None
    return backend.open(src, entry, cfg)
