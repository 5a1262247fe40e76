"""Feature operators: page items + feedback events -> fixed-shape model inputs.

This is the one implementation used both to build training data from impression logs and on the
device at rerank time, so training and serving features agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_rerank.device_sdk.contracts import Context, ContractError, EventKind, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.config import FeatureConfig

FIELDS = ("category", "brand", "price_level")
SEQUENCES = ("click", "skip")


class FeatureError(ContractError):
    """The inputs cannot be turned into features (oversize page, non-finite values, bad config)."""


def input_specs(cfg: FeatureConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """Model input names, shapes (without the batch dimension) and dtypes, in the model's argument order."""
    n, L, e, d = cfg.n_max, cfg.l_max, cfg.emb_dim, cfg.dense_dim
    return [
        ("cand_cat", (n,), "int32"),
        ("cand_brand", (n,), "int32"),
        ("cand_price", (n,), "int32"),
        ("cand_emb", (n, e), "float32"),
        ("cand_dense", (n, d), "float32"),
        ("cand_num", (n, cfg.n_candidate_features), "float32"),
        ("cand_mask", (n,), "float32"),
        ("cand_dist_b", (n,), "int32"),
        ("cand_pos_b", (n,), "int32"),
        ("seq_cat", (L,), "int32"),
        ("seq_brand", (L,), "int32"),
        ("seq_price", (L,), "int32"),
        ("seq_kind", (L,), "int32"),
        ("seq_emb", (L, e), "float32"),
        ("seq_num", (L, cfg.n_event_features), "float32"),
        ("seq_dist_b", (L,), "int32"),
        ("seq_pos_b", (L,), "int32"),
        ("seq_pos_mask", (L,), "float32"),
        ("seq_neg_mask", (L,), "float32"),
        ("ctx", (cfg.n_context_features,), "float32"),
    ]


def input_names(cfg: FeatureConfig) -> list[str]:
    return [name for name, _, _ in input_specs(cfg)]


@dataclass
class _Seq:
    """A feedback sequence as column arrays, oldest first."""

    fields: dict[str, np.ndarray]  # category / brand / price_level -> int64 [S]
    lat: np.ndarray
    lon: np.ndarray
    emb: np.ndarray  # float32 [S, E]
    dwell_ms: np.ndarray
    steps_ago: np.ndarray  # events since this one (1 = the most recent event)
    position: np.ndarray

    @property
    def size(self) -> int:
        return int(self.lat.shape[0])

    def last(self, k: int) -> _Seq:
        """The window of the last k events (all of them if there are fewer)."""
        if k >= self.size:
            return self
        sl = slice(self.size - k, self.size)
        return _Seq(fields={f: v[sl] for f, v in self.fields.items()}, lat=self.lat[sl], lon=self.lon[sl],
                    emb=self.emb[sl], dwell_ms=self.dwell_ms[sl], steps_ago=self.steps_ago[sl],
                    position=self.position[sl])


def _to_seq(indexed: list[tuple[int, FeedbackEvent]], n_events: int, emb_dim: int) -> _Seq:
    ev = [e for _, e in indexed]
    emb = np.zeros((len(ev), emb_dim), dtype=np.float32)
    for k, e in enumerate(ev):
        if e.id_embedding is not None:
            row = np.asarray(e.id_embedding, dtype=np.float32)
            if row.shape != (emb_dim,):
                raise FeatureError(f"event embedding has shape {row.shape}, expected ({emb_dim},)")
            emb[k] = row
    return _Seq(
        fields={
            "category": np.array([e.category for e in ev], dtype=np.int64),
            "brand": np.array([e.brand for e in ev], dtype=np.int64),
            "price_level": np.array([e.price_level for e in ev], dtype=np.int64),
        },
        lat=np.array([e.lat for e in ev], dtype=np.float64),
        lon=np.array([e.lon for e in ev], dtype=np.float64),
        emb=emb,
        dwell_ms=np.array([e.dwell_ms for e in ev], dtype=np.float64),
        steps_ago=np.array([n_events - i for i, _ in indexed], dtype=np.float64),
        position=np.array([e.position for e in ev], dtype=np.float64),
    )


def split_feedback(events: Sequence[FeedbackEvent], cfg: FeatureConfig
                   ) -> tuple[list[tuple[int, FeedbackEvent]], list[tuple[int, FeedbackEvent]]]:
    """Positive sequence (clicks) and negative sequence (exposures visible >= the dwell threshold and
    never clicked), each as (event index, event), oldest first. A short exposure is not a negative:
    its click may simply not have happened yet."""
    clicked = {e.item_id for e in events if e.kind == EventKind.CLICK}
    pos = [(i, e) for i, e in enumerate(events) if e.kind == EventKind.CLICK]
    neg = [(i, e) for i, e in enumerate(events)
           if e.kind == EventKind.EXPOSURE and e.dwell_ms >= cfg.dwell_threshold_ms and e.item_id not in clicked]
    return pos, neg


