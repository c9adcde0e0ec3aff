"""``python -m m3edge.bench COMMAND ...``: a worker (``measure`` starts one per configuration) or one of the
benchmark's scripts."""

import importlib
import json
import sys

# command -> module whose main(argv) runs it
SCRIPTS = {"report": "m3edge.bench.report", "memory-report": "m3edge.bench.memory_report",
           "memory-store": "m3edge.bench.memory_store", "precision": "m3edge.bench.precision",
           "litert-profile": "m3edge.bench.litert", "build": "m3edge.bench.artefacts"}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "worker":
        from m3edge.bench.workloads import worker

        print(json.dumps(worker(json.loads(argv[1]))))
        return 0
    if argv and argv[0] in SCRIPTS:
        return importlib.import_module(SCRIPTS[argv[0]]).main(argv[1:]) or 0
    print(f"usage: python -m m3edge.bench worker CONFIG_JSON | {' | '.join(SCRIPTS)} ...", file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
