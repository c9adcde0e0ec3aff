"""``python -m m3edge.bench.measured RESULT_JSON MODULE [ARGS...]``: run ``python -m MODULE ARGS`` in this
process, then write its wall time and peak RSS to RESULT_JSON.

Peak RSS is VmHWM, the high-water mark of this process's own address space (exec starts a new one);
``ru_maxrss`` of a child is not used because Linux carries it over from the parent at fork and exec."""

import json
import runpy
import sys
import time

from m3edge.bench.common import peak_rss_mb


def main() -> int:
    result, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    t0, code = time.perf_counter(), 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        with open(result, "w") as f:
            json.dump({"wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