def _distance(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray, geo: str) -> np.ndarray:
    """Pairwise distances [len(1), len(2)] in km."""
    a_lat, a_lon = lat1[:, None], lon1[:, None]
    b_lat, b_lon = lat2[None, :], lon2[None, :]
    if geo == "planar":
        return np.sqrt((a_lat - b_lat) ** 2 + (a_lon - b_lon) ** 2)
    p1, p2 = np.radians(a_lat), np.radians(b_lat)
    dp, dl = p2 - p1, np.radians(b_lon - a_lon)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


@dataclass
class _OpInputs:
    cfg: FeatureConfig
    cand_fields: dict[str, np.ndarray]
    cand_lat: np.ndarray
    cand_lon: np.ndarray
    cand_emb: np.ndarray
    cloud_score: np.ndarray
    cloud_position: np.ndarray
    context: Context
    seqs: dict[str, _Seq]
    cache: dict = field(default_factory=dict)  # shared by operators of one build (same match / similarity)


def _match(x: _OpInputs, fields: str, seq: _Seq, seq_key: tuple) -> np.ndarray:
    """[N, S] bool: candidate value(s) equal to the event's value(s) for every field in `fields`; cached per
    build under (fields, `seq_key`) = (sequence name, window)."""
    key = ("match", fields, seq_key)
    hit = x.cache.get(key)
    if hit is not None:
        return hit
    out = np.ones((x.cand_lat.shape[0], seq.size), dtype=bool)
    for f in fields.split("+"):
        if f not in FIELDS:
            raise FeatureError(f"unknown field {f!r} in Match&Aggregate operator (fields: {FIELDS})")
        out &= x.cand_fields[f][:, None] == seq.fields[f][None, :]
    x.cache[key] = out
    return out


def _op_match(agg: str, fields: str, seq_name: str, window: int | None) -> Callable[[_OpInputs], np.ndarray]:
    def op(x: _OpInputs) -> np.ndarray:
        seq = x.seqs[seq_name] if window is None else x.seqs[seq_name].last(window)
        if seq.size == 0:
            return np.full(x.cand_lat.shape[0], 1.0 if agg == "step" else 0.0)
        m = _match(x, fields, seq, (seq_name, window))
        if agg == "hit":
            return m.any(axis=1).astype(np.float64)
        if agg == "freq":
            return m.sum(axis=1) / seq.size
        # step: events since the most recent match in this sequence, scaled by l_max; 1.0 if none
        rank_from_end = np.arange(seq.size, 0, -1, dtype=np.float64)[None, :]
        steps = np.where(m, rank_from_end, np.inf).min(axis=1)
        return np.minimum(steps / x.cfg.l_max, 1.0)

    return op


def _op_dist(kind: str) -> Callable[[_OpInputs], np.ndarray]:
    def op(x: _OpInputs) -> np.ndarray:
        if kind == "context":
            d = _distance(x.cand_lat, x.cand_lon, np.array([x.context.lat]), np.array([x.context.lon]),
                          x.cfg.geo)[:, 0]
            return np.log1p(d)
        seq = x.seqs["click"]
        if seq.size == 0:
            return np.zeros(x.cand_lat.shape[0])
        d = _distance(x.cand_lat, x.cand_lon, seq.lat, seq.lon, x.cfg.geo)
        return np.log1p(d[:, -1] if kind == "last" else d.min(axis=1))

    return op


def _op_sim(agg: str, seq_name: str, window: int | None) -> Callable[[_OpInputs], np.ndarray]:
    def op(x: _OpInputs) -> np.ndarray:
        seq = x.seqs[seq_name] if window is None else x.seqs[seq_name].last(window)
        if seq.size == 0:
            return np.zeros(x.cand_lat.shape[0])
        key = ("sim", seq_name, window)
        s = x.cache.get(key)
        if s is None:
            a = x.cache.get("cand_unit")
            if a is None:
                a = x.cand_emb.astype(np.float64)
                a = x.cache["cand_unit"] = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)
            b = seq.emb.astype(np.float64)
            b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-9)
            s = x.cache[key] = a @ b.T
        return s.max(axis=1) if agg == "max" else s.mean(axis=1)

    return op


