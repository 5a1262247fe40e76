"""The rerank-time feature build in few numpy calls (issue 18, third round).

``FeatureBuilder(cfg, item_cache=K)`` already keeps one row per item (``features.item_table``) and one per stored
event (``features.event_rows``). This path adds, per row, everything a build can know before it knows the other side:

- per item: the match value ids of every matched field and field combination, the five integer model inputs (the
  three embedding slots, the distance and position buckets) as one block, and the candidate columns that depend on
  the item alone (``cloud_score``, ``cloud_position``, ``dist:context``) as a ready ``cand_num`` row;
- per event: its match value ids and the integer block of its ``seq_*`` inputs;
- per feedback state (a snapshot's events and the search location): the sequences, the event half of every output
  (``seq_*``, the counts in ``ctx``), the events' unit vectors in sequence order and, for every Match&Aggregate
  operator's (field combination, view), a **value table**: for each value of the field(s), hit, freq and step over
  the view's events. Computed once per snapshot (events only ever append; a new one is a new state).

A build then gathers: every Match&Aggregate column of every candidate is one lookup ``table[value id + offset]``
(4 numpy calls for all of them), the similarity operators are one product, the rest are block copies. A value
table holds a field's known buckets (ids ``0..n-1``, a bijection with the raw values in ``ids`` and ``vocab``
modes), so a build with an unknown value in a matched field (out of range, not in the vocabulary) takes the general
path, as do configs this path does not cover: hashed or identity matches, item-identity or numeric operators,
combinations of more than 65,536 values, more than 8,192 table values in all, events without vectors of the
model's width. Outputs are bit-identical to
the general path (``tests/test_features_cached.py``, ``tests/test_features_rerank_path.py``).

``build_many`` (a lock-step round) does the per-request work round-wide: the new events' rows of every store buffer in
one pass (``_derive_round``), every new feedback state of the round in one pass over an arena of the round's event
rows laid end to end (``_round_states``), the windows' unknown buckets, the item rows' distances and reads, the
distance-to-click and similarity columns (``_round_items``, ``_round_sim``; the similarity products stay one per list
for their rounding) and every gather once for the round (``tests/test_features_build_many.py``,
``tests/test_features_round_state.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_rerank.device_sdk.feedback_columns import EventColumns

_MAX_COMBO = 1 << 16
_MAX_TABLE = 1 << 13  # values in all of a state's value tables together
_EMPTY = np.zeros(0, np.int64)


@dataclass
class _Layout:
    """What depends on the sequences' sizes only (cached per sizes)."""

    pair_r: np.ndarray  # [P] value-id row of each (slot, event) pair
    pair_t: np.ndarray  # [P] event-axis index
    pair_off: np.ndarray  # [P] the slot's offset in a value table
    pair_step: np.ndarray  # [P] float64: min(events from the end of its sequence / l_max, 1) (1 event = newest)
    div: np.ndarray  # [S] int64: max(view size, 1) of each table entry's view
    max_edges: np.ndarray  # sim_max: (start, end) of each operator's view, flat
    max_nonempty: np.ndarray  # [ops] bool
    mean_masks: np.ndarray  # sim_mean: float64 [T, ops] 0/1 view masks
    mean_div: np.ndarray  # [ops] int64


@dataclass(slots=True)
class _State:
    """The event half of one build (one snapshot, one search location)."""

    key: tuple
    T: int
    n_p: int
    n_neg: int
    table: np.ndarray  # float64 [3 S]: hit | freq | step of every (slot, value)
    U: np.ndarray | None  # float64 [T, E] unit vectors of the sequence events (sim operators)
    lay: _Layout | None
    plat: np.ndarray  # positives' locations (dist_last / dist_min)
    plon: np.ndarray
    seq_int: np.ndarray  # int32 [6, L]: seq_cat, seq_brand, seq_price, seq_kind, seq_dist_b, seq_pos_b
    seq_emb: np.ndarray
    seq_num: np.ndarray
    pos_mask: np.ndarray
    neg_mask: np.ndarray
    bad: str | None  # the first event-side output with a non-finite value (raised after cand_num's check)


def _one_location(rows: np.ndarray, cids: np.ndarray) -> bool:
    """Whether no row of `rows` comes with two different search location ids `cids`."""
    if len(rows) < 2:
        return True
    order = np.argsort(rows, kind="stable")
    r, c = rows[order], cids[order]
    return not ((r[1:] == r[:-1]) & (c[1:] != c[:-1])).any()


class _ItemExtra:
    """Per item-table row: match value ids, unknown buckets, the integer block and the item-only cand_num row."""

    def __init__(self, path: RerankPath, table) -> None:
        cap = table.cap
        self.path, self.table = path, table
        self.vids = np.zeros((path.R, cap), np.int64)
        self.unknown = np.zeros((len(path.cats), cap), bool)  # bucket id = the unknown bucket, per declared field
        self.ints = np.zeros((5, cap), np.int32)
        self.base = np.zeros((cap, path.F), np.float32)
        self.memo: dict[int, tuple[np.ndarray, bool, list[int]]] = {}  # id(window rows) -> (rows, known, unknown)
        table.on_insert, table.on_distances = self.insert, self.distances

    def insert(self, rows: np.ndarray, sl: slice, ids: np.ndarray) -> None:
        p, t = self.path, self.table
        self.vids[:, sl] = p.weights @ ids
        self.unknown[:, sl] = ids >= p.cat_sizes
        if p.slot_idx is not None:
            self.ints[:3, sl] = ids[p.slot_idx]
        else:
            for k, r in enumerate(p.slot_rows):
                self.ints[k, sl] = 0 if r is None else ids[r]
        position = t.position[sl]
        self.ints[4, sl] = p.pos_edges.searchsorted(position, side="right")
        base = self.base[sl]
        base[:] = 0.0
        base[:, p.col_score] = t.score[sl][:, None]
        base[:, p.col_position] = (position / 100.0)[:, None]

    def distances(self, rows: np.ndarray, d: np.ndarray) -> None:
        p = self.path
        self.ints[3, rows] = p.dist_edges.searchsorted(d, side="right")
        if p.col_dist_context.size:
            self.base[rows[:, None], p.col_dist_context[None, :]] = np.log1p(d)[:, None]

    def window(self, rows: np.ndarray) -> tuple[bool, list[int]]:
        """Whether every item of the window has only known values in the matched fields, and the window's count of
        unknown buckets per declared field (cached per window: the table hands out one rows array per window)."""
        hit = self.memo.get(id(rows))
        if hit is not None and hit[0] is rows:
            return hit[1], hit[2]
        unknown = self.unknown[:, rows].sum(axis=1).tolist()
        known = not any(unknown[c] for c in self.path.matched)
        if len(self.memo) >= 512:
            self.memo.clear()
        self.memo[id(rows)] = (rows, known, unknown)
        return known, unknown


