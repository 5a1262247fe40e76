"""Sparse ID embedding store. File-backed default: a sorted id index + a numpy memmap of rows.

Unknown ids get a default (zero) row flagged ``found=False``: never an error. A Redis-backed store with
the same protocol comes with the cloud-service issue (#6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class EmbeddingStore(Protocol):
    dim: int

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows float32 [n, dim], found bool [n]) for int64 ids."""
        ...


class FileEmbeddingStore:
    def __init__(self, root: str | Path):
        root = Path(root)
        self._ids = np.load(root / "ids.npy")
        self._rows = np.load(root / "rows.npy", mmap_mode="r")
        if self._rows.ndim != 2 or self._rows.shape[0] != self._ids.shape[0]:
            raise ValueError(f"{root}: ids {self._ids.shape} and rows {self._rows.shape} do not match")
        self.dim = int(self._rows.shape[1])
        self.hits = 0
        self.misses = 0

    @staticmethod
    def write(root: str | Path, ids: np.ndarray, rows: np.ndarray) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        if np.any(np.diff(ids[order]) == 0):
            raise ValueError("embedding ids must be unique")
        np.save(root / "ids.npy", ids[order])
        np.save(root / "rows.npy", np.asarray(rows, dtype=np.float32)[order])

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self._ids, ids)
        pos_c = np.minimum(pos, len(self._ids) - 1)
        found = (pos < len(self._ids)) & (self._ids[pos_c] == ids)
        rows = np.zeros((ids.shape[0], self.dim), dtype=np.float32)
        rows[found] = self._rows[pos_c[found]]
        n_found = int(found.sum())
        self.hits += n_found
        self.misses += int(ids.shape[0]) - n_found
        return rows, found
