"""Redis-backed embedding store: one key per id (``<prefix>:<id>`` -> little-endian float32 bytes), read
with MGET. Metadata (dim, rows) lives in the hash ``<prefix>:meta``. Needs the ``redis`` client
(``[cloud]`` extra) and a reachable ``redis-server``."""

from __future__ import annotations

import numpy as np

_CHUNK = 8192


def _client(url: str):
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the [cloud] extra installs it
        raise RuntimeError("the Redis store needs the redis client: pip install 'edge-rerank[cloud]'") from exc
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


class RedisEmbeddingStore:
    def __init__(self, url: str, *, prefix: str = "emb"):
        self.url, self.prefix = url, prefix
        self._r = _client(url)
        meta = self._r.hgetall(f"{prefix}:meta")
        if b"dim" not in meta:
            raise ValueError(f"{url}: no embedding table under prefix {prefix!r} (load it with "
                             f"RedisEmbeddingStore.write or `edge-rerank serve --load-redis`)")
        self.dim = int(meta[b"dim"])
        self._n = int(meta.get(b"rows", b"0"))
        self._row_bytes = 4 * self.dim
        self.hits = 0
        self.misses = 0

    @staticmethod
    def write(url: str, ids: np.ndarray, rows: np.ndarray, *, prefix: str = "emb") -> int:
        """Load a table (replacing the rows of these ids); returns the number of rows written."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if rows.ndim != 2 or rows.shape[0] != ids.shape[0]:
            raise ValueError(f"rows {rows.shape} do not match ids {ids.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("embedding ids must be unique")
        r = _client(url)
        old = r.hget(f"{prefix}:meta", "dim")
        if old is not None and int(old) != rows.shape[1]:
            raise ValueError(f"{url}: prefix {prefix!r} holds dim {int(old)}, not {rows.shape[1]}")
        for s in range(0, len(ids), _CHUNK):
            pipe = r.pipeline(transaction=False)
            for i, row in zip(ids[s: s + _CHUNK].tolist(), rows[s: s + _CHUNK], strict=True):
                pipe.set(f"{prefix}:{i}", row.tobytes())
            pipe.execute()
        n = sum(1 for _ in r.scan_iter(match=f"{prefix}:*", count=10000)) - 1  # minus the meta hash
        r.hset(f"{prefix}:meta", mapping={"dim": rows.shape[1], "rows": max(n, len(ids))})
        return len(ids)

    def __len__(self) -> int:
        return self._n

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        rows = np.zeros((ids.shape[0], self.dim), dtype=np.float32)
        found = np.zeros(ids.shape[0], dtype=bool)
        keys = [f"{self.prefix}:{i}" for i in ids.tolist()]
        for s in range(0, len(keys), _CHUNK):
            vals = self._r.mget(keys[s: s + _CHUNK])
            ok = np.fromiter((v is not None and len(v) == self._row_bytes for v in vals), dtype=bool,
                             count=len(vals))
            if ok.any():
                buf = b"".join(v for v, good in zip(vals, ok, strict=True) if good)
                rows[s: s + len(vals)][ok] = np.frombuffer(buf, dtype="<f4").reshape(-1, self.dim)
            found[s: s + len(vals)] = ok
        n_found = int(found.sum())
        self.hits += n_found
        self.misses += int(ids.shape[0]) - n_found
        return rows, found
