"""Feature operators: page items + feedback events -> fixed-shape model inputs.

This is the one implementation used both to build training data from impression logs and on the
device at rerank time, so training and serving features agree bit for bit.
"""

from __future__ import annotations

import itertools
import math
import operator
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.contracts import _KIND_NAMES, Context, ContractError, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.config import FeatureConfig, FieldSpec
from edge_rerank.device_sdk.features.event_rows import EventRows
from edge_rerank.device_sdk.features.item_table import ItemTable
from edge_rerank.device_sdk.features.rerank_path import RerankPath
from edge_rerank.device_sdk.feedback_columns import CAT_FIELDS, EventColumns

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
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.minimum(np.maximum(h, 0.0), 1.0)))  # = np.clip, without its wrapper


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


# ---- the vectorised builder's compiled plan and column helpers (issue 18) ----
_POSITIVE, _POSITIVE_DWELL, _NEGATIVE, _NEGATIVE_DWELL, _NEUTRAL = range(5)
_ROLE_CODE = {"positive": _POSITIVE, "positive_dwell": _POSITIVE_DWELL, "negative": _NEGATIVE,
              "negative_dwell": _NEGATIVE_DWELL, "neutral": _NEUTRAL}
_ATTRS = operator.attrgetter("attrs")
_ITEM_ATTRS = frozenset(PageItem.__dataclass_fields__) - {"attrs"}
_EVENT_ATTRS = frozenset(FeedbackEvent.__dataclass_fields__) - {"attrs"}
_EMPTY = np.zeros(0, np.int64)
_INT_ONLY = {int}
# the dict order ``build`` has always returned (the reference's insertion order; input_specs is the model's order)
_OUTPUT_ORDER = ("cand_cat", "cand_brand", "cand_price", "cand_emb", "cand_dense", "cand_num", "cand_mask",
                 "cand_dist_b", "cand_pos_b", "seq_cat", "seq_brand", "seq_price", "seq_kind", "seq_emb",
                 "seq_dist_b", "seq_pos_b", "seq_num", "seq_pos_mask", "seq_neg_mask", "ctx")


_NO_WINDOW = 1 << 62  # a view without @K: every event of its sequence
_KEY_SHIFT = 1 << 62  # a plain int in (-2^62, 2^62) plus this is a match key >= 0
_FINITE_CHECKED = ("cand_emb", "cand_dense", "cand_num", "seq_emb", "seq_num", "ctx")
_FINITE_CHECKED_COLS = ("cand_num", "seq_emb", "seq_num", "ctx")  # the item table checked the candidates' vectors


@dataclass
class _Plan:
    """A FeatureConfig compiled once into index arrays (what ``FeatureBuilder.build`` gathers and scatters with).

    Match&Aggregate and similarity operators read *views*: a sequence (``click`` / ``skip`` / ``seen``) and a window
    (the last K events, or all). At build time the sequences are laid end to end on one event axis and each view is a
    0/1 mask over it; each operator is a (field combination, view) pair, so hit / freq come from one matrix product
    of the match tensor with the view masks, step and sim from one masked reduction each."""

    cat_names: list[str]
    role_by_kind: dict[int, int]
    role_by_name: dict[str, int]
    role_lut: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # EventKind value -> role code
    match_fields: set[str] = field(default_factory=set)
    col_score: np.ndarray = field(default_factory=lambda: _EMPTY)
    col_position: np.ndarray = field(default_factory=lambda: _EMPTY)
    col_dist_context: np.ndarray = field(default_factory=lambda: _EMPTY)
    col_dist_last: np.ndarray = field(default_factory=lambda: _EMPTY)
    col_dist_min: np.ndarray = field(default_factory=lambda: _EMPTY)
    col_identity: dict[str, np.ndarray] = field(default_factory=dict)
    col_numeric: dict[str, np.ndarray] = field(default_factory=dict)
    seqs: tuple[str, ...] = ()  # sequences some view reads, in event-axis order
    view_seq: np.ndarray = field(default_factory=lambda: _EMPTY)  # [V] index into seqs
    view_window: np.ndarray = field(default_factory=lambda: _EMPTY)  # [V] K, or _NO_WINDOW
    fields: list[str] = field(default_factory=list)  # fields some combination matches (IDENTITY last)
    combos: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.int64))  # [C, width] rows of padded eq
    # per aggregate: output columns, the operator's combination (match) and view
    agg: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def has_sequence_ops(self) -> bool:
        return bool(len(self.view_seq))


@dataclass
class _Views:
    """The views of one build's event axis (sequences of given sizes end to end): see ``FeatureBuilder._view_masks``."""

    T: int
    ranges_flat: np.ndarray  # [V, 2] (start, end) on the event axis
    masks_f: np.ndarray  # float32 [T, V]
    masks_f64: np.ndarray  # float64 [T, V]
    weights: np.ndarray  # int [V, T]
    view_size: np.ndarray  # [V]


