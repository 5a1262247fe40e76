"""Recall -> fine ranking -> page slicing. Deterministic for a (user, query, context), so the pages of one
search are consistent slices of one ranking."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud.catalog import Catalog
from cloud.embedding_store import EmbeddingStore
from cloud.ranking.fine import FineRanker
from device_sdk.contracts import PageItem, SearchPage, SearchRequest


@dataclass
class SearchPipeline:
    catalog: Catalog
    store: EmbeddingStore
    ranker: FineRanker
    model_version: str = ""
    max_results: int = 200  # recall cut-off after fine ranking

    def __post_init__(self) -> None:
        items = self.catalog.items
        self._by_category: dict[int, np.ndarray] = {
            int(c): np.flatnonzero(items["category"] == c) for c in np.unique(items["category"])}
        # the ranker reads the same embedding rows the device receives
        self._item_emb, _ = self.store.get(items["item_id"])
        self._zero_pref = np.zeros(self.store.dim, dtype=np.float32)

    def recall(self, query: str) -> np.ndarray:
        cats = self.catalog.queries.get(query.strip().lower(), [])
        parts = [self._by_category.get(c, np.empty(0, dtype=np.int64)) for c in cats]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def rank(self, req: SearchRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(catalog rows in ranked order, scores, cloud features) for the whole result list."""
        idx = self.recall(req.query)
        it = self.catalog.items
        u = self.catalog.user_index.get(req.user_id)
        pref = self.catalog.user_pref[u] if u is not None else self._zero_pref
        price_pref = float(self.catalog.user_price_pref[u]) if u is not None else 2.0
        dist = np.hypot(it["lat"][idx] - req.context.lat, it["lon"][idx] - req.context.lon)
        x = self.ranker.features(quality=it["quality"][idx], popularity=it["popularity"][idx],
                                 item_emb=self._item_emb[idx], user_pref=pref, distance_km=dist,
                                 price_level=it["price_level"][idx].astype(np.float32), price_pref=price_pref)
        s = self.ranker.score(x)
        order = np.lexsort((it["item_id"][idx], -s))[: self.max_results]  # ties broken by id: deterministic
        return idx[order], s[order], x[order]

    def search(self, req: SearchRequest) -> SearchPage:
        req.validate()
        rows, scores, x = self.rank(req)
        total = len(rows)  # already cut to max_results
        start = req.page_index * req.page_size
        sl = slice(start, start + req.page_size)
        rows, scores, x = rows[sl], scores[sl], x[sl]
        it = self.catalog.items
        emb, found = self.store.get(it["item_id"][rows])
        dense = self.ranker.hidden(x)
        items = [PageItem(item_id=int(it["item_id"][r]), cloud_position=start + k, cloud_score=float(scores[k]),
                          cloud_dense=dense[k], id_embedding=emb[k], category=int(it["category"][r]),
                          brand=int(it["brand"][r]), price_level=int(it["price_level"][r]),
                          lat=float(it["lat"][r]), lon=float(it["lon"][r]), embedding_found=bool(found[k]))
                 for k, r in enumerate(rows)]
        return SearchPage(request_id=req.request_id, session_id=req.session_id, page_index=req.page_index,
                          model_version=self.model_version, items=items, has_more=start + len(items) < total)
