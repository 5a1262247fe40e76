"""Feature operators: page items + feedback events -> fixed-shape model inputs.

This is the one implementation used both to build training data from impression logs and on the
device at rerank time, so training and serving features agree bit for bit.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.contracts import Context, ContractError, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.config import FeatureConfig, FieldSpec

FIELDS = ("category", "brand", "price_level")  # the shop world's declared fields (FeatureConfig without `fields`)
SEQUENCES = ("click", "skip", "seen")
IDENTITY = "item"  # the pseudo-field "this very item" in Match&Aggregate operators
_DEFAULT_CFG: FeatureConfig | None = None


def field_value(obj: PageItem | FeedbackEvent, name: str) -> object:
    """A declared field's raw value on an item or event: from ``attrs``, else the attribute of that name."""
    attrs = obj.attrs
    if name in attrs:
        return attrs[name]
    return getattr(obj, name, None)


def encode_value(spec: FieldSpec, v: object) -> int:
    """Bucket id of one categorical value: 0..spec.n-1, or spec.n (unknown)."""
    n = spec.n
    if v is None or isinstance(v, bool):
        return n
    if spec.mode == "ids":
        return int(v) if isinstance(v, int | np.integer) and 0 <= v < n else n
    if spec.mode == "vocab":
        index = spec.__dict__.get("_index")
        if index is None:
            index = {x: i for i, x in enumerate(spec.vocab)}
            object.__setattr__(spec, "_index", index)  # a cache, not a field (not in eq / to_dict)
        return index.get(v if isinstance(v, str) else int(v) if isinstance(v, int | np.integer) else None, n)
    if isinstance(v, float | np.floating):
        return n
    return zlib.crc32(str(v).encode("utf-8")) % n


def numeric_value(v: object) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


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

    fields: dict[str, np.ndarray]  # declared categorical field (and "item") -> int64 match keys [S], -1 = null
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


class _Keys:
    """Match keys of one build: equal raw values of a field get equal keys (>= 0); null gets -1."""

    def __init__(self) -> None:
        self.tables: dict[str, dict] = {}

    def __call__(self, name: str, values: list) -> np.ndarray:
        if name == IDENTITY:
            return np.array(values, dtype=np.int64)
        table = self.tables.setdefault(name, {})
        return np.array([-1 if v is None or isinstance(v, float) else table.setdefault(v, len(table))
                         for v in values], dtype=np.int64)


def _to_seq(indexed: list[tuple[int, FeedbackEvent]], n_events: int, emb_dim: int, cats: Sequence[str],
            keys: _Keys) -> _Seq:
    ev = [e for _, e in indexed]
    emb = np.zeros((len(ev), emb_dim), dtype=np.float32)
    for k, e in enumerate(ev):
        if e.id_embedding is not None and e.id_embedding.size:
            row = np.asarray(e.id_embedding, dtype=np.float32)
            if row.shape != (emb_dim,):
                raise FeatureError(f"event embedding has shape {row.shape}, expected ({emb_dim},)")
            emb[k] = row
    fields = {f: keys(f, [field_value(e, f) for e in ev]) for f in cats}
    fields[IDENTITY] = np.array([e.item_id for e in ev], dtype=np.int64)
    return _Seq(
        fields=fields,
        lat=np.array([e.lat for e in ev], dtype=np.float64),
        lon=np.array([e.lon for e in ev], dtype=np.float64),
        emb=emb,
        dwell_ms=np.array([e.dwell_ms for e in ev], dtype=np.float64),
        steps_ago=np.array([n_events - i for i, _ in indexed], dtype=np.float64),
        position=np.array([e.position for e in ev], dtype=np.float64),
    )


