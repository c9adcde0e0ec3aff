"""Where each expert of a bundle lives on a cluster: a pure plan from expert sizes and node budgets.

``plan`` is what ``expert_parallel`` calls at start-up and again when a node dies (with the survivors'
budgets); no Ray here, so it is unit-tested on its own and any scheduler can use it.

The rule is worst-fit decreasing: experts, largest first (ties in (layer, expert) order), each go to the node
with the most bytes still free (ties to the node listed first). With a bundle's experts all of one size this
deals each layer's experts out across nodes in turn, so one layer's calls run on every node side by side,
and a node with twice the budget gets twice the experts once the smaller ones fill.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

ExpertKey = tuple[int, int]  # (layer, expert)


class PlacementError(ValueError):
    """The experts do not fit the nodes' budgets."""


@dataclass(frozen=True)
class Placement:
    node_of: dict[ExpertKey, Hashable]  # expert -> node
    used: dict[Hashable, int]  # node -> bytes placed on it

    def experts_on(self, node) -> list[ExpertKey]:
        return sorted(k for k, n in self.node_of.items() if n == node)

    @property
    def nodes(self) -> list:
        """Nodes holding at least one expert, in the order they were given."""
        return [n for n, b in self.used.items() if b > 0]


def plan(expert_bytes: Mapping[ExpertKey, int], node_budgets: Mapping[Hashable, int]) -> Placement:
    """Place every expert on one node without passing any node's budget (bytes).

    Raises ``PlacementError`` naming the first expert that fits nowhere and the total asked against the
    total offered."""
    if not node_budgets:
        raise PlacementError("no nodes to place experts on")
    for node, budget in node_budgets.items():
        if budget < 0:
            raise PlacementError(f"node {node!r} has a negative budget ({budget} bytes)")
    free = dict(node_budgets)
    node_of: dict[ExpertKey, Hashable] = {}
    for key in sorted(expert_bytes, key=lambda k: (-expert_bytes[k], k)):
        size = expert_bytes[key]
        node = max(free, key=lambda n: free[n])  # max() keeps the first of equal nodes
        if free[node] < size:
            total = sum(expert_bytes.values())
            raise PlacementError(
                f"expert {key} ({size} bytes) fits no node: the experts need {total} bytes, the nodes offer "
                f"{sum(node_budgets.values())} ({len(node_of)} of {len(expert_bytes)} placed)")
        node_of[key] = node
        free[node] -= size
    return Placement(node_of, {n: node_budgets[n] - free[n] for n in node_budgets})
