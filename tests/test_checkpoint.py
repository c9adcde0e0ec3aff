import json

import pytest
import torch

from m3edge import checkpoint
from m3edge.errors import BadInput

from conftest import run_cli


def test_round_trip_gives_identical_outputs(tiny_agent, tiny_cfg, tmp_path):
    out = checkpoint.save(tiny_agent, tmp_path / "ck")
    again = checkpoint.load(out)
    w = torch.randint(0, 256, (8, tiny_cfg.context))
    assert torch.equal(again(w).logits, tiny_agent(w).logits)
    assert again.cfg == tiny_cfg
    assert (out / "model.safetensors").read_bytes()[:8]  # a real file
    checkpoint.save(tiny_agent, tmp_path / "ck2")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ck2" / "model.safetensors").read_bytes()


def test_save_replaces_atomically(tiny_agent, tmp_path):
    out = checkpoint.save(tiny_agent, tmp_path / "ck")
    checkpoint.save(tiny_agent, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.fixture
def ck(tiny_agent, tmp_path):
    return checkpoint.save(tiny_agent, tmp_path / "ck")


def test_missing_directory_and_files(ck, tmp_path):
    with pytest.raises(BadInput, match="not found"):
        checkpoint.load(tmp_path / "nope")
    (ck / "model.safetensors").unlink()
    with pytest.raises(BadInput, match="missing checkpoint file"):
        checkpoint.load(ck)


def test_flipped_byte_is_caught_by_sha256(ck):
    p = ck / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="sha256"):
        checkpoint.load(ck)


def test_truncated_weights_with_matching_sha_are_refused(ck):
    p = ck / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    meta = json.loads((ck / "checkpoint.json").read_text())
    meta["weights_sha256"] = checkpoint.sha256_file(p)
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput, match="unreadable safetensors"):
        checkpoint.load(ck)


def test_config_that_does_not_match_weights(ck):
    cfg = json.loads((ck / "config.json").read_text())
    cfg["n_experts"] += 1
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInput, match="does not match config.json"):
        checkpoint.load(ck)


def test_cli_exits_2_with_one_line_on_a_corrupt_checkpoint(ck, tmp_path):
    (ck / "config.json").write_text("{broken")
    r = run_cli("eval", ck, "--max-bytes", "64")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "config.json" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", tmp_path / "absent")
    assert r.returncode == 2 and "not found" in r.stderr


def test_save_never_replaces_a_folder_that_is_not_a_checkpoint(tiny_agent, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(BadInput, match="not an m3edge checkpoint"):
        checkpoint.save(tiny_agent, mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
    r = run_cli("train", "--preset", "tiny", "-o", mine, "--steps", "1", "--batch", "4", "--eval-bytes", "512", "--force")
    assert r.returncode == 2 and (mine / "thesis.tex").is_file()


def test_train_needs_force_to_replace_a_checkpoint(ck):
    r = run_cli("train", "--preset", "tiny", "-o", ck, "--steps", "1", "--batch", "4", "--eval-bytes", "512")
    assert r.returncode == 2 and "--force" in r.stderr
    r = run_cli("train", "--preset", "tiny", "-o", ck, "--steps", "1", "--batch", "4", "--eval-bytes", "512", "--force")
    assert r.returncode == 0, r.stderr
