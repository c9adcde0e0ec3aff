"""``m3edge bench``: engines, precisions and expert-cache settings measured side by side, in one run, on this machine.

The package, one concern a module:
  common      prompts from the eval split, this process's peak RSS, the machine, a median with its spread
  engines     torch eager, the monolithic onnx graph, the m3edge runtime: what a worker process drives
  workloads   greedy decode / generate / the over-budget run in a fresh worker process (``measure``)
  sweeps      ``m3edge bench BUNDLE``: torch vs runtime, the expert-cache sweep, batching
  floor       the bandwidth floor: weight bytes a token reads (experts; and every dense graph), bandwidth
  artefacts   the full suite's checkpoints, monolithic graph and bundles, each built in its own process
  suite       ``m3edge bench --suite full``: every model, engine and precision, into one JSON
  budget      a model larger than its expert budget: hit rate, speed, RSS, miss cost (page cache, storage)
  goals       the issues' goals, judged from a result
  report      the performance tables (docs/performance.md) and plots from the full suite's JSON
  memory, memory_report, memory_store   long-term memory's benchmarks and their tables
  precision   the precision table of each target's bundle (docs/export.md)
  litert      where a LiteRT conversion's time goes

Threads are fixed (2 by default, a small board's spare cores). ``python -m m3edge.bench`` runs a worker or one
of the scripts (``report``, ``memory-report``, ``memory-store``, ``precision``, ``litert-profile``).
"""

from m3edge.bench.artefacts import Skipped, _current  # noqa: F401
from m3edge.bench.common import PROMPT_BYTES, ROOT, machine, peak_rss_mb, prompts, spread  # noqa: F401
from m3edge.bench.floor import bytes_per_token, expert_bytes, floor_bytes_per_s, memory_bandwidth  # noqa: F401
from m3edge.bench.goals import goals  # noqa: F401
from m3edge.bench.suite import FULL, FullConfig, ModelPlan, format_full, merge_results, run_full  # noqa: F401
from m3edge.bench.sweeps import batching_bench, cache_sweep, format_batching, format_report, run_bench  # noqa: F401
from m3edge.bench.workloads import greedy, measure, worker  # noqa: F401
