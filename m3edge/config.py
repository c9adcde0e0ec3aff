"""The model config: one JSON schema for presets, checkpoints' config.json and ``--config FILE``.

Stdlib only, so the runtime can read a bundle's manifest without torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from m3edge.errors import BadInput

# The seed's six memory types; expert e has type MEMORY_TYPES[e % 6] (see docs/seed.md).
MEMORY_TYPES = ("episodic", "semantic", "procedural", "emotional", "spatial", "temporal")
VOCAB = 256  # byte-level task


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    n_experts: int = 64
    top_k: int = 4
    routing: str = "dropless"
    expert_capacity: int = 256  # the seed's capacity; used by routing="capacity"
    context: int = 16  # bytes of causal context each token sees
    sensory_dims: tuple[int, int, int] = (512, 256, 128)  # the seed's input -> 512 -> 256 -> 128
    expert_hidden_ratio: float = 1.5  # the seed's hidden 1.5 d
    n_heads: int = 4  # semantic (TransformerEncoder) experts
    balance_loss: float = 0.01
    memory_top_k: int = 5  # the ContextualAssociator's top-5
    memory_read_k: int = 16  # memories the reader (kNN-LM mix at the head) sees per token
    vocab: int = VOCAB

    @property
    def expert_hidden(self) -> int:
        return int(round(self.d_model * self.expert_hidden_ratio))

    @property
    def lstm_hidden(self) -> int:
        # Per direction: the BiLSTM's two directions concatenate to the seed's 1.5 d.
        return max(1, self.expert_hidden // 2)

    @property
    def memory_dim(self) -> int:
        return self.sensory_dims[-1]

    def expert_type(self, expert: int) -> str:
        return MEMORY_TYPES[expert % len(MEMORY_TYPES)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sensory_dims"] = list(self.sensory_dims)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ModelConfig":
        if not isinstance(data, dict):
            raise BadInput(f"{source}: a model config must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BadInput(f"{source}: unknown model config key {unknown[0]!r}")
        kwargs = {}
        for name, value in data.items():
            if name == "sensory_dims":
                if not (isinstance(value, (list, tuple)) and len(value) == 3):
                    raise BadInput(f"{source}: 'sensory_dims' must be a list of three integers")
                value = tuple(value)
            kwargs[name] = value
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        from m3edge.limits import load_json

        path = Path(path)
        return cls.from_dict(load_json(path, "a model config"), source=str(path))

    def validate(self, source: str = "config") -> None:
        def bad(msg):
            raise BadInput(f"{source}: {msg}")

        ints = ["d_model", "n_layers", "n_experts", "top_k", "expert_capacity", "context", "n_heads",
                "memory_top_k", "memory_read_k", "vocab"]
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f"{name!r} must be a positive integer, got {v!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.sensory_dims):
            bad(f"'sensory_dims' must be positive integers, got {list(self.sensory_dims)}")
        if self.memory_top_k > self.memory_read_k:
            bad(f"'memory_top_k' ({self.memory_top_k}) cannot exceed 'memory_read_k' ({self.memory_read_k})")
        if self.top_k > self.n_experts:
            bad(f"'top_k' ({self.top_k}) cannot exceed 'n_experts' ({self.n_experts})")
        from m3edge import routing  # numpy only: the rules registered in m3edge/routing/

        if self.routing not in routing.names():
            bad(f"'routing' must be one of {', '.join(routing.names())}, got {self.routing!r}")
        if self.d_model % 2:
            bad(f"'d_model' must be even (the gate is d -> d/2 -> E), got {self.d_model}")
        if self.d_model % self.n_heads:
            bad(f"'d_model' ({self.d_model}) must be divisible by 'n_heads' ({self.n_heads})")
        if self.vocab != VOCAB:
            bad(f"'vocab' must be {VOCAB} (the task is byte-level)")
        for name in ("expert_hidden_ratio", "balance_loss"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                bad(f"{name!r} must be a finite non-negative number, got {v!r}")
        from m3edge.limits import check_model_caps

        check_model_caps(self, source)  # before any size is derived: 1e308 * d_model is no hidden size
        if self.expert_hidden < 2:
            bad("'expert_hidden_ratio' gives an expert hidden size below 2")


PRESETS = {
    # Tests: builds in milliseconds, still exercises all four expert kinds and both routings.
    "tiny": ModelConfig(d_model=16, n_layers=1, n_experts=8, top_k=2, context=8,
                        sensory_dims=(32, 24, 16), n_heads=2, expert_capacity=16, memory_read_k=8),
    # The trained, committed reference: the seed's 64 experts and top-4, sized to stay under 24 MB.
    "small": ModelConfig(),
    # The seed's sizes, random init: scale and cache benchmarks only.
    "seed": ModelConfig(d_model=1024, n_layers=2, n_experts=64, top_k=4, context=16, n_heads=8),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise BadInput(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
