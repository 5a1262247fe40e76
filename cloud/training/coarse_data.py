"""Training data for the coarse two-tower model, from the logs the cloud collects plus its data directory.

One *query view* per logged shown list (user, query, context), with
- its exposed items labelled by what the user did (click or order = 1, else 0), in shown order;
- ``n_random`` items drawn from the query's recall set (the coarse stage ranks the whole recall set, the logs
  only show the fine ranker's top): labelled 0, the "easy negatives";
- ``n_fine`` other recall items with the **fine ranker's** scores (what fine -> coarse distillation and the
  consistency metric use);
- the cross features a two-tower model cannot compute (profile affinity, distance, price gap), for the teacher.
Sessions are split train / valid / test by the same seeded hash as the device reranker (``SplitConfig``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.cloud.catalog import Catalog, load_catalog
from edge_rerank.cloud.embedding_store import FileEmbeddingStore
from edge_rerank.cloud.ranking.coarse_features import CoarseFeatureSpec, QueryFeaturizer, item_features
from edge_rerank.cloud.ranking.fine import load_ranker
from edge_rerank.cloud.ranking.pipeline import SearchPipeline
from edge_rerank.cloud.training.data import SplitConfig
from edge_rerank.device_sdk.contracts import DEFAULT_PAGE_SIZE, Context, ImpressionRow

log = logging.getLogger(__name__)


@dataclass
class CoarseWorld:
    """The cloud side the coarse model is trained against: catalog, item inputs, the fine ranker's pipeline."""

    catalog: Catalog
    spec: CoarseFeatureSpec
    item_emb: np.ndarray  # [n_items, E] sparse ID embedding rows (the store's)
    items: dict[str, np.ndarray]  # item tower inputs for every catalog row
    pipeline: SearchPipeline  # recall + the fine ranker the server runs

    @classmethod
    def load(cls, data_dir: str | Path, spec: CoarseFeatureSpec | None = None) -> CoarseWorld:
        """The data directory's catalog; `spec` (a trained model's) fixes the featurisation, else it is fitted."""
        data_dir = Path(data_dir)
        catalog = load_catalog(data_dir)
        store = FileEmbeddingStore(data_dir / "embeddings")
        pipeline = SearchPipeline(catalog=catalog, store=store, ranker=load_ranker(data_dir), cache_size=0)
        emb, _ = store.get(catalog.items["item_id"])
        spec = spec or CoarseFeatureSpec.fit(catalog, emb_dim=store.dim)
        return cls(catalog, spec, emb, item_features(spec, catalog, emb), pipeline)

    def fine_scores(self, user_id: str, context, rows: np.ndarray) -> np.ndarray:
        score, _ = self.pipeline.ranker.forward(self.pipeline.features_for(user_id, context, rows))
        return np.asarray(score, np.float64)

    def cross(self, pref: np.ndarray, price_pref: np.ndarray, lat: np.ndarray, lon: np.ndarray,
              rows: np.ndarray) -> np.ndarray:
        """Teacher crosses [..., 3] for query rows broadcast against item rows: affinity, log distance, price gap."""
        it = self.catalog.items
        aff = np.einsum("...e,...e->...", pref, self.item_emb[rows])
        dist = np.log1p(np.hypot(it["lat"][rows] - lat, it["lon"][rows] - lon))
        gap = np.abs(it["price_level"][rows] - price_pref) / 4.0
        return np.stack([aff, dist, gap], axis=-1).astype(np.float32)


@dataclass
class QueryViews:
    """Per query view q: query inputs, list items (rows, labels, mask), fine-ranker samples, split part."""

    query_id: np.ndarray  # [Q]
    query_dense: np.ndarray  # [Q, Fq]
    pref: np.ndarray  # [Q, E] the profile (teacher crosses)
    price_pref: np.ndarray  # [Q]
    lat: np.ndarray  # [Q]
    lon: np.ndarray  # [Q]
    rows: np.ndarray  # [Q, L] catalog rows of the list items (exposed, then random recall negatives)
    labels: np.ndarray  # [Q, L] 1 clicked/ordered, 0 not
    exposed: np.ndarray  # [Q, L] bool: a logged exposure (vs a sampled negative)
    mask: np.ndarray  # [Q, L] bool
    fine_rows: np.ndarray  # [Q, M] recall items with fine scores
    fine_scores: np.ndarray  # [Q, M]
    part: np.ndarray  # [Q] "train" | "valid" | "test"
    queries: list[str]
    user_ids: list[str]
    contexts: list
    session_ids: list[str]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def subset(self, idx: np.ndarray) -> QueryViews:
        idx = np.asarray(idx)
        arrays = {k: getattr(self, k)[idx] for k in ("query_id", "query_dense", "pref", "price_pref", "lat", "lon",
                                                     "rows", "labels", "exposed", "mask", "fine_rows",
                                                     "fine_scores", "part")}
        return QueryViews(**arrays, queries=[self.queries[i] for i in idx], user_ids=[self.user_ids[i] for i in idx],
                          contexts=[self.contexts[i] for i in idx], session_ids=[self.session_ids[i] for i in idx])

    def split(self, name: str) -> QueryViews:
        return self.subset(np.flatnonzero(self.part == name))


