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
import operator
from collections.abc import Sequence
from itertools import repeat

import numpy as np

from edge_rerank.device_sdk.contracts import PageItem
from edge_rerank.device_sdk.features.config import FieldSpec

_UNCACHEABLE = -1


def _plain_int(v: object) -> bool:
    return type(v) is int and -(1 << 62) < v < (1 << 62)


_REAL = {int, float}
_INT = {int}
_ATTRS = operator.attrgetter("attrs")


class ItemTable:
    """Rows of per-item feature columns (see the module docstring)."""

    def __init__(self, cap: int, emb_dim: int, dense_dim: int, cats: Sequence[FieldSpec], encode, *,
                 need_unit: bool = True):
        self.cap, self.E, self.D = int(cap), emb_dim, dense_dim
        self._cats = list(cats)
        self._encode = encode  # (spec, list of raw values) -> int32 bucket ids
        self.need_unit = need_unit  # unit-length vectors (for the similarity operators)
        self._get = operator.attrgetter("item_id", "cloud_position", "cloud_score", "lat", "lon",
                                        *(f.name for f in self._cats))
        self._all_ids = all(f.mode == "ids" for f in self._cats)
        self._sizes = np.array([[f.n] for f in self._cats], dtype=np.int64)
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
        # what a builder derives per row on top (features.rerank_path): called with the new rows (as indexes and as a
        # slice) and their bucket ids [fields, k] when rows are written, and with rows and their distances when a
        # search location's arrive
        self.on_insert = None
        self.on_distances = None

    def clear(self) -> None:
        self.rows.clear()
        self.items.clear()
        self._windows.clear()
        self._used = 0

    def stale(self, rows: np.ndarray, ctx: tuple) -> tuple[int, np.ndarray]:
        """The id of search location `ctx` and those of `rows` without a distance to it yet."""
        cid = self._ctx_ids.get(ctx)
        if cid is None:
            if len(self._ctx_ids) >= 1024:
                self._ctx_ids.clear()
                self.ctx_of[:] = -1
            cid = self._ctx_ids[ctx] = len(self._ctx_ids)
        return cid, rows[self.ctx_of[rows] != cid]

    def set_distances(self, rows: np.ndarray, cid: int, dist: np.ndarray) -> None:
        self.ctx_dist[rows] = dist
        self.ctx_of[rows] = cid
        if self.on_distances is not None:
            self.on_distances(rows, dist)

    def add(self, items: Sequence[PageItem]) -> None:
        """Rows for those of `items` not in the table yet (a service adds every unseen item of the list: the
        windows of later reranks then find all of theirs)."""
        if all(map(self.rows.__contains__, map(id, items))):  # the common case: every item has its row already
            return
        new = set(map(id, items)).difference(self.rows)
        missing = list({id(it): it for it in items if id(it) in new}.values())
        if len(self.items) + len(missing) <= self.cap:
            self.misses += len(missing)
            self._insert(missing)

    def rows_of(self, items: Sequence[PageItem]) -> np.ndarray | None:
        """Row index of each item (rows added for new items); None if some item cannot be represented."""
        key = tuple(map(id, items))  # the same window again (a trigger before the user scrolled): no lookups
        if key in self._windows:
            self.hits += len(items)
            return self._windows[key]
        get = self.rows.get
        idx = list(map(get, key))
        if None in idx:
            missing = list({id(it): it for it, r in zip(items, idx, strict=True) if r is None}.values())
            self.misses += len(missing)
            if len(self.items) + len(missing) > self.cap:
                self.clear()
                missing = list({id(it): it for it in items}.values())
            self._insert(missing)
            idx = list(map(get, map(id, items)))
        else:
            self.hits += len(items)
        out = None if _UNCACHEABLE in idx else np.array(idx, dtype=np.intp)
        if len(self._windows) >= 256:
            self._windows.clear()
        self._windows[key] = out  # every item is held now (by the table): its id cannot be reused
        return out

    def _insert(self, items: list[PageItem]) -> None:
        """Rows for `items` (new ones, a page's worth at a time), read and checked in one pass over all of them; if
        any of them cannot be represented, none is cached (the builds that read them take the per-object path)."""
        self.items.extend(items)
        got = self._columns(items)
        if got is None:
            for it in items:
                self.rows[id(it)] = _UNCACHEABLE
            return
        ids, num, raw, emb, dense = got
        lo, hi = self._used, self._used + len(items)
        rows, sl = np.arange(lo, hi), slice(lo, hi)  # new rows are contiguous: written through a slice
        self._used = hi
        self.rows.update(zip(map(id, items), range(lo, hi), strict=True))
        self.ctx_of[sl] = -1
        self.item_id[sl] = ids
        self.position[sl], self.lat[sl], self.lon[sl] = num[0], num[2], num[3]
        self.score[sl] = np.minimum(np.maximum(num[1], -10.0), 10.0)
        self.emb[sl], self.dense[sl] = emb, dense
        if self.need_unit:
            a = emb.astype(np.float64)  # as the builder normalises candidate vectors (bit for bit)
            self.unit[sl] = a / np.maximum(np.sqrt(np.add.reduce(a * a, axis=1, keepdims=True)), 1e-9)
        if self._cats:
            self.raw[:, sl] = raw
            if self._all_ids:
                self.ids[:, sl] = np.where((raw >= 0) & (raw < self._sizes), raw, self._sizes)
            else:
                for j, spec in enumerate(self._cats):
                    self.ids[j, sl] = self._encode(spec, raw[j].tolist())
        if self.on_insert is not None:
            self.on_insert(rows, sl, self.ids[:, sl])

    def _columns(self, items: list[PageItem]):
        """(item ids, [position, score, lat, lon] float64, raw field values [fields, k], vectors [k, E], dense
        [k, D]) of `items`, or None unless every value is what the table holds exactly: plain ints, finite reals,
        float32 vectors of the configured sizes (or none), no ``attrs``."""
        if not all(map(isinstance, items, repeat(PageItem))) or any(map(_ATTRS, items)):
            return None
        cols = list(zip(*map(self._get, items), strict=True))
        if set(map(type, cols[0])) != _INT or not all(set(map(type, c)) <= _REAL for c in cols[1:5]) or not all(
                set(map(type, c)) == _INT for c in cols[5:]):
            return None
        try:
            ids = np.array(cols[0], np.int64)
            num = np.array(cols[1:5], np.float64)
            raw = np.array(cols[5:], np.int64).reshape(len(self._cats), len(items))
        except OverflowError:
            return None
        if raw.size and not (raw.min() > -(1 << 62) and raw.max() < (1 << 62)):
            return None
        k, E, D = len(items), self.E, self.D
        try:
            emb = np.array([it.id_embedding for it in items], np.float32)
            dense = np.array([it.cloud_dense for it in items], np.float32)
            if emb.shape != (k, E) or dense.shape != (k, D):
                raise ValueError
        except ValueError:  # some item lacks a vector (zeros) or has one of another size (not cached)
            emb, dense = np.zeros((k, E), np.float32), np.zeros((k, D), np.float32)
            for j, it in enumerate(items):
                e, d = it.id_embedding, it.cloud_dense
                if (e.size and e.shape != (E,)) or (d.size and d.shape != (D,)):
                    return None
                if e.size:
                    emb[j] = e
                if d.size:
                    dense[j] = d
        # float32 values summed in float64 cannot overflow: the sum is finite iff every value is
        if not (np.isfinite(num).all() and math.isfinite(float(np.add.reduce(emb, axis=None, dtype=np.float64)))
                and math.isfinite(float(np.add.reduce(dense, axis=None, dtype=np.float64)))):
            return None
        return ids, num, raw, emb, dense
