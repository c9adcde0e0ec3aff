"""The graph split (export/graphs.py): which module each graph is exported from and checked against."""

import torch

from m3edge.export.graphs import split


def test_the_memory_graph_is_checked_against_the_agents_own_encoder(tiny_agent):
    specs = {s.label: s for s in split(tiny_agent, [4], [2], bank_rows=2)}
    memory = specs["memory"]
    x, next_byte = torch.randn(4, tiny_agent.cfg.d_model), torch.tensor([0, 7, 128, 255])
    with torch.no_grad():
        # the export view writes one_hot as a comparison (litert-torch has no lowering for F.one_hot's check)
        torch.testing.assert_close(memory.module(x, next_byte), tiny_agent.memory.encode_experience(x, next_byte))
        torch.testing.assert_close(memory.checked_against(x, next_byte),
                                   tiny_agent.memory.encode_experience(x, next_byte), rtol=0, atol=0)
    assert memory.checked_against is not memory.module


def test_a_bank_follows_its_layers_experts_and_stacks_a_block_per_expert(tiny_agent):
    labels = [s.label for s in split(tiny_agent, [4], [2], bank_rows=2)]
    n = tiny_agent.cfg.n_experts
    assert labels.index("layer0.experts") == labels.index(f"layer0.expert_{n - 1:02d}") + 1
    bank = next(s for s in split(tiny_agent, [4], [2], bank_rows=2) if s.role == "bank")
    assert bank.buckets == (2,) and bank.shape(bank.inputs[0], 2) == [2 * n, tiny_agent.cfg.d_model]
    assert "layer0.experts" not in [s.label for s in split(tiny_agent, [4], [2])]
