"""Export views: the single-token forms of the BiLSTM and TransformerEncoder experts equal the originals."""

import torch

from m3edge.config import preset
from m3edge.export.graphs import MemoryReference, split
from m3edge.export.views import EncoderStepView, LSTMStepView, export_view
from m3edge.model.experts import EpisodicExpert, MLPExpert, SemanticExpert


def test_views_equal_the_expert_on_every_row():
    torch.manual_seed(0)
    cfg = preset("small")
    x = 4 * torch.randn(512, cfg.d_model)
    for cls, view in ((EpisodicExpert, LSTMStepView), (SemanticExpert, EncoderStepView)):
        expert = cls(cfg).eval()
        v = export_view(expert)
        assert isinstance(v, view)
        with torch.no_grad():
            assert torch.allclose(v(x), expert(x), atol=2e-6, rtol=0)
        # The view shares the expert's parameters: training the agent moves the view too.
        assert {p.data_ptr() for p in v.parameters()} <= {p.data_ptr() for p in expert.parameters()}


def test_other_experts_export_as_they_are():
    e = MLPExpert(preset("tiny"))
    assert export_view(e) is e


def test_split_exports_views_and_checks_against_the_agents_experts(tiny_agent):
    for s in split(tiny_agent, [1], [1]):
        if s.role == "expert":
            assert s.checked_against is tiny_agent.layers[s.layer].experts[s.expert]
        elif s.role == "memory":  # its view writes one_hot as a comparison; judged by the agent's own method
            assert isinstance(s.checked_against, MemoryReference)
        else:
            assert s.checked_against is s.module
