"""A routing rule's contract and the registry of rules (one module per rule in this package)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from m3edge.errors import BadInput

_RULES: dict[str, "Rule"] = {}


class Rule(ABC):
    """Which of the top-k (token, expert) pairs are computed: ``keep`` [N, k] bool, numpy and torch side by side.
    A rule that ``drops`` pairs zeroes their weights; one that does not leaves the weights untouched."""

    name: ClassVar[str]
    drops: ClassVar[bool]

    @abstractmethod
    def keep_numpy(self, index, weight, n_experts: int, capacity: int):
        """The rule on numpy arrays (the runtime)."""

    @abstractmethod
    def keep_torch(self, index, weight, n_experts: int, capacity: int):
        """The rule on torch tensors (the reference agent); torch imported inside."""

    def keep(self, index, weight, n_experts: int, capacity: int):
        import numpy as np

        if isinstance(index, np.ndarray):
            return self.keep_numpy(index, weight, n_experts, capacity)
        return self.keep_torch(index, weight, n_experts, capacity)


def register(cls):
    _RULES[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    from m3edge.routing import _load

    _load()
    return tuple(_RULES)


def get(name: str) -> Rule:
    from m3edge.routing import _load

    _load()
    rule = _RULES.get(name) if isinstance(name, str) else None
    if rule is None:
        raise BadInput(f"unknown routing rule {name!r} (choose from {', '.join(_RULES)})")
    return rule
