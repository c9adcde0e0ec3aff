"""The device install: the wheel plus its own dependencies (numpy, onnxruntime, click, threadpoolctl), in a fresh virtual
environment without torch, runs a bundle and answers exactly what the host's install answers; eval and bench
run from the wheel alone (its calibration_data), with no repository.

The dependency wheels are kept in build/device-wheels (git-ignored) and installed from there offline; they are
downloaded from PyPI (through pip's cache) only when that folder lacks one. The arm64 counterpart of this test,
on an emulated Debian system, is `make check-arm64` (targets/check-arm64).
"""

import json
import os
import subprocess
import sys
import venv
from importlib.metadata import version

import pytest

from conftest import ROOT

WHEELHOUSE = ROOT / "build" / "device-wheels"
PROMPT = "def main(argv):"


def _pip(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_device_install_runs_a_bundle_without_torch(tmp_path):
    bundle = tmp_path / "bundle"
    # The export (host venv, torch) runs while the device venv is being set up.
    export = subprocess.Popen([sys.executable, "-m", "m3edge.cli", "export", "--target", "host-cpu", "--preset", "tiny",
                               "-o", bundle, "--parity-tokens", "64"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    try:
        r = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", ROOT)
        assert r.returncode == 0, r.stderr
        wheel = next((tmp_path / "dist").glob("m3edge-*.whl"))

        dev = tmp_path / "device"
        venv.create(dev, with_pip=False)  # pip runs from the host (pip --python), not from the device venv
        py = dev / "bin" / "python"
        # The host's versions, so that the two installs differ only in torch (and so the wheels are reused).
        pins = tmp_path / "pins.txt"
        pins.write_text("".join(f"{n}=={version(n)}\n" for n in ("numpy", "onnxruntime", "click")))
        install = ("--python", py, "install", "-q", "--no-compile", "--no-index", "--find-links", WHEELHOUSE,
                   "-c", pins, wheel)
        r = _pip(*install)
        if r.returncode != 0:  # the wheelhouse lacks a dependency: fetch it (pip's cache first), then offline again
            WHEELHOUSE.mkdir(parents=True, exist_ok=True)
            d = _pip("download", "-q", "-d", WHEELHOUSE, "-c", pins, wheel)
            if d.returncode != 0:
                pytest.skip(f"cannot download the device dependencies: {d.stderr.strip().splitlines()[-1:]}")
            for own in WHEELHOUSE.glob("m3edge-*.whl"):  # pip download copies the wheel itself too
                own.unlink()
            r = _pip(*install)
        assert r.returncode == 0, r.stderr

        r = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode != 0 and "No module named 'torch'" in r.stderr, r.stderr
        listed = subprocess.run([py, "-c", "import importlib.metadata as m, json; print(json.dumps("
                                 "[d.metadata['Name'].lower() for d in m.distributions()]))"],
                                capture_output=True, text=True, cwd=tmp_path)
        names = set(json.loads(listed.stdout))
        assert {"m3edge", "numpy", "onnxruntime", "click"} <= names and "torch" not in names, names
    finally:
        out, err = export.communicate(timeout=300)
    assert export.returncode == 0, err

    args = ["run", bundle, "--prompt", PROMPT, "--max-bytes", "24", "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    device = subprocess.run([dev / "bin" / "m3edge", *args], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120)
    assert device.returncode == 0, device.stderr
    host = subprocess.run([sys.executable, "-m", "m3edge.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert host.returncode == 0, host.stderr
    d, h = json.loads(device.stdout), json.loads(host.stdout)
    assert d["bytes"] == h["bytes"] == 24
    assert d["text"] == h["text"]
    assert d["experts_used"] == h["experts_used"]
    assert {k: d["cache"][k] for k in ("hits", "misses", "evictions")} == \
        {k: h["cache"][k] for k in ("hits", "misses", "evictions")}

    # eval and bench from the wheel alone (issue 20): no repository, no calibration_data in the working directory.
    # The device's n-gram baselines come from the train split's shipped counts, the host's from train.txt itself.
    assert not (tmp_path / "calibration_data").exists()
    text = tmp_path / "text.txt"
    text.write_bytes((ROOT / "calibration_data" / "eval.txt").read_bytes()[:3000])
    args = ["eval", bundle, "--data", text, "--json"]
    device = subprocess.run([dev / "bin" / "m3edge", *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)
    assert device.returncode == 0, device.stderr
    host = subprocess.run([sys.executable, "-m", "m3edge.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert host.returncode == 0, host.stderr
    d, h = json.loads(device.stdout), json.loads(host.stdout)
    assert d["bytes"] == h["bytes"] == 3000
    assert d["bits_per_byte"] == pytest.approx(h["bits_per_byte"], abs=1e-9)
    assert d["baselines"] == h["baselines"]
    assert "eval: 3000/3000 bytes (100%)" in device.stderr  # progress on stderr, stdout one JSON object

    # The default split, read from the wheel's own copy of calibration_data.
    device = subprocess.run([dev / "bin" / "m3edge", "eval", bundle, "--max-bytes", "500", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert device.returncode == 0, device.stderr
    assert json.loads(device.stdout)["data"].endswith("site-packages/m3edge/calibration_data/eval.txt")

    # bench: prompts from the shipped eval split; every row in a fresh device process.
    bench = subprocess.run([dev / "bin" / "m3edge", "bench", bundle, "--no-torch", "--suite", "engines",
                            "--cache-sizes", "", "--prompts", "1", "--bytes", "4", "--json"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr
    rows = json.loads(bench.stdout)["rows"]
    assert [r["engine"] for r in rows] == ["m3edge-runtime"] and rows[0]["bytes_per_s"] > 0