class _EventExtra:
    """Per stored event row: match value ids, whether some matched value is unknown, the integer block of the
    ``seq_*`` inputs (embedding slots, [kind], distance and position buckets); the last feedback state."""

    def __init__(self, path: RerankPath, rows_d) -> None:
        cap = len(rows_d.pos)
        self.path = path  # (no reference back to rows_d, which holds this: a finished session's rows die with it)
        self.vids = np.zeros((path.R, cap), np.int64)
        self.unknown = np.zeros(cap, bool)
        self.last_unknown = -1
        self.ints = rows_d.seq_ints  # (its distance and position bucket rows are the event rows' own)
        self.state: _State | None = None

    def derive(self, ids: np.ndarray) -> tuple:
        """(value ids, unknown-per-row or None, the three embedding-slot rows) of rows with bucket ids `ids`."""
        p = self.path
        vids = p.weights @ ids
        over = ids[p.matched] >= p.matched_sizes
        unknown = over.any(axis=0) if over.any() else None
        if p.slot_idx is not None:
            slots = ids[p.slot_idx]
        else:
            slots = np.zeros((3, ids.shape[1]), np.int32)
            for k, r in enumerate(p.slot_rows):
                if r is not None:
                    slots[k] = ids[r]
        return vids, unknown, slots

    def write(self, lo: int, hi: int, x: tuple, s: int, e: int) -> None:
        """Rows [lo, hi) from rows [s, e) of :meth:`derive`'s arrays `x`."""
        vids, unknown, slots = x
        self.vids[:, lo:hi] = vids[:, s:e]
        if unknown is not None:
            u = unknown[s:e]
            if u.any():
                self.unknown[lo:hi] = u
                self.last_unknown = lo + int(np.flatnonzero(u)[-1])
        self.ints[:3, lo:hi] = slots[:, s:e]


