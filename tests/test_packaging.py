"""A wheel install, not only the editable one, carries and imports all four packages, the data the device
commands need, the typing marker and the licences."""

import subprocess
import sys
import zipfile

from conftest import ROOT

CHECK = """
import m3edge, m3edge.export, m3edge.runtime, m3edge.targets, sys
assert m3edge.__file__.startswith(sys.argv[1]), m3edge.__file__
assert m3edge.runtime.__file__.startswith(sys.argv[1])
from m3edge import backends, routing
assert backends.names() == ("onnxruntime", "reference", "tflite") and "capacity" in routing.names()
assert backends.runtime("onnxruntime").__module__.startswith("m3edge.backends.onnxruntime")
print(m3edge.targets.load("rpi").name, len(m3edge.targets.names()))
"""


def test_wheel_contains_and_imports_every_package(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", tmp_path / "dist", ROOT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("m3edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("m3edge/cli.py", "m3edge/model/agent.py", "m3edge/export/pipeline.py",
                   "m3edge/runtime/executor.py", "m3edge/targets/__init__.py", "m3edge/targets/rpi5.json",
                   "m3edge/runtime/web/index.html", "m3edge/runtime/web/app.js", "m3edge/runtime/web/style.css"):
        assert member in names, member
    assert not any(n.startswith(("tests/", "export/", "runtime/", "targets/")) for n in names)
    # eval and bench on a device read these (issue 20); train.txt stays out (1.6 MB), its byte counts stand in.
    for member in ("m3edge/py.typed", "m3edge/calibration_data/eval.txt", "m3edge/calibration_data/calibration.txt",
                   "m3edge/calibration_data/train_counts.npz", "m3edge/calibration_data/LICENSE-PSF.txt",
                   "m3edge-0.1.0.dist-info/licenses/LICENSE"):
        assert member in names, member
    assert "m3edge/calibration_data/train.txt" not in names
    meta = zipfile.ZipFile(wheel).read("m3edge-0.1.0.dist-info/METADATA").decode()
    for line in ("License-Expression: Apache-2.0", "License-File: LICENSE", "Author: m3edge developers",
                 "Project-URL: Source, https://github.com/m3edge/m3edge", "Classifier: Typing :: Typed"):
        assert line in meta.splitlines(), line
    assert "Apache License" in zipfile.ZipFile(wheel).read("m3edge-0.1.0.dist-info/licenses/LICENSE").decode()
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); "
                        + "import site; site.addsitedir(" + repr(_venv_site()) + ")\n" + CHECK, str(site)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["rpi5", str(len(list((ROOT / "targets").glob("*.json"))))]  # every profile shipped


def _venv_site():
    import numpy

    return str(__import__("pathlib").Path(numpy.__file__).parents[1])
