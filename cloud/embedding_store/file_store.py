"""File-backed embedding store: a sorted int64 id index + a numpy memmap of float32 rows.

Layout: ``ids.npy`` (sorted, unique int64) and ``rows.npy`` (float32 [n, dim], same order). When the ids
are dense enough (span <= 4 x rows), lookups go through a direct position table (one gather per id);
otherwise through a binary search of the sorted ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_DENSE_FACTOR = 4
_SORT_BATCH = 4096


class FileEmbeddingStore:
    def __init__(self, root: str | Path):
        root = Path(root)
        self.root = root
        self._ids = np.load(root / "ids.npy")
        self._rows = np.load(root / "rows.npy", mmap_mode="r")
        self._view = np.asarray(self._rows)  # plain ndarray over the same mapping (no memmap subclass overhead)
        if self._ids.ndim != 1 or self._rows.ndim != 2 or self._rows.shape[0] != self._ids.shape[0]:
            raise ValueError(f"{root}: ids {self._ids.shape} and rows {self._rows.shape} do not match")
        if self._rows.dtype != np.float32:
            raise ValueError(f"{root}: rows must be float32, got {self._rows.dtype}")
        self.dim = int(self._rows.shape[1])
        self.hits = 0
        self.misses = 0
        self._table: np.ndarray | None = None
        self._lo = 0
        n = len(self._ids)
        if n:
            lo, hi = int(self._ids[0]), int(self._ids[-1])
            span = hi - lo + 1
            if span <= _DENSE_FACTOR * n + 1024:
                table = np.full(span, -1, dtype=np.int64)
                table[self._ids - lo] = np.arange(n, dtype=np.int64)
                self._table, self._lo = table, lo

    @staticmethod
    def write(root: str | Path, ids: np.ndarray, rows: np.ndarray) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != ids.shape[0]:
            raise ValueError(f"rows {rows.shape} do not match ids {ids.shape}")
        order = np.argsort(ids, kind="stable")
        if np.any(np.diff(ids[order]) == 0):
            raise ValueError("embedding ids must be unique")
        np.save(root / "ids.npy", ids[order])
        np.save(root / "rows.npy", rows[order])

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n] sorted, rows float32 [n, dim] memmap): the whole table, e.g. to load another store."""
        return self._ids, self._rows

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row position of each id, -1 when unknown."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(self._ids) == 0:
            return np.full(ids.shape[0], -1, dtype=np.int64)
        if self._table is not None:
            off = ids - self._lo
            if off.shape[0] and off.min() >= 0 and off.max() < self._table.shape[0]:
                return self._table.take(off)
            inside = (off >= 0) & (off < self._table.shape[0])
            pos = np.full(ids.shape[0], -1, dtype=np.int64)
            pos[inside] = self._table[off[inside]]
            return pos
        if ids.shape[0] >= _SORT_BATCH:  # sorted needles: numpy's binary search reuses the last position
            o = np.argsort(ids, kind="stable")
            pos = np.empty_like(o)
            pos[o] = np.searchsorted(self._ids, ids[o])
        else:
            pos = np.searchsorted(self._ids, ids)
        pos_c = np.minimum(pos, len(self._ids) - 1)
        return np.where(self._ids[pos_c] == ids, pos_c, -1)

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rows_at(self.positions(ids))

    def rows_at(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``get`` for ids already resolved to row positions (:meth:`positions`; -1: unknown). The table never
        changes while the store is open, so a caller may resolve its ids once and keep the positions."""
        found = pos >= 0
        n_found = int(found.sum())
        if n_found == pos.shape[0]:
            rows = self._view.take(pos, axis=0)
        else:
            rows = np.zeros((pos.shape[0], self.dim), dtype=np.float32)
            rows[found] = self._view.take(pos[found], axis=0)
        self.hits += n_found
        self.misses += int(pos.shape[0]) - n_found
        return rows, found