class RerankPath:
    """Compiled once per builder (``compile``: None when the config is not covered); ``build`` returns the inputs,
    or None when this build must take the general path."""

    @staticmethod
    def compile(builder, distance, error: type[Exception]) -> RerankPath | None:
        """The path for `builder`'s config, or None; `distance` and `error`: ``operators._distance`` and
        ``FeatureError``."""
        plan = builder._plan
        if builder._table is None or not builder._columns_ok or plan.col_identity or plan.col_numeric or \
                builder._nums or "item" in plan.fields:
            return None
        cats = builder._cats
        names = [f.name for f in cats]
        field_cat = [names.index(f) for f in plan.fields]
        if any(cats[c].mode not in ("ids", "vocab") for c in field_cat):
            return None
        combos = [[field_cat[f] for f in fs] for fs in builder._multi_combos]
        if any(math.prod(cats[c].n for c in fs) > _MAX_COMBO for fs in combos):
            return None
        path = RerankPath(builder, field_cat, combos, distance, error)
        return path if path.S <= _MAX_TABLE else None  # (huge id ranges: a table per state would cost more)

    def __init__(self, builder, field_cat: list[int], combos: list[list[int]], distance, error: type[Exception]):
        cfg, plan = builder.cfg, builder._plan
        self.cfg, self.plan = cfg, plan
        self.N, self.L, self.E, self.D, self.F = cfg.n_max, cfg.l_max, cfg.emb_dim, cfg.dense_dim, \
            cfg.n_candidate_features
        self.geo, self.l_max, self.max_pos = cfg.geo, cfg.l_max, cfg.max_positives
        self.cats = builder._cats
        self.cat_sizes = builder._cat_sizes
        self.pos_edges, self.dist_edges = builder._pos_edges, builder._dist_edges
        self.col_score, self.col_position = plan.col_score, plan.col_position
        self.col_dist_context = plan.col_dist_context
        self.col_last, self.col_min = plan.col_dist_last, plan.col_dist_min
        self.dist_click = bool(self.col_last.size or self.col_min.size)
        self.slot_rows = builder._slot_rows  # the embedding slots' rows of the bucket ids (None: constant 0)
        self.slot_idx = None if None in self.slot_rows else np.array(self.slot_rows, dtype=np.intp)
        # value-id rows: one per matched field, then one per combination of several fields (mixed radix)
        self.field_cat, self.combos = field_cat, combos
        self.R = len(field_cat) + len(combos)
        self.matched = np.array(sorted(set(field_cat)), dtype=np.intp)
        self.matched_sizes = self.cat_sizes[self.matched]
        self.row_size = [self.cats[c].n for c in field_cat] + [math.prod(self.cats[c].n for c in fs) for fs in combos]
        # value ids = weights @ bucket ids: a field's row picks its bucket id, a combination's mixes them (mixed radix)
        self.weights = np.zeros((self.R, len(self.cats)), np.int64)
        for r, c in enumerate(field_cat):
            self.weights[r, c] = 1
        for j, fs in enumerate(combos):
            w = 1
            for c in reversed(fs):
                self.weights[len(field_cat) + j, c] = w
                w *= self.cats[c].n
        # slots: the (value-id row, view) pairs Match&Aggregate operators read; a table holds n values per slot
        slots: dict[tuple[int, int], int] = {}
        cols, rows, base = [], [], []
        agg_of = {"hit": 0, "freq": 1, "step": 2}
        for name, k in agg_of.items():
            if name not in builder._agg_rows:
                continue
            out_cols, r_of, v_of = builder._agg_rows[name]
            for col, r, v in zip(out_cols.tolist(), r_of.tolist(), v_of.tolist(), strict=True):
                s = slots.setdefault((r, v), len(slots))
                cols.append(col)
                rows.append(r)
                base.append((k, s))
        self.slots = list(slots)
        self.slot_off = np.cumsum([0] + [self.row_size[r] for r, _ in self.slots])
        self.S = int(self.slot_off[-1])
        self.m_cols = np.array(cols, dtype=np.intp)
        self.m_rows = np.array(rows, dtype=np.intp)[:, None]
        self.m_base = np.array([k * self.S + self.slot_off[s] for k, s in base], dtype=np.int64)[:, None]
        self.sim = builder._sim
        self.max_cols = plan.agg["sim_max"][0] if "sim_max" in plan.agg else None
        self.mean_cols = plan.agg["sim_mean"][0] if "sim_mean" in plan.agg else None
        self.seen = builder._seen
        self._layouts: dict[tuple[int, ...], _Layout] = {}
        self._empty: _State | None = None
        self._masks: dict[int, np.ndarray] = {}
        self._seq_masks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._steps = np.zeros(0)
        self.cat_names = [f.name for f in self.cats]
        self.seqs_are_both = plan.seqs == ("click", "skip")  # the event axis is the MVFAN sequence itself
        self._distance, self._error = distance, error  # operators' (which imports this module)
        self.builds = self.fallbacks = 0  # how often the path built, and how often it handed a build over

    # ---- per row ----
    def attach_items(self, table) -> None:
        self.items = _ItemExtra(self, table)

    def attach_events(self, rows_d) -> None:
        rows_d.extra = _EventExtra(self, rows_d)

    # ---- per sequence sizes ----
    def _layout(self, builder, sizes: tuple[int, ...]) -> _Layout:
        lay = self._layouts.get(sizes)
        if lay is not None:
            return lay
        views = builder._view_masks(sizes)
        rng = views.ranges_flat
        pr, pt, po, pk, div = [], [], [], [], []
        for s, (r, v) in enumerate(self.slots):
            start, end = int(rng[v, 0]), int(rng[v, 1])
            t = np.arange(start, end)
            pr.append(np.full(len(t), r))
            pt.append(t)
            po.append(np.full(len(t), self.slot_off[s]))
            pk.append(np.minimum((end - t).astype(np.float64) / self.l_max, 1.0))
            div.append(np.full(self.row_size[r], max(int(views.view_size[v]), 1)))
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        plan = self.plan
        max_edges = max_nonempty = mean_masks = mean_div = _EMPTY
        if self.max_cols is not None:
            v = plan.agg["sim_max"][2]
            max_edges, max_nonempty = rng[v].ravel(), views.view_size[v] > 0
        if self.mean_cols is not None:
            v = plan.agg["sim_mean"][2]
            mean_masks, mean_div = views.masks_f64[:, v], np.maximum(views.view_size[v], 1)
        lay = _Layout(pair_r=cat(pr, np.intp), pair_t=cat(pt, np.intp), pair_off=cat(po, np.int64),
                      pair_step=cat(pk, np.float64), div=cat(div, np.int64), max_edges=max_edges,
                      max_nonempty=max_nonempty, mean_masks=mean_masks, mean_div=mean_div)
        if len(self._layouts) >= 4096:
            self._layouts.clear()
        self._layouts[sizes] = lay
        return lay

    # ---- per feedback state ----
    def _to_here(self, lat: np.ndarray, lon: np.ndarray, here: tuple) -> np.ndarray:
        """Distances of points to the search location, as ``operators._distance`` computes them (elementwise, so the
        planar case is the same arithmetic on scalars)."""
        if self.geo == "planar":
            return np.sqrt((lat - here[0]) ** 2 + (lon - here[1]) ** 2)
        return self._distance(lat, lon, np.array([here[0]]), np.array([here[1]]), self.geo)[:, 0]

    def _tables(self, idx: np.ndarray | None, lay: _Layout | None) -> np.ndarray:
        """hit | freq | step per (slot, value): counts, and the step of the newest match of each value in each view
        (the smallest of its matches' steps: a step is monotone in the rank, so this is the newest match's)."""
        S = self.S
        table = np.empty(3 * S)
        if idx is None or not idx.size:
            table[:2 * S] = 0.0
            table[2 * S:] = 1.0
            return table
        cnt = np.bincount(idx, minlength=S)
        np.greater(cnt, 0, out=table[:S])
        np.divide(cnt, lay.div, out=table[S:2 * S])
        step = table[2 * S:]
        step[:] = 1.0  # no match: 1.0
        np.minimum.at(step, idx, lay.pair_step)
        return table

    def _steps_ago(self, hi: int) -> np.ndarray:
        """min(k / l_max, 4) for k = 0..hi (the ``steps_ago`` event input of an event k events back)."""
        if len(self._steps) <= hi:
            k = max(hi + 1, 2 * len(self._steps), 64)
            self._steps = np.minimum(np.arange(k).astype(np.float64) / self.L, 4.0)
        return self._steps

    def _empty_state(self) -> _State:
        if self._empty is None:
            L, E = self.L, self.E
            self._empty = _State(key=(), T=0, n_p=0, n_neg=0, table=self._tables(None, None), U=None, lay=None,
                                 plat=_EMPTY, plon=_EMPTY, seq_int=np.zeros((6, L), np.int32),
                                 seq_emb=np.zeros((L, E), np.float32), seq_num=np.zeros((L, 4), np.float32),
                                 pos_mask=np.zeros(L, np.float32), neg_mask=np.zeros(L, np.float32), bad=None)
        return self._empty

    def _state(self, builder, events: EventColumns, rows_d, here: tuple) -> _State | None:
        ex = rows_d.extra
        lo, hi = events._lo, events._hi
        key = (lo, hi, here)
        st = ex.state
        if st is not None and st.key == key:
            return st
        if ex.last_unknown >= lo and ex.unknown[lo:hi].any():
            return None
        b = events._b
        e_lo = rows_d.stale(here)
        if hi > e_lo:
            rows_d.set_distances(e_lo, hi, self._to_here(b.lat[e_lo:hi], b.lon[e_lo:hi], here))
        L = self.L
        is_pos, is_neg = rows_d.pos[lo:hi], rows_d.neg[lo:hi]
        pos_all = is_pos.nonzero()[0]
        if len(pos_all):  # never a negative: an item with a positive
            ev_item = b.item[lo:hi]
            is_neg = is_neg & ~(ev_item[:, None] == ev_item[pos_all][None, :]).any(axis=1)
        pos_idx = pos_all[max(0, len(pos_all) - self.max_pos):]
        neg_idx = is_neg.nonzero()[0]
        n_p = len(pos_idx)
        neg_idx = neg_idx[-(L - n_p):] if L > n_p else neg_idx[:0]
        gb = np.concatenate([pos_idx, neg_idx])
        gb += lo
        s = len(gb)
        if self.seqs_are_both:
            ev, sizes = gb, (n_p, s - n_p)
        else:
            seq_idx = {"click": pos_idx + lo, "skip": neg_idx + lo}
            if self.seen:
                seq_idx["seen"] = rows_d.shown[lo:hi].nonzero()[0] + lo
            parts = [seq_idx[q] for q in self.plan.seqs]
            ev = np.concatenate(parts) if parts else _EMPTY
            sizes = tuple(len(q) for q in parts)
        T = len(ev)
        lay = self._layout(builder, sizes) if T else None
        idx = None
        if T and self.S:
            idx = ex.vids[lay.pair_r, ev[lay.pair_t]]
            idx += lay.pair_off
        table = self._tables(idx, lay)
        U = rows_d.unit[ev] if self.sim and T else None
        # the event half of the outputs (as the general path writes them)
        seq_int = np.zeros((6, L), np.int32)
        seq_int[:, :s] = ex.ints[:, gb]
        kind = seq_int[3]
        kind[:n_p] = 1
        kind[n_p:s] = 2
        seq_emb = np.zeros((L, self.E), np.float32)
        seq_emb[:s] = b.emb[gb]
        seq_num = np.zeros((L, 4), np.float32)
        sn = seq_num[:s]
        sn[:] = rows_d.seq_num[gb]
        sn[:, 1] = self._steps_ago(hi)[hi - gb]
        bad = None
        for name, a in (("seq_emb", seq_emb), ("seq_num", seq_num)):  # a sum in float64 is finite iff every value is
            if not math.isfinite(float(np.add.reduce(a, axis=None, dtype=np.float64))):
                bad = name
                break
        masks = self._seq_masks.get((n_p, s))
        if masks is None:  # (the MVFAN masks depend on the two counts only)
            if len(self._seq_masks) >= 4096:
                self._seq_masks.clear()
            masks = self._seq_masks[(n_p, s)] = ((kind == 1).astype(np.float32), (kind == 2).astype(np.float32))
        p = pos_idx + lo
        st = ex.state = _State(key=key, T=T, n_p=n_p, n_neg=len(neg_idx), table=table, U=U, lay=lay,
                               plat=b.lat[p], plon=b.lon[p], seq_int=seq_int, seq_emb=seq_emb, seq_num=seq_num,
                               pos_mask=masks[0], neg_mask=masks[1],
                               bad=bad)
        return st

    # ---- per build ----
    def _round_states(self, builder, recs: list[list]) -> None:
        """New feedback states of a round in one pass (``_state``'s values, bit for bit): every request's events
        [lo, hi) laid end to end (an arena, one segment per state, read as slices of each store buffer and of its
        derived rows), the sequence selection over the whole arena (the never-a-negative-with-a-positive mask per
        segment and item, the last ``max_positives`` positives and last ``L - n_p`` negatives of each segment by
        counting from the segment's end), each selected event's slot, then every gather of the event half of the
        outputs, the finiteness checks and the value tables once for the round. `recs`: ``[extra, rows, buffers, lo,
        hi, here, key, None]`` each (rows derived and their distances set for `here`); the state goes in the last
        cell. Every new state's arrays are views of the round's blocks."""
        K, L, E, S = len(recs), self.L, self.E, self.S
        cat = np.concatenate
        m = np.array([r[4] - r[3] for r in recs], dtype=np.intp)  # events per segment (>= 1)
        end = np.cumsum(m)
        start = end - m
        seg = np.repeat(np.arange(K, dtype=np.intp), m)
        roles = cat([r[1].roles[:, r[3]:r[4]] for r in recs], axis=1)
        pos, neg = roles[0], roles[1]
        cp = np.zeros(len(seg) + 1, np.intp)
        np.cumsum(pos, out=cp[1:])
        n_pos = cp[end] - cp[start]
        if n_pos.any():  # never a negative: an item with a positive (in the same segment)
            _, code = np.unique(cat([r[2].item[r[3]:r[4]] for r in recs]), return_inverse=True)
            code += seg * len(code)  # (distinct per (segment, item))
            has = np.zeros(K * len(code), bool)
            has[code[pos]] = True
            neg = neg & ~has[code]
        cn = np.zeros(len(seg) + 1, np.intp)
        np.cumsum(neg, out=cn[1:])
        after_p = cp[end][seg] - cp[1:]  # positives after each event in its segment
        after_n = cn[end][seg] - cn[1:]
        n_p = np.minimum(n_pos, self.max_pos)
        n_neg = np.minimum(cn[end] - cn[start], np.maximum(L - n_p, 0))
        keep_p = pos & (after_p < self.max_pos)
        keep_n = neg & (after_n < (L - n_p)[seg])
        s = n_p + n_neg
        sel = np.flatnonzero(keep_p | keep_n)
        g_seg = seg[sel]
        sel_p = keep_p[sel]
        slot = np.where(sel_p, n_p[g_seg] - 1 - after_p[sel], s[g_seg] - 1 - after_n[sel])  # (gb's order)
        fs = g_seg * L + slot
        # the sequences the plan reads, laid end to end (state k's events at [e_off[k], e_off[k] + T[k]))
        if self.seqs_are_both:
            T, sizes = s, np.stack([n_p, n_neg], axis=1)
            e_off = np.cumsum(T) - T
            ev = np.empty(int(T.sum()), np.intp)
            ev[e_off[g_seg] + slot] = sel
        else:
            cols, q_size = [], []
            for q in self.plan.seqs:
                if q == "click":
                    cols.append((keep_p, n_p, after_p))
                elif q == "skip":
                    cols.append((keep_n, n_neg, after_n))
                else:  # seen
                    shown = roles[2]
                    cs = np.zeros(len(seg) + 1, np.intp)
                    np.cumsum(shown, out=cs[1:])
                    cols.append((shown, cs[end] - cs[start], cs[end][seg] - cs[1:]))
                q_size.append(cols[-1][1])
            sizes = np.stack(q_size, axis=1) if q_size else np.zeros((K, 0), np.intp)
            T = sizes.sum(axis=1)
            e_off = np.cumsum(T) - T
            ev = np.empty(int(T.sum()), np.intp)
            q_off = e_off.copy()
            for mask, cnt, after in cols:
                g = np.flatnonzero(mask)
                sg = seg[g]
                ev[q_off[sg] + cnt[sg] - 1 - after[g]] = g
                q_off += cnt
        T_l, s_l, np_l, nn_l = T.tolist(), s.tolist(), n_p.tolist(), n_neg.tolist()
        sizes_l = list(map(tuple, sizes.tolist()))
        lays = [self._layout(builder, z) if t else None for z, t in zip(sizes_l, T_l, strict=True)]
        # the value tables (as _tables computes them state by state: exact counts and minima)
        empty = self._empty_state().table
        tables = [empty] * K
        tk = [k for k in range(K) if T_l[k]] if S else []
        if tk:
            vids = cat([r[0].vids[:, r[3]:r[4]] for r in recs], axis=1)
            tl = [lays[k] for k in tk]
            P = np.array([len(lay.pair_t) for lay in tl], dtype=np.intp)
            pt = cat([lay.pair_t for lay in tl])
            pt += np.repeat(e_off[tk], P)
            idx = vids[cat([lay.pair_r for lay in tl]), ev[pt]]
            idx += cat([lay.pair_off for lay in tl])
            J = len(tk)
            jrep = np.repeat(np.arange(J, dtype=np.int64), P)
            idx += jrep * S
            cnt = np.bincount(idx, minlength=J * S).reshape(J, S)
            tab = np.empty((J, 3, S))
            np.greater(cnt, 0, out=tab[:, 0])
            np.divide(cnt, np.stack([lay.div for lay in tl]), out=tab[:, 1])
            tab[:, 2] = 1.0  # no match: 1.0
            idx += jrep * (2 * S) + 2 * S  # (j S + v) -> (3 j S + 2 S + v)
            np.minimum.at(tab.reshape(-1), idx, cat([lay.pair_step for lay in tl]))
            flat = tab.reshape(J, 3 * S)
            for j, k in enumerate(tk):
                tables[k] = flat[j]
        # the event half of the outputs
        SI = np.zeros((6, K, L), np.int32)
        SI.reshape(6, K * L)[:, fs] = cat([r[0].ints[:, r[3]:r[4]] for r in recs], axis=1)[:, sel]
        SI[3].reshape(-1)[fs] = np.where(sel_p, 1, 2)
        SE = np.zeros((K, L, E), np.float32)
        SE.reshape(K * L, E)[fs] = cat([r[2].emb[r[3]:r[4]] for r in recs])[sel]
        SN = np.zeros((K, L, 4), np.float32)
        sn = SN.reshape(K * L, 4)
        sn[fs] = cat([r[1].seq_num[r[3]:r[4]] for r in recs])[sel]
        sn[fs, 1] = self._steps_ago(int(m.max()))[end[g_seg] - sel]
        fin = np.isfinite(np.add.reduce(SE.reshape(K, -1), axis=1, dtype=np.float64)).tolist()
        fin_n = np.isfinite(np.add.reduce(SN.reshape(K, -1), axis=1, dtype=np.float64)).tolist()
        U = cat([r[1].unit[r[3]:r[4]] for r in recs])[ev] if self.sim else None
        if self.dist_click:
            psel = sel[sel_p]  # the kept positives, segment by segment in order (pos_idx)
            plat = cat([r[2].lat[r[3]:r[4]] for r in recs])[psel]
            plon = cat([r[2].lon[r[3]:r[4]] for r in recs])[psel]
            p_end = np.cumsum(n_p).tolist()
        e_off_l = e_off.tolist()
        for k, r in enumerate(recs):
            t, n_pk, sk = T_l[k], np_l[k], s_l[k]
            masks = self._seq_masks.get((n_pk, sk))
            if masks is None:  # (as _state: the MVFAN masks depend on the two counts only)
                if len(self._seq_masks) >= 4096:
                    self._seq_masks.clear()
                kind = SI[3, k]
                masks = self._seq_masks[(n_pk, sk)] = ((kind == 1).astype(np.float32), (kind == 2).astype(np.float32))
            if self.dist_click:
                pl, ph = p_end[k] - n_pk, p_end[k]
                la, lo_ = plat[pl:ph], plon[pl:ph]
            else:
                la = lo_ = _EMPTY
            o = e_off_l[k]
            r[7] = _State(key=r[6], T=t, n_p=n_pk, n_neg=nn_l[k], table=tables[k],
                          U=U[o:o + t] if U is not None and t else None, lay=lays[k], plat=la, plon=lo_,
                          seq_int=SI[:, k], seq_emb=SE[k], seq_num=SN[k], pos_mask=masks[0], neg_mask=masks[1],
                          bad=None if fin[k] and fin_n[k] else "seq_emb" if not fin[k] else "seq_num")

    def _flush(self, builder, recs: list[list], here_of: dict) -> None:
        """The pending new states of a round (``_round_states``), before a request moves one of their buffers'
        distances to another search location (and at the end of the pass)."""
        self._round_states(builder, recs)
        recs.clear()
        here_of.clear()

    def _stale_items(self, t, rows: np.ndarray, here: tuple) -> None:
        """The distances to `here` of those of `rows` without one (and of every later row without any distance yet:
        a page is inserted at once, so its next windows find theirs; a row with another location's distance is
        another session's, left to its own builds)."""
        cid, stale = t.stale(rows, here)
        if stale.size:
            lo = int(stale.min())
            mark = t.ctx_of[lo:t._used] == -1
            mark[stale - lo] = True
            stale = np.flatnonzero(mark)
            stale += lo
            t.set_distances(stale, cid, self._to_here(t.lat[stale], t.lon[stale], here))

    def _round_items(self, t, sel: list[list], rows: np.ndarray, ns: np.ndarray, dest: np.ndarray,
                     num: np.ndarray, ints5: np.ndarray) -> None:
        """The location-dependent candidate inputs of a round (the item-only ``cand_num`` row, the integer block): one
        read for the round; then, in request order (as builds one at a time), each request with a row whose distance
        is not to its own search location (a new row, or a row shared with a request from another location) gets its
        distances and reads its rows again."""
        ctx_ids = t._ctx_ids
        heres = [(s[3].lat, s[3].lon) for s in sel]
        new = set(heres).difference(ctx_ids)
        if len(ctx_ids) + len(new) > 1024:  # (as ``ItemTable.stale`` when full: every id forgotten, before the round)
            ctx_ids.clear()
            t.ctx_of[:] = -1
            new = set(heres)
        items = self.items
        B, N, F = num.shape
        num.reshape(B * N, F)[dest] = items.base[rows]
        ints5.reshape(5, B * N)[:, dest] = items.ints[:, rows]
        if len(new) > 1024:  # (more search locations than ids: every request on its own)
            redo = [True] * len(sel)
        else:
            for h in heres:
                if h not in ctx_ids:
                    ctx_ids[h] = len(ctx_ids)
            cids = np.repeat(np.array([ctx_ids[h] for h in heres], dtype=np.int64), ns)
            off = t.ctx_of[rows] != cids
            if not off.any():
                return
            o_rows = rows[off]
            o_cids = cids[off]
            if self.geo == "planar" and _one_location(o_rows, o_cids):
                # (no row stale for two search locations: every distance at once, elementwise as _to_here; the rest
                # of a page the window has not reached yet is left to its own windows)
                here = np.repeat(np.array(heres, dtype=np.float64), ns, axis=0)[off]
                d = np.sqrt((t.lat[o_rows] - here[:, 0]) ** 2 + (t.lon[o_rows] - here[:, 1]) ** 2)
                t.set_distances(o_rows, o_cids, d)
                o_dest = dest[off]
                num.reshape(B * N, F)[o_dest] = items.base[o_rows]
                ints5.reshape(5, B * N)[:, o_dest] = items.ints[:, o_rows]
                return
            redo = np.add.reduceat(off, np.cumsum(ns) - ns).tolist()
        for s, h, k in zip(sel, heres, redo, strict=True):
            if k:
                b, r = s[0], s[1]
                self._stale_items(t, r, h)
                np.take(items.base, r, axis=0, out=num[b, :len(r)], mode="clip")
                ints5[:, b, :len(r)] = items.ints[:, r]

    def _prelude(self, builder, candidates, events, context):
        """The part of a build before the gathers: the item table's rows, the feedback state, the counters and the
        rows' distances to the search location. Returns (state, rows), or (None, rows) to hand the build to the
        general path (`rows`: the item table's rows if this call already asked for them, else ``...``)."""
        n = len(candidates)
        if n == 0 or n > self.N:
            return None, ...
        n_events = len(events)
        if n_events:
            if not isinstance(events, EventColumns) or not events.plain or events.ragged or (
                    self.sim and events.width != self.E):
                return None, ...
        t = builder._table
        rows = t.rows_of(candidates)
        if rows is None:
            return None, rows
        items = self.items
        known, unknown = items.window(rows)
        if not known:
            return None, rows
        here = (context.lat, context.lon)
        if n_events:
            st = self._state(builder, events, builder._event_rows(events), here)
            if st is None:
                return None, rows
        else:
            st = self._empty_state()
        self.builds += 1
        for name, u in zip(self.cat_names, unknown, strict=True):
            counts = builder.unknown_counts[name]
            counts[0] += u
            counts[1] += n
        self._stale_items(t, rows, here)
        return st, rows

    def _sim_columns(self, num: np.ndarray, t, rows: np.ndarray, st: _State) -> None:
        """The distance-to-clicks and similarity columns of one build's `num` (rows [0, n))."""
        n = len(rows)
        if self.dist_click and st.n_p:
            d = self._distance(t.lat[rows], t.lon[rows], st.plat, st.plon, self.geo)
            num[:n, self.col_last] = np.log1p(d[:, -1])[:, None]
            num[:n, self.col_min] = np.log1p(d.min(axis=1))[:, None]
        if st.U is not None:
            lay, T = st.lay, st.T
            sim = t.unit[rows] @ st.U.T
            if self.max_cols is not None:
                padded = np.empty((n, T + 1))  # (a view may end at T)
                padded[:, :T] = sim
                padded[:, T] = 0.0
                top = np.maximum.reduceat(padded, lay.max_edges, axis=1)[:, ::2]
                num[:n, self.max_cols] = np.where(lay.max_nonempty, top, 0.0)
            if self.mean_cols is not None:
                num[:n, self.mean_cols] = (sim @ lay.mean_masks) / lay.mean_div

    def _round_sim(self, t, sel: list[list], rows: np.ndarray, ns: np.ndarray, dest: np.ndarray,
                   num: np.ndarray) -> None:
        """The distance-to-clicks and similarity columns of a round (``_sim_columns``'s values, bit for bit). Planar
        distances to the clicks are elementwise: every (candidate, kept positive) pair of the round in one pass, the
        newest and the nearest by segment. The similarities stay one product per list (a stacked product could round
        differently), each written into one flat buffer; the maxima over the views are one ``reduceat`` over it, the
        means one product per list (a sum in another order rounds differently) and one division."""
        B, N, F = num.shape
        numf = num.reshape(B * N, F)
        first = np.cumsum(ns) - ns
        if self.dist_click:
            if self.geo == "planar":
                npr = [s[2].n_p for s in sel]
                if any(npr):
                    kp = [k for k, c in enumerate(npr) if c]
                    reps = np.repeat(np.array(npr, dtype=np.intp), ns)  # pairs per candidate row
                    keep = reps > 0
                    r_rows, r_dest, r_reps = rows[keep], dest[keep], reps[keep]
                    g_end = np.cumsum(r_reps)
                    g_start = g_end - r_reps
                    p_off = np.cumsum([0] + [npr[k] for k in kp])[:-1]  # each request's first positive
                    p_row = np.repeat(np.repeat(p_off, ns[kp]) - g_start, r_reps)
                    p_row += np.arange(int(g_end[-1]))
                    plat = np.concatenate([sel[k][2].plat for k in kp])[p_row]
                    plon = np.concatenate([sel[k][2].plon for k in kp])[p_row]
                    c_rows = np.repeat(r_rows, r_reps)
                    d = np.sqrt((t.lat[c_rows] - plat) ** 2 + (t.lon[c_rows] - plon) ** 2)  # (as _distance, planar)
                    numf[r_dest[:, None], self.col_last] = np.log1p(d[g_end - 1])[:, None]
                    numf[r_dest[:, None], self.col_min] = np.log1p(np.minimum.reduceat(d, g_start))[:, None]
            else:
                for b, r, st, _, _ in sel:
                    if st.n_p:
                        d = self._distance(t.lat[r], t.lon[r], st.plat, st.plon, self.geo)
                        nb = num[b, :len(r)]
                        nb[:, self.col_last] = np.log1p(d[:, -1])[:, None]
                        nb[:, self.col_min] = np.log1p(d.min(axis=1))[:, None]
        ks = [k for k, s in enumerate(sel) if s[2].U is not None]
        if not ks or (self.max_cols is None and self.mean_cols is None):
            return
        sts = [sel[k][2] for k in ks]
        n_l = ns[ks].tolist()
        T_l = [st.T for st in sts]
        size = [n * T for n, T in zip(n_l, T_l, strict=True)]
        flat = np.empty(sum(size) + 1)  # (+ 1: a view may end at the last similarity)
        flat[-1] = 0.0
        unit = t.unit[rows]
        f_l = first[ks].tolist()
        o = 0
        for st, a, n, T, z in zip(sts, f_l, n_l, T_l, size, strict=True):
            np.matmul(unit[a:a + n], st.U.T, out=flat[o:o + z].reshape(n, T))
            o += z
        n_rows = sum(n_l)
        j = np.repeat(np.arange(len(ks)), n_l)  # each similarity row's list (of those with similarities)
        if len(ks) < len(sel):
            has = np.zeros(len(sel), bool)
            has[ks] = True
            k_dest = dest[np.repeat(has, ns)]
        else:
            k_dest = dest
        if self.max_cols is not None:
            rowbase = np.repeat(np.cumsum([0] + size[:-1]), n_l)  # each row's first similarity in `flat`
            rowbase += (np.arange(n_rows) - np.repeat(np.cumsum([0] + n_l[:-1]), n_l)) * np.repeat(T_l, n_l)
            edges = np.stack([st.lay.max_edges for st in sts])[j]
            edges += rowbase[:, None]
            top = np.maximum.reduceat(flat, edges.ravel()).reshape(n_rows, -1)[:, ::2]
            nonempty = np.stack([st.lay.max_nonempty for st in sts])[j]
            numf[k_dest[:, None], self.max_cols] = np.where(nonempty, top, 0.0)
        if self.mean_cols is not None:
            mean = np.empty((n_rows, len(self.mean_cols)))
            o = s_ = 0
            for st, n, T, z in zip(sts, n_l, T_l, size, strict=True):
                np.matmul(flat[o:o + z].reshape(n, T), st.lay.mean_masks, out=mean[s_:s_ + n])
                o += z
                s_ += n
            numf[k_dest[:, None], self.mean_cols] = mean / np.stack([st.lay.mean_div for st in sts])[j]

    def _ctx(self, st: _State, context) -> list[float]:
        hour = 2 * np.pi * (context.hour % 24) / 24.0
        return [math.sin(hour), math.cos(hour), st.n_p / max(1, self.max_pos), st.n_neg / max(1, self.L - self.max_pos),
                float(st.n_p > 0)]

    def build(self, builder, candidates, events, context):
        """The inputs ``FeatureBuilder.build`` returns, or (None, rows) to hand the build to the general path
        (`rows`: the item table's rows if this call already asked for them, else ``...``)."""
        st, rows = self._prelude(builder, candidates, events, context)
        if st is None:
            return None, rows
        t, items = builder._table, self.items
        n = len(candidates)
        N = self.N
        num = np.zeros((N, self.F), np.float32)
        np.take(items.base, rows, axis=0, out=num[:n], mode="clip")
        if self.S:
            idx = items.vids[self.m_rows, rows]
            idx += self.m_base
            num[:n, self.m_cols] = st.table[idx].T
        self._sim_columns(num, t, rows, st)
        ints = np.zeros((5, N), np.int32)
        ints[:, :n] = items.ints[:, rows]
        emb = np.zeros((N, self.E), np.float32)
        np.take(t.emb, rows, axis=0, out=emb[:n], mode="clip")
        dense = np.zeros((N, self.D), np.float32)
        np.take(t.dense, rows, axis=0, out=dense[:n], mode="clip")
        mask = self._masks.get(n)
        if mask is None:
            mask = self._masks[n] = np.zeros(N, np.float32)
            mask[:n] = 1.0
        seq_int = st.seq_int.copy()
        c = self._ctx(st, context)
        if not math.isfinite(float(np.add.reduce(num, axis=None, dtype=np.float64))):
            raise self._error("non-finite values in feature 'cand_num'")
        if st.bad is not None:
            raise self._error(f"non-finite values in feature {st.bad!r}")
        ctx = np.array(c, dtype=np.float32)
        if not math.isfinite(sum(c)):  # (bounded values: finite in float32 too)
            raise self._error("non-finite values in feature 'ctx'")
        return {"cand_cat": ints[0], "cand_brand": ints[1], "cand_price": ints[2], "cand_emb": emb,
                "cand_dense": dense, "cand_num": num, "cand_mask": mask.copy(), "cand_dist_b": ints[3],
                "cand_pos_b": ints[4], "seq_cat": seq_int[0], "seq_brand": seq_int[1], "seq_price": seq_int[2],
                "seq_kind": seq_int[3], "seq_emb": st.seq_emb.copy(), "seq_dist_b": seq_int[4],
                "seq_pos_b": seq_int[5], "seq_num": st.seq_num.copy(), "seq_pos_mask": st.pos_mask.copy(),
                "seq_neg_mask": st.neg_mask.copy(), "ctx": ctx}, rows

    def _derive_round(self, builder, requests) -> None:
        """The per-event rows (``EventRows``, with this path's value ids) of every request's new events, derived in
        one pass for the whole round: each store buffer's new rows are read as slices, laid end to end, derived once
        (every derived value depends on its own row only, so the bits are those of one buffer at a time) and written
        back. Requests whose rows are already derived, or whose snapshots the path will not take, are left to their
        own build. With planar distances, the new rows' distances to their request's search location too."""
        todo: dict[int, tuple] = {}
        here: dict[int, tuple | None] = {}  # per rows: the one search location its requests share (None: several)
        for _, events, context in requests:
            if type(events) is not EventColumns or events._hi == events._lo or events.ragged or not events.plain:
                continue
            rows_d = builder._event_rows(events, update=False)
            hi = events._hi
            if rows_d.upto >= hi or rows_d.extra is None:
                continue
            key = id(rows_d)
            prev = todo.get(key)
            if prev is None or prev[2] < hi:
                todo[key] = (rows_d, events._b, hi)
            h = (context.lat, context.lon)
            here[key] = h if here.get(key, h) == h and type(h[0]) is float and type(h[1]) is float else None
        if len(todo) < 2:
            return
        for unit in (True, False):  # (rows with unit vectors and rows without are derived apart)
            parts = [(d, b, d.upto, hi) for d, b, hi in todo.values() if (d.unit is not None) is unit]
            if not parts:
                continue
            cat = np.concatenate
            emb = cat([b.emb[lo:hi] for _, b, lo, hi in parts]) if unit else None
            dv = parts[0][0].derive(cat([b.kind[lo:hi] for _, b, lo, hi in parts]),
                                    cat([b.dwell[lo:hi] for _, b, lo, hi in parts]),
                                    cat([b.cats[:, lo:hi] for _, b, lo, hi in parts], axis=1),
                                    cat([b.position[lo:hi] for _, b, lo, hi in parts]), emb,
                                    builder._roles_of, builder._keys_of, builder._ids_of)
            s = 0
            for d, _, lo, hi in parts:
                d.write(lo, hi, dv, s, s + hi - lo)
                s += hi - lo
        if self.geo != "planar":
            return
        parts = []  # rows without a distance to their request's search location (the planar formula, elementwise)
        for key, (d, b, hi) in todo.items():
            h = here[key]
            if h is not None:
                lo = d.stale(h)
                if hi > lo:
                    parts.append((d, b, lo, hi, h))
        if len(parts) < 2:
            return
        n = [hi - lo for _, _, lo, hi, _ in parts]
        h0 = np.repeat(np.array([h[0] for *_, h in parts], dtype=np.float64), n)
        h1 = np.repeat(np.array([h[1] for *_, h in parts], dtype=np.float64), n)
        lat = np.concatenate([b.lat[lo:hi] for _, b, lo, hi, _ in parts])
        lon = np.concatenate([b.lon[lo:hi] for _, b, lo, hi, _ in parts])
        dist = np.sqrt((lat - h0) ** 2 + (lon - h1) ** 2)  # (as _to_here: the same arithmetic per element)
        logd, bucket = parts[0][0].distance_columns(dist)
        s = 0
        for (d, _, lo, hi, _), k in zip(parts, n, strict=True):
            d.write_distances(lo, hi, logd, bucket, s, s + k)
            s += k

    def build_many(self, builder, requests, out: dict[str, np.ndarray], errors: list) -> list[bool]:
        """Many builds written into `out` (``FeatureBuilder.build_many``'s zeroed [B, ...] arrays): per request only
        what ``build``'s prelude decides on (the window's rows, whether the path takes it, its memoised feedback
        state), then the round's new feedback states in one pass (``_round_states``), the item rows' distances,
        and every gather once for all requests, with each request's rows and value table offset into one array.
        Returns which requests it handled (their row of `out` written, or their error in `errors`); the others take
        ``FeatureBuilder.build``."""
        B = len(requests)
        handled = [False] * B
        t, items = builder._table, self.items
        # every window must keep its rows until the gathers: a table that filled up in the middle would start afresh
        # and overwrite rows already looked up, so make room for all of them first (or leave the batch to `build`)
        have = t.rows
        if len(t.items) + sum(map(len, (c for c, _, _ in requests))) <= t.cap:
            missing = ()  # (room even if every window item were new)
        else:
            missing = {id(it) for c, _, _ in requests for it in c if id(it) not in have}
        if len(t.items) + len(missing) > t.cap:
            t.clear()
            if len({id(it) for c, _, _ in requests for it in c}) > t.cap:
                return handled
        N, F = self.N, self.F
        num, ints5 = out["cand_num"], out["_ints"]
        self._derive_round(builder, requests)
        sel: list[list] = []  # [b, rows, state (or its record), context, new state's extra or None]
        recs: list[list] = []  # new states of the round, computed together (``_round_states``)
        rec_of: dict[tuple, list] = {}  # (id(rows), key) -> its record
        here_of: dict[int, tuple] = {}  # id(rows) -> the search location its pending records were derived for
        looked = []  # (b, rows) of the requests with every item's row
        for b, (candidates, events, _) in enumerate(requests):
            n = len(candidates)
            if n == 0 or n > N:
                continue
            if len(events) and (not isinstance(events, EventColumns) or not events.plain or events.ragged or
                                events.width != self.E):  # (vectors of another width: left to ``build``)
                continue
            rows = t.rows_of(candidates)
            if rows is not None:
                looked.append((b, rows))
        if not looked:
            return handled
        # every window's unknown buckets per declared field at once (a window with one in a matched field: `build`)
        lens = [len(r) for _, r in looked]
        unknown = np.add.reduceat(items.unknown[:, np.concatenate([r for _, r in looked])],
                                  np.cumsum([0] + lens[:-1]), axis=1)
        known = (~unknown[self.matched].any(axis=0) if len(self.matched) else np.ones(len(looked), bool)).tolist()
        took = []  # (their columns of `unknown`)
        for j, ((b, rows), ok) in enumerate(zip(looked, known, strict=True)):
            if not ok:
                continue
            events, context = requests[b][1], requests[b][2]
            here = (context.lat, context.lon)
            new = None
            if len(events):
                rows_d = builder._event_rows(events)
                ex = rows_d.extra
                lo, hi = events._lo, events._hi
                key = (lo, hi, here)
                st = ex.state
                if st is None or st.key != key:
                    rk = (id(rows_d), key)
                    st = rec_of.get(rk)
                    if st is None:
                        if ex.last_unknown >= lo and ex.unknown[lo:hi].any():
                            continue
                        h = here_of.get(id(rows_d))
                        if h is not None and h != here:  # (its rows' distances are about to change)
                            self._flush(builder, recs, here_of)
                        e_lo = rows_d.stale(here)
                        if hi > e_lo:
                            b_ = events._b
                            rows_d.set_distances(e_lo, hi, self._to_here(b_.lat[e_lo:hi], b_.lon[e_lo:hi], here))
                        st = rec_of[rk] = [ex, rows_d, events._b, lo, hi, here, key, None]
                        recs.append(st)
                        here_of[id(rows_d)] = here
                    new = ex
            else:
                st = self._empty_state()
            took.append(j)
            sel.append([b, rows, st, context, new])
        if recs:
            self._flush(builder, recs, here_of)
        if not sel:
            return handled
        self.builds += len(sel)
        n_all = sum(len(s[1]) for s in sel)
        for name, u in zip(self.cat_names, unknown[:, took].sum(axis=1).tolist(), strict=True):
            counts = builder.unknown_counts[name]
            counts[0] += u
            counts[1] += n_all
        for s in sel:
            st = s[2]
            if type(st) is list:
                st = s[2] = st[7]
            if s[4] is not None:
                s[4].state = st  # (the memo: the last new state of each buffer, as request by request)
        bs = np.array([s[0] for s in sel], dtype=np.intp)
        ns = np.array([len(s[1]) for s in sel], dtype=np.intp)
        rows = np.concatenate([s[1] for s in sel])
        first = np.cumsum(ns) - ns
        dest = np.arange(len(rows)) + np.repeat(bs * N - first, ns)  # flat (request, slot) of each row
        self._round_items(t, sel, rows, ns, dest, num, ints5)
        numf = num.reshape(B * N, F)
        self._round_sim(t, sel, rows, ns, dest, num)
        if self.S:
            tables = np.concatenate([s[2].table for s in sel])
            idx = items.vids[self.m_rows, rows]
            idx += self.m_base
            idx += np.repeat(np.arange(len(sel), dtype=np.int64) * (3 * self.S), ns)
            numf[dest[:, None], self.m_cols] = tables[idx].T
        out["cand_emb"].reshape(B * N, self.E)[dest] = t.emb[rows]
        out["cand_dense"].reshape(B * N, self.D)[dest] = t.dense[rows]
        out["cand_mask"].reshape(B * N)[dest] = 1.0
        sts = [s[2] for s in sel]
        out["_seq"][:, bs] = np.stack([st.seq_int for st in sts], axis=1)
        out["seq_emb"][bs] = np.stack([st.seq_emb for st in sts])
        out["seq_num"][bs] = np.stack([st.seq_num for st in sts])
        kind = out["_seq"][3]  # (the MVFAN masks are the kinds': rows `build` writes later are overwritten then)
        np.equal(kind, 1, out=out["seq_pos_mask"], casting="unsafe")
        np.equal(kind, 2, out=out["seq_neg_mask"], casting="unsafe")
        cs = [self._ctx(s[2], s[3]) for s in sel]
        out["ctx"][bs] = np.array(cs, dtype=np.float32)
        finite = np.isfinite(np.add.reduce(num[bs].reshape(len(sel), -1), axis=1, dtype=np.float64)).tolist()
        for (b, _, st, _, _), c, ok in zip(sel, cs, finite, strict=True):
            handled[b] = True
            if not ok:
                errors[b] = self._error("non-finite values in feature 'cand_num'")
            elif st.bad is not None:
                errors[b] = self._error(f"non-finite values in feature {st.bad!r}")
            elif not math.isfinite(sum(c)):
                errors[b] = self._error("non-finite values in feature 'ctx'")
        return handled
