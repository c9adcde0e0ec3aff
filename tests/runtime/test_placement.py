"""The expert placement plan (runtime/placement.py): pure, no Ray."""

import pytest

from m3edge.runtime.placement import PlacementError, plan


def experts(layers, n, size=100):
    return {(layer, e): size for layer in range(layers) for e in range(n)}


def test_equal_nodes_split_each_layer_evenly():
    p = plan(experts(2, 8), {"a": 10_000, "b": 10_000})
    for layer in range(2):
        on_a = [e for (lay, e), n in p.node_of.items() if lay == layer and n == "a"]
        assert len(on_a) == 4  # each layer's experts dealt out to both nodes, so a layer runs on both
    assert p.used == {"a": 800, "b": 800}
    assert p.nodes == ["a", "b"]


def test_budgets_are_never_exceeded_and_bigger_nodes_take_more():
    sizes = {(0, e): 100 + 37 * e for e in range(12)}
    budgets = {"pi4": 900, "orin": 2000, "pi5": 1100}
    p = plan(sizes, budgets)
    assert set(p.node_of) == set(sizes)
    for node, budget in budgets.items():
        assert sum(sizes[k] for k in p.experts_on(node)) == p.used[node] <= budget
    assert len(p.experts_on("orin")) > len(p.experts_on("pi4"))


def test_plan_is_deterministic():
    sizes = experts(3, 5)
    budgets = {"x": 700, "y": 700, "z": 700}
    assert plan(sizes, budgets) == plan(dict(reversed(list(sizes.items()))), budgets)


def test_too_little_memory_names_the_expert_and_totals():
    with pytest.raises(PlacementError, match=r"expert \(\d, \d\) \(100 bytes\) fits no node: the experts need 800 "
                                             r"bytes, the nodes offer 650"):
        plan(experts(2, 4), {"a": 300, "b": 350})


def test_one_expert_larger_than_every_node_fails_even_if_the_total_fits():
    with pytest.raises(PlacementError, match=r"expert \(0, 0\) \(500 bytes\)"):
        plan({(0, 0): 500, (0, 1): 10}, {"a": 400, "b": 400})


def test_no_nodes_and_negative_budgets_are_refused():
    with pytest.raises(PlacementError, match="no nodes"):
        plan(experts(1, 2), {})
    with pytest.raises(PlacementError, match="negative budget"):
        plan(experts(1, 2), {"a": -1})
