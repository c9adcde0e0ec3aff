import json

import pytest

from m3edge.config import MEMORY_TYPES, PRESETS, ModelConfig, preset
from m3edge.errors import BadInput


def test_presets_are_valid_and_follow_the_seed():
    for cfg in PRESETS.values():
        cfg.validate()
    small, seed = preset("small"), preset("seed")
    assert (small.n_experts, small.top_k) == (64, 4)
    assert (seed.d_model, seed.n_experts, seed.top_k) == (1024, 64, 4)
    assert small.sensory_dims == (512, 256, 128)
    assert small.expert_hidden == int(1.5 * small.d_model)
    assert small.balance_loss == 0.01 and small.expert_capacity == 256 and small.memory_top_k == 5


def test_expert_types_cycle_through_six_memory_types():
    cfg = preset("small")
    assert len(MEMORY_TYPES) == 6
    assert [cfg.expert_type(e) for e in range(7)] == list(MEMORY_TYPES) + [MEMORY_TYPES[0]]


def test_json_round_trip(tmp_path):
    cfg = ModelConfig(d_model=32, n_experts=6, top_k=3, routing="capacity", expert_capacity=8)
    p = tmp_path / "c.json"
    p.write_text(cfg.to_json())
    assert ModelConfig.load(p) == cfg


@pytest.mark.parametrize("patch, word", [
    ({"n_experts": 2, "top_k": 3}, "top_k"),
    ({"routing": "greedy"}, "routing"),
    ({"d_model": 0}, "d_model"),
    ({"d_model": 30, "n_heads": 4}, "n_heads"),
    ({"bogus": 1}, "bogus"),
    ({"sensory_dims": [1, 2]}, "sensory_dims"),
    ({"n_layers": True}, "n_layers"),
])
def test_invalid_configs_name_the_bad_key(patch, word):
    data = preset("tiny").to_dict() | patch
    with pytest.raises(BadInput, match=word):
        ModelConfig.from_dict(data)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        ModelConfig.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(BadInput, match="not valid JSON"):
        ModelConfig.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(BadInput, match="JSON object"):
        ModelConfig.load(tmp_path / "list.json")


def test_unknown_preset():
    with pytest.raises(BadInput, match="tiny, small, seed"):
        preset("huge")


def test_non_finite_numbers_and_directories_are_bad_input(tmp_path):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(BadInput, match="finite"):
            ModelConfig.from_dict(preset("tiny").to_dict() | {"expert_hidden_ratio": bad})
    with pytest.raises(BadInput, match="cannot read"):
        ModelConfig.load(tmp_path)
