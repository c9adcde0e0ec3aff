"""Checkpoints: a directory with config.json (the model-config schema), model.safetensors and
checkpoint.json (format version, sha256 of the weights, provenance). No pickle anywhere.

Every failure to load is a ``BadInput`` naming the file, so the CLI exits 2 with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from m3edge import __version__
from m3edge.atomic import atomic_dir
from m3edge.bundle import sha256_file
from m3edge.config import ModelConfig
from m3edge.errors import BadInput

FORMAT = "m3edge-checkpoint/1"
CONFIG, WEIGHTS, META = "config.json", "model.safetensors", "checkpoint.json"


def save(agent, out_dir: str | Path, info: dict | None = None, force: bool = True) -> Path:
    """Write atomically: a sibling temp dir renamed over ``out_dir`` only once complete.

    An existing ``out_dir`` is replaced only when it is an m3edge checkpoint (or empty) and ``force``.
    """
    with atomic_dir(out_dir, force, _is_checkpoint, "m3edge checkpoint") as tmp:
        _write(agent, tmp, info)
    return Path(out_dir).resolve()


def _is_checkpoint(path: Path) -> bool:
    try:
        return json.loads((path / META).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write(agent, tmp: Path, info: dict | None) -> None:
    from safetensors.torch import save_file

    # Sorted keys and contiguous copies make the file a pure function of the weights.
    state = {k: v.detach().contiguous().clone() for k, v in sorted(agent.state_dict().items())}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
    (tmp / CONFIG).write_text(agent.cfg.to_json())
    meta = {"format": FORMAT, "m3edge_version": __version__, "weights_sha256": sha256_file(tmp / WEIGHTS)}
    meta.update(info or {})
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(ckpt_dir: str | Path) -> tuple[ModelConfig, dict]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise BadInput(f"{d}: checkpoint directory not found")
    for name in (CONFIG, WEIGHTS, META):
        if not (d / name).is_file():
            raise BadInput(f"{d / name}: missing checkpoint file")
    cfg = ModelConfig.load(d / CONFIG)
    try:
        meta = json.loads((d / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{d / META}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInput(f"{d / META}: not an {FORMAT} checkpoint")
    return cfg, meta


# Tensors a checkpoint from before them may lack: they keep their initial values, which leave the model's
# function unchanged (the co-occurrence matrix at zero counts, its weight at 0), so an older checkpoint loads
# and computes as it did.
ADDED_LATER = frozenset({"alignment.co_occurrence", "alignment.co_weight"})


def load(ckpt_dir: str | Path, allow_missing: frozenset = ADDED_LATER, **agent_kwargs):
    """Rebuild the agent, refusing weights whose sha256, keys or shapes do not match (except the missing
    tensors named in ``allow_missing``, which keep their initial values)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from m3edge.model.agent import MemoryMoEAgent

    d = Path(ckpt_dir)
    cfg, meta = read_meta(d)
    if sha256_file(d / WEIGHTS) != meta.get("weights_sha256"):
        raise BadInput(f"{d / WEIGHTS}: sha256 does not match checkpoint.json (corrupt or replaced)")
    try:
        state = load_file(str(d / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{d / WEIGHTS}: unreadable safetensors file ({e})") from None
    agent = MemoryMoEAgent(cfg, **agent_kwargs)
    expected = agent.state_dict()
    missing = sorted(set(expected) - set(state) - allow_missing)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise BadInput(f"{d / WEIGHTS}: does not match config.json ({what})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise BadInput(f"{d / WEIGHTS}: tensor {k!r} has shape {tuple(v.shape)}, "
                           f"config.json implies {tuple(expected[k].shape)}")
    agent.load_state_dict(state, strict=False)  # keys checked above: only allowed ones may be missing
    agent.eval()
    return agent


def build_agent(checkpoint_dir=None, preset_name=None, config_file=None, seed: int = 0):
    """The torch agent for export, and the manifest's record of where it came from.

    A checkpoint is recorded by path and weights sha256; a preset or config by its full config and the
    seed of its random init, so ``verify`` can rebuild exactly the same agent.
    """
    import torch

    from m3edge.config import preset
    from m3edge.model.agent import MemoryMoEAgent

    if checkpoint_dir:
        if preset_name or config_file:
            raise BadInput("pass either --checkpoint or --preset/--config, not both")
        agent = load(checkpoint_dir)
        _, meta = read_meta(checkpoint_dir)
        # Absolute, so verify works from any directory; the sha256 says which weights these were.
        return agent, {"kind": "checkpoint", "path": str(Path(checkpoint_dir).resolve()),
                       "weights_sha256": meta["weights_sha256"]}
    if not (preset_name or config_file):
        raise BadInput("nothing to export: pass --checkpoint DIR, or --preset NAME / --config FILE.json")
    cfg = ModelConfig.load(config_file) if config_file else preset(preset_name)
    torch.manual_seed(seed)
    agent = MemoryMoEAgent(cfg).eval()
    return agent, {"kind": "random-init", "config": cfg.to_dict(), "seed": seed,
                   "preset": None if config_file else preset_name}


def agent_from_source(source: dict, checkpoint_dir=None):
    """Rebuild the agent a manifest records (``checkpoint_dir`` overrides it)."""
    import torch

    from m3edge.model.agent import MemoryMoEAgent

    if checkpoint_dir:
        return load(checkpoint_dir)
    kind = source.get("kind")
    if kind == "checkpoint":
        agent = load(source["path"])
        _, meta = read_meta(source["path"])
        if meta["weights_sha256"] != source["weights_sha256"]:
            raise BadInput(f"{source['path']}: checkpoint weights changed since export (sha256 differs); "
                           f"pass --checkpoint to compare against another")
        return agent
    if kind == "random-init":
        torch.manual_seed(source["seed"])
        return MemoryMoEAgent(ModelConfig.from_dict(source["config"], "manifest source.config")).eval()
    raise BadInput(f"manifest source kind {kind!r} unknown; pass --checkpoint")
