"""Sparse ID embedding stores behind one protocol: file-backed default (numpy memmap + id index, no server)
and Redis (when the table must be shared by many servers). Unknown ids get a default (zero) row flagged
``found=False``: never an error. One contract test suite (tests/test_embedding_store_contract.py) runs
against both."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edge_rerank.cloud.embedding_store.file_store import FileEmbeddingStore

__all__ = ["EmbeddingStore", "FileEmbeddingStore", "RedisEmbeddingStore", "open_store"]


@runtime_checkable
class EmbeddingStore(Protocol):
    dim: int

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows float32 [n, dim], found bool [n]) for int64 ids; unknown ids -> zero row, found False."""
        ...

    def __len__(self) -> int: ...


def __getattr__(name: str):  # lazy: the redis client is only needed when the Redis store is used
    if name == "RedisEmbeddingStore":
        from edge_rerank.cloud.embedding_store.redis_store import RedisEmbeddingStore

        return RedisEmbeddingStore
    raise AttributeError(name)


def open_store(kind: str, *, data_dir: str | Path, redis_url: str | None = None,
               redis_prefix: str = "emb") -> EmbeddingStore:
    """``file``: ``<data_dir>/embeddings``; ``redis``: the table already loaded at `redis_url`
    (``RedisEmbeddingStore.write`` or ``edge-rerank serve --embedding-store redis --load-redis``)."""
    if kind == "file":
        return FileEmbeddingStore(Path(data_dir) / "embeddings")
    if kind == "redis":
        if not redis_url:
            raise ValueError("the redis embedding store needs redis_url (e.g. redis://127.0.0.1:6379/0)")
        from edge_rerank.cloud.embedding_store.redis_store import RedisEmbeddingStore

        return RedisEmbeddingStore(redis_url, prefix=redis_prefix)
    raise ValueError(f"unknown embedding store {kind!r}: 'file' or 'redis'")
