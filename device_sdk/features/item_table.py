"""Candidate-side feature columns computed once per item, not once per rerank (issue 18).

A page's items are reranked again and again while the user scrolls (the window shifts, the order changes, a new
page appends), so ``FeatureBuilder(cfg, item_cache=K)`` keeps, per item object, its row of everything the features
read of it: id, cloud position and score, location, ID embedding (and its unit-length float64 copy for the
similarity operators), cloud dense vector, the raw values and bucket ids of the declared categorical fields. A build
gathers rows by index. Items are keyed by identity and held (so an id is never reused while cached); at most K are
kept (the table starts afresh when full). A ``PageItem`` is read once, when first seen: change an item by passing a
new one. Items the columns cannot represent exactly (``attrs``, a non-int field value, a vector of another shape,
a non-finite number) are marked, and a build with one of them takes the per-object path (same errors, same
values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edge_rerank.device_sdk.contracts import PageItem
from edge_rerank.device_sdk.features.config import FieldSpec

_UNCACHEABLE = -1


def _plain_int(v: object) -> bool:
    return type(v) is int and -(1 << 62) < v < (1 << 62)


def _finite_real(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


class ItemTable:
    """Rows of per-item feature columns (see the module docstring)."""

    def __init__(self, cap: int, emb_dim: int, dense_dim: int, cats: Sequence[FieldSpec], encode):
        self.cap, self.E, self.D = int(cap), emb_dim, dense_dim
        self._cats = list(cats)
        self._encode = encode  # (spec, list of raw values) -> int32 bucket ids
        self.rows: dict[int, int] = {}
        self.items: list[PageItem] = []  # strong references: an id stays unique while its row is cached
        cap, F = self.cap, len(self._cats)
        self.item_id = np.zeros(cap, np.int64)
        self.position = np.zeros(cap, np.float64)
        self.score = np.zeros(cap, np.float64)  # clipped to [-10, 10] (the cloud_score operator)
        self.lat = np.zeros(cap, np.float64)
        self.lon = np.zeros(cap, np.float64)
        self.emb = np.zeros((cap, emb_dim), np.float32)
        self.unit = np.zeros((cap, emb_dim), np.float64)
        self.dense = np.zeros((cap, dense_dim), np.float32)
        self.raw = np.zeros((F, cap), np.int64)  # raw field values (plain ints)
        self.ids = np.zeros((F, cap), np.int32)  # bucket ids
        self._used = 0  # rows written
        self._windows: dict[tuple[int, ...], np.ndarray | None] = {}  # recent windows (item ids) -> their rows
        self._ctx_ids: dict = {}  # search location -> id; ctx_of[row]: the id its ctx_dist is for (-1: none)
        self.ctx_of = np.full(cap, -1, np.int64)
        self.ctx_dist = np.zeros(cap, np.float64)
        self.hits = self.misses = 0

    def clear(self) -> None:
        self.rows.clear()
        self.items.clear()
        self._windows.clear()
        self._used = 0

    def distances(self, rows: np.ndarray, ctx: tuple, dist) -> np.ndarray:
        """Distances of the items at `rows` to the search location `ctx` (computed by ``dist(lat, lon)`` for rows
        that have none for it yet)."""
        cid = self._ctx_ids.get(ctx)
        if cid is None:
            if len(self._ctx_ids) >= 1024:
                self._ctx_ids.clear()
                self.ctx_of[:] = -1
            cid = self._ctx_ids[ctx] = len(self._ctx_ids)
        stale = self.ctx_of[rows] != cid
        if stale.any():
            r = rows[stale]
            self.ctx_dist[r] = dist(self.lat[r], self.lon[r])
            self.ctx_of[r] = cid
        return self.ctx_dist[rows]

    def rows_of(self, items: Sequence[PageItem]) -> np.ndarray | None:
        """Row index of each item (rows added for new items); None if some item cannot be represented."""
        key = tuple(map(id, items))  # the same window again (a trigger before the user scrolled): no lookups
        if key in self._windows:
            self.hits += len(items)
            return self._windows[key]
        get = self.rows.get
        idx = [get(id(it)) for it in items]
        if None in idx:
            missing = list({id(it): it for it, r in zip(items, idx, strict=True) if r is None}.values())
            self.misses += len(missing)
            if len(self.items) + len(missing) > self.cap:
                self.clear()
                missing = list({id(it): it for it in items}.values())
            self._insert(missing)
            idx = [get(id(it)) for it in items]
        else:
            self.hits += len(items)
        out = None if _UNCACHEABLE in idx else np.array(idx, dtype=np.intp)
        if len(self._windows) >= 256:
            self._windows.clear()
        self._windows[tuple(map(id, items))] = out  # every item is held now: its id cannot be reused
        return out

    def _insert(self, items: list[PageItem]) -> None:
        E, D = self.E, self.D
        ok: list[PageItem] = []
        names = [f.name for f in self._cats]
        for it in items:
            self.items.append(it)
            e, d = it.id_embedding, it.cloud_dense
            good = (isinstance(it, PageItem) and not it.attrs and isinstance(e, np.ndarray)
                    and isinstance(d, np.ndarray) and (e.size == 0 or e.shape == (E,))
                    and (d.size == 0 or d.shape == (D,)) and type(it.item_id) is int
                    and -(1 << 63) <= it.item_id < (1 << 63) and _finite_real(it.cloud_position)
                    and _finite_real(it.cloud_score) and _finite_real(it.lat) and _finite_real(it.lon)
                    and all(_plain_int(getattr(it, f)) for f in names)
                    # float32 values summed in float64 cannot overflow: the sum is finite iff every value is
                    and math.isfinite(float(np.add.reduce(e, dtype=np.float64)))
                    and math.isfinite(float(np.add.reduce(d, dtype=np.float64))))
            if good:
                ok.append(it)
            else:
                self.rows[id(it)] = _UNCACHEABLE
        if not ok:
            return
        rows = np.arange(self._used, self._used + len(ok))
        self._used += len(ok)
        for it, r in zip(ok, rows.tolist(), strict=True):
            self.rows[id(it)] = r
        self.ctx_of[rows] = -1
        self.item_id[rows] = [it.item_id for it in ok]
        self.position[rows] = [it.cloud_position for it in ok]
        self.score[rows] = np.minimum(np.maximum(np.array([it.cloud_score for it in ok], np.float64), -10.0), 10.0)
        self.lat[rows] = [it.lat for it in ok]
        self.lon[rows] = [it.lon for it in ok]
        emb = np.zeros((len(ok), E), np.float32)
        dense = np.zeros((len(ok), D), np.float32)
        for k, it in enumerate(ok):
            if it.id_embedding.size:
                emb[k] = it.id_embedding
            if it.cloud_dense.size:
                dense[k] = it.cloud_dense
        self.emb[rows], self.dense[rows] = emb, dense
        a = emb.astype(np.float64)  # as the builder normalises candidate vectors (bit for bit)
        self.unit[rows] = a / np.maximum(np.sqrt(np.add.reduce(a * a, axis=1, keepdims=True)), 1e-9)
        for k, spec in enumerate(self._cats):
            raw = [getattr(it, spec.name) for it in ok]
            self.raw[k, rows] = raw
            self.ids[k, rows] = self._encode(spec, raw)
