"""``python -m m3edge.bench worker CONFIG_JSON``: one measurement in a fresh process (``measure`` runs it)."""

import json
import sys

from m3edge.bench import worker

if len(sys.argv) == 3 and sys.argv[1] == "worker":
    print(json.dumps(worker(json.loads(sys.argv[2]))))
else:
    sys.exit("usage: python -m m3edge.bench worker CONFIG_JSON (internal: m3edge bench starts it)")
