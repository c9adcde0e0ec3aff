"""How the text in this folder was made (kept for provenance; the outputs are committed).

Real text nobody on this project wrote: top-level modules of CPython 3.11.7's standard library,
distributed under the PSF License Agreement (LICENSE-PSF.txt, copied from the same installation).
Files are assigned to splits by a hash of their name, so no module appears in two splits.

    python calibration_data/build.py /path/to/lib/python3.11
"""

import hashlib
import json
import sys
from pathlib import Path

BUDGET = {"train": 1_600_000, "calibration": 160_000, "eval": 160_000}


def split_of(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
    return {0: "eval", 1: "calibration"}.get(bucket, "train")


def main(lib: Path, out: Path) -> None:
    chunks = {s: [] for s in BUDGET}
    used = {s: 0 for s in BUDGET}
    files = {s: [] for s in BUDGET}
    for path in sorted(lib.glob("*.py")):
        text = path.read_bytes()
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            continue
        s = split_of(path.name)
        if used[s] + len(text) > BUDGET[s]:
            continue
        chunks[s].append(text)
        used[s] += len(text)
        files[s].append({"file": path.name, "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()})
    for s, parts in chunks.items():
        (out / f"{s}.txt").write_bytes(b"".join(parts))
    manifest = {"source": "CPython 3.11.7 standard library (Lib/*.py)", "license": "PSF-2.0",
                "license_file": "LICENSE-PSF.txt", "splits": files}
    (out / "sources.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "LICENSE-PSF.txt").write_bytes((lib / "LICENSE.txt").read_bytes())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent)
