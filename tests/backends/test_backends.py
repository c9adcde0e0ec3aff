"""Backends behind two contracts and one registry (m3edge/backends/); the reference backend added through them."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ROOT
from m3edge import backends
from m3edge.bundle import open_bundle
from m3edge.cli import cli
from m3edge.errors import BadInput
from m3edge.runtime.executor import BundleExecutor


def test_the_registry_finds_every_backend_folder_and_their_capabilities():
    assert backends.names() == ("onnxruntime", "reference", "tflite")
    assert backends.names(exporting=True) == ("onnxruntime", "tflite")  # what a profile may name
    assert backends.get("litert").name == "tflite"  # the folder's name is an alias of the manifests' name
    ort, litert, ref = (backends.capabilities(n) for n in ("onnxruntime", "tflite", "reference"))
    assert ort.shared_weights and not litert.shared_weights and not ref.shared_weights
    assert "fp16" in ort.precisions and "fp16" not in litert.precisions and not ref.exports
    assert backends.get("reference").runs("onnxruntime") and not backends.get("reference").runs("tflite")


def test_an_unknown_backend_is_a_typed_error_naming_the_known_ones():
    with pytest.raises(backends.UnknownBackend, match=r"unknown backend 'coreml' \(this m3edge has: onnxruntime"):
        backends.runtime("coreml")
    assert issubclass(backends.UnknownBackend, BadInput) and backends.UnknownBackend.exit_code == 2


def test_runtime_sides_import_no_torch_and_export_sides_load_lazily():
    code = ("import sys; from m3edge import backends; "
            "[backends.runtime(n) for n in backends.names()]; "
            "print('torch' in sys.modules, 'm3edge.backends.onnxruntime.export' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_no_code_outside_the_backend_folders_compares_a_backend_name():
    """The issue's grep: a comparison with a backend's name anywhere but m3edge/backends/ is an if-chain on names."""
    names = "|".join(map(re.escape, (*backends.names(), "litert")))
    compare = re.compile(rf"""(==|!=|\bin\b|\bnot in\b)\s*\(?["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = []
    for folder in ("m3edge", "export", "runtime", "targets"):
        for p in (ROOT / folder).rglob("*.py"):
            if "backends" in p.relative_to(ROOT).parts:
                continue
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if compare.search(line):
                    found.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


def test_reference_backend_verifies_a_bundle_through_the_cli_and_agrees_with_onnxruntime(tiny_bundle):
    """`m3edge verify --backend reference`: onnx's ReferenceEvaluator runs every graph; parity passes and its
    logits match onnxruntime's on the same windows."""
    r = CliRunner().invoke(cli, ["verify", str(tiny_bundle), "--backend", "reference", "--tokens", "48", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["passed"] and out["backend"] == "reference" and out["logits_max_abs_diff"] < 1e-4
    b = open_bundle(tiny_bundle)
    ref = BundleExecutor(b, backends.SessionConfig(backend="reference"))
    ort = BundleExecutor(b)
    windows = np.random.default_rng(0).integers(0, 256, (5, ref.cfg.context))
    x_ref, x_ort = ref.encode(windows)[0], ort.encode(windows)[0]
    assert np.abs(x_ref - x_ort).max() < 1e-5
    assert type(ref.graph("encoder", ref.token_buckets[0])).__name__ == "ReferenceGraph"
    assert not ref.shares_sessions  # the reference backend declares no shared weights


def test_verify_refuses_an_unknown_backend_with_exit_2(tiny_bundle):
    r = CliRunner().invoke(cli, ["verify", str(tiny_bundle), "--backend", "coreml"])
    assert r.exit_code == 2 and "unknown backend 'coreml'" in r.output and "Traceback" not in r.output
