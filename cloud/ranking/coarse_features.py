"""The two-tower coarse ranker's inputs, in numpy (training and serving compute them with the same code).

Query side (what the cloud knows at request time, SPEC §2 "query tower"): the query text as an id into the
model's query vocabulary (0 = unknown), and a dense vector of the user's long-term profile (the catalog's
``user_pref`` row; zeros for an unknown user), the user's price preference, the search location as Gaussian
bumps on a grid over the catalog's map, and the hour of day (sin, cos).

Item side (computed offline for the whole catalog): category and brand ids, and a dense vector of the item's
sparse ID embedding row, its price level (one-hot), its location on the same grid, quality and log popularity.

A two-tower model cannot see query x item crosses (distance, affinity, price gap); the location grid on both
sides lets a dot product approximate proximity, the rest is what distillation from a cross model must carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edge_rerank.cloud.catalog import Catalog
from edge_rerank.device_sdk.contracts import Context

N_PRICE = 5  # price levels 0..4 (clipped)


@dataclass(frozen=True)
class CoarseFeatureSpec:
    """Everything the featurisation needs besides the catalog: fitted once on the catalog, saved with the model."""

    queries: tuple[str, ...]  # vocabulary: id k+1 for queries[k], 0 for anything else
    n_categories: int
    n_brands: int
    emb_dim: int
    grid: int = 5  # grid x grid location bumps
    lat_range: tuple[float, float] = (0.0, 10.0)
    lon_range: tuple[float, float] = (0.0, 10.0)
    extra: dict = field(default_factory=dict)

    @property
    def n_loc(self) -> int:
        return self.grid * self.grid

    @property
    def query_dense_dim(self) -> int:
        return self.emb_dim + 1 + self.n_loc + 2

    @property
    def item_dense_dim(self) -> int:
        return self.emb_dim + N_PRICE + self.n_loc + 2

    @property
    def query_vocab(self) -> int:
        return len(self.queries) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["queries"] = list(self.queries)
        d["lat_range"], d["lon_range"] = list(self.lat_range), list(self.lon_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CoarseFeatureSpec:
        return cls(queries=tuple(str(q) for q in d["queries"]), n_categories=int(d["n_categories"]),
                   n_brands=int(d["n_brands"]), emb_dim=int(d["emb_dim"]), grid=int(d.get("grid", 5)),
                   lat_range=tuple(float(x) for x in d["lat_range"]),
                   lon_range=tuple(float(x) for x in d["lon_range"]), extra=dict(d.get("extra", {})))

    @classmethod
    def fit(cls, catalog: Catalog, emb_dim: int, grid: int = 5) -> CoarseFeatureSpec:
        it = catalog.items
        return cls(queries=tuple(sorted(q.strip().lower() for q in catalog.queries)),
                   n_categories=int(it["category"].max()) + 1, n_brands=int(it["brand"].max()) + 1,
                   emb_dim=emb_dim, grid=grid,
                   lat_range=(float(it["lat"].min()), float(it["lat"].max())),
                   lon_range=(float(it["lon"].min()), float(it["lon"].max())))


def _loc_bumps(spec: CoarseFeatureSpec, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """[n, grid²] Gaussian bumps (width one grid step) of positions on the grid over the catalog's map."""
    g = spec.grid
    (a0, a1), (o0, o1) = spec.lat_range, spec.lon_range
    u = (np.asarray(lat, np.float64) - a0) / max(a1 - a0, 1e-9) * (g - 1)
    v = (np.asarray(lon, np.float64) - o0) / max(o1 - o0, 1e-9) * (g - 1)
    c = np.arange(g, dtype=np.float64)
    bu = np.exp(-0.5 * (u[:, None] - c[None, :]) ** 2)
    bv = np.exp(-0.5 * (v[:, None] - c[None, :]) ** 2)
    return (bu[:, :, None] * bv[:, None, :]).reshape(len(u), g * g).astype(np.float32)


