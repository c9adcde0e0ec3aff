import json

from conftest import run_cli


def test_every_command_has_help():
    for cmd in ("targets", "train", "eval", "export", "inspect", "verify", "run", "bench", "serve"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


def test_targets_json_lists_profiles():
    r = run_cli("targets", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["targets"]
    names = {t["name"] for t in rows}
    assert {"jetson-orin-nano", "jetson-agx-orin", "rpi5", "rpi4", "host-cpu"} <= names
    jetson = next(t for t in rows if t["name"] == "jetson-orin-nano")
    assert jetson["aliases"] == ["jetson"] and jetson["providers"][0] == "TensorrtExecutionProvider"


def test_train_cli_writes_checkpoint_and_report(tmp_path):
    out = tmp_path / "ck"
    r = run_cli("train", "--preset", "tiny", "-o", out, "--steps", "3", "--batch", "64", "--eval-bytes", "512", "--json")
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "checkpoint.json", "training_report.json"} <= {
        p.name for p in out.iterdir()}
    assert json.loads(r.stdout)["checkpoint"] == str(out)


def test_train_init_continues_from_a_checkpoint_and_records_it(tmp_path):
    first = tmp_path / "a"
    r = run_cli("train", "--preset", "tiny", "-o", first, "--steps", "2", "--batch", "64", "--eval-bytes", "256")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--init", first, "-o", tmp_path / "b", "--steps", "2", "--batch", "64", "--eval-bytes", "256",
                "--lr", "1e-3")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert meta["init"]["weights_sha256"] == json.loads((first / "checkpoint.json").read_text())["weights_sha256"]
    assert meta["preset"] == "tiny" and meta["steps"] == 2
    r = run_cli("train", "--init", tmp_path / "nope", "-o", tmp_path / "c", "--steps", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_train_only_reader_leaves_the_model_without_memory_bit_identical(tmp_path):
    """A stage that tunes only the memory reader (``--only reader``) changes the reader's weights and nothing
    else, so the model without memory predicts exactly as before; an unknown module is exit 2 naming it."""
    from safetensors.numpy import load_file

    first = tmp_path / "a"
    assert run_cli("train", "--preset", "tiny", "-o", first, "--steps", "2", "--batch", "64",
                   "--eval-bytes", "256").returncode == 0
    r = run_cli("train", "--init", first, "-o", tmp_path / "b", "--steps", "3", "--batch", "64", "--eval-bytes", "256",
                "--lr", "1e-2", "--only", "reader", "--fact-every", "256")
    assert r.returncode == 0, r.stderr
    a, b = load_file(first / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    changed = {k for k in a if not (a[k] == b[k]).all()}
    assert changed and all(k.startswith("reader.") for k in changed)
    report = json.loads((tmp_path / "b" / "training_report.json").read_text())
    assert report["train_config"]["only"] == ["reader"] and report["train_config"]["fact_every"] == 256
    assert all(row["memory"] for row in report["loss_curve"])  # nothing to teach a memory-off step
    r = run_cli("train", "--init", first, "-o", tmp_path / "c", "--steps", "1", "--only", "reader,brain")
    assert r.returncode == 2 and "brain" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c").exists()
    for bad, says in ((("--only", ","), "name at least one module"), (("--fact-every", "3"), "larger --fact-every")):
        r = run_cli("train", "--init", first, "-o", tmp_path / "d", "--steps", "1", *bad)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_bad_usage_exits_2():
    r = run_cli("train", "--preset", "huge", "-o", "/tmp/x-never")
    assert r.returncode == 2 and "unknown preset" in r.stderr and "Traceback" not in r.stderr
