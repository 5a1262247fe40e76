"""Nearest-neighbour index over the coarse model's item head vectors (maximum inner product).

Exact search (a matmul) below a catalog size threshold; above it faiss-cpu's IVF index (``IndexIVFFlat``,
``nprobe`` lists scanned per query). Maximum inner product is reduced to nearest neighbours in L2 by one extra
coordinate (x -> [x, sqrt(M² − |x|²)], q -> [q, 0]; Bachrach et al. 2014): an inner-product IVF assigns most
vectors to the few large-norm centroids and misses the top items (measured: none of the exact top 5 found).
Rows of the index are item heads: item k's head h is row k·nd + h, so a multi-head query searches each of its
heads and the union of the hits is rescored exactly by the model's matching layer.
faiss is the ``[coarse]`` extra, imported lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


class IndexUnavailable(RuntimeError):
    """The ANN library is missing or the index file cannot be read."""


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise IndexUnavailable("approximate retrieval needs faiss-cpu: pip install 'edge-rerank[coarse]'") from exc
    return faiss


@dataclass(frozen=True)
class AnnConfig:
    nlist: int = 0  # IVF lists; 0: about 4·sqrt(rows), at most 2048 (k-means cost at build)
    nprobe: int = 32
    oversample: float = 2.0  # candidates fetched per query head: oversample × top_k
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def lists_for(self, n_rows: int) -> int:
        return self.nlist or max(1, min(int(4 * np.sqrt(n_rows)), n_rows // 39 or 1, 2048))


def build_ivf(vectors: np.ndarray, cfg: AnnConfig, seed: int = 0):
    """An IVF index for maximum inner product over `vectors` float32 [n, d] (row i = id i; stored as d + 1)."""
    faiss = _faiss()
    faiss.omp_set_num_threads(max(1, cfg.threads))
    x = np.asarray(vectors, np.float32)
    norms2 = (x.astype(np.float64) ** 2).sum(1)
    x = np.ascontiguousarray(np.concatenate([x, np.sqrt(norms2.max() - norms2)[:, None].astype(np.float32)], 1))
    n, d = x.shape
    nlist = cfg.lists_for(n)
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    sample = x if n <= 64 * nlist else x[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
    index.train(sample)
    index.add(x)
    index.nprobe = min(cfg.nprobe, nlist)
    return index


def save_index(index, path: str | Path) -> Path:
    _faiss().write_index(index, str(path))
    return Path(path)


def load_index(path: str | Path, cfg: AnnConfig):
    faiss = _faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexUnavailable(f"{path}: faiss cannot read it: {exc}") from exc
    faiss.omp_set_num_threads(max(1, cfg.threads))
    if hasattr(index, "nprobe"):
        index.nprobe = min(cfg.nprobe, getattr(index, "nlist", cfg.nprobe))
    return index


def search_heads(index, q_heads: np.ndarray, k: int, nd: int) -> np.ndarray:
    """Item positions (row // nd, unique) of the k nearest head vectors of each query head q_heads [nq, d]."""
    q = np.asarray(q_heads, np.float32)
    q = np.ascontiguousarray(np.concatenate([q, np.zeros((len(q), index.d - q.shape[1]), np.float32)], 1))
    _, idx = index.search(q, k)
    idx = idx[idx >= 0]
    return np.unique(idx // nd)


def exact_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores (any order)."""
    if k >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, k - 1)[:k]