def compile_op(expr: str) -> Callable[[_OpInputs], np.ndarray]:
    """Turn one operator expression of the config into a function. Raises FeatureError if unknown."""
    if expr == "cloud_score":
        return lambda x: np.clip(x.cloud_score, -10.0, 10.0)
    if expr == "cloud_position":
        return lambda x: x.cloud_position / 100.0
    if expr == "dist:context":
        return _op_dist("context")
    if expr in ("dist_last:click", "dist_min:click"):
        return _op_dist("last" if expr.startswith("dist_last") else "min")
    body, window = expr, None
    if "@" in expr:
        body, _, k = expr.partition("@")
        if not k.isdigit() or int(k) < 1:
            raise FeatureError(f"window in operator {expr!r} must be a positive integer (e.g. @3)")
        window = int(k)
    parts = body.split(":")
    if len(parts) == 3 and parts[0] in ("hit", "freq", "step") and parts[2] in SEQUENCES:
        for f in parts[1].split("+"):
            if f not in FIELDS:
                raise FeatureError(f"unknown field {f!r} in operator {expr!r} (fields: {FIELDS})")
        return _op_match(parts[0], parts[1], parts[2], window)
    if len(parts) == 2 and parts[0] in ("sim_max", "sim_mean") and parts[1] in SEQUENCES:
        return _op_sim(parts[0][4:], parts[1], window)
    raise FeatureError(f"unknown feature operator {expr!r}")


