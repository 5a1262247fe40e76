"""The coarse-ranking stage (recall -> **coarse** -> fine).

- :class:`PassThroughCoarse` — no coarse stage: every recalled item goes to the fine ranker (the default, and
  the fallback whenever a coarse model is missing or unusable).
- :class:`TwoTowerCoarse` — the trained two-tower model (seed 000, ``cloud/training/coarse_*``): the query tower
  runs online with onnxruntime, item head vectors were computed offline and sit in an embedding store (the
  bundle's own file store, or Redis), the matching layer is numpy for dot / soft-attention dot and a second
  small ONNX graph for ESIM. Recall sets up to ``exact_threshold`` items are scored exactly; larger ones go
  through a faiss IVF index over the whole catalog's item heads (when the bundle has one), whose hits inside
  the recall set are rescored exactly. The top ``top_k`` go on to the fine ranker.

A coarse bundle is a verified model bundle (``device_sdk.bundle``: manifest + sha256 of every file) published
through the registry like device bundles: ``query_tower.onnx``, ``scorer.onnx``, ``coarse.json`` (feature spec,
model config, serving settings), ``ids.npy`` + ``rows.npy`` (item vectors, a ``FileEmbeddingStore``), optionally
``items.faiss``. :func:`load_coarse` finds it in ``<data_dir>/coarse`` or as the registry's stable
``coarse-ranker`` and falls back to pass-through (with a logged reason) when it cannot be used.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edge_rerank.cloud.catalog import Catalog
from edge_rerank.cloud.embedding_store import EmbeddingStore, FileEmbeddingStore
from edge_rerank.cloud.ranking.coarse_features import CoarseFeatureSpec, QueryFeaturizer
from edge_rerank.cloud.ranking.coarse_index import AnnConfig, IndexUnavailable, exact_top, load_index, search_heads
from edge_rerank.device_sdk.contracts import SearchRequest

log = logging.getLogger(__name__)

COARSE_DIR = "coarse"  # <data_dir>/coarse: the coarse bundle the server loads
REGISTRY_NAME = "coarse-ranker"
CONFIG_FILE = "coarse.json"
QUERY_ONNX = "query_tower.onnx"
SCORER_ONNX = "scorer.onnx"
INDEX_FILE = "items.faiss"


class CoarseError(RuntimeError):
    """The coarse bundle is missing, malformed, or does not fit this catalog."""


@runtime_checkable
class CoarseRanker(Protocol):
    def select(self, req: SearchRequest, candidates: np.ndarray) -> np.ndarray:
        """Catalog rows (a subset of `candidates`, any order) that go on to the fine ranker."""
        ...


@dataclass(frozen=True)
class PassThroughCoarse:
    """No coarse stage: every recalled item goes to the fine ranker."""

    reason: str = ""  # why no coarse model is used (empty: none configured)
    kind = "pass-through"

    def select(self, req: SearchRequest, candidates: np.ndarray) -> np.ndarray:
        return candidates


@dataclass(frozen=True)
class CoarseServing:
    top_k: int = 200  # items passed on to the fine ranker
    exact_threshold: int = 50_000  # recall sets up to this size are scored exactly
    ann: AnnConfig = AnnConfig()
    # item head vectors of recent recall sets kept per process, laid out for one matmul per request (a recall set
    # is a function of the query: the same few sets come back); 0 disables. Bytes, LRU.
    block_cache_bytes: int = 64 << 20

    @classmethod
    def from_dict(cls, d: dict) -> CoarseServing:
        return cls(top_k=int(d.get("top_k", 200)), exact_threshold=int(d.get("exact_threshold", 50_000)),
                   ann=AnnConfig(**d.get("ann", {})), block_cache_bytes=int(d.get("block_cache_bytes", 64 << 20)))

    def to_dict(self) -> dict:
        return {"top_k": self.top_k, "exact_threshold": self.exact_threshold, "ann": self.ann.to_dict(),
                "block_cache_bytes": self.block_cache_bytes}


class _BlockCache:
    """Thread-safe LRU of (rows, head block, found) by recall set content, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._d: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._ident: dict[int, tuple[tuple, np.ndarray]] = {}  # id(rows) -> (key, rows): rows kept alive
        self._lock = threading.Lock()

    def lookup(self, rows: np.ndarray) -> tuple[tuple, tuple[np.ndarray, np.ndarray] | None]:
        """(key, cached (block, found) or None). An array already cached (the pipeline's memoised recall sets, never
        mutated) is found by identity, without hashing or comparing it; any other by content."""
        with self._lock:
            k = self._ident.get(id(rows))
            if k is not None and k[1] is rows and k[0] in self._d:
                self._d.move_to_end(k[0])
                return k[0], self._d[k[0]][1:]
        key = (len(rows), hash(rows.tobytes()))
        with self._lock:
            hit = self._d.get(key)
            if hit is None or not np.array_equal(hit[0], rows):
                return key, None
            self._d.move_to_end(key)
            return key, hit[1:]

    def put(self, key: tuple, rows: np.ndarray, block: np.ndarray, found: np.ndarray | None) -> None:
        size = 2 * rows.nbytes + block.nbytes + (0 if found is None else found.nbytes)
        if size > self.max_bytes:
            return
        with self._lock:
            self._drop(key)
            self._d[key] = (rows.copy(), block, found)
            self._ident[id(rows)] = (key, rows)  # keeps `rows` alive, so its id names it alone
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                self._drop(next(iter(self._d)))

    def _drop(self, key: tuple) -> None:
        old = self._d.pop(key, None)
        if old is None:
            return
        self.nbytes -= 2 * old[0].nbytes + old[1].nbytes + (0 if old[2] is None else old[2].nbytes)
        for i in [i for i, (k, _) in self._ident.items() if k == key]:
            del self._ident[i]


