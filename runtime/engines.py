"""Where TensorRT engines live on the device, and the last check on what reaches onnxruntime.

A bundle carries ONNX graphs and their weights, all hashed; it never carries an engine. TensorRT builds each
engine on the device, from the verified graph and weights, into a cache directory the user chose
(``--engine-cache DIR``; default ``$M3EDGE_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/m3edge/engines``, else
``~/.cache/m3edge/engines``), in a subdirectory per bundle content (the sha256 of its manifest, which lists
the sha256 of every file): two bundles never share an engine, and an edited bundle gets new ones.

``checked_providers`` is applied to the final ``providers=`` list of every session: each option must be on
its provider's allow-list (``m3edge.targets.schema.PROVIDER_OPTIONS``) or one m3edge generates, and each path
must lie inside the engine directory. Profiles and manifests are validated when read; this makes the property
hold by construction for whatever built the list.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from m3edge.errors import BadInput
from m3edge.targets.schema import GENERATED_OPTIONS, PROVIDER_OPTIONS, RUNTIME_ONLY_OPTIONS, TRT_PATH_OPTIONS

ENV = "M3EDGE_ENGINE_CACHE"


def default_engine_cache() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "m3edge" / "engines"


def engine_dir(bundle_root: str | Path, cache: str | Path | None = None) -> Path:
    """This bundle's engine directory under ``cache`` (not created: only TensorRT writes there). A cache inside
    a bundle is refused: files there would be read as the bundle's and make it fail verification."""
    from m3edge.bundle import MANIFEST
    from m3edge.limits import bundle_around

    root = Path(cache).expanduser() if cache is not None else default_engine_cache()
    b = bundle_around(root)
    if b is not None:
        raise BadInput(f"--engine-cache {root}: inside the m3edge bundle {b}; engines are built on the device into "
                       f"a directory outside any bundle")
    digest = hashlib.sha256(Path(bundle_root, MANIFEST).read_bytes()).hexdigest()[:16]
    return root.resolve() / digest


def confine(cache_dir: str | Path, rel: str, what: str) -> str:
    """``rel`` placed inside ``cache_dir``; refused if it is absolute or resolves outside it (``..``, symlinks)."""
    from m3edge.targets.schema import check_relative

    check_relative(rel, what)
    root = Path(cache_dir).resolve()
    p = (root / rel).resolve() if rel else root
    if p != root and root not in p.parents:
        raise BadInput(f"{what}: {rel!r} resolves to {p}, outside the engine cache {root}")
    return str(p)


def checked_providers(providers: list[tuple[str, dict]], cache_dir: str | Path | None) -> list[tuple[str, dict]]:
    """``providers`` unchanged if every option is allowed and every path is inside ``cache_dir``; else BadInput."""
    for name, opts in providers:
        allowed = set(PROVIDER_OPTIONS.get(name, {})) - set(RUNTIME_ONLY_OPTIONS) | set(GENERATED_OPTIONS.get(name, ()))
        for key, value in opts.items():
            if key not in allowed:
                raise BadInput(f"{name} option {key!r} is not one m3edge passes to onnxruntime "
                               f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
            if key in TRT_PATH_OPTIONS:
                root = None if cache_dir is None else Path(cache_dir).resolve()
                p = Path(value)
                if root is None or not p.is_absolute() or (p.resolve() != root and root not in p.resolve().parents):
                    raise BadInput(f"{name} option {key!r} = {value!r} is not inside the engine cache {root}")
    return providers