@dataclass(frozen=True)
class ShownList:
    """What the coarse model needs of one logged shown list: who searched what where, and what the user did
    with the items shown (in shown order). ``read_shown_lists`` reads just these columns."""

    request_id: str
    session_id: str
    user_id: str
    query: str
    context: Context
    page_index: int
    item_ids: np.ndarray  # int64 [n] exposed items, ordered by cloud position
    labels: np.ndarray  # float32 [n] 1: clicked or ordered


def _shown(r: ImpressionRow | ShownList, known: dict[int, int], n_max: int) -> tuple[list[int], list[float]]:
    """Catalog rows and labels of a list's exposed items (cloud order, at most n_max, unknown items dropped)."""
    if isinstance(r, ShownList):
        keep = [k for k, i in enumerate(r.item_ids.tolist()) if i in known][:n_max]
        return [known[int(r.item_ids[k])] for k in keep], [float(r.labels[k]) for k in keep]
    cands = sorted((c for c in r.candidates if c.exposed and int(c.item.item_id) in known),
                   key=lambda c: c.item.cloud_position)[:n_max]
    return [known[int(c.item.item_id)] for c in cands], [1.0 if (c.clicked or c.ordered) else 0.0 for c in cands]


_LIST_COLUMNS = ("request_id", "session_id", "user_id", "query", "ctx_lat", "ctx_lon", "ctx_hour", "ctx_device",
                 "page_index")


def _from_rows(rows: Sequence[ImpressionRow]) -> list[ShownList]:
    out = []
    for r in rows:
        cands = sorted((c for c in r.candidates if c.exposed), key=lambda c: c.item.cloud_position)
        out.append(ShownList(r.request_id, r.session_id, r.user_id, r.query, r.context, r.page_index,
                             np.array([c.item.item_id for c in cands], np.int64),
                             np.array([1.0 if (c.clicked or c.ordered) else 0.0 for c in cands], np.float32)))
    return out


def _read_v1_lists(f: Path) -> list[ShownList]:
    import pyarrow.parquet as pq

    t = pq.read_table(f, columns=[*_LIST_COLUMNS, "candidates"])
    cand = t.column("candidates").combine_chunks()
    off = cand.offsets.to_numpy()
    flat = cand.flatten()
    ids = flat.field("item_id").to_numpy(zero_copy_only=False).astype(np.int64)
    pos = flat.field("cloud_position").to_numpy(zero_copy_only=False)
    exposed = flat.field("exposed").to_numpy(zero_copy_only=False).astype(bool)
    label = (flat.field("clicked").to_numpy(zero_copy_only=False).astype(bool)
             | flat.field("ordered").to_numpy(zero_copy_only=False).astype(bool)).astype(np.float32)
    meta = t.select(list(_LIST_COLUMNS)).to_pydict()
    out = []
    for k in range(t.num_rows):
        a, b = int(off[k]), int(off[k + 1])
        sel = np.flatnonzero(exposed[a:b]) + a
        sel = sel[np.argsort(pos[sel], kind="stable")]
        out.append(ShownList(meta["request_id"][k], meta["session_id"][k], meta["user_id"][k], meta["query"][k],
                             Context(lat=meta["ctx_lat"][k], lon=meta["ctx_lon"][k], hour=meta["ctx_hour"][k],
                                     device=meta["ctx_device"][k]), meta["page_index"][k], ids[sel], label[sel]))
    return out


def read_shown_lists(path: str | Path) -> list[ShownList]:
    """The shown lists of every impression log under `path`, reading only the columns the coarse model uses
    (≈ 10× faster than :func:`cloud.logs.read_logs`, which builds every candidate's vectors and events). Files in
    another layout (v2 declarations) go through ``read_logs``; a file neither can read is skipped with a warning."""
    import pyarrow.parquet as pq

    from edge_rerank.cloud.logs import IMPRESSION_SCHEMA, LogFormatError, declaration_of, log_files, read_logs

    out: list[ShownList] = []
    for f in log_files(path):
        try:
            schema = pq.read_schema(f)
            if declaration_of(schema, f.name) is None and set(IMPRESSION_SCHEMA.names) <= set(schema.names):
                out.extend(_read_v1_lists(f))
                continue
        except Exception as exc:  # anything a damaged file makes pyarrow raise: the full reader says what it is
            log.debug("%s: fast read failed (%s), using read_logs", f, exc)
        try:
            out.extend(_from_rows(read_logs(f)))
        except (LogFormatError, OSError) as exc:
            log.warning("coarse training skips %s: %s", f.name, exc)
    return out


