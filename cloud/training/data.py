"""Impression logs -> training samples, through the device's own feature operators.

A sample is one rerank point of one shown list: the feedback the device had (``events[:p]``), and as
candidates the items not yet exposed at ``p`` that the user went on to see, labelled by what the user did
with them (order = 2, click = 1, else 0). Lists without a positive or with fewer than two candidates are
skipped (no list-wise signal)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from edge_rerank.device_sdk.contracts import Context, ImpressionRow
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig, stack_batch

S = TypeVar("S")


@dataclass
class Samples:
    inputs: dict[str, np.ndarray]  # name -> [S, ...] in the model's input layout
    labels: np.ndarray  # [S, n_max] float32 graded relevance (0 on padding)
    session_ids: list[str]
    item_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # [S, n_max], -1 on padding
    user_ids: list[str] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def mask(self) -> np.ndarray:
        return self.inputs["cand_mask"]

    def subset(self, idx: np.ndarray) -> Samples:
        return Samples({k: v[idx] for k, v in self.inputs.items()}, self.labels[idx],
                       [self.session_ids[i] for i in idx], self.item_ids[idx],
                       [self.user_ids[i] for i in idx], [self.contexts[i] for i in idx])


@dataclass
class RowSample:
    """One usable rerank point of one shown list."""

    features: dict[str, np.ndarray]
    labels: np.ndarray  # [n_max]
    item_ids: np.ndarray  # [n_max], -1 on padding
    point: int  # the rerank point: events[:point] were known


def samples_from_row(row: ImpressionRow, builder: FeatureBuilder) -> list[RowSample]:
    """Every usable rerank point of one shown list, candidates in shown order."""
    cfg = builder.cfg
    out = []
    for p in sorted(set(row.rerank_points)):
        cands = [c for c in row.candidates if c.exposed and c.first_exposure_step >= p]
        cands.sort(key=lambda c: c.shown_position)
        cands = cands[: cfg.n_max]
        labels = np.zeros(cfg.n_max, dtype=np.float32)
        for k, c in enumerate(cands):
            labels[k] = 2.0 if (c.ordered and c.click_step >= p) else (1.0 if c.clicked and c.click_step >= p else 0.0)
        if len(cands) < 2 or labels.sum() == 0:
            continue
        feats = builder.build([c.item for c in cands], row.events[:p], row.context)
        ids = np.full(cfg.n_max, -1, dtype=np.int64)
        ids[: len(cands)] = [c.item.item_id for c in cands]
        out.append(RowSample(feats, labels, ids, p))
    return out


def build_samples(rows: Sequence[ImpressionRow], cfg: FeatureConfig, *, progress: bool = True) -> Samples:
    builder = FeatureBuilder(cfg)
    feats, labels, sids, ids, users, ctxs = [], [], [], [], [], []
    # a fixed order whatever order the Parquet parts were read in: training is then reproducible
    rows = sorted(rows, key=lambda r: (r.session_id, r.page_index, r.request_id))
    for row in tqdm(rows, desc="features", unit="list", disable=not progress, leave=False):
        for rs in samples_from_row(row, builder):
            feats.append(rs.features)
            labels.append(rs.labels)
            ids.append(rs.item_ids)
            sids.append(row.session_id)
            users.append(row.user_id)
            ctxs.append(row.context)
    if not feats:
        raise ValueError("the logs hold no usable rerank samples (need rerank points followed by clicks)")
    return Samples(stack_batch(feats), np.stack(labels), sids, np.stack(ids), users, ctxs)


def split_by_session(samples: S, valid_share: float = 0.2, seed: int = 0) -> tuple[S, S]:
    """Deterministic split by session id hash, so one session never feeds both sides. Works for anything with
    ``session_ids`` and ``subset`` (device samples, the cloud ranker's page lists)."""
    h = np.array([zlib.crc32(f"{seed}:{s}".encode()) % 10_000 for s in samples.session_ids])
    valid = h < valid_share * 10_000
    return samples.subset(np.flatnonzero(~valid)), samples.subset(np.flatnonzero(valid))
