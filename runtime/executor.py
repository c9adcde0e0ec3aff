"""Runs a bundle's graphs in the order of the reference agent, in numpy: the static-shape dispatch.

Tokens are cut into the profile's token buckets (zero-padded, padding discarded); each layer's routed
(token, expert) pairs are grouped per expert in token order and run in chunks of the expert's capacity
buckets; weighted outputs are added back per token. Python loops run over buckets and active experts,
never over tokens.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from m3edge.bundle import Bundle, GraphFile, data_files, entry_files, weights_files
from m3edge import routing
from m3edge.runtime.chunks import plan_chunks
from m3edge.runtime.cache import ExpertCache
from m3edge import backends
from m3edge.backends import SessionConfig, open_graph
from m3edge.backends.session import CONSTANT_WEIGHTS
from m3edge.runtime.qdq import integer_matmuls
from m3edge.runtime.template import Template, weights_as_inputs

EXPERT_IO = ("read", "mmap")

# TensorRT builds an engine with its weights inside and needs constant Q/DQ scales: a shared session, whose
# weights are inputs, runs on the profile's other providers.
NOT_SHARED = {"TensorrtExecutionProvider"}


@dataclass
class LayerRouting:
    logits: np.ndarray  # [N, E]
    index: np.ndarray  # [N, k]
    weight: np.ndarray  # [N, k]
    keep: np.ndarray  # [N, k]


@dataclass
class Forward:
    logits: np.ndarray
    x: np.ndarray
    key: np.ndarray
    complexity: np.ndarray
    context_key: np.ndarray
    routing: list[LayerRouting]
    preference: np.ndarray | None = None  # [N, 6] the alignment's memory-type preference
    lm_logits: np.ndarray | None = None  # the head's logits, before the memory reader


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class ExpertGraphs:
    """One expert: the unit the cache holds. Sessions are created per capacity bucket when first needed
    (batch-1 decoding only ever uses the smallest), ``warm`` buckets at load time."""

    def __init__(self, executor: "BundleExecutor", layer: int, expert: int, warm=()):
        self.executor = executor
        self.entries = {b: executor.bundle.find("expert", b, layer, expert) for b in executor.capacity_buckets}
        self.graphs: dict[int, object] = {}
        self._lock = threading.Lock()
        self.bytes = sum(executor.file_sizes[f] for f in entry_files(self.entries.values()))
        for b in warm:
            self.session(b)

    def session(self, bucket: int):
        g = self.graphs.get(bucket)
        if g is None:
            with self._lock:
                g = self.graphs.get(bucket)
                if g is None:
                    g = self.graphs[bucket] = self.executor.load(self.entries[bucket])
        return g

    def run(self, bucket: int, rows: np.ndarray) -> np.ndarray:
        return self.session(bucket).run(rows)[0]


class SharedGraph:
    """One expert graph file in one session, its weights as inputs: runs every expert that shares the file."""

    def __init__(self, template: Template, graph):
        self.template, self.graph = template, graph
        self.x = graph.input_names[0]

    def run(self, rows: np.ndarray, feeds: dict) -> np.ndarray:
        return self.graph.run_feeds({**feeds, self.x: rows})[0]


class ExpertWeights:
    """One expert as its weights (sha256-checked bytes), run through the shared session of its graph file.

    What the cache holds when it cannot hold every expert: a miss then reads 25-90 kB instead of creating a
    session (~1-2 ms, more than a whole decode step on the small reference; 7-44 ms a seed INT8 expert). A call
    costs more than on the expert's own session (weights are inputs, so not prepacked; INT8 MatMuls are written
    out as the integer kernel by runtime/qdq.py, 3-4x the own session's time rather than 10x), so when every
    expert fits, experts get their own sessions (``ExpertGraphs``)."""

    def __init__(self, executor: "BundleExecutor", layer: int, expert: int, warm=()):
        self.executor = executor
        self.entries = {b: executor.bundle.find("expert", b, layer, expert) for b in executor.capacity_buckets}
        read = executor.bundle.map if executor.expert_io == "mmap" else executor.bundle.read
        self.data = {rel: read(rel) for rel in {r for e in self.entries.values() for r in weights_files(e)}}
        self.bytes = sum(len(d) for d in self.data.values())
        # Feeds are made on first use, not here: a prefetch thread then holds the GIL only to read and hash
        # (which release it), not for the Python that would stall the decoding thread.
        self._feeds: dict[int, dict] = {}

    def feeds(self, bucket: int) -> dict:
        f = self._feeds.get(bucket)
        if f is None:
            entry = self.entries[bucket]
            template = self.executor.shared(entry).template
            f = self._feeds[bucket] = template.feeds({name: self.data[rel] for name, rel in data_files(entry)})
        return f

    def run(self, bucket: int, rows: np.ndarray) -> np.ndarray:
        return self.executor.shared(self.entries[bucket]).run(rows, self.feeds(bucket))


class BundleExecutor:
    def __init__(self, bundle: Bundle, session: SessionConfig | None = None, cache: ExpertCache | None = None,
                 prefetch: bool = False, expert_workers: int = 1, banks: bool = True):
        self.bundle = bundle
        spec = bundle.spec  # the typed manifest (m3edge/manifest.py), validated when the bundle was opened
        self.cfg = spec.model_config
        r = spec.routing
        self.mode = r.mode
        self.rule = routing.get(self.mode)
        self.capacity = r.capacity
        self.token_buckets = r.token_buckets
        self.capacity_buckets = r.capacity_buckets
        self.session = session or SessionConfig()
        self._graphs: dict[tuple, object] = {}
        self.cache = cache if cache is not None else ExpertCache(self._load_expert)
        if cache is not None and cache.loader is None:
            cache.loader = self._load_expert
        self.prefetch = prefetch
        # How a cache miss gets an expert's weights (``EXPERT_IO``): "read" copies the file into memory; "mmap"
        # maps it, so its pages are read from the page cache (or storage) by the expert's first run instead.
        self.expert_io = "read"
        # Counts of (last layer's expert at token t, layer 0's expert at t+1): predicts the next step's first
        # layer, which no router can see before the next byte is known. Bundles before it have none.
        nt = spec.expert_usage.next_token if spec.expert_usage else None
        self.next_token = np.asarray(nt, dtype=np.float64) if nt else None
        # None: shared sessions exactly when the cache cannot hold every expert (``shares_sessions``).
        self.shared_experts: bool | None = None
        self._shared: dict[str, SharedGraph] = {}
        self._shared_lock = threading.Lock()
        self.file_sizes = {f.path: f.bytes for f in spec.files}
        self.warm_buckets: tuple[int, ...] = (self.capacity_buckets[0],)
        self.pool = ThreadPoolExecutor(expert_workers, thread_name_prefix="m3edge-expert") if expert_workers > 1 else None
        # layer -> its expert bank's entry (backends/onnxruntime/bank.py), when the bundle has banks and they may be used.
        self.banks = {g["layer"]: g for g in bundle.graphs if g["role"] == "bank"} if banks else {}
        # Chunk plans depend only on the row count: planned once per count, not once per expert call.
        self._plan = functools.lru_cache(maxsize=None)(lambda n: plan_chunks(n, self.capacity_buckets))
        # Runs a layer's experts somewhere else: ``runner(layer, [(expert, start, end), ...], rows)`` returns
        # each expert's outputs for rows[start:end] in the order asked (runtime/expert_parallel.py). None: here.
        self.expert_runner = None

    def close(self) -> None:
        """Stop the cache's prefetch thread and the expert workers."""
        self.cache.close()
        if self.pool is not None:
            self.pool.shutdown()

    def load(self, entry: dict):
        weights = weights_files(entry)
        # A bank runs its experts one after another: each gets the threads one expert call would.
        weight_bytes = (self.file_sizes[entry["path"]] + sum(self.file_sizes[w] for w in weights)) // max(1, len(weights))
        threads = self.session.threads_for(weight_bytes, entry["bucket"], entry["precision"])
        cfg = self.session if threads == self.session.threads else replace(self.session, threads=threads)
        return open_graph(self.bundle.graph_file(entry), entry, cfg)

    @property
    def shares_sessions(self) -> bool:
        """Whether experts run through shared sessions (``ExpertWeights``) rather than one session each."""
        if self.shared_experts is not None:
            return self.shared_experts
        return self._shares_weights and not self.cache.holds(self.cfg.n_layers * self.cfg.n_experts, self.expert_bytes)

    @functools.cached_property
    def _shares_weights(self) -> bool:
        """Whether the backend running the experts declares shared weights (a .tflite file embeds its own) and
        their precision allows weights as inputs (MatMulNBits needs constant weights: CONSTANT_WEIGHTS)."""
        return all(backends.capabilities(backends.graph_backend(g, self.session)).shared_weights
                   and g.get("precision") not in CONSTANT_WEIGHTS
                   for g in self.bundle.graphs if g["role"] == "expert")

    def _load_expert(self, key):
        kind = ExpertWeights if self.shares_sessions else ExpertGraphs
        g = kind(self, *key, warm=self.warm_buckets)
        return g, g.bytes

    def shared(self, entry: dict) -> SharedGraph:
        """The session for ``entry``'s graph file with weights as inputs, made on first use."""
        g = self._shared.get(entry["path"])
        if g is None:
            with self._shared_lock:
                g = self._shared.get(entry["path"])
                if g is None:
                    # INT8 MatMuls in onnxruntime's fused form (the one backend declaring shared weights):
                    # its integer kernel, not float MatMuls over weights dequantized per call (runtime/qdq.py).
                    template = integer_matmuls(weights_as_inputs(self.bundle.read(entry["path"])))
                    nbytes = sum(t.length for t in template.tensors)
                    threads = self.session.threads_for(nbytes, entry["bucket"], entry["precision"])
                    providers = [p for p in self.session.providers_for(None) if p[0] not in NOT_SHARED]
                    cfg = replace(self.session, threads=threads, target=None, providers=providers)
                    runtime = backends.runtime(backends.graph_backend(entry, self.session))
                    graph = runtime.open_shared(GraphFile(entry["path"], template.model, {}, entry["path"]), cfg)
                    g = self._shared[entry["path"]] = SharedGraph(template, graph)
        return g

    def graph(self, role: str, bucket: int, layer: int | None = None):
        """A per-token graph; these stay resident (they are small and every step needs them)."""
        key = (role, bucket, layer)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self.load(self.bundle.find(role, bucket, layer))
        return g

    def predict_next(self, layer: int, x: np.ndarray, bias: np.ndarray, r: LayerRouting) -> list[tuple[int, int]]:
        """Experts the next layer will likely need, most likely first.

        Within a step, layer+1's router run on layer's input: the residual stream changes little across one
        layer, so its choice foretells the real one (on the small reference its top 4 hold 63% of layer 1's
        experts, its top 8 81%; export-time layer-to-layer counts gave 64% in 8). After the last layer, layer 0
        of the next step, which no router can see before the next byte is known: export-time counts of which
        first-layer experts follow this token's last-layer ones (52% in 8). How many of each to load is
        measured: top-k and 2 x top-k gave the best hit rate for the speed on the quarter cache."""
        if layer + 1 < self.cfg.n_layers:
            n, nxt = self.cfg.top_k, layer + 1
            logits = self.run_tokens("router", [x, bias], layer + 1)[1]
        elif self.next_token is not None:
            n, nxt = 2 * self.cfg.top_k, 0
            logits = self.next_token[r.index[-1][r.keep[-1]]].sum(0, keepdims=True)
        else:
            return []
        if logits.shape[0] == 1:  # one token (decoding): its own order
            best = np.argsort(-logits[0], kind="stable")[:n]
            return [(nxt, int(e)) for e in best]
        top = np.argsort(-logits, axis=1, kind="stable")[:, :n]
        scores = np.zeros(self.cfg.n_experts)
        np.add.at(scores, top, 1.0 / np.arange(1, n + 1))  # ranks, summed over tokens
        best = np.argsort(-scores, kind="stable")[:n]
        return [(nxt, int(e)) for e in best if scores[e] > 0]

    def run_tokens(self, role: str, inputs: list[np.ndarray], layer: int | None = None) -> list[np.ndarray]:
        """Run a per-token graph over N rows in token-bucket chunks."""
        n = inputs[0].shape[0]
        outs, start = [], 0
        for rows, bucket in plan_chunks(n, self.token_buckets):
            feeds = [pad_rows(a[start:start + rows], bucket) for a in inputs]
            outs.append([o[:rows] for o in self.graph(role, bucket, layer).run(*feeds)])
            start += rows
        return [np.concatenate(parts) for parts in zip(*outs)]

    def encode(self, windows: np.ndarray):
        """-> x, key, complexity, context_key"""
        return self.run_tokens("encoder", [windows.astype(np.int64)])

    def experience(self, x: np.ndarray, next_bytes: np.ndarray) -> np.ndarray:
        return self.run_tokens("memory", [x, next_bytes.astype(np.int64)])[0]

    def align(self, x: np.ndarray, memory: np.ndarray, task: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(router bias, memory-type scores); ``task`` [6] or [N, 6] (``retrieval.task_vector``; zeros: none)."""
        t = np.zeros((len(x), 6), np.float32) if task is None else np.broadcast_to(task, (len(x), 6)).astype(np.float32)
        return tuple(self.run_tokens("alignment", [x, memory.astype(np.float32), t]))

    def read(self, logits: np.ndarray, read) -> np.ndarray:
        """The memory reader graph: the head's logits mixed with retrieved memories' next bytes (log-probs)."""
        return self.run_tokens("reader", [logits, read.scores, read.next_bytes.astype(np.int64), read.exact,
                                          read.valid])[0]

    def route(self, layer: int, x: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, LayerRouting]:
        h, logits = self.run_tokens("router", [x, bias], layer)
        values, index = routing.select_topk(logits, self.cfg.top_k)
        weight = routing.topk_weights(values)
        keep = self.rule.keep_numpy(index, weight, self.cfg.n_experts, self.capacity)
        if self.rule.drops:
            weight = np.where(keep, weight, 0).astype(weight.dtype)
        return h, LayerRouting(logits, index, weight, keep)

    def _bank_for(self, layer: int, counts: np.ndarray):
        """The layer's bank graph if this batch should use it, else None.

        A bank runs every expert of the layer, so it pays when it replaces most of their calls: when at
        least half the experts have rows and all of them fit the bank's block (an expert with more rows
        still makes its own call for the rest). On the small reference one fp32 bank call (64 experts,
        4 rows each) costs about what 17 expert calls do, an INT8 one about 28 (README). A bank's session
        holds its own copy of every expert's weights, so it is used only where the expert cache's budget
        fits all experts twice."""
        entry = self.banks.get(layer)
        if entry is None:
            return None
        fitting = np.count_nonzero((counts > 0) & (counts <= entry["bucket"]))
        n = self.cfg.n_layers * self.cfg.n_experts
        if 2 * fitting < self.cfg.n_experts or not self.cache.holds(n, 2 * self.expert_bytes):
            return None
        return self.graph("bank", entry["bucket"], layer)

    @functools.cached_property
    def expert_bytes(self) -> int:
        """Every expert's files, once each: what the cache would hold with all experts resident."""
        return sum(self.file_sizes[f] for f in entry_files(g for g in self.bundle.graphs if g["role"] == "expert"))

    def _run_bank(self, layer: int, bank, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Every pair's expert output, in ``rows``' order, through the bank: each expert's first C rows in
        its block of the bank's input (zero rows elsewhere), rows beyond C through the expert's own graph."""
        c = self.banks[layer]["bucket"]
        starts = np.cumsum(counts) - counts
        expert = np.repeat(np.arange(len(counts)), counts)
        rank = np.arange(len(rows)) - starts[expert]  # position of each pair within its expert's rows
        slot = expert * c + rank
        x = np.zeros((len(counts) * c, rows.shape[1]), dtype=rows.dtype)
        over = np.flatnonzero(counts > c).tolist()
        if not over:  # the usual case at batch 16: every expert's rows fit its block
            x[slot] = rows
            return bank.run(x)[0][slot]
        first = rank < c
        x[slot[first]] = rows[first]
        y = np.empty_like(rows)
        y[first] = bank.run(x)[0][slot[first]]
        for e in over:
            a, b = int(starts[e]) + c, int(starts[e] + counts[e])
            y[a:b] = self._run_expert(self.cache.get((layer, e)), rows[a:b])
        return y

    def _run_expert(self, expert, rows: np.ndarray) -> np.ndarray:
        """One expert (a cache entry) over its rows, in the planned chunks of its capacity buckets (padding
        dropped)."""
        chunks = self._plan(rows.shape[0])
        if len(chunks) == 1:  # the usual case: one call
            n, bucket = chunks[0]
            return expert.run(bucket, pad_rows(rows, bucket))[:n]
        ys, start = [], 0
        for n, bucket in chunks:
            ys.append(expert.run(bucket, pad_rows(rows[start:start + n], bucket))[:n])
            start += n
        return np.concatenate(ys)

    def experts(self, layer: int, h: np.ndarray, r: LayerRouting, prefetch=()) -> np.ndarray:
        """The layer's weighted expert outputs per token. ``prefetch``: keys to start loading once this layer's
        own experts are in hand, so a prefetch never evicts one of them before it runs."""
        order, counts = routing.group_by_expert(r.index, self.cfg.n_experts)
        keep = r.keep.reshape(-1)
        if not keep.all():  # capacity mode dropped some pairs: they are neither run nor added
            order = order[keep[order]]
            counts = np.bincount(r.index.reshape(-1)[order], minlength=self.cfg.n_experts)
        tokens = order // self.cfg.top_k
        rows = h[tokens]  # every pair's input, grouped by expert in token order: one gather, sliced below
        bank = self._bank_for(layer, counts) if self.expert_runner is None else None
        if bank is not None:
            self.cache.prefetch(prefetch)
            ys = [self._run_bank(layer, bank, rows, counts)]
        elif self.expert_runner is not None:
            ends = np.cumsum(counts).tolist()
            ys = self.expert_runner(layer, [(e, ends[e] - c, ends[e]) for e, c in enumerate(counts.tolist()) if c], rows)
        else:
            ends = np.cumsum(counts).tolist()
            jobs = [(self.cache.get((layer, e)), ends[e] - c, ends[e]) for e, c in enumerate(counts.tolist()) if c]
            self.cache.prefetch(prefetch)  # loads in the background while these run
            if self.pool is not None and len(jobs) > 1:
                # Distinct experts are independent graphs and onnxruntime releases the GIL while one runs, so
                # a batch's experts run side by side; results are added back in expert order below, so the
                # sums (and the bytes generated) are the same as run one after another.
                ys = list(self.pool.map(lambda job: self._run_expert(job[0], rows[job[1]:job[2]]), jobs))
            else:
                ys = [self._run_expert(g, rows[a:b]) for g, a, b in jobs]
        out = np.zeros_like(h)
        if ys:
            # Unbuffered adds in pair order: each token's outputs are summed in expert order, as a loop would.
            np.add.at(out, tokens, np.concatenate(ys) * r.weight.reshape(-1)[order, None])
        return out

    def head(self, x: np.ndarray) -> np.ndarray:
        return self.run_tokens("head", [x])[0]

    def decode(self, x: np.ndarray, memory: np.ndarray | None = None, task: np.ndarray | None = None,
               read=None) -> tuple[np.ndarray, list[LayerRouting]]:
        """Alignment, every MoE layer and the head for encoded tokens x; returns (logits, routing). With
        ``read`` (retrieved memories, ``m3edge.memory.retrieval.Retrieved``) the logits are the reader's
        log-probs; ``last_preference`` and ``last_lm_logits`` keep the alignment's and the head's outputs."""
        if memory is None:
            memory = np.zeros_like(x)
        bias, self.last_preference = self.align(x, memory, task)
        routed = []
        # What a cache miss or a prefetch loads: the buckets this batch size will use.
        self.warm_buckets = tuple(sorted({b for _, b in plan_chunks(x.shape[0], self.capacity_buckets)}))
        for layer in range(self.cfg.n_layers):
            h, r = self.route(layer, x, bias)
            nxt = self.predict_next(layer, x, bias, r) if self.prefetch else ()
            x = x + self.experts(layer, h, r, nxt)
            routed.append(r)
        self.last_lm_logits = logits = self.head(x)
        return (logits if read is None else self.read(logits, read)), routed

    def forward(self, windows: np.ndarray, memory: np.ndarray | None = None, task: np.ndarray | None = None,
                read=None) -> Forward:
        x, key, complexity, context_key = self.encode(windows)
        logits, routed = self.decode(x, memory, task, read)
        return Forward(logits, x, key, complexity, context_key, routed, self.last_preference, self.last_lm_logits)