def query_views(rows: Sequence[ImpressionRow | ShownList], world: CoarseWorld, *, n_random: int = 8, n_fine: int = 32,
                seed: int = 0, split: SplitConfig | None = None, n_max: int = DEFAULT_PAGE_SIZE,
                n_fine_top: int = 0, fine_top_pool: int = 2 * DEFAULT_PAGE_SIZE) -> QueryViews:
    """Query views of every logged shown list with at least one exposure and a non-trivial recall set.

    Of the `n_fine` fine-ranker samples, `n_fine_top` are drawn from the fine ranker's own top `fine_top_pool` of
    the recall set (the items it would show on the first pages) and the rest uniformly from the recall set: with
    only uniform samples, distillation learns the fine ranker's order where most recall items are (the middle),
    while what a coarse cut must keep is its top."""
    if not 0 <= n_fine_top <= n_fine:
        raise ValueError(f"n_fine_top must be in [0, n_fine={n_fine}], got {n_fine_top}")
    split = split or SplitConfig()
    rng = np.random.default_rng(seed)
    cat = world.catalog
    row_of = {int(i): k for k, i in enumerate(cat.items["item_id"])}
    qf = QueryFeaturizer(world.spec, cat)
    L = n_max + n_random
    out_rows, out_lab, out_exp, out_mask, f_rows, f_scores, keep = [], [], [], [], [], [], []
    for r in sorted(rows, key=lambda r: (r.session_id, r.page_index, r.request_id)):
        recall = world.pipeline.recall(r.query)
        shown, labels = _shown(r, row_of, n_max)
        if not shown or len(recall) < 2:
            continue
        lr = np.full(L, 0, np.int64)
        lab = np.zeros(L, np.float32)
        exp = np.zeros(L, bool)
        m = np.zeros(L, bool)
        k = len(shown)
        lr[:k] = shown
        lab[:k] = labels
        exp[:k] = m[:k] = True
        neg = rng.choice(recall, size=n_random, replace=len(recall) < n_random)
        lr[k: k + n_random] = neg
        m[k: k + n_random] = True
        if n_fine_top:
            fine_all = world.fine_scores(r.user_id, r.context, recall)
            pool = recall[np.argsort(-fine_all, kind="stable")[:fine_top_pool]]
            top = rng.choice(pool, size=n_fine_top, replace=len(pool) < n_fine_top)
            rest = rng.choice(recall, size=n_fine - n_fine_top, replace=len(recall) < n_fine - n_fine_top)
            fr = np.concatenate([top, rest])
        else:
            fr = rng.choice(recall, size=n_fine, replace=len(recall) < n_fine)
        out_rows.append(lr), out_lab.append(lab), out_exp.append(exp), out_mask.append(m)
        f_rows.append(fr), f_scores.append(world.fine_scores(r.user_id, r.context, fr)), keep.append(r)
    if not keep:
        raise ValueError("the logs hold no shown list whose items are in the catalog: nothing to train the coarse "
                         "model on")
    qid, qdense = qf([r.query for r in keep], [r.user_id for r in keep], [r.context for r in keep])
    pref = np.zeros((len(keep), world.spec.emb_dim), np.float32)
    price = np.full(len(keep), 2.0, np.float32)
    for k, r in enumerate(keep):
        u = cat.user_index.get(r.user_id)
        if u is not None:
            pref[k], price[k] = cat.user_pref[u][: world.spec.emb_dim], cat.user_price_pref[u]
    return QueryViews(query_id=qid, query_dense=qdense, pref=pref, price_pref=price,
                      lat=np.array([r.context.lat for r in keep]), lon=np.array([r.context.lon for r in keep]),
                      rows=np.stack(out_rows), labels=np.stack(out_lab), exposed=np.stack(out_exp),
                      mask=np.stack(out_mask), fine_rows=np.stack(f_rows), fine_scores=np.stack(f_scores),
                      part=np.array([split.part_of(r.session_id) for r in keep]), queries=[r.query for r in keep],
                      user_ids=[r.user_id for r in keep], contexts=[r.context for r in keep],
                      session_ids=[r.session_id for r in keep])