def _compile_plan(cfg: FeatureConfig) -> _Plan:
    """Parse every operator (``compile_op`` has validated it) into columns of the shared computations."""
    role_by_name = {k: _ROLE_CODE[r] for k, r in cfg.event_kinds}
    plan = _Plan(cat_names=[f.name for f in cfg.declared_fields if f.kind == "categorical"],
                 role_by_kind={k: role_by_name.get(name, _NEUTRAL) for k, name in _KIND_NAMES.items()},
                 role_by_name=role_by_name)
    lut = np.full(max(_KIND_NAMES) + 1, _NEUTRAL, dtype=np.int8)
    for k, code in plan.role_by_kind.items():
        lut[k] = code
    plan.role_lut = lut
    simple: dict[str, list[int]] = {}
    identity: dict[str, list[int]] = {}
    numeric: dict[str, list[int]] = {}
    combos: list[tuple[str, ...]] = []
    views: list[tuple[str, int]] = []
    agg: dict[str, tuple[list[int], list[int], list[int]]] = {a: ([], [], []) for a in
                                                                ("hit", "freq", "step", "sim_max", "sim_mean")}
    for col, expr in enumerate(cfg.candidate_ops):
        if expr in ("cloud_score", "cloud_position", "dist:context", "dist_last:click", "dist_min:click"):
            simple.setdefault(expr, []).append(col)
            continue
        if expr in ("seen:item", "skipped:item", "clicked:item", "dwell_max:item"):
            identity.setdefault(expr.split(":")[0], []).append(col)
            continue
        if expr.startswith("num:"):
            numeric.setdefault(expr[4:], []).append(col)
            continue
        body, _, k = expr.partition("@")
        parts = body.split(":")
        view = (parts[-1], int(k) if k else _NO_WINDOW)
        if view not in views:
            views.append(view)
        combo = -1
        if parts[0] in ("hit", "freq", "step"):
            names = tuple(parts[1].split("+"))
            plan.match_fields.update(f for f in names if f != IDENTITY)
            if names not in combos:
                combos.append(names)
            combo = combos.index(names)
        cols, cs, vs = agg[parts[0]]
        cols.append(col)
        cs.append(combo)
        vs.append(views.index(view))
    idx = lambda cols: np.array(cols, dtype=np.int64)  # noqa: E731
    plan.col_score, plan.col_position = idx(simple.get("cloud_score", [])), idx(simple.get("cloud_position", []))
    plan.col_dist_context = idx(simple.get("dist:context", []))
    plan.col_dist_last = idx(simple.get("dist_last:click", []))
    plan.col_dist_min = idx(simple.get("dist_min:click", []))
    plan.col_identity = {k: idx(v) for k, v in identity.items()}
    plan.col_numeric = {k: idx(v) for k, v in numeric.items()}
    plan.seqs = tuple(s for s in SEQUENCES if any(v[0] == s for v in views))
    plan.view_seq = idx([plan.seqs.index(s) for s, _ in views])
    plan.view_window = idx([w for _, w in views])
    plan.fields = sorted({f for c in combos for f in c}, key=lambda f: (f == IDENTITY, f))
    if combos:
        width = max(len(c) for c in combos)  # short combinations padded with the all-true row len(fields)
        plan.combos = idx([[plan.fields.index(f) for f in c] + [len(plan.fields)] * (width - len(c)) for c in combos])
    plan.agg = {a: (idx(c), idx(cs), idx(vs)) for a, (c, cs, vs) in agg.items() if c}
    return plan


def _field_columns(objs: Sequence, names: list[str], plain: frozenset[str]) -> list[list]:
    """Per declared field, its raw value on each object (``field_value`` semantics: ``attrs`` first)."""
    if not objs:
        return [[] for _ in names]
    if names and all(nm in plain for nm in names) and not any(o.attrs for o in objs):
        if len(names) == 1:
            return [[getattr(o, names[0]) for o in objs]]
        return [list(c) for c in zip(*map(operator.attrgetter(*names), objs), strict=True)]
    return [[field_value(o, nm) for o in objs] for nm in names]


def _int_column(raw: list) -> np.ndarray | None:
    """`raw` (a list, or a list of equally long lists) as int64 if every value is a plain int (the common case),
    else None."""
    flat = itertools.chain.from_iterable(raw) if raw and isinstance(raw[0], list) else raw
    if set(map(type, flat)) != _INT_ONLY:
        return None
    try:
        return np.array(raw, dtype=np.int64)
    except OverflowError:
        return None


def _match_keys(raw: list) -> np.ndarray:
    """Match keys (``_Keys`` semantics): equal raw values get equal keys >= 0; null (None, float) gets -1."""
    a = _int_column(raw)
    if a is not None and (not a.size or (a.min() > -(1 << 62) and a.max() < (1 << 62))):
        return a - a.min() if a.size else a
    table: dict = {}
    return np.array([-1 if v is None or isinstance(v, float) else table.setdefault(v, len(table)) for v in raw],
                    dtype=np.int64)


def _encode_many(spec: FieldSpec, raw: list) -> np.ndarray:
    """``encode_value`` over a column: vectorised for integer ids, per value otherwise."""
    if spec.mode == "ids":
        a = _int_column(raw)
        if a is not None:
            return np.where((a >= 0) & (a < spec.n), a, spec.n).astype(np.int32)
    return np.array([encode_value(spec, v) for v in raw], dtype=np.int32)