def event_roles(events: Sequence[FeedbackEvent], cfg: FeatureConfig) -> list[tuple[str, bool]]:
    """Per event: its effective role (``positive`` / ``negative`` / ``neutral``, after the dwell threshold of
    ``_dwell`` roles) and whether it is an exposure (a negative kind, whatever its dwell)."""
    kinds = dict(cfg.event_kinds)
    thr = cfg.dwell_threshold_ms
    out = []
    for e in events:
        role = kinds.get(e.name, "neutral")
        shown = role.startswith("negative")
        if role.endswith("_dwell"):
            role = role[:-6] if e.dwell_ms >= thr else "neutral"
        out.append((role, shown))
    return out


def split_feedback(events: Sequence[FeedbackEvent], cfg: FeatureConfig,
                   roles: list[tuple[str, bool]] | None = None
                   ) -> tuple[list[tuple[int, FeedbackEvent]], list[tuple[int, FeedbackEvent]]]:
    """Positive sequence (events of a positive kind: clicks) and negative sequence (events of a negative kind:
    exposures visible >= the dwell threshold, of items never positive), each as (event index, event), oldest
    first. A short exposure is not a negative: its click may simply not have happened yet. Kinds and their roles
    come from ``cfg.event_kinds``."""
    roles = event_roles(events, cfg) if roles is None else roles
    positive = {e.item_id for e, (r, _) in zip(events, roles, strict=True) if r == "positive"}
    pos = [(i, e) for i, (e, (r, _)) in enumerate(zip(events, roles, strict=True)) if r == "positive"]
    neg = [(i, e) for i, (e, (r, _)) in enumerate(zip(events, roles, strict=True))
           if r == "negative" and e.item_id not in positive]
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


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64 (an all-zero row stays zero): cosine similarity is a product of these."""
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)


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
    cand_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    identity: dict[str, np.ndarray] = field(default_factory=dict)  # per-candidate history of this very item
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # numeric field -> [N] bucket / n_buckets
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
        if f not in x.cand_fields:
            raise FeatureError(f"unknown field {f!r} in Match&Aggregate operator (fields: {sorted(x.cand_fields)})")
        a = x.cand_fields[f][:, None]
        out &= (a == seq.fields[f][None, :]) & (a >= 0)
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
                a = x.cache["cand_unit"] = _unit_rows(x.cand_emb)
            s = x.cache[key] = a @ _unit_rows(seq.emb).T
        return s.max(axis=1) if agg == "max" else s.mean(axis=1)

    return op


def _op_identity(kind: str) -> Callable[[_OpInputs], np.ndarray]:
    return lambda x: x.identity[kind]


def _op_numeric(name: str) -> Callable[[_OpInputs], np.ndarray]:
    return lambda x: x.numeric[name]


def compile_op(expr: str, cfg: FeatureConfig | None = None) -> Callable[[_OpInputs], np.ndarray]:
    """Turn one operator expression of the config into a function. Raises FeatureError if unknown or if it names
    a field `cfg` (default: the shop world's config) does not declare."""
    global _DEFAULT_CFG
    if cfg is None:
        cfg = _DEFAULT_CFG = _DEFAULT_CFG or FeatureConfig()
    if expr == "cloud_score":
        return lambda x: np.clip(x.cloud_score, -10.0, 10.0)
    if expr == "cloud_position":
        return lambda x: x.cloud_position / 100.0
    if expr == "dist:context":
        return _op_dist("context")
    if expr in ("dist_last:click", "dist_min:click"):
        return _op_dist("last" if expr.startswith("dist_last") else "min")
    if expr in ("seen:item", "skipped:item", "clicked:item", "dwell_max:item"):
        return _op_identity(expr.split(":")[0])
    cats = [f.name for f in cfg.declared_fields if f.kind == "categorical"]
    if expr.startswith("num:"):
        spec = cfg.field_spec(expr[4:])
        if spec is None or spec.kind != "numeric":
            nums = [f.name for f in cfg.declared_fields if f.kind == "numeric"]
            raise FeatureError(f"unknown numeric field in operator {expr!r} (numeric fields: {nums})")
        return _op_numeric(spec.name)
    body, window = expr, None
    if "@" in expr:
        body, _, k = expr.partition("@")
        if not k.isdigit() or int(k) < 1:
            raise FeatureError(f"window in operator {expr!r} must be a positive integer (e.g. @3)")
        window = int(k)
    parts = body.split(":")
    if len(parts) == 3 and parts[0] in ("hit", "freq", "step") and parts[2] in SEQUENCES:
        names = parts[1].split("+")
        for f in names:
            if f not in cats and f != IDENTITY:
                raise FeatureError(f"unknown field {f!r} in operator {expr!r} (fields: {[*cats, IDENTITY]})")
        if len(set(names)) != len(names):
            raise FeatureError(f"operator {expr!r} names a field twice")
        return _op_match(parts[0], parts[1], parts[2], window)
    if len(parts) == 2 and parts[0] in ("sim_max", "sim_mean") and parts[1] in SEQUENCES:
        return _op_sim(parts[0][4:], parts[1], window)
    raise FeatureError(f"unknown feature operator {expr!r}")


class FeatureBuilder:
    """Compiles a FeatureConfig once; `build` is then called per rerank (device) or per sample (training).

    ``unknown_counts`` counts, per declared field, the candidate values that fell in the unknown bucket (out of
    range, not in the vocabulary, null) against all values seen: training warns when a field's rate is high."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self._ops = [compile_op(e, cfg) for e in cfg.candidate_ops]
        self.specs = input_specs(cfg)
        self._cats = [f for f in cfg.declared_fields if f.kind == "categorical"]
        self._nums = [f for f in cfg.declared_fields if f.kind == "numeric"]
        self._slots = [cfg.field_spec(n) if n else None for n in cfg.slot_fields]
        self._identity = any(op.endswith(":item") for op in cfg.candidate_ops)
        self._seen = any(op.split("@")[0].endswith(":seen") for op in cfg.candidate_ops)
        self.unknown_counts: dict[str, list[int]] = {f.name: [0, 0] for f in cfg.declared_fields}

    def _encode(self, spec: FieldSpec | None, values: list) -> np.ndarray:
        if spec is None:
            return np.zeros(len(values), np.int32)
        return np.array([encode_value(spec, v) for v in values], dtype=np.int32)

    def unknown_rates(self) -> dict[str, float]:
        """Share of candidate values in each field's unknown bucket so far (fields with values only)."""
        return {f: u / t for f, (u, t) in self.unknown_counts.items() if t}

    @staticmethod
    def bucketise(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
        """Bucket id = number of edges <= value (0..len(edges))."""
        return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right").astype(np.int32)

    def _dist_to_context(self, lat: np.ndarray, lon: np.ndarray, context: Context) -> np.ndarray:
        return _distance(lat, lon, np.array([context.lat]), np.array([context.lon]), self.cfg.geo)[:, 0]

    def _identity_features(self, cand_ids: np.ndarray, events: Sequence[FeedbackEvent],
                           roles: list[tuple[str, bool]]) -> dict[str, np.ndarray]:
        seen: dict[int, int] = {}
        skipped: dict[int, int] = {}
        clicked: dict[int, int] = {}
        dwell: dict[int, float] = {}
        positive = {e.item_id for e, (r, _) in zip(events, roles, strict=True) if r == "positive"}
        for e, (role, shown) in zip(events, roles, strict=True):
            i = e.item_id
            if shown:
                seen[i] = seen.get(i, 0) + 1
            if role == "positive":
                clicked[i] = clicked.get(i, 0) + 1
            elif role == "negative" and i not in positive:
                skipped[i] = skipped.get(i, 0) + 1
            dwell[i] = max(dwell.get(i, 0.0), e.dwell_ms)
        ids = cand_ids.tolist()
        return {"seen": np.log1p([seen.get(i, 0) for i in ids]),
                "skipped": np.log1p([skipped.get(i, 0) for i in ids]),
                "clicked": np.log1p([clicked.get(i, 0) for i in ids]),
                "dwell_max": np.log1p(np.maximum([dwell.get(i, 0.0) for i in ids], 0.0) / 1000.0)}

    def build(self, candidates: Sequence[PageItem], events: Sequence[FeedbackEvent],
              context: Context) -> dict[str, np.ndarray]:
        """Model inputs (no batch dimension) for reranking `candidates` given the feedback `events`."""
        cfg = self.cfg
        n = len(candidates)
        if n > cfg.n_max:
            raise FeatureError(f"{n} candidates exceed n_max={cfg.n_max}")
        roles = event_roles(events, cfg)
        pos_idx, neg_idx = split_feedback(events, cfg, roles)
        pos_idx = pos_idx[-cfg.max_positives:]
        neg_idx = neg_idx[-(cfg.l_max - len(pos_idx)):] if cfg.l_max > len(pos_idx) else []
        keys = _Keys()
        cat_names = [f.name for f in self._cats]
        cand_fields = {f: keys(f, [field_value(c, f) for c in candidates]) for f in cat_names}
        cand_ids = np.array([c.item_id for c in candidates], dtype=np.int64)
        cand_fields[IDENTITY] = cand_ids
        seqs = {"click": _to_seq(pos_idx, len(events), cfg.emb_dim, cat_names, keys),
                "skip": _to_seq(neg_idx, len(events), cfg.emb_dim, cat_names, keys)}
        if self._seen:
            seen_idx = [(i, e) for i, (e, (_, shown)) in enumerate(zip(events, roles, strict=True)) if shown]
            seqs["seen"] = _to_seq(seen_idx, len(events), cfg.emb_dim, cat_names, keys)

        cand_emb = np.zeros((n, cfg.emb_dim), dtype=np.float32)
        cand_dense = np.zeros((n, cfg.dense_dim), dtype=np.float32)
        for k, c in enumerate(candidates):
            emb, dense = c.id_embedding, c.cloud_dense
            if (emb.size and emb.shape != (cfg.emb_dim,)) or (dense.size and dense.shape != (cfg.dense_dim,)):
                raise FeatureError(f"item {c.item_id}: embedding {emb.shape} / dense "
                                   f"{dense.shape}, expected ({cfg.emb_dim},) / ({cfg.dense_dim},)")
            if emb.size:  # an item without a vector (v2 logs) keeps zeros
                cand_emb[k] = emb
            if dense.size:
                cand_dense[k] = dense
        encoded: dict[str, np.ndarray] = {}
        for spec in self._cats:
            ids = self._encode(spec, [field_value(c, spec.name) for c in candidates])
            encoded[spec.name] = ids
            counts = self.unknown_counts[spec.name]
            counts[0] += int(np.count_nonzero(ids == spec.n))
            counts[1] += n
        numeric: dict[str, np.ndarray] = {}
        for spec in self._nums:
            vals = [numeric_value(field_value(c, spec.name)) for c in candidates]
            missing = np.array([v is None for v in vals], dtype=bool)
            b = self.bucketise(np.array([0.0 if v is None else v for v in vals], dtype=np.float64), spec.edges)
            numeric[spec.name] = np.where(missing, 0.0, b / max(1, len(spec.edges)))
            counts = self.unknown_counts[spec.name]
            counts[0] += int(missing.sum())
            counts[1] += n
        x = _OpInputs(
            cfg=cfg,
            cand_fields=cand_fields,
            cand_lat=np.array([c.lat for c in candidates], dtype=np.float64),
            cand_lon=np.array([c.lon for c in candidates], dtype=np.float64),
            cand_emb=cand_emb,
            cloud_score=np.array([c.cloud_score for c in candidates], dtype=np.float64),
            cloud_position=np.array([c.cloud_position for c in candidates], dtype=np.float64),
            context=context,
            seqs=seqs,
            cand_ids=cand_ids,
            identity=self._identity_features(cand_ids, events, roles) if self._identity else {},
            numeric=numeric,
        )
        N, L = cfg.n_max, cfg.l_max
        out: dict[str, np.ndarray] = {}
        for name, spec in zip(("cand_cat", "cand_brand", "cand_price"), self._slots, strict=True):
            out[name] = np.zeros(N, np.int32)
            if spec is not None:
                out[name][:n] = encoded[spec.name]
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
        seq_events = [e for _, e in pos_idx] + [e for _, e in neg_idx]
        for name, spec in zip(("seq_cat", "seq_brand", "seq_price"), self._slots, strict=True):
            arr = np.zeros(L, np.int32)
            if spec is not None:
                arr[:s] = self._encode(spec, [field_value(e, spec.name) for e in seq_events])
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


def check_operators(cfg: FeatureConfig) -> None:
    """ValueError unless every candidate operator of `cfg` compiles against its declared fields."""
    for expr in cfg.candidate_ops:
        try:
            compile_op(expr, cfg)
        except ValueError as exc:
            raise ValueError(f"feature config: {exc}") from None


def load_feature_config(path: str | Path) -> FeatureConfig:
    """A feature config file, refused (ValueError naming the file) for malformed values *or* operators this
    version cannot compute: what every loader of a user-supplied config calls."""
    cfg = FeatureConfig.load(path)
    try:
        check_operators(cfg)
    except ValueError as exc:
        raise ValueError(f"feature config {path}: {exc}") from None
    return cfg


@dataclass(frozen=True)
class PairTerms:
    """Pairwise terms between candidates and feedback events, each ``[n_candidates, n_events]``, computed exactly as
    the Match&Aggregate and similarity operators compute them (one implementation of "how alike are these two
    items"): ``match[field]`` for every declared categorical field and ``"item"`` (a null value never matches),
    ``km`` (distance under the config's ``geo``) and ``cosine`` (of the ID embeddings; an event or candidate
    without a vector has cosine 0). The model-free heuristic and the simulator's Gymnasium env weigh these."""

    match: dict[str, np.ndarray]
    km: np.ndarray
    cosine: np.ndarray


def pair_terms(candidates: Sequence[PageItem], events: Sequence[FeedbackEvent], cfg: FeatureConfig) -> PairTerms:
    """:class:`PairTerms` of `candidates` x `events` (events in the order given). The vector width is the
    candidates' (``cfg.emb_dim`` if none has one); a vector of another width raises :class:`FeatureError`."""
    widths = [c.id_embedding.size for c in candidates if c.id_embedding is not None and c.id_embedding.size]
    emb_dim = widths[0] if widths else cfg.emb_dim
    keys = _Keys()
    cats = [f.name for f in cfg.declared_fields if f.kind == "categorical"]
    cand_fields = {f: keys(f, [field_value(c, f) for c in candidates]) for f in cats}
    cand_fields[IDENTITY] = np.array([c.item_id for c in candidates], dtype=np.int64)
    seq = _to_seq(list(enumerate(events)), len(events), emb_dim, cats, keys)
    cand_emb = np.zeros((len(candidates), emb_dim), dtype=np.float32)
    for k, c in enumerate(candidates):
        if c.id_embedding is not None and c.id_embedding.size:
            if c.id_embedding.shape != (emb_dim,):
                raise FeatureError(f"item {c.item_id}: embedding {c.id_embedding.shape}, expected ({emb_dim},)")
            cand_emb[k] = c.id_embedding
    lat = np.array([c.lat for c in candidates], dtype=np.float64)
    lon = np.array([c.lon for c in candidates], dtype=np.float64)
    x = _OpInputs(cfg=cfg, cand_fields=cand_fields, cand_lat=lat, cand_lon=lon, cand_emb=cand_emb,
                  cloud_score=np.zeros(len(candidates)), cloud_position=np.zeros(len(candidates)),
                  context=Context(), seqs={"events": seq})
    return PairTerms(match={f: _match(x, f, seq, ("events", None)) for f in cand_fields},
                     km=_distance(lat, lon, seq.lat, seq.lon, cfg.geo),
                     cosine=_unit_rows(cand_emb) @ _unit_rows(seq.emb).T)