def _session(path: Path, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - the [cloud] extra installs it
        raise CoarseError("the coarse model needs onnxruntime: pip install 'edge-rerank[cloud]'") from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise CoarseError(f"{path}: onnxruntime cannot load it: {exc}") from exc


def _direct_run(sess, inputs: set[str]):
    """``feed -> sess.run(None, feed)`` for a session always fed the same, checked input names: onnxruntime's
    Python wrapper re-validates the names, graph-capture options and input ownership on every call (several µs per
    request); with its C++ session available the call goes straight to it (the same run, the same outputs)."""
    got = {i.name for i in sess.get_inputs()}
    if got != inputs:
        raise CoarseError(f"model inputs are {sorted(got)}, want {sorted(inputs)}")
    names = [o.name for o in sess.get_outputs()]
    inner = getattr(sess, "_sess", None)
    if inner is None or not callable(getattr(inner, "run", None)):  # another onnxruntime layout: the public call
        return lambda feed: sess.run(names, feed)
    return lambda feed: inner.run(names, feed, None)


class TwoTowerCoarse:
    """The trained two-tower coarse stage over a catalog (see the module docstring)."""

    kind = "two-tower"

    def __init__(self, bundle_dir: str | Path, catalog: Catalog, *, store: EmbeddingStore | None = None,
                 threads: int = 1, serving: CoarseServing | None = None, use_index: bool = True):
        from edge_rerank.device_sdk.bundle import BundleError, read_bundle

        self.root = Path(bundle_dir)
        try:
            self.manifest = read_bundle(self.root).manifest
        except BundleError as exc:
            raise CoarseError(f"{self.root}: {exc.reason}") from exc
        try:
            conf = json.loads((self.root / CONFIG_FILE).read_text())
            self.spec = CoarseFeatureSpec.from_dict(conf["spec"])
            self.nq, self.nd, self.dim = int(conf["model"]["nq"]), int(conf["model"]["nd"]), int(conf["model"]["dim"])
            self.variant = str(conf["model"]["variant"])
            self.beta = float(conf["model"].get("beta", 1.0))
            self.serving = serving or CoarseServing.from_dict(conf.get("serving", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CoarseError(f"{self.root / CONFIG_FILE}: unreadable coarse config: {exc}") from exc
        self.catalog = catalog
        self.version = self.manifest.version
        self.featurizer = QueryFeaturizer(self.spec, catalog)
        self._q = _session(self.root / QUERY_ONNX, threads)
        self._s = _session(self.root / SCORER_ONNX, threads)
        self._run_q = _direct_run(self._q, {"query_id", "query_dense"})
        self.store = store if store is not None else FileEmbeddingStore(self.root)
        if self.store.dim != self.nd * self.dim:
            raise CoarseError(f"item vectors have dim {self.store.dim}, the model wants {self.nd}×{self.dim}")
        self._ids = catalog.items["item_id"].astype(np.int64)
        self._blocks = _BlockCache(self.serving.block_cache_bytes)
        self._tls = threading.local()
        self._inv_beta = 1.0 / self.beta
        # the index's item positions follow the bundle's sorted ids; map them to catalog rows (-1: not in catalog)
        self.index = None
        if use_index and (self.root / INDEX_FILE).is_file():
            try:
                self.index = load_index(self.root / INDEX_FILE, self.serving.ann)
            except IndexUnavailable as exc:
                log.warning("coarse: %s; recall sets above the exact threshold are scored exactly", exc)
            if self.index is not None:
                bundle_ids = np.load(self.root / "ids.npy")
                order = np.argsort(self._ids, kind="stable")
                pos = np.searchsorted(self._ids[order], bundle_ids)
                pos = np.minimum(pos, len(order) - 1)
                hit = self._ids[order][pos] == bundle_ids
                self._index_rows = np.where(hit, order[pos], -1)
        probe = self.query_heads(SearchRequest(request_id="probe", session_id="probe", user_id="probe", query="probe"))
        if probe.shape != (self.nq, self.dim):
            raise CoarseError(f"query tower returns {probe.shape}, the config says ({self.nq}, {self.dim})")
        self.score_items(probe, np.zeros((2, self.nd, self.dim), np.float32))

    def query_heads(self, req: SearchRequest) -> np.ndarray:
        qid, dense = self.featurizer.one(req.query, req.user_id, req.context)
        (out,) = self._run_q({"query_id": qid, "query_dense": dense})
        return np.asarray(out, np.float32)[0]

    def score_items(self, q_heads: np.ndarray, item_heads: np.ndarray) -> np.ndarray:
        """Scores [N] of one query's heads [nq, d] against item heads [N, nd, d]: dot and soft-attention dot in
        numpy (one matmul; the ONNX scorer costs more per call than the arithmetic), ESIM through scorer.onnx."""
        n = item_heads.shape[0]
        if n == 0:
            return np.zeros(0, np.float32)
        if self.variant in ("dot", "soft"):
            s = (np.ascontiguousarray(item_heads, np.float32).reshape(n * self.nd, self.dim) @ q_heads.T).reshape(n, -1)
            if self.variant == "dot":
                return s[:, 0].astype(np.float32)
            z = s / self.beta
            w = np.exp(z - z.max(axis=1, keepdims=True))
            return ((w * s).sum(1) / w.sum(1)).astype(np.float32)
        (s,) = self._s.run(None, {"q_heads": q_heads, "item_heads": np.ascontiguousarray(item_heads, np.float32)})
        return np.asarray(s, np.float32).reshape(-1)

    def scores(self, req: SearchRequest, rows: np.ndarray) -> np.ndarray:
        """Exact coarse scores of catalog rows (items without a stored vector: -inf)."""
        vec, found = self.store.get(self._ids[rows])
        s = self.score_items(self.query_heads(req), vec.reshape(-1, self.nd, self.dim))
        return np.where(found, s, -np.inf).astype(np.float32)

    def _block(self, rows: np.ndarray, cache: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Item heads of `rows` as one float32 [dim, nd·n] matrix (column j·n + i: head j of item i) and which rows
        have a stored vector (None: all of them); recall sets (`cache`) are kept in the block cache."""
        key = None
        if cache:
            key, hit = self._blocks.lookup(rows)
            if hit is not None:
                return hit
        vec, found = self.store.get(self._ids[rows])
        n = len(rows)
        block = np.ascontiguousarray(np.asarray(vec, np.float32).reshape(n, self.nd, self.dim).transpose(2, 1, 0)
                                     .reshape(self.dim, self.nd * n))
        found = np.asarray(found, bool)
        if found.all():
            found = None
        if key is not None:
            self._blocks.put(key, rows, block, found)
        return block, found

    def _scratch(self, size: int) -> np.ndarray:
        """Two float32 work rows of at least `size` per thread, reused by every request (no large temporaries)."""
        buf = getattr(self._tls, "buf", None)
        if buf is None or buf.shape[1] < size:
            buf = self._tls.buf = np.empty((2, max(size, 1 << 14)), np.float32)
        return buf

    def _block_scores(self, q: np.ndarray, block: np.ndarray, n: int) -> np.ndarray:
        """score_items for dot / soft on a head block: the head-similarity matrices of all n items as one
        [nq·nd, n] matmul, the soft-attention reductions over its short first axis (vectorised over items). The
        same operations in the same dtypes as ``exp((s − max) / β)``-weighting written plainly, computed in two
        per-thread scratch rows (bit for bit the same scores: tested)."""
        k = self.nq * self.nd
        buf = self._scratch(k * n)
        s = np.matmul(np.ascontiguousarray(q, np.float32), block,
                      out=buf[0, :k * n].reshape(self.nq, self.nd * n)).reshape(k, n)
        if self.variant == "dot":
            return s[0].copy()
        m = s.max(axis=0)
        w = np.subtract(s, m, out=buf[1, :k * n].reshape(k, n))
        np.multiply(w, np.float32(self._inv_beta), out=w)
        np.exp(w, out=w)
        den = w.sum(axis=0)
        return np.multiply(w, s, out=s).sum(axis=0) / den

    def _exact(self, q: np.ndarray, rows: np.ndarray, k: int, *, cache: bool = True) -> np.ndarray:
        if self.variant in ("dot", "soft"):
            block, found = self._block(rows, cache)
            s = self._block_scores(q, block, len(rows))
            if found is None:  # every row has a vector
                return rows[exact_top(s, k)]
        else:
            vec, found = self.store.get(self._ids[rows])
            s = self.score_items(q, vec.reshape(-1, self.nd, self.dim))
        s = np.where(found, s, -np.inf)
        return rows[exact_top(s, k)]

    def select(self, req: SearchRequest, candidates: np.ndarray) -> np.ndarray:
        k = self.serving.top_k
        candidates = np.asarray(candidates, np.int64)
        if len(candidates) <= k:
            return candidates
        q = self.query_heads(req)
        if self.index is None or len(candidates) <= self.serving.exact_threshold:
            return self._exact(q, candidates, k)
        return self._ann(q, candidates, k)

    def _ann(self, q: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
        # fetch more when the recall set is a small share of the catalog (the hits are filtered to it)
        share = len(candidates) / max(self.catalog.n_items, 1)
        want = min(max(k, int(self.serving.ann.oversample * k / share)), self.index.ntotal)
        pos = search_heads(self.index, q, want, self.nd)
        rows = self._index_rows[pos]
        rows = rows[rows >= 0]
        rows = rows[self._inside(rows, candidates)]
        if len(rows) < k:  # the recall set is a small part of the catalog: the index found too few of it
            return self._exact(q, candidates, k, cache=False)
        return self._exact(q, rows, k, cache=False)

    def _inside(self, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Which of `rows` are in `candidates` (unique catalog rows), without an O(n_items) pass when possible:
        the whole catalog needs no check; a sorted recall set (the pipeline's are) a binary search."""
        if len(candidates) == self.catalog.n_items:
            return np.ones(len(rows), bool)
        if len(candidates) and bool(np.all(candidates[1:] > candidates[:-1])):
            at = np.minimum(np.searchsorted(candidates, rows), len(candidates) - 1)
            return candidates[at] == rows
        allowed = np.zeros(self.catalog.n_items, bool)
        allowed[candidates] = True
        return allowed[rows]


def _find_bundle(data_dir: Path, registry) -> Path | None:
    local = data_dir / COARSE_DIR
    if (local / "manifest.json").is_file():
        return local
    if registry is not None and REGISTRY_NAME in registry.names():
        stable = registry.state(REGISTRY_NAME).stable
        if stable:
            return registry.root / REGISTRY_NAME / "versions" / stable
    return None


def load_coarse(data_dir: str | Path, catalog: Catalog, *, store_kind: str = "file", redis_url: str | None = None,
                registry=None, threads: int = 1) -> CoarseRanker:
    """The coarse stage the server runs: the bundle in ``<data_dir>/coarse`` (else the registry's stable
    ``coarse-ranker``) as a :class:`TwoTowerCoarse`; :class:`PassThroughCoarse` when there is none, or when it
    cannot be used (the reason is logged and kept in ``.reason``: the service keeps answering)."""
    bundle = _find_bundle(Path(data_dir), registry)
    if bundle is None:
        return PassThroughCoarse()
    try:
        store = None
        if store_kind == "redis":
            store = redis_item_store(bundle, redis_url)
        return TwoTowerCoarse(bundle, catalog, store=store, threads=threads)
    except Exception as exc:  # any broken model degrades to pass-through; never a failed start
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("coarse model %s unusable, recalled items go straight to the fine ranker: %s", bundle, reason)
        return PassThroughCoarse(reason=reason[:500])


def redis_prefix(bundle_dir: str | Path) -> str:
    from edge_rerank.device_sdk.bundle import read_bundle

    m = read_bundle(bundle_dir).manifest
    return f"coarse:{m.name}:{m.version}"


def redis_item_store(bundle_dir: str | Path, redis_url: str | None) -> EmbeddingStore:
    """The bundle's item vectors in Redis (under ``coarse:<name>:<version>``), loaded from the bundle when absent."""
    from edge_rerank.cloud.embedding_store.redis_store import RedisEmbeddingStore

    if not redis_url:
        raise CoarseError("the redis item-vector store needs redis_url")
    prefix = redis_prefix(bundle_dir)
    try:
        return RedisEmbeddingStore(redis_url, prefix=prefix)
    except ValueError:  # not loaded yet
        ids, rows = FileEmbeddingStore(bundle_dir).table()
        RedisEmbeddingStore.write(redis_url, ids, np.asarray(rows), prefix=prefix)
        return RedisEmbeddingStore(redis_url, prefix=prefix)