def _candidate_vectors(candidates: Sequence[PageItem], cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """ID embeddings [n, E] and cloud dense vectors [n, D] (float32; an item without one keeps zeros)."""
    n, E, D = len(candidates), cfg.emb_dim, cfg.dense_dim
    if n:
        try:
            emb = np.array([c.id_embedding for c in candidates], dtype=np.float32)
            dense = np.array([c.cloud_dense for c in candidates], dtype=np.float32)
            if emb.shape == (n, E) and dense.shape == (n, D):
                return emb, dense
        except ValueError:  # ragged: some item lacks a vector or has a wrong one
            pass
    emb, dense = np.zeros((n, E), dtype=np.float32), np.zeros((n, D), dtype=np.float32)
    for k, c in enumerate(candidates):
        e, d = c.id_embedding, c.cloud_dense
        if (e.size and e.shape != (E,)) or (d.size and d.shape != (D,)):
            raise FeatureError(f"item {c.item_id}: embedding {e.shape} / dense "
                               f"{d.shape}, expected ({E},) / ({D},)")
        if e.size:
            emb[k] = e
        if d.size:
            dense[k] = d
    return emb, dense


def _event_vectors(events: Sequence[FeedbackEvent], idx: np.ndarray, dim: int) -> np.ndarray:
    """ID embeddings [len(idx), dim] of the events at `idx` (zeros for an event without one)."""
    vecs = [events[i].id_embedding for i in idx.tolist()]
    if vecs:
        try:  # every event has its vector (the common case): one copy
            out = np.array(vecs, dtype=np.float32)
            if out.shape == (len(vecs), dim):
                return out
        except (TypeError, ValueError):  # None among them, or ragged
            pass
    out = np.zeros((len(vecs), dim), dtype=np.float32)
    for k, v in enumerate(vecs):
        if v is not None and v.size:
            row = np.asarray(v, dtype=np.float32)
            if row.shape != (dim,):
                raise FeatureError(f"event embedding has shape {row.shape}, expected ({dim},)")
            out[k] = row
    return out


def _identity_columns(cand_ids: np.ndarray, ev_item: np.ndarray, ev_dwell: np.ndarray, shown: np.ndarray,
                      is_pos: np.ndarray, is_neg: np.ndarray) -> dict[str, np.ndarray]:
    """The item-identity operators for every candidate at once (one [n, events] equality matrix)."""
    same = cand_ids[:, None] == ev_item[None, :]
    dwell = np.where(same, ev_dwell[None, :], 0.0).max(axis=1, initial=0.0)
    return {"seen": np.log1p((same & shown).sum(axis=1)), "skipped": np.log1p((same & is_neg).sum(axis=1)),
            "clicked": np.log1p((same & is_pos).sum(axis=1)),
            "dwell_max": np.log1p(np.maximum(dwell, 0.0) / 1000.0)}


class FeatureBuilder:
    """Compiles a FeatureConfig once; `build` is then called per rerank (device) or per sample (training).

    ``unknown_counts`` counts, per declared field, the candidate values that fell in the unknown bucket (out of
    range, not in the vocabulary, null) against all values seen: training warns when a field's rate is high."""

    def __init__(self, cfg: FeatureConfig, *, item_cache: int = 0):
        self.cfg = cfg
        self._ops = [compile_op(e, cfg) for e in cfg.candidate_ops]
        self.specs = input_specs(cfg)
        self._cats = [f for f in cfg.declared_fields if f.kind == "categorical"]
        self._nums = [f for f in cfg.declared_fields if f.kind == "numeric"]
        self._slots = [cfg.field_spec(n) if n else None for n in cfg.slot_fields]
        self._identity = any(op.endswith(":item") for op in cfg.candidate_ops)
        self._seen = any(op.split("@")[0].endswith(":seen") for op in cfg.candidate_ops)
        self.unknown_counts: dict[str, list[int]] = {f.name: [0, 0] for f in cfg.declared_fields}
        self._plan = _compile_plan(cfg)
        self._all_ids = all(f.mode == "ids" for f in self._cats)
        self._masks_cache: dict[tuple[int, ...], _Views] = {}
        self._dist_edges = np.asarray(cfg.distance_buckets_km, dtype=np.float64)  # bucketise's edges, prepared once
        self._pos_edges = np.asarray(cfg.position_buckets, dtype=np.float64)
        # the declared categorical fields are read in the same pass as the other columns when they are attributes
        names = self._plan.cat_names
        self._fields_are_attributes = all(f in _ITEM_ATTRS and f in _EVENT_ATTRS for f in names)
        extra = tuple(names) if self._fields_are_attributes else ()
        self._item_get = operator.attrgetter("item_id", "cloud_position", "cloud_score", "lat", "lon", *extra)
        self._event_get = operator.attrgetter("item_id", "kind", "kind_name", "dwell_ms", "position", "lat", "lon",
                                              *extra)
        self._cat_sizes = np.array([[f.n] for f in self._cats], dtype=np.int64)  # [fields, 1]
        self._cat_sizes_u64 = self._cat_sizes.astype(np.uint64)
        self._input_order = _OUTPUT_ORDER
        self._match_rows = [names.index(f) for f in self._plan.fields if f != IDENTITY]
        cat_names = [f.name for f in self._cats]
        self._slot_rows = [cat_names.index(sp.name) if sp is not None and sp.name in cat_names else None
                           for sp in self._slots]
        self._sim = "sim_max" in self._plan.agg or "sim_mean" in self._plan.agg
        # the match tensor has one row per field, then one per combination of several fields
        F, multi, combo_row = len(self._plan.fields), [], []
        for row in self._plan.combos.tolist():
            fs = [f for f in row if f < F]
            if len(fs) == 1:
                combo_row.append(fs[0])
            else:
                multi.append(fs)
                combo_row.append(F + len(multi) - 1)
        self._multi_combos: list[list[int]] = multi
        rows_of = np.array(combo_row, dtype=np.intp)
        self._agg_rows = {a: (cols, rows_of[c] if a in ("hit", "freq", "step") else c, v)
                          for a, (cols, c, v) in self._plan.agg.items()}
        self._count_aggs = "hit" in self._plan.agg or "freq" in self._plan.agg
        # events handed over as columns (FeedbackStore.snapshot) are read from them when they hold every field
        self._columns_ok = self._fields_are_attributes and all(f in CAT_FIELDS for f in names)
        self._cat_rows = None  # rows of the store's CAT_FIELDS columns in cat_names order (None: the same order)
        if self._columns_ok and tuple(names) != CAT_FIELDS:
            self._cat_rows = np.array([CAT_FIELDS.index(f) for f in names], dtype=np.intp)
        # candidate columns cached per item (issue 18): what a rerank service turns on
        self._table: ItemTable | None = None
        self._token = object()  # this builder's key for what it derives beside the store's columns
        # (EventKind value, dwell >= threshold) -> (positive, negative, shown): the roles as one lookup
        codes = self._plan.role_lut[:, None]
        long = np.array([[False, True]])
        shown = np.broadcast_to((codes == _NEGATIVE) | (codes == _NEGATIVE_DWELL), (len(codes), 2))
        self._role_table = np.stack([(codes == _POSITIVE) | ((codes == _POSITIVE_DWELL) & long),
                                     (codes == _NEGATIVE) | ((codes == _NEGATIVE_DWELL) & long), shown], axis=2)
        if item_cache > 0 and self._fields_are_attributes and not self._nums:
            self._table = ItemTable(max(int(item_cache), 2 * cfg.n_max), cfg.emb_dim, cfg.dense_dim, self._cats,
                                    _encode_many, need_unit=self._sim)
        # the rerank-time build in few numpy calls (features.rerank_path), when the config is one it covers
        self._fast = RerankPath.compile(self, _distance, FeatureError)
        if self._fast is not None:
            self._fast.attach_items(self._table)

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
        """Model inputs (no batch dimension) for reranking `candidates` given the feedback `events`.

        One vectorised pass (issue 18): the items' and events' columns are read once, every categorical field is
        keyed and encoded once over candidates and events together, each feedback sequence gets one equality
        tensor over all matched fields and one similarity matrix, and each (sequence, window) view reduces them
        for all of its operators at once; columns land in ``cand_num`` through index arrays compiled from the
        config. Same outputs as the per-operator reference (``features.reference_builder``).

        `events` given as ``feedback_columns.EventColumns`` (what ``FeedbackStore.snapshot`` returns) are read from
        their columns; with ``item_cache`` the candidates' columns come from the per-item table
        (``features.item_table``). Either way the outputs are the same as from the objects."""
        rows = ...  # the item table's rows of the candidates, once asked for
        if self._fast is not None:
            out, rows = self._fast.build(self, candidates, events, context)
            if out is not None:
                return out
            self._fast.fallbacks += 1
        cfg, plan = self.cfg, self._plan
        n = len(candidates)
        if n > cfg.n_max:
            raise FeatureError(f"{n} candidates exceed n_max={cfg.n_max}")
        N, L, E = cfg.n_max, cfg.l_max, cfg.emb_dim
        n_events = len(events)
        columns = self._columns_ok and n_events and isinstance(events, EventColumns) and events.plain

        # ---- events: columns, roles, the sequences (event indexes, oldest first) ----
        ev_raw = None  # [fields, events] raw values (plain ints) when read from columns
        rows_d = None  # per-event arrays derived once per stored event (features.event_rows)
        if columns:
            rows_d = self._event_rows(events)
            lo, hi = events._lo, events._hi
            ev_item, ev_dwell = events.item, events.dwell
            ev_raw = events.cats[self._cat_rows] if self._cat_rows is not None else events.cats
            is_pos, shown, is_neg = rows_d.pos[lo:hi], rows_d.shown[lo:hi], rows_d.neg[lo:hi]
            if is_pos.any():  # never a negative: an item with a positive
                is_neg = is_neg & ~(ev_item[:, None] == ev_item[is_pos][None, :]).any(axis=1)
        elif n_events:
            ev_cols = list(zip(*map(self._event_get, events), strict=True))
            ev_item_t, ev_kind, ev_kname, ev_dwell_t, ev_pos_t, ev_lat_t, ev_lon_t = ev_cols[:7]
            role_by_kind, role_by_name = plan.role_by_kind, plan.role_by_name
            kinds = np.array(ev_kind, dtype=np.int64) if not any(ev_kname) else None
            if kinds is not None and kinds.min() >= 0 and kinds.max() < len(plan.role_lut):
                codes = plan.role_lut[kinds]  # every event named by its EventKind: one lookup
            else:
                codes = np.array([role_by_name.get(kn, _NEUTRAL) if kn else role_by_kind.get(k, _NEUTRAL)
                                  for k, kn in zip(ev_kind, ev_kname, strict=True)], dtype=np.int8)
            ev_item = np.array(ev_item_t, dtype=np.int64)
            ev_dwell = np.array(ev_dwell_t, dtype=np.float64)
            long = ev_dwell >= cfg.dwell_threshold_ms
            is_pos = (codes == _POSITIVE) | ((codes == _POSITIVE_DWELL) & long)
            shown = (codes == _NEGATIVE) | (codes == _NEGATIVE_DWELL)
            is_neg = (codes == _NEGATIVE) | ((codes == _NEGATIVE_DWELL) & long)
            if is_pos.any():  # never a negative: an item with a positive
                is_neg &= ~(ev_item[:, None] == ev_item[is_pos][None, :]).any(axis=1)
        if not n_events:
            ev_item = np.zeros(0, np.int64)
            ev_dwell = np.zeros(0, np.float64)
            is_pos = is_neg = shown = np.zeros(0, bool)
        pos_all = np.flatnonzero(is_pos)
        pos_idx = pos_all[max(0, len(pos_all) - cfg.max_positives):]  # the newest; none when max_positives is 0
        neg_idx = np.flatnonzero(is_neg)
        neg_idx = neg_idx[-(L - len(pos_idx)):] if L > len(pos_idx) else neg_idx[:0]
        seq_idx = {"click": pos_idx, "skip": neg_idx}
        both = np.concatenate([pos_idx, neg_idx])
        vectors = {}
        vec_of = self._column_vectors if columns else lambda evs, idx: _event_vectors(evs, idx, E)
        if len(both):
            vb = vec_of(events, both)
            vectors = {"click": vb[:len(pos_idx)], "skip": vb[len(pos_idx):]}
        if self._seen:
            seq_idx["seen"] = np.flatnonzero(shown)
            vectors["seen"] = vec_of(events, seq_idx["seen"])  # read (and checked) as the reference does
        if columns:
            ev_lat, ev_lon, ev_posn = events.lat, events.lon, events.position
        elif n_events:
            ev_lat = np.array(ev_lat_t, dtype=np.float64)
            ev_lon = np.array(ev_lon_t, dtype=np.float64)
            ev_posn = np.array(ev_pos_t, dtype=np.float64)
        else:
            ev_lat = ev_lon = ev_posn = np.zeros(0, np.float64)

        # ---- candidates: columns, vectors (from the per-item table when it can hold them all) ----
        if rows is ...:
            rows = self._table.rows_of(candidates) if self._table is not None and n else None
        cand_unit = c_raw = None
        if rows is not None:
            t = self._table
            cand_ids, cand_lat, cand_lon, cloud_position = t.item_id[rows], t.lat[rows], t.lon[rows], t.position[rows]
            score = t.score[rows]
            cand_emb, cand_dense = t.emb[rows], t.dense[rows]
            if self._sim:
                cand_unit = t.unit[rows]
            c_raw, c_ids = t.raw[:, rows], t.ids[:, rows]
        else:
            if n:
                c_cols = list(zip(*map(self._item_get, candidates), strict=True))
                c_id, c_pos, c_score, c_lat, c_lon = c_cols[:5]
            else:
                c_id = c_pos = c_score = c_lat = c_lon = ()
            cand_ids = np.array(c_id, dtype=np.int64)
            cand_lat = np.array(c_lat, dtype=np.float64)
            cand_lon = np.array(c_lon, dtype=np.float64)
            cloud_position = np.array(c_pos, dtype=np.float64)
            score = np.minimum(np.maximum(np.array(c_score, dtype=np.float64), -10.0), 10.0)  # = np.clip, faster
            cand_emb, cand_dense = _candidate_vectors(candidates, cfg)

        # ---- categorical fields: match keys of candidates + events, bucket ids ----
        match_rows = self._match_rows
        ckeys = ekeys = None
        s_ids = None  # [fields, len(both)] bucket ids of the sequence events
        if c_raw is not None and (ev_raw is not None or not n_events):  # both sides as int columns
            if match_rows:  # plain ints in (-2^62, 2^62): the value shifted to >= 0 is its key
                ckeys = c_raw[match_rows] + _KEY_SHIFT
                if rows_d is not None:
                    rows_d.ensure_keys(events._b, hi, self._keys_of)
                    ekeys = rows_d.keys[:, lo:hi]
                else:
                    ekeys = np.zeros((len(match_rows), 0), np.int64)
            s_ids = rows_d.ids[:, both + lo] if rows_d is not None else np.zeros((len(self._cats), 0), np.int32)
            if self._cats:
                unknown = (c_ids == self._cat_sizes).sum(axis=1).tolist()
                for k, spec in enumerate(self._cats):
                    counts = self.unknown_counts[spec.name]
                    counts[0] += unknown[k]
                    counts[1] += n
        else:
            if c_raw is not None:
                c_vals = [c_raw[k].tolist() for k in range(len(plan.cat_names))]
            elif self._fields_are_attributes and not any(map(_ATTRS, candidates)):
                c_vals = [list(c) for c in c_cols[5:]] if n else [[] for _ in plan.cat_names]
            else:
                c_vals = _field_columns(candidates, plan.cat_names, _ITEM_ATTRS)
            if ev_raw is not None:
                e_vals = [ev_raw[k].tolist() for k in range(len(plan.cat_names))]
            elif self._fields_are_attributes and n_events and not any(map(_ATTRS, events)):
                e_vals = [list(e) for e in ev_cols[7:]]
            else:
                e_vals = _field_columns(events, plan.cat_names, _EVENT_ATTRS)
            raw = [c + e for c, e in zip(c_vals, e_vals, strict=True)]
            ints = _int_column(raw) if raw else None  # [fields, n + events] when every value is a plain int
            if match_rows:
                if ints is not None and ints.size and ints.min() > -(1 << 62) and ints.max() < (1 << 62):
                    k = ints[match_rows]
                    keys = k - k.min(axis=1, keepdims=True)
                else:
                    keys = np.stack([_match_keys(raw[r]) for r in match_rows])
                ckeys, ekeys = keys[:, :n], keys[:, n:]
            if ints is not None and self._all_ids:
                ids = np.where((ints >= 0) & (ints < self._cat_sizes), ints, self._cat_sizes).astype(np.int32)
            else:
                ids = (np.stack([_encode_many(spec, raw[k]) for k, spec in enumerate(self._cats)]) if self._cats
                       else None)
            if ids is not None:
                c_ids, s_ids = ids[:, :n], ids[:, n:][:, both]
                unknown = (c_ids == self._cat_sizes).sum(axis=1).tolist()
                for k, spec in enumerate(self._cats):
                    counts = self.unknown_counts[spec.name]
                    counts[0] += unknown[k]
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

        # ---- the operators ----
        # distance to the search location of the candidates and of the sequence events, in one call
        if rows is not None and rows_d is not None:  # both cached per item / per event for this location
            here = (context.lat, context.lon)
            t, b = self._table, events._b
            cid, stale = t.stale(rows, here)
            e_lo = rows_d.stale(here)
            if stale.size or hi > e_lo:  # one distance call for the new items and the new events
                k = stale.size
                d = _distance(np.concatenate([t.lat[stale], b.lat[e_lo:hi]]),
                              np.concatenate([t.lon[stale], b.lon[e_lo:hi]]), np.array([here[0]]),
                              np.array([here[1]]), cfg.geo)[:, 0]
                t.set_distances(stale, cid, d[:k])
                rows_d.set_distances(e_lo, hi, d[k:])  # (and the MVFAN columns of the new events)
            ctx_dist = t.ctx_dist[rows]
            ev_ctx_dist = None
        else:
            both_dist = _distance(np.concatenate([cand_lat, ev_lat[both]]), np.concatenate([cand_lon, ev_lon[both]]),
                                  np.array([context.lat]), np.array([context.lon]), cfg.geo)[:, 0]
            ctx_dist, ev_ctx_dist = both_dist[:n], both_dist[n:]
        out: dict[str, np.ndarray] = {}
        num = np.zeros((N, cfg.n_candidate_features), np.float32)
        if n:
            cols = np.empty((n, cfg.n_candidate_features), np.float64)
            if plan.col_score.size:
                cols[:, plan.col_score] = score[:, None]
            if plan.col_position.size:
                cols[:, plan.col_position] = (cloud_position / 100.0)[:, None]
            if plan.col_dist_context.size:
                cols[:, plan.col_dist_context] = np.log1p(ctx_dist)[:, None]
            if plan.col_dist_last.size or plan.col_dist_min.size:
                p = pos_idx
                if p.size:
                    d = _distance(cand_lat, cand_lon, ev_lat[p], ev_lon[p], cfg.geo)
                    cols[:, plan.col_dist_last] = np.log1p(d[:, -1])[:, None]
                    cols[:, plan.col_dist_min] = np.log1p(d.min(axis=1))[:, None]
                else:
                    cols[:, plan.col_dist_last] = 0.0
                    cols[:, plan.col_dist_min] = 0.0
            if self._identity:
                ident = _identity_columns(cand_ids, ev_item, ev_dwell, shown, is_pos, is_neg)
                for kind, c in plan.col_identity.items():
                    cols[:, c] = ident[kind][:, None]
            for name, c in plan.col_numeric.items():
                cols[:, c] = numeric[name][:, None]
            if plan.has_sequence_ops:
                vec = None
                if self._sim:
                    vec = np.concatenate([vectors.get(s, np.zeros((0, E), np.float32)) for s in plan.seqs])
                ev_unit = None
                if rows_d is not None and rows_d.unit is not None and not events.ragged:
                    ev_unit = rows_d.unit[lo:hi]
                self._sequence_operators(cols, seq_idx, ckeys, ekeys, ev_item, cand_ids, cand_emb, cand_unit, vec,
                                         ev_unit)
            num[:n] = cols
        out_emb = np.zeros((N, E), np.float32)
        out_emb[:n] = cand_emb
        out_dense = np.zeros((N, cfg.dense_dim), np.float32)
        out_dense[:n] = cand_dense
        n_p, s = len(pos_idx), len(both)
        for (c_name, s_name), k in zip((("cand_cat", "seq_cat"), ("cand_brand", "seq_brand"),
                                        ("cand_price", "seq_price")), self._slot_rows, strict=True):
            ca, sa = np.zeros(N, np.int32), np.zeros(L, np.int32)
            if k is not None:
                ca[:n] = c_ids[k]
                sa[:s] = s_ids[k]
            out[c_name], out[s_name] = ca, sa
        out["cand_emb"], out["cand_dense"], out["cand_num"] = out_emb, out_dense, num
        out["cand_mask"] = np.zeros(N, np.float32)
        out["cand_mask"][:n] = 1.0
        out["cand_dist_b"] = np.zeros(N, np.int32)
        out["cand_dist_b"][:n] = self._dist_edges.searchsorted(ctx_dist, side="right")
        out["cand_pos_b"] = np.zeros(N, np.int32)
        out["cand_pos_b"][:n] = self._pos_edges.searchsorted(cloud_position, side="right")

        # ---- MVFAN input: positives first, then negatives; kind 1 = click, 2 = skip, 0 = padding ----
        kind = np.zeros(L, np.int32)
        kind[:n_p] = 1
        kind[n_p:s] = 2
        out["seq_kind"] = kind
        out["seq_emb"] = np.zeros((L, E), np.float32)
        seq_num = np.zeros((L, cfg.n_event_features), np.float32)
        out["seq_dist_b"] = np.zeros(L, np.int32)
        out["seq_pos_b"] = np.zeros(L, np.int32)
        if s and ev_ctx_dist is None:  # every per-event column was derived once per stored event
            out["seq_emb"][:s] = vb
            g = both + lo
            sn = seq_num[:s]
            sn[:] = rows_d.seq_num[g]
            sn[:, 1] = np.minimum((n_events - both).astype(np.float64) / L, 4.0)
            out["seq_dist_b"][:s] = rows_d.dist_b[g]
            out["seq_pos_b"][:s] = rows_d.pos_b[g]
        elif s:
            out["seq_emb"][:s] = vb
            posn = ev_posn[both]
            dist = ev_ctx_dist
            sn = seq_num[:s]
            sn[:, 0] = np.log1p(np.maximum(ev_dwell[both], 0.0) / 1000.0)
            sn[:, 1] = np.minimum((n_events - both).astype(np.float64) / L, 4.0)
            sn[:, 2] = posn / 100.0
            sn[:, 3] = np.log1p(dist)
            out["seq_dist_b"][:s] = self._dist_edges.searchsorted(dist, side="right")
            out["seq_pos_b"][:s] = self._pos_edges.searchsorted(posn, side="right")
        out["seq_num"] = seq_num
        out["seq_pos_mask"] = (kind == 1).astype(np.float32)
        out["seq_neg_mask"] = (kind == 2).astype(np.float32)
        hour = 2 * np.pi * (context.hour % 24) / 24.0
        out["ctx"] = np.array([math.sin(hour), math.cos(hour), n_p / max(1, cfg.max_positives),
                               len(neg_idx) / max(1, L - cfg.max_positives), float(n_p > 0)], dtype=np.float32)
        # vectors from the item table and the store's columns were checked when they were written
        for name in (_FINITE_CHECKED_COLS if rows is not None and (columns or not s) else _FINITE_CHECKED):
            if not np.isfinite(out[name]).all():
                raise FeatureError(f"non-finite values in feature {name!r}")
        return {name: out[name] for name in self._input_order}

    def build_many(self, requests: Sequence[tuple[Sequence[PageItem], Sequence[FeedbackEvent], Context]]
                   ) -> tuple[dict[str, np.ndarray], list[Exception | None]]:
        """Many builds at once: ``requests`` are ``(candidates, events, context)`` triples, the arguments of
        :meth:`build`. Returns the model inputs stacked on a leading batch axis (``[B, ...]``, the dtypes of
        :func:`input_specs`) and, per request, the exception its :meth:`build` raises (None if none). Row ``b`` is
        bit for bit what ``build(*requests[b])`` returns; the row of a request that raised is all zeros.

        With an item cache and a config the rerank-time path covers (``features.rerank_path``), the per-request work
        is only the part that depends on that request's feedback (its feedback state, memoised per snapshot, and its
        similarity / distance-to-click columns); the gathers of every candidate column, the Match&Aggregate table
        lookups and the stacking run once for the whole batch. Requests that path does not take are built one by one
        with :meth:`build`."""
        B = len(requests)
        out = {name: np.zeros((B, *shape), dtype) for name, shape, dtype in self.specs}
        # the integer inputs as two blocks (the rerank path writes each with one assignment); the outputs are views
        ints5, seq6 = np.zeros((5, B, self.cfg.n_max), np.int32), np.zeros((6, B, self.cfg.l_max), np.int32)
        for k, name in enumerate(("cand_cat", "cand_brand", "cand_price", "cand_dist_b", "cand_pos_b")):
            out[name] = ints5[k]
        for k, name in enumerate(("seq_cat", "seq_brand", "seq_price", "seq_kind", "seq_dist_b", "seq_pos_b")):
            out[name] = seq6[k]
        errors: list[Exception | None] = [None] * B
        handled = [False] * B
        if self._fast is not None and B:
            handled = self._fast.build_many(self, requests, {**out, "_ints": ints5, "_seq": seq6}, errors)
        for b in range(B):
            if handled[b]:
                continue
            try:
                x = self.build(*requests[b])
            except Exception as exc:  # noqa: BLE001 - the request's own error, as build raises it
                errors[b] = exc
                continue
            for name, v in x.items():
                out[name][b] = v
        for b, err in enumerate(errors):
            if err is not None:
                for v in out.values():
                    v[b] = 0
        return out, errors

    def prepare_items(self, items: Sequence[PageItem]) -> None:
        """With an item cache: give every item of `items` its row now (one batch), so that later windows over
        them find their rows (a rerank service passes the whole unseen part of the list, and a session a page's
        items when the page arrives: ``RerankService.prepare``). Without one, nothing to do."""
        if self._table is not None:
            self._table.add(items)

    def _event_rows(self, cols: EventColumns, update: bool = True) -> EventRows:
        """This builder's per-event arrays for the buffers `cols` reads, brought up to its last event (unless
        ``update`` is False)."""
        b = cols._b
        d = b.derived.get(self._token)
        if d is None:
            d = b.derived[self._token] = EventRows(b, len(self._match_rows), len(self._cats),
                                                   self._sim and b.width == self.cfg.emb_dim, self._dist_edges,
                                                   self._pos_edges)
            if self._fast is not None:
                self._fast.attach_events(d)
        if update and d.upto < cols._hi:
            d.update(b, cols._hi, self._roles_of, self._keys_of, self._ids_of)
        return d

    def _roles_of(self, kind: np.ndarray, dwell: np.ndarray) -> np.ndarray:
        """[events, 3]: (positive, negative, shown) of events of EventKind values `kind` (the store keeps no others)."""
        return self._role_table[kind, (dwell >= self.cfg.dwell_threshold_ms).view(np.int8)]

    def _keys_of(self, cats: np.ndarray) -> np.ndarray:
        c = cats[self._cat_rows] if self._cat_rows is not None else cats
        return c[self._match_rows] + _KEY_SHIFT

    def _ids_of(self, cats: np.ndarray) -> np.ndarray:
        c = cats[self._cat_rows] if self._cat_rows is not None else cats
        if self._all_ids:  # a negative value seen as uint64 is above every size: min() sends it to the unknown bucket
            return np.minimum(c.view(np.uint64), self._cat_sizes_u64)
        return np.array([_encode_many(spec, c[k].tolist()) for k, spec in enumerate(self._cats)],
                        dtype=np.int32).reshape(len(self._cats), c.shape[1])

    def _column_vectors(self, cols: EventColumns, idx: np.ndarray) -> np.ndarray:
        """ID embeddings [len(idx), E] of the events at `idx`, from the store's columns (zeros where none)."""
        E = self.cfg.emb_dim
        if not cols.ragged and cols.width == E:
            return cols.emb[idx]
        if not cols.has_emb[idx].any():
            return np.zeros((len(idx), E), np.float32)
        return _event_vectors(cols, idx, E)  # another width: the per-event path raises what it raises

    def _view_masks(self, sizes: tuple[int, ...]) -> _Views:
        """For sequences of `sizes` laid end to end (event axis T): per view its range [start, end) (a view is a
        contiguous suffix of its sequence), the masks as float32 [T, V] (for counts by one product), the weights
        ``mask * (T + 1 - rank)`` as int16 [V, T] (rank = events from the end of the sequence, 1 = newest: the
        largest weight among matches is the newest match), and each view's size; cached per sizes (a session asks
        for the same few again and again)."""
        hit = self._masks_cache.get(sizes)
        if hit is None:
            plan = self._plan
            sz = np.array(sizes, dtype=np.int64)
            T = int(sz.sum())
            seq_of = np.repeat(np.arange(len(sizes)), sz)
            rank = np.repeat(np.cumsum(sz), sz) - np.arange(T)
            masks = (seq_of[None, :] == plan.view_seq[:, None]) & (rank[None, :] <= plan.view_window[:, None])
            view_size = np.minimum(sz[plan.view_seq], plan.view_window)
            end = np.cumsum(sz)[plan.view_seq]
            dtype = np.uint8 if T < 255 else np.int16 if T < (1 << 15) - 1 else np.int64
            weights = (masks * (T + 1 - rank)[None, :]).astype(dtype)
            if len(self._masks_cache) >= 4096:
                self._masks_cache.clear()
            hit = self._masks_cache[sizes] = _Views(
                T=T, ranges_flat=np.stack([end - view_size, end], axis=1),
                masks_f=np.ascontiguousarray(masks.T, dtype=np.float32), masks_f64=np.ascontiguousarray(
                    masks.T, dtype=np.float64), weights=weights, view_size=view_size)
        return hit

    def _sequence_operators(self, cols: np.ndarray, seq_idx: dict[str, np.ndarray], ckeys: np.ndarray | None,
                            ekeys: np.ndarray | None, ev_item: np.ndarray, cand_ids: np.ndarray, cand_emb: np.ndarray,
                            cand_unit: np.ndarray | None, vectors: np.ndarray | None,
                            ev_unit: np.ndarray | None = None) -> None:
        """Match&Aggregate and similarity operators into `cols` [n, ops]. The sequences lie end to end on one event
        axis T; every view is a contiguous range of it. One equality tensor [fields, n, T] (+ one row per field
        combination) -> hit and freq of every operator from one product with the view masks (exact: counts of
        0/1), step from one weighted max, sim from one similarity matrix [n, T]. `ckeys` / `ekeys`: match keys
        [fields, n] / [fields, events] of the categorical fields in ``plan.fields``; `cand_unit`: the candidates'
        unit-length vectors (float64) if known; `vectors`: the T events' ID embeddings (when a sim operator needs
        them)."""
        plan, cfg = self._plan, self.cfg
        n = cols.shape[0]
        parts = [seq_idx[s] for s in plan.seqs]
        ev = np.concatenate(parts) if parts else _EMPTY
        T = len(ev)
        views = self._view_masks(tuple(len(p) for p in parts))
        view_size = views.view_size
        counts = step = None
        if len(plan.combos) and T:
            F = len(plan.fields)
            n_cat = F - (plan.fields[-1] == IDENTITY)
            ck, ek = np.empty((F, n), np.int64), np.empty((F, T), np.int64)
            if n_cat:
                assert ckeys is not None and ekeys is not None
                ck[:n_cat] = ckeys
                ek[:n_cat] = ekeys[:, ev]
            if n_cat < F:
                ck[n_cat], ek[n_cat] = cand_ids, ev_item[ev]
            multi = self._multi_combos
            match = np.empty((F + len(multi), n, T), bool)  # one row per field, then one per multi-field combination
            np.equal(ck[:, :, None], ek[:, None, :], out=match[:F])
            if ck.min() < 0:  # a null (-1 key) or negative item id never matches
                match[:F] &= (ck >= 0)[:, :, None]
            for k, fs in enumerate(multi):
                np.logical_and(match[fs[0]], match[fs[1]], out=match[F + k])
                for f in fs[2:]:
                    match[F + k] &= match[f]
            if self._count_aggs:
                # [rows * n, T] @ [T, V]: float32 is exact for counts of 0/1 (T < 2^24)
                counts = (match.reshape(-1, T).view(np.uint8).astype(np.float32) @ views.masks_f).reshape(
                    len(match), n, -1)
            if "step" in plan.agg:
                _, c, v = self._agg_rows["step"]
                newest = (match[c] * views.weights[v][:, None, :]).max(axis=2)  # [ops, n]; 0: no match
                step = (T + 1 - newest.astype(np.int64)) / cfg.l_max  # the newest match's rank / l_max
                step[newest == 0] = 1.0  # none: 1.0
        for name in ("hit", "freq", "step"):
            if name not in plan.agg:
                continue
            out_cols, c, v = self._agg_rows[name]
            if name == "step":
                cols[:, out_cols] = 1.0 if step is None else np.minimum(step, 1.0).T
            elif counts is None:
                cols[:, out_cols] = 0.0
            elif name == "hit":
                cols[:, out_cols] = (counts[c, :, v] > 0).T
            else:
                cols[:, out_cols] = (counts[c, :, v].astype(np.float64) / np.maximum(view_size[v], 1)[:, None]).T
        if self._sim:
            sim = None
            if T and vectors is not None:
                a = cand_unit
                if a is None:
                    a = cand_emb.astype(np.float64)  # norms as np.linalg.norm computes them, without its wrapper
                    a = a / np.maximum(np.sqrt(np.add.reduce(a * a, axis=1, keepdims=True)), 1e-9)
                if ev_unit is not None:  # unit vectors of the stored events, derived once per event
                    sim = a @ ev_unit[ev].T
                else:
                    b = vectors.astype(np.float64)
                    sim = a @ (b / np.maximum(np.sqrt(np.add.reduce(b * b, axis=1, keepdims=True)), 1e-9)).T  # [n, T]
            for name in ("sim_max", "sim_mean"):
                if name not in plan.agg:
                    continue
                out_cols, _, v = plan.agg[name]
                if sim is None:
                    cols[:, out_cols] = 0.0
                elif name == "sim_max":  # a view is a contiguous range [lo, hi): one reduceat over (lo, hi) pairs
                    padded = np.empty((n, T + 1))  # (hi may be T)
                    padded[:, :T] = sim
                    padded[:, T] = 0.0
                    edges = views.ranges_flat[v].ravel()
                    top = np.maximum.reduceat(padded, edges, axis=1)[:, ::2]
                    cols[:, out_cols] = np.where(view_size[v] > 0, top, 0.0)  # an empty view: 0
                else:
                    cols[:, out_cols] = (sim @ views.masks_f64[:, v]) / np.maximum(view_size[v], 1)


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