class FeatureBuilder:
    """Compiles a FeatureConfig once; `build` is then called per rerank (device) or per sample (training)."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self._ops = [compile_op(e) for e in cfg.candidate_ops]
        self.specs = input_specs(cfg)

    def _bucket(self, values: np.ndarray, n: int) -> np.ndarray:
        return np.where((values >= 0) & (values < n), values, n).astype(np.int32)

    @staticmethod
    def bucketise(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
        """Bucket id = number of edges <= value (0..len(edges))."""
        return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right").astype(np.int32)

    def _dist_to_context(self, lat: np.ndarray, lon: np.ndarray, context: Context) -> np.ndarray:
        return _distance(lat, lon, np.array([context.lat]), np.array([context.lon]), self.cfg.geo)[:, 0]

    def build(self, candidates: Sequence[PageItem], events: Sequence[FeedbackEvent],
              context: Context) -> dict[str, np.ndarray]:
        """Model inputs (no batch dimension) for reranking `candidates` given the feedback `events`."""
        cfg = self.cfg
        n = len(candidates)
        if n > cfg.n_max:
            raise FeatureError(f"{n} candidates exceed n_max={cfg.n_max}")
        pos_idx, neg_idx = split_feedback(events, cfg)
        pos_idx = pos_idx[-cfg.max_positives:]
        neg_idx = neg_idx[-(cfg.l_max - len(pos_idx)):] if cfg.l_max > len(pos_idx) else []
        seqs = {"click": _to_seq(pos_idx, len(events), cfg.emb_dim),
                "skip": _to_seq(neg_idx, len(events), cfg.emb_dim)}

        cand_emb = np.zeros((n, cfg.emb_dim), dtype=np.float32)
        cand_dense = np.zeros((n, cfg.dense_dim), dtype=np.float32)
        for k, c in enumerate(candidates):
            if c.id_embedding.shape != (cfg.emb_dim,) or c.cloud_dense.shape != (cfg.dense_dim,):
                raise FeatureError(f"item {c.item_id}: embedding {c.id_embedding.shape} / dense "
                                   f"{c.cloud_dense.shape}, expected ({cfg.emb_dim},) / ({cfg.dense_dim},)")
            cand_emb[k] = c.id_embedding
            cand_dense[k] = c.cloud_dense
        x = _OpInputs(
            cfg=cfg,
            cand_fields={f: np.array([getattr(c, f) for c in candidates], dtype=np.int64) for f in FIELDS},
            cand_lat=np.array([c.lat for c in candidates], dtype=np.float64),
            cand_lon=np.array([c.lon for c in candidates], dtype=np.float64),
            cand_emb=cand_emb,
            cloud_score=np.array([c.cloud_score for c in candidates], dtype=np.float64),
            cloud_position=np.array([c.cloud_position for c in candidates], dtype=np.float64),
            context=context,
            seqs=seqs,
        )
        N, L = cfg.n_max, cfg.l_max
        out: dict[str, np.ndarray] = {}
        out["cand_cat"] = np.zeros(N, np.int32)
        out["cand_brand"] = np.zeros(N, np.int32)
        out["cand_price"] = np.zeros(N, np.int32)
        out["cand_cat"][:n] = self._bucket(x.cand_fields["category"], cfg.n_categories)
        out["cand_brand"][:n] = self._bucket(x.cand_fields["brand"], cfg.n_brands)
        out["cand_price"][:n] = self._bucket(x.cand_fields["price_level"], cfg.n_price_levels)
        out["cand_emb"] = np.zeros((N, cfg.emb_dim), np.float32)
        out["cand_emb"][:n] = cand_emb
        out["cand_dense"] = np.zeros((N, cfg.dense_dim), np.float32)
        out["cand_dense"][:n] = cand_dense
        num = np.zeros((N, cfg.n_candidate_features), np.float32)
        if n:
            num[:n] = np.stack([op(x) for op in self._ops], axis=1)
        out["cand_num"] = num
        out["cand_mask"] = np.zeros(N, np.float32)
        out["cand_mask"][:n] = 1.0
        out["cand_dist_b"] = np.zeros(N, np.int32)
        out["cand_dist_b"][:n] = self.bucketise(self._dist_to_context(x.cand_lat, x.cand_lon, context),
                                                cfg.distance_buckets_km)
        out["cand_pos_b"] = np.zeros(N, np.int32)
        out["cand_pos_b"][:n] = self.bucketise(x.cloud_position, cfg.position_buckets)

        # MVFAN input: positives first, then negatives; kind 1 = click, 2 = skip, 0 = padding.
        p, q = seqs["click"], seqs["skip"]
        s = p.size + q.size
        for name, f, nb in (("seq_cat", "category", cfg.n_categories), ("seq_brand", "brand", cfg.n_brands),
                            ("seq_price", "price_level", cfg.n_price_levels)):
            arr = np.zeros(L, np.int32)
            arr[:s] = self._bucket(np.concatenate([p.fields[f], q.fields[f]]), nb)
            out[name] = arr
        kind = np.zeros(L, np.int32)
        kind[:p.size] = 1
        kind[p.size:s] = 2
        out["seq_kind"] = kind
        out["seq_emb"] = np.zeros((L, cfg.emb_dim), np.float32)
        out["seq_emb"][:s] = np.concatenate([p.emb, q.emb]) if s else 0.0
        seq_num = np.zeros((L, cfg.n_event_features), np.float32)
        out["seq_dist_b"] = np.zeros(L, np.int32)
        out["seq_pos_b"] = np.zeros(L, np.int32)
        if s:
            dwell = np.concatenate([p.dwell_ms, q.dwell_ms])
            ago = np.concatenate([p.steps_ago, q.steps_ago])
            posn = np.concatenate([p.position, q.position])
            dist = self._dist_to_context(np.concatenate([p.lat, q.lat]), np.concatenate([p.lon, q.lon]), context)
            seq_num[:s] = np.stack([np.log1p(np.maximum(dwell, 0.0) / 1000.0),
                                    np.minimum(ago / L, 4.0), posn / 100.0, np.log1p(dist)], axis=1)
            out["seq_dist_b"][:s] = self.bucketise(dist, cfg.distance_buckets_km)
            out["seq_pos_b"][:s] = self.bucketise(posn, cfg.position_buckets)
        out["seq_num"] = seq_num
        out["seq_pos_mask"] = (kind == 1).astype(np.float32)
        out["seq_neg_mask"] = (kind == 2).astype(np.float32)
        hour = 2 * np.pi * (context.hour % 24) / 24.0
        out["ctx"] = np.array([np.sin(hour), np.cos(hour), len(pos_idx) / cfg.max_positives,
                               len(neg_idx) / max(1, L - cfg.max_positives), float(len(pos_idx) > 0)],
                              dtype=np.float32)
        for name, arr in out.items():
            if arr.dtype == np.float32 and not np.all(np.isfinite(arr)):
                raise FeatureError(f"non-finite values in feature {name!r}")
        return out


def stack_batch(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-sample inputs into a batch (leading dimension)."""
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


TABLE_INPUTS = ("cand_num", "cand_dense", "cand_emb", "cand_cat", "cand_brand", "cand_price", "cand_dist_b",
                "cand_pos_b")


def candidate_table(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Batched model inputs [B, N, ...] -> one row per candidate slot [B*N, F] (float64) for per-item models
    such as gradient-boosted trees: Match&Aggregate/cloud features, the cloud dense vector, the ID embedding, and
    the categorical ids (last 5 columns: category, brand, price, distance bucket, position bucket)."""
    B, N = inputs["cand_mask"].shape
    cols = [inputs[k].reshape(B * N, -1).astype(np.float64) for k in TABLE_INPUTS]
    return np.concatenate(cols, axis=1)


N_CATEGORICAL_TABLE_COLUMNS = 5
