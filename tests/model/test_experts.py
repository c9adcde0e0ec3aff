import torch

from m3edge.config import MEMORY_TYPES
from m3edge.model.experts import EmotionalExpert, EpisodicExpert, MemoryExpert, MLPExpert, SemanticExpert


def test_each_memory_type_gets_its_expert_kind(tiny_cfg):
    kinds = {t: type(MemoryExpert(tiny_cfg, t)) for t in MEMORY_TYPES}
    assert kinds["episodic"] is EpisodicExpert and kinds["semantic"] is SemanticExpert
    assert kinds["emotional"] is EmotionalExpert
    assert {kinds[t] for t in ("procedural", "spatial", "temporal")} == {MLPExpert}


def test_experts_map_rows_to_rows_independently(tiny_cfg):
    torch.manual_seed(0)
    x = torch.randn(9, tiny_cfg.d_model)
    for t in MEMORY_TYPES:
        ex = MemoryExpert(tiny_cfg, t).eval()
        with torch.no_grad():
            y = ex(x)
            padded = ex(torch.cat([x[:4], torch.zeros(5, tiny_cfg.d_model)]))
        assert y.shape == x.shape
        # A row's output does not depend on the other rows: the static-bucket padding contract.
        assert torch.allclose(padded[:4], y[:4], atol=1e-6)


def test_episodic_bilstm_projects_one_and_a_half_d_back_to_d(tiny_cfg):
    ex = EpisodicExpert(tiny_cfg)
    assert ex.lstm.bidirectional and 2 * ex.lstm.hidden_size == tiny_cfg.expert_hidden
    assert (ex.proj.in_features, ex.proj.out_features) == (tiny_cfg.expert_hidden, tiny_cfg.d_model)
