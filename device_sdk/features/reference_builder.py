"""The feature builder as it was before issue 18 (one Python function per operator, per-value encoding): kept
verbatim as the *reference* the vectorised :class:`~edge_rerank.device_sdk.features.operators.FeatureBuilder` is
checked against (tests/test_features_vectorised.py) and timed against (bench/device_bench.py). Not used at serving
or training time; its output is what ``OPERATORS_VERSION`` "ops-3" pins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_rerank.device_sdk.contracts import Context, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.operators import (
    IDENTITY,
    FeatureBuilder,
    FeatureError,
    _Keys,
    _OpInputs,
    _to_seq,
    event_roles,
    field_value,
    numeric_value,
    split_feedback,
)


class ReferenceFeatureBuilder(FeatureBuilder):
    """Same config handling and ``unknown_counts`` as FeatureBuilder; ``build`` is the pre-issue-18 code."""

    def build(self, candidates: Sequence[PageItem], events: Sequence[FeedbackEvent],
              context: Context) -> dict[str, np.ndarray]:
        """Model inputs (no batch dimension) for reranking `candidates` given the feedback `events`."""
        cfg = self.cfg
        n = len(candidates)
        if n > cfg.n_max:
            raise FeatureError(f"{n} candidates exceed n_max={cfg.n_max}")
        roles = event_roles(events, cfg)
        pos_idx, neg_idx = split_feedback(events, cfg, roles)
        pos_idx = pos_idx[max(0, len(pos_idx) - cfg.max_positives):]
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
        out["ctx"] = np.array([np.sin(hour), np.cos(hour), len(pos_idx) / max(1, cfg.max_positives),
                               len(neg_idx) / max(1, L - cfg.max_positives), float(len(pos_idx) > 0)],
                              dtype=np.float32)
        for name, arr in out.items():
            if arr.dtype == np.float32 and not np.all(np.isfinite(arr)):
                raise FeatureError(f"non-finite values in feature {name!r}")
        return out
