"""The routing rule, one home: top-k selection (``topk.py``) and one module per rule (``dropless.py``,
``capacity.py``), each with its numpy (runtime) and torch (reference agent) implementation side by side.

    from m3edge import routing
    values, index = routing.select_topk(logits, k)       # numpy array or torch tensor
    rule = routing.get(cfg.routing)                       # registered by ``@register`` in its module
    keep = rule.keep(index, weight, n_experts, capacity)  # bool [N, k]

torch is imported only inside the torch implementations: the runtime imports this package without it.
"""

from __future__ import annotations

import importlib
import pkgutil

from m3edge.routing.base import Rule, get, names, register
from m3edge.routing.topk import (balance_loss, group_by_expert, select_topk, select_topk_numpy, select_topk_torch,
                                 select_topk_traceable, topk_weights)

NOT_RULES = ("base", "topk")  # every other module of this package is a rule, found by its file name


def _load() -> None:
    for m in pkgutil.iter_modules(__path__):
        if m.name not in NOT_RULES:
            importlib.import_module(f"{__name__}.{m.name}")


__all__ = ["Rule", "balance_loss", "get", "group_by_expert", "names", "register", "select_topk", "select_topk_numpy",
           "select_topk_torch", "select_topk_traceable", "topk_weights"]
