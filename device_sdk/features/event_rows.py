"""Per-event feature inputs computed once per stored event, not once per rerank (issue 18).

The feedback store writes each event once into its columns (``feedback_columns``); a row never changes after. So
what a feature builder derives from one event alone (its role under the config's event kinds and dwell threshold,
its match keys and bucket ids, its unit-length vector, its distance to the search location) is computed for the
rows added since the builder last looked and kept beside the columns (``_Buffers.derived``, one entry per builder).
A new buffer (the store grew or dropped its oldest events) starts a new entry; a new search location recomputes the
distances.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_SHIFT = 1 << 62  # plain ints in (-2^62, 2^62) plus this: match keys >= 0


class EventRows:
    """Derived per-row arrays of one ``_Buffers`` for one builder, valid for rows [0, upto)."""

    def __init__(self, buffers, n_keys: int, n_ids: int, unit: bool, dist_edges: np.ndarray, pos_edges: np.ndarray):
        cap, width = buffers.cap, buffers.width
        self.upto = 0
        self.roles = np.zeros((3, cap), bool)  # pos, neg, shown (one block: written by one assignment)
        self.pos = self.roles[0]  # positive (after the dwell threshold of a _dwell role)
        self.neg = self.roles[1]  # negative (same), before "never a negative: an item with a positive"
        self.shown = self.roles[2]  # a negative kind, whatever its dwell
        self.keys = np.zeros((n_keys, cap), np.int64)
        self.keys_upto = 0  # rows with keys (derived lazily when a rerank path derives its own value ids instead)
        self.ids = np.zeros((n_ids, cap), np.int32)
        self.unit = np.zeros((cap, width), np.float64) if unit else None
        self.ctx: tuple[float, float] | None = None
        self.ctx_upto = 0
        # the MVFAN event features of each row: seq_num columns (log dwell, [per call], position / 100, log
        # distance) and the distance / position buckets
        self.dist_edges, self.pos_edges = dist_edges, pos_edges
        self.seq_num = np.zeros((cap, 4), np.float64)
        # the integer seq_* inputs of each row as one block: [3 embedding slots (the rerank path's), kind (per build),
        # distance bucket, position bucket]
        self.seq_ints = np.zeros((6, cap), np.int32)
        self.dist_b = self.seq_ints[4]
        self.pos_b = self.seq_ints[5]
        self.extra = None  # what the rerank path derives on top (features.rerank_path): ``update(lo, hi, ids)``

    def update(self, b, hi: int, roles: Callable, keys: Callable, ids: Callable) -> None:
        """Derive rows [upto, hi) of buffers `b`: ``roles(kind, dwell) -> [rows, 3]`` (pos, neg, shown),
        ``keys(cats)`` and ``ids(cats)`` over the [3, rows] category columns."""
        lo = self.upto
        if hi <= lo:
            return
        emb = b.emb[lo:hi] if self.unit is not None else None
        dv = self.derive(b.kind[lo:hi], b.dwell[lo:hi], b.cats[:, lo:hi], b.position[lo:hi], emb, roles, keys, ids)
        self.write(lo, hi, dv, 0, hi - lo)

    def derive(self, kind: np.ndarray, dwell: np.ndarray, cats: np.ndarray, position: np.ndarray,
               emb: np.ndarray | None, roles: Callable, keys: Callable, ids: Callable) -> tuple:
        """The derived arrays of some rows from their columns (one buffer's new rows, or several buffers' new rows
        laid end to end: every value depends on its own row only); :meth:`write` stores a range of them."""
        r = roles(kind, dwell).T
        k = keys(cats) if self.extra is None else None
        i = ids(cats)
        sn0 = np.log1p(np.maximum(dwell, 0.0) / 1000.0)
        sn2 = position / 100.0
        pb = self.pos_edges.searchsorted(position, side="right")
        u = None
        if emb is not None:
            a = emb.astype(np.float64)  # as the builder normalises event vectors (bit for bit)
            u = a / np.maximum(np.sqrt(np.add.reduce(a * a, axis=1, keepdims=True)), 1e-9)
        x = self.extra.derive(i) if self.extra is not None else None
        return r, k, i, sn0, sn2, pb, u, x

    def write(self, lo: int, hi: int, dv: tuple, s: int, e: int) -> None:
        """Rows [lo, hi) (the next rows: ``lo == upto``) from rows [s, e) of :meth:`derive`'s arrays `dv`."""
        r, k, i, sn0, sn2, pb, u, x = dv
        self.roles[:, lo:hi] = r[:, s:e]
        if k is not None:
            self.keys[:, lo:hi] = k[:, s:e]
            self.keys_upto = hi
        self.ids[:, lo:hi] = i[:, s:e]
        sn = self.seq_num[lo:hi]
        sn[:, 0] = sn0[s:e]
        sn[:, 2] = sn2[s:e]
        self.pos_b[lo:hi] = pb[s:e]
        if u is not None:
            self.unit[lo:hi] = u[s:e]
        if x is not None:
            self.extra.write(lo, hi, x, s, e)
        self.upto = hi

    def ensure_keys(self, b, hi: int, keys: Callable) -> None:
        """Match keys of rows [keys_upto, hi) of buffers `b` (``keys(cats)``), if not derived yet."""
        if hi > self.keys_upto:
            self.keys[:, self.keys_upto:hi] = keys(b.cats[:, self.keys_upto:hi])
            self.keys_upto = hi

    def stale(self, ctx: tuple[float, float]) -> int:
        """The first row without a distance to the search location `ctx`."""
        if self.ctx != ctx:
            self.ctx, self.ctx_upto = ctx, 0
        return self.ctx_upto

    def set_distances(self, lo: int, hi: int, d: np.ndarray) -> None:
        """Distances of rows [lo, hi) to the current search location (and their MVFAN columns)."""
        self.write_distances(lo, hi, *self.distance_columns(d), 0, hi - lo)

    def distance_columns(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The MVFAN columns of distances `d`: log distance and distance bucket."""
        return np.log1p(d), self.dist_edges.searchsorted(d, side="right")

    def write_distances(self, lo: int, hi: int, logd: np.ndarray, bucket: np.ndarray, s: int, e: int) -> None:
        """Rows [lo, hi) (from the first row without a distance to the current search location, ``stale``) from
        rows [s, e) of :meth:`distance_columns`'s arrays."""
        self.seq_num[lo:hi, 3] = logd[s:e]
        self.dist_b[lo:hi] = bucket[s:e]
        self.ctx_upto = hi
