"""Recall -> coarse (seam) -> fine ranker -> score fusion (seam) -> page. Deterministic for a
(user, query, context), so the pages of one search are consistent slices of one ranking.

The whole ranked list of a search is computed once and kept in a small per-process LRU cache, so later
pages (and repeated requests) of the same search are served from the precomputed ranking.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np

from edge_rerank.cloud.catalog import Catalog
from edge_rerank.cloud.embedding_store import EmbeddingStore, FileEmbeddingStore
from edge_rerank.cloud.page_codec import PageEncoder
from edge_rerank.cloud.ranking.coarse import CoarseRanker, PassThroughCoarse
from edge_rerank.cloud.ranking.fine import FineRanker, Ranker, cloud_feature_base, fill_cloud_features
from edge_rerank.cloud.ranking.fusion import FusionPolicy, SingleHead, page_sequential_order
from edge_rerank.device_sdk.contracts import Context, EmbeddingEncoding, PageItem, SearchPage, SearchRequest

_ALL_BASE_BYTES = 64 << 20  # the whole catalog's item feature columns are kept when they fit in this (28 B / item)
_MAX_ENCODED_PAGES = 16  # encoded pages kept per cached ranking (page index x size x encoding)


class Ranking:
    """One search's whole ranked list (cut to max_results): catalog rows, fused scores, and the fine ranker's hidden
    layer (the pages' dense vectors) — either computed for every row (`hidden`), or kept as the rows' features and
    computed per page from them (`features` + `hidden_of`, a row-wise function: the numpy fine ranker's hidden layer,
    so a page computes 25 rows instead of max_results; ``dense(sl)`` is the same either way, bit for bit).
    ``encoded``: pages of this ranking already encoded, (start, page_size, encoding) -> (items bytes, has_more)."""

    __slots__ = ("rows", "scores", "_hidden", "features", "hidden_of", "encoded", "created")

    def __init__(self, rows: np.ndarray, scores: np.ndarray, hidden: np.ndarray | None = None, *,
                 features: np.ndarray | None = None, hidden_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 encoded: dict | None = None, created: float | None = None) -> None:
        if hidden is None and (features is None or hidden_of is None):
            raise ValueError("a Ranking needs its hidden layer, or the features and the function that computes it")
        self.rows, self.scores, self._hidden = rows, scores, hidden
        self.features, self.hidden_of = features, hidden_of
        self.encoded = {} if encoded is None else encoded
        self.created = time.monotonic() if created is None else created

    @property
    def hidden(self) -> np.ndarray:
        """The hidden layer of every row (computed on first use when it is kept as features)."""
        if self._hidden is None:
            self._hidden = self.hidden_of(self.features)
        return self._hidden

    def dense(self, sl: np.ndarray) -> np.ndarray:
        """The hidden layer of rows `sl` (a page's dense vectors)."""
        if self._hidden is not None or self.features is None:
            return self.hidden[sl]
        return self.hidden_of(self.features[sl])

    def array_bytes(self) -> int:
        return self.rows.nbytes + self.scores.nbytes + (self.features.nbytes if self.features is not None
                                                         else self._hidden.nbytes)


@dataclass(frozen=True)
class SearchInfo:
    cache_hit: bool
    emb_found: int
    emb_missing: int


_SERVED_CACHED = SearchInfo(cache_hit=True, emb_found=0, emb_missing=0)  # a page served from encoded bytes
_SERVED_ENCODED = SearchInfo(cache_hit=False, emb_found=0, emb_missing=0)


def ranking_bytes(r: Ranking) -> int:
    """Memory a cached ranking holds: its arrays and its encoded pages (plus a fixed per-entry overhead)."""
    return 1024 + r.array_bytes() + sum(len(data) + 64 for data, _ in list(r.encoded.values()))


class RankingCache:
    """A thread-safe LRU of rankings keyed by what determines them (user, query, context), bounded by entry count
    (`capacity`) and by bytes (`max_bytes`: arrays and encoded pages, :func:`ranking_bytes`). Entries expire after
    `ttl_s`, so changed embedding rows reach cached searches within that time.

    A ranking's encoded pages are added after it is cached, so an entry is re-measured whenever it is looked up
    and at the next cache operation after its insertion: the bound can be passed by at most the pages encoded
    since an entry's last measurement (one page per search in flight). Pages are only ever added to a ranking,
    so an entry whose page count has not changed since it was measured is not measured again."""

    def __init__(self, capacity: int, ttl_s: float = 300.0, max_bytes: int = 64 << 20):
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._d: OrderedDict[tuple, Ranking] = OrderedDict()
        self._size: dict[tuple, int] = {}
        self._pages: dict[tuple, int] = {}  # encoded pages an entry had when it was last measured
        self._last: tuple | None = None  # the entry put last (its first page is encoded after the put)
        self._lock = threading.Lock()

    def _remeasure(self, key: tuple | None) -> None:
        if key is None:
            return
        r = self._d.get(key)
        if r is None:
            return
        pages = len(r.encoded)
        if self._pages.get(key) == pages:  # encoded pages are only ever added: same count, same bytes
            return
        n = ranking_bytes(r)
        self.nbytes += n - self._size[key]
        self._size[key] = n
        self._pages[key] = pages

    def _drop(self, key: tuple) -> None:
        del self._d[key]
        self.nbytes -= self._size.pop(key)
        self._pages.pop(key, None)
        if self._last == key:
            self._last = None

    def _evict(self) -> None:
        while self._d and (len(self._d) > self.capacity or self.nbytes > self.max_bytes):
            self._drop(next(iter(self._d)))

    def get(self, key: tuple) -> Ranking | None:
        with self._lock:
            if self._last is not None:
                self._remeasure(self._last)
            r = self._d.get(key)
            if r is None:
                self._evict()
                return None
            if time.monotonic() - r.created > self.ttl_s:
                self._drop(key)
                return None
            self._d.move_to_end(key)
            if self._pages.get(key) != len(r.encoded):  # (_remeasure's test, inlined: this is every page's path)
                self._remeasure(key)
            if len(self._d) > self.capacity or self.nbytes > self.max_bytes:
                self._evict()
                return self._d.get(key)
            return r

    def put(self, key: tuple, value: Ranking) -> None:
        if self.capacity <= 0 or self.max_bytes <= 0:
            return
        with self._lock:
            self._remeasure(self._last)
            if key in self._d:
                self._drop(key)
            self._d[key] = value
            self._size[key] = ranking_bytes(value)
            self._pages[key] = len(value.encoded)
            self.nbytes += self._size[key]
            self._last = key
            self._evict()

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class SearchPipeline:
    catalog: Catalog
    store: EmbeddingStore
    ranker: Ranker
    model_version: str = ""
    max_results: int = 200  # recall cut-off after fine ranking
    coarse: CoarseRanker = field(default_factory=PassThroughCoarse)
    fusion: FusionPolicy = field(default_factory=SingleHead)
    cache_size: int = 4096  # rankings kept per process (0 disables the cache)
    cache_bytes: int = 64 << 20  # and at most this many bytes of them
    cache_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        items = self.catalog.items
        self._by_category: dict[int, np.ndarray] = {
            int(c): np.flatnonzero(items["category"] == c) for c in np.unique(items["category"])}
        # the ranker reads the same embedding rows the device receives
        self._item_emb, _ = self.store.get(items["item_id"])
        self._zero_pref = np.zeros(self.store.dim, dtype=np.float32)
        self._cache = RankingCache(self.cache_size, self.cache_ttl_s, self.cache_bytes)
        self._recall: dict[str, np.ndarray] = {}
        self._recall_cols: dict[int, dict[str, np.ndarray]] = {}  # id(memoised recall array) -> its item columns
        # the feature columns of the item alone for the whole catalog, for rows that are not a memoised recall set
        # (a coarse stage's selection): one gather per request instead of recomputing them (bounded in bytes; built
        # by the first request that needs them, so a pipeline without such requests never pays for them)
        self._all_base = self._all_price = None
        self._all_base_ok = (getattr(self.ranker, "standard_features", False)
                             and len(items["item_id"]) * 28 <= _ALL_BASE_BYTES)
        # a file store's table is fixed while it is open: each catalog row's position in it, resolved once
        self._store_pos = None
        if type(self.store) is FileEmbeddingStore and len(items["item_id"]) * 8 <= _ALL_BASE_BYTES:  # not a subclass
            self._store_pos = self.store.positions(items["item_id"])
        self._encoder = PageEncoder(item_id=items["item_id"], category=items["category"], brand=items["brand"],
                                    price_level=items["price_level"], lat=items["lat"], lon=items["lon"])

    def recall(self, query: str) -> np.ndarray:
        q = query.strip().lower()
        hit = self._recall.get(q)
        if hit is not None:
            return hit
        cats = self.catalog.queries.get(q, [])
        parts = [self._by_category.get(c, np.empty(0, dtype=np.int64)) for c in cats]
        idx = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        if q in self.catalog.queries:  # bounded: only the catalog's queries are memoised
            self._recall[q] = idx
            # the item columns the fine ranker reads, gathered once per recall set (not per request)
            cols = self._recall_cols[id(idx)] = self._columns(idx)
            if getattr(self.ranker, "standard_features", False):  # and the feature columns of the item alone
                cols["base"] = cloud_feature_base(cols["quality"], cols["popularity"])
        return idx

    def _columns(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        it = self.catalog.items
        return {"lat": it["lat"][idx], "lon": it["lon"][idx], "quality": it["quality"][idx],
                "popularity": it["popularity"][idx], "item_emb": self._item_emb[idx],
                "price_level": it["price_level"][idx].astype(np.float32)}

    def features_for(self, user_id: str, context: Context, idx: np.ndarray) -> np.ndarray:
        """The fine ranker's features for catalog rows `idx` in a search by `user_id` at `context` (also what
        training recomputes for logged items: ``cloud.training.cloud_ranker.CloudFeaturizer``)."""
        # a memoised recall array lives as long as the pipeline, so its id names it alone
        cols = self._recall_cols.get(id(idx))
        u = self.catalog.user_index.get(user_id)
        pref = self.catalog.user_pref[u] if u is not None else self._zero_pref
        price_pref = float(self.catalog.user_price_pref[u]) if u is not None else 2.0
        if cols is None:
            if self._all_base_ok:  # the same features: the item's own columns gathered, not recomputed
                it = self.catalog.items
                if self._all_price is None:  # (a race builds the same arrays twice: harmless)
                    self._all_base = cloud_feature_base(it["quality"], it["popularity"])
                    self._all_price = it["price_level"].astype(np.float32)
                dist = np.hypot(it["lat"][idx] - context.lat, it["lon"][idx] - context.lon)
                return fill_cloud_features(self._all_base[idx], item_emb=self._item_emb[idx], user_pref=pref,
                                           distance_km=dist, price_level=self._all_price[idx], price_pref=price_pref,
                                           inplace=True)
            cols = self._columns(idx)
        dist = np.hypot(cols["lat"] - context.lat, cols["lon"] - context.lon)
        if "base" in cols:  # the same features, the columns of the item alone computed once per recall set
            return fill_cloud_features(cols["base"], item_emb=cols["item_emb"], user_pref=pref, distance_km=dist,
                                       price_level=cols["price_level"], price_pref=price_pref)
        return self.ranker.features(quality=cols["quality"], popularity=cols["popularity"],
                                    item_emb=cols["item_emb"], user_pref=pref, distance_km=dist,
                                    price_level=cols["price_level"], price_pref=price_pref)

    def rank(self, req: SearchRequest) -> Ranking:
        """The whole ranked list for a request (recall -> coarse -> fine -> fusion), cut to max_results."""
        idx = self.coarse.select(req, self.recall(req.query))
        it = self.catalog.items
        x = self.features_for(req.user_id, req.context, idx)
        hidden = None
        if hasattr(self.ranker, "forward_heads"):  # a two-head ranker also gives click / order logits
            heads, hidden = self.ranker.forward_heads(x)
        elif isinstance(self.ranker, FineRanker) and not getattr(self.fusion, "per_page", False):
            heads = {"score": self.ranker.score(x).astype(np.float32, copy=False)}  # hidden layer: per page
        else:
            score, hidden = self.ranker.forward(x)
            heads = {"score": score}
        if hidden is None:
            return self._rank_lazy_hidden(req, idx, heads, x)
        ids = it["item_id"][idx]
        if getattr(self.fusion, "per_page", False):  # an action per page request (cloud.ranking.fusion)
            return self._rank_per_page(req, idx, ids, heads, hidden)
        s = np.asarray(self.fusion.fuse(req, heads), dtype=np.float32)
        order = self._top_order(s, ids)
        return Ranking(rows=idx[order], scores=s[order], hidden=hidden[order])

    def _rank_lazy_hidden(self, req: SearchRequest, idx: np.ndarray, heads: dict[str, np.ndarray],
                          x: np.ndarray) -> Ranking:
        """rank() for the numpy fine ranker: the same ranking (the hidden layer is row-wise), the kept rows' features
        kept and their hidden layer computed page by page (``Ranking.dense``) as pages are served."""
        ids = self.catalog.items["item_id"][idx]
        s = np.asarray(self.fusion.fuse(req, heads), dtype=np.float32)
        order = self._top_order(s, ids)
        return Ranking(rows=idx[order], scores=s[order], features=x[order], hidden_of=self.ranker.hidden)

    def _top_order(self, s: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The first max_results positions by score, ties broken by id (deterministic)."""
        if len(s) <= 4 * self.max_results:  # a short list: one exact sort is cheaper than a partition first
            return np.lexsort((ids, -s))[: self.max_results]
        # keep everything tied with the cut-off score, then sort exactly
        cut = np.partition(s, len(s) - self.max_results)[len(s) - self.max_results]
        keep = np.flatnonzero(s >= cut)
        return keep[np.lexsort((ids[keep], -s[keep]))][: self.max_results]

    def _rank_per_page(self, req: SearchRequest, idx: np.ndarray, ids: np.ndarray, heads: dict[str, np.ndarray],
                       hidden: np.ndarray) -> Ranking:
        """Pages 0..req.page_index built one by one, page j scored with the policy's action for page j."""
        scores = [np.asarray(self.fusion.fuse(replace(req, page_index=j), heads), dtype=np.float32)
                  for j in range(req.page_index + 1)]
        order = page_sequential_order(scores, ids, req.page_size, self.max_results)
        size = req.page_size
        fused = np.array([scores[min(k // size, req.page_index)][i] for k, i in enumerate(order)], dtype=np.float32)
        return Ranking(rows=idx[order], scores=fused, hidden=hidden[order])

    def cache_key(self, req: SearchRequest) -> tuple:
        c = req.context
        key = (req.user_id, req.query.strip().lower(), float(c.lat), float(c.lon), int(c.hour), c.device)
        if getattr(self.fusion, "per_page", False):  # one ranking per (search, page): earlier pages are rebuilt
            return (*key, req.page_index, req.page_size)
        return key

    def _ranking(self, req: SearchRequest) -> tuple[Ranking, bool]:
        key = self.cache_key(req)
        ranking = self._cache.get(key)
        if ranking is not None:
            return ranking, True
        ranking = self.rank(req)
        self._cache.put(key, ranking)
        return ranking, False

    def page_slots(self, n_ranked: int, page_index: int, page_size: int) -> tuple[np.ndarray, bool]:
        """Which entries of a ranking page `page_index` shows, and whether more follow. Without re-shows: the
        slice [page_index·page_size, +page_size). With ``catalog.reshow_share`` r > 0 (a feed): page 0 is the top
        `page_size`; page k >= 1 shows the next `page_size − round(r·page_size)` unserved entries with
        `round(r·page_size)` of page k − 1's fresh entries (evenly spread over its ranks) re-shown at evenly
        spread slots."""
        start = page_index * page_size
        share = self.catalog.reshow_share
        if share <= 0.0:
            idx = np.arange(start, min(start + page_size, n_ranked))
            return idx, start + len(idx) < n_ranked
        n_re = min(int(round(share * page_size)), page_size - 1)

        def fresh(k: int) -> np.ndarray:
            lo = 0 if k == 0 else page_size + (k - 1) * (page_size - n_re)
            return np.arange(lo, min(lo + (page_size if k == 0 else page_size - n_re), n_ranked))

        new = fresh(page_index)
        more = bool(new.size) and int(new[-1]) + 1 < n_ranked
        if page_index == 0 or new.size == 0 or n_re == 0:
            return new, more
        prev = fresh(page_index - 1)
        again = prev[np.unique(((np.arange(n_re) + 0.5) * len(prev) / n_re).astype(int))]
        n = new.size + again.size
        at = np.unique(((np.arange(again.size) + 0.5) * n / again.size).astype(int))
        out = np.empty(n, dtype=np.int64)
        mask = np.zeros(n, dtype=bool)
        mask[at] = True
        out[mask], out[~mask] = again, new
        return out, more

    def search_encoded(self, req: SearchRequest,
                       encoding: EmbeddingEncoding = EmbeddingEncoding.FP16) -> tuple[bytes, bool, SearchInfo]:
        """The page's ``items`` as serialized protobuf (a SearchPage fragment: concatenate it with the header
        fields), has_more, and info. Pages of a cached ranking are encoded once and served as bytes."""
        req.validate()
        ranking, hit = self._ranking(req)
        start = req.page_index * req.page_size
        ekey = (start, req.page_size, int(encoding))
        cached = ranking.encoded.get(ekey)
        if cached is None:
            n_ranked = len(ranking.rows)
            if self.catalog.reshow_share <= 0.0:  # page_slots' plain slice, as a slice: views, not gathers
                stop = min(start + req.page_size, n_ranked)
                sl, more = slice(start, max(stop, start)), stop < n_ranked
            else:
                sl, more = self.page_slots(n_ranked, req.page_index, req.page_size)
            rows = ranking.rows[sl]
            if self._store_pos is not None:
                emb, found = self.store.rows_at(self._store_pos[rows])
            else:
                emb, found = self.store.get(self.catalog.items["item_id"][rows])
            data = self._encoder.encode(rows, start=start, scores=ranking.scores[sl], dense=ranking.dense(sl),
                                        emb=emb, found=found, encoding=encoding)
            n_found = int(found.sum())
            if self.cache_size > 0 and len(ranking.encoded) < _MAX_ENCODED_PAGES:
                ranking.encoded[ekey] = (data, more)
            info = SearchInfo(cache_hit=hit, emb_found=n_found, emb_missing=len(rows) - n_found)
            return data, more, info
        data, more = cached  # served as bytes: no store lookup
        return data, more, _SERVED_CACHED if hit else _SERVED_ENCODED

    def search_with_info(self, req: SearchRequest, *, fp16_rows: bool = False) -> tuple[SearchPage, SearchInfo]:
        """The page and info. ``fp16_rows``: the items' ID embedding rows rounded to fp16 precision, as the wire's
        default encoding delivers them (what an in-process caller that skips the wire applies)."""
        req.validate()
        ranking, hit = self._ranking(req)
        start = req.page_index * req.page_size
        sl, more = self.page_slots(len(ranking.rows), req.page_index, req.page_size)  # rows: cut to max_results
        rows = ranking.rows[sl]
        it = self.catalog.items
        ids = it["item_id"][rows]
        emb, found = self.store.get(ids)
        emb = np.asarray(emb, dtype=np.float32)
        if fp16_rows:
            emb = emb.astype("<f2").astype(np.float32)
        items = page_items(ids, start, ranking.scores[sl], ranking.dense(sl), emb, found, it["category"][rows],
                           it["brand"][rows], it["price_level"][rows], it["lat"][rows], it["lon"][rows])
        page = SearchPage(request_id=req.request_id, session_id=req.session_id, page_index=req.page_index,
                          model_version=self.model_version, items=items, has_more=more)
        n_found = int(found.sum())
        return page, SearchInfo(cache_hit=hit, emb_found=n_found, emb_missing=len(rows) - n_found)

    def search(self, req: SearchRequest) -> SearchPage:
        return self.search_with_info(req)[0]


# the fields page_items writes, in PageItem's order; if PageItem changes, page_items builds through its constructor
_PAGE_ITEM_FIELDS = ("item_id", "cloud_position", "cloud_score", "cloud_dense", "id_embedding", "category", "brand",
                     "price_level", "lat", "lon", "embedding_found", "attrs")
_PAGE_ITEM_DIRECT = tuple(f.name for f in fields(PageItem)) == _PAGE_ITEM_FIELDS


def page_items(item_id: np.ndarray, start: int, score: np.ndarray, dense: np.ndarray, emb: np.ndarray,
               found: np.ndarray, category: np.ndarray, brand: np.ndarray, price_level: np.ndarray, lat: np.ndarray,
               lon: np.ndarray) -> list[PageItem]:
    """A page's items from its columns: ``PageItem(item_id=int(item_id[k]), cloud_position=start + k, ...)`` for
    every row k, field for field the same values. The columns are converted to PageItem's canonical types once per
    page (float32 scores, dense and embedding rows, Python ints / floats / bools), so each item is one dict: no
    per-item numpy scalar reads and no per-item ``__post_init__`` conversions (they would change nothing)."""
    n = len(item_id)
    ids = np.asarray(item_id).astype(np.int64).tolist()
    scores = np.asarray(score, dtype=np.float32).tolist()  # float(np.float32(x)), as PageItem rounds it
    dense_rows = list(np.asarray(dense, dtype=np.float32))  # row views, as np.asarray(dense[k], float32) is
    emb_rows = list(np.asarray(emb, dtype=np.float32))
    cats = np.asarray(category).astype(np.int64).tolist()
    brands = np.asarray(brand).astype(np.int64).tolist()
    prices = np.asarray(price_level).astype(np.int64).tolist()
    lats = np.asarray(lat, dtype=np.float64).tolist()
    lons = np.asarray(lon, dtype=np.float64).tolist()
    founds = np.asarray(found, dtype=bool).tolist()
    cols = (ids, range(start, start + n), scores, dense_rows, emb_rows, cats, brands, prices, lats, lons, founds)
    if not _PAGE_ITEM_DIRECT:  # PageItem gained or lost a field: its constructor (defaults, conversions) decides
        return [PageItem(**dict(zip(_PAGE_ITEM_FIELDS[:-1], vals, strict=True))) for vals in zip(*cols, strict=True)]
    new = object.__new__
    out = []
    for i, p, s, d, e, c, b, pl, la, lo, f in zip(*cols, strict=True):
        item = new(PageItem)
        item.__dict__ = {"item_id": i, "cloud_position": p, "cloud_score": s, "cloud_dense": d, "id_embedding": e,
                         "category": c, "brand": b, "price_level": pl, "lat": la, "lon": lo, "embedding_found": f,
                         "attrs": {}}
        out.append(item)
    return out