class QueryFeaturizer:
    """(query_id int64 [n], query_dense float32 [n, Fq]) for (query, user, context) triples."""

    def __init__(self, spec: CoarseFeatureSpec, catalog: Catalog):
        self.spec = spec
        self.catalog = catalog
        self._vocab = {q: k + 1 for k, q in enumerate(spec.queries)}
        self._zero = np.zeros(spec.emb_dim, np.float32)
        self._grid = np.arange(spec.grid, dtype=np.float64)
        # (sin, cos) of each hour of the day as float32, computed as __call__ computes them for one request
        self._sincos: dict[int, np.ndarray] = {}
        for h in range(24):
            hr = np.array([h], np.float64) * (2 * np.pi / 24)
            self._sincos[h] = np.array([np.sin(hr)[0].astype(np.float32), np.cos(hr)[0].astype(np.float32)],
                                       np.float32)

    def query_id(self, query: str) -> int:
        return self._vocab.get(query.strip().lower(), 0)

    def one(self, query: str, user_id: str, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """``self([query], [user_id], [context])`` for one request, bit for bit, with a handful of numpy calls
        instead of a few dozen: the request path of the coarse stage (tested against ``__call__``)."""
        hour = context.hour
        sc = self._sincos.get(hour) if type(hour) is int else None
        if sc is None:  # an hour outside 0..23 (not a validated request): the general path
            return self([query], [user_id], [context])
        spec, e = self.spec, self.spec.emb_dim
        dense = np.empty((1, spec.query_dense_dim), np.float32)
        i = self.catalog.user_index.get(user_id)
        if i is None:
            dense[0, :e] = 0.0
            dense[0, e] = np.float32(2.0) / 4.0
        else:
            dense[0, :e] = self.catalog.user_pref[i][:e]
            dense[0, e] = np.float32(self.catalog.user_price_pref[i]) / 4.0
        g = spec.grid
        (a0, a1), (o0, o1) = spec.lat_range, spec.lon_range
        u = (float(context.lat) - a0) / max(a1 - a0, 1e-9) * (g - 1)  # float64 scalars: what the arrays hold
        v = (float(context.lon) - o0) / max(o1 - o0, 1e-9) * (g - 1)
        b = np.exp(-0.5 * (np.array([[u], [v]]) - self._grid) ** 2)  # both axes' bumps in one pass (element-wise)
        dense[0, e + 1:e + 1 + g * g] = np.multiply.outer(b[0], b[1]).reshape(g * g)  # float64 -> float32
        dense[0, -2:] = sc
        return np.array([self.query_id(query)], dtype=np.int64), dense

    def __call__(self, queries: list[str], user_ids: list[str], contexts: list[Context]) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
        n = len(queries)
        ids = np.array([self.query_id(q) for q in queries], dtype=np.int64)
        cat = self.catalog
        pref = np.zeros((n, self.spec.emb_dim), np.float32)
        price = np.full(n, 2.0, np.float32)
        for k, u in enumerate(user_ids):
            i = cat.user_index.get(u)
            if i is not None:
                pref[k] = cat.user_pref[i][: self.spec.emb_dim]
                price[k] = cat.user_price_pref[i]
        lat = np.array([c.lat for c in contexts], np.float64)
        lon = np.array([c.lon for c in contexts], np.float64)
        hour = np.array([c.hour for c in contexts], np.float64) * (2 * np.pi / 24)
        dense = np.concatenate([pref, (price / 4.0)[:, None], _loc_bumps(self.spec, lat, lon),
                                np.sin(hour)[:, None].astype(np.float32), np.cos(hour)[:, None].astype(np.float32)],
                               axis=1).astype(np.float32)
        return ids, dense


def item_features(spec: CoarseFeatureSpec, catalog: Catalog, item_emb: np.ndarray,
                  rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Item tower inputs for catalog rows `rows` (all when None): category, brand int64 [n], dense float32 [n, Fi].
    `item_emb` is the sparse ID embedding of every catalog row [n_items, E] (from the embedding store)."""
    it = catalog.items
    r = np.arange(catalog.n_items) if rows is None else np.asarray(rows, np.int64)
    price = np.clip(np.rint(it["price_level"][r]).astype(np.int64), 0, N_PRICE - 1)
    onehot = np.eye(N_PRICE, dtype=np.float32)[price]
    dense = np.concatenate([np.asarray(item_emb[r], np.float32)[:, : spec.emb_dim], onehot,
                            _loc_bumps(spec, it["lat"][r], it["lon"][r]),
                            np.asarray(it["quality"][r], np.float32)[:, None],
                            (np.log1p(np.asarray(it["popularity"][r], np.float64)) / 10.0).astype(np.float32)[:, None]],
                           axis=1).astype(np.float32)
    return {"category": np.clip(it["category"][r].astype(np.int64), 0, spec.n_categories - 1),
            "brand": np.clip(it["brand"][r].astype(np.int64), 0, spec.n_brands - 1), "dense": dense}
