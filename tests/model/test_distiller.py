from types import SimpleNamespace

import torch

from m3edge.model.distiller import MemoryDistiller


def mem(i, v, assoc=()):
    return SimpleNamespace(id=i, value=torch.tensor(v, dtype=torch.float32), associations={a: 0.5 for a in assoc})


def test_duplicates_merge_and_associations_link_nodes():
    torch.manual_seed(0)
    d = MemoryDistiller(4).eval()
    added = d.consolidate([mem(0, [1, 0, 0, 0]), mem(1, [1, 0, 0, 0]), mem(2, [0, 0, 3, -1], assoc=[0])])
    assert added == 2 and len(d.nodes) == 2
    assert d.nodes[0].count == 2 and d.nodes[0].sources == {0, 1}
    assert (0, 1) in d.edges
    assert d.consolidate([mem(0, [1, 0, 0, 0])]) == 0  # already consolidated: idempotent
