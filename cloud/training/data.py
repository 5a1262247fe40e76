"""Impression logs -> training samples, through the device's own feature operators.

A sample is one rerank point of one shown list: the feedback the device had (``events[:p]``), and as
candidates the items not yet exposed at ``p`` that the user went on to see, labelled by what the user did
with them: the gain (``FeatureConfig.label_gain``) of the candidate's grade if it was earned after ``p``
(v1 logs: order = 2, click = 1, else 0). Lists without a positive or with fewer than two candidates are
skipped (no list-wise signal). A list logged without display positions is unordered: its candidates come in a
fixed pseudo-random order (a hash of the request and item ids), so the log's order carries no signal."""

from __future__ import annotations

import hashlib
import warnings
import zlib
from collections.abc import Iterable, Sequence
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
        if cands and all(c.shown_position < 0 for c in cands):  # unordered list: no display positions
            cands.sort(key=lambda c: zlib.crc32(f"{row.request_id}:{c.item.item_id}".encode()))
        else:
            cands.sort(key=lambda c: c.shown_position)
        cands = cands[: cfg.n_max]
        labels = np.zeros(cfg.n_max, dtype=np.float32)
        for k, c in enumerate(cands):
            labels[k] = cfg.gain(c.label_grade) if c.click_step >= p and c.label_grade > 0 else 0.0
        if len(cands) < 2 or labels.sum() == 0:
            continue
        feats = builder.build([c.item for c in cands], row.events[:p], row.context)
        ids = np.full(cfg.n_max, -1, dtype=np.int64)
        ids[: len(cands)] = [c.item.item_id for c in cands]
        out.append(RowSample(feats, labels, ids, p))
    return out


UNKNOWN_WARN_RATE = 0.05


def warn_unknown_buckets(builder: FeatureBuilder, *, limit: float = UNKNOWN_WARN_RATE) -> dict[str, float]:
    """Warn (UserWarning) for every declared field with more than `limit` of its values in the unknown bucket;
    return the rates of all fields."""
    rates = builder.unknown_rates()
    for name, rate in rates.items():
        if rate > limit:
            u, t = builder.unknown_counts[name]
            warnings.warn(f"field {name!r}: {u} of {t} candidate values ({rate:.1%}) fall in the unknown bucket "
                          f"(out of the feature config's range or vocabulary, or null); fit the config to the logs "
                          "with `edge-rerank logs infer-config`", UserWarning, stacklevel=2)
    return rates


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
    warn_unknown_buckets(builder)
    if not feats:
        raise ValueError("the logs hold no usable rerank samples (need rerank points followed by clicks)")
    return Samples(stack_batch(feats), np.stack(labels), sids, np.stack(ids), users, ctxs)


def _bucket(session_id: str, seed: int) -> int:
    return zlib.crc32(f"{seed}:{session_id}".encode()) % 10_000


def split_by_session(samples: S, valid_share: float = 0.2, seed: int = 0) -> tuple[S, S]:
    """Deterministic two-way split by session id hash, so one session never feeds both sides. Works for anything
    with ``session_ids`` and ``subset`` (device samples, the cloud ranker's page lists). For a trained model's
    train / validation / test split use :func:`split_sessions` and the :class:`SessionSplit` it records."""
    valid = np.array([_bucket(s, seed) < valid_share * 10_000 for s in samples.session_ids], dtype=bool)
    return samples.subset(np.flatnonzero(~valid)), samples.subset(np.flatnonzero(valid))


PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Shares of the *sessions* in validation (early stopping, best epoch) and test (reported numbers only);
    the rest train. A session's part depends only on its id and `seed` (a hash), not on the other sessions."""

    valid_share: float = 0.15
    test_share: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.valid_share < 1 and 0 < self.test_share < 1 and self.valid_share + self.test_share < 1):
            raise ValueError(f"split shares must be in (0, 1) and sum below 1, got valid {self.valid_share}, "
                             f"test {self.test_share}")

    def part_of(self, session_id: str) -> str:
        b = _bucket(session_id, self.seed)
        if b < self.test_share * 10_000:
            return "test"
        return "valid" if b < (self.test_share + self.valid_share) * 10_000 else "train"


class SplitMismatch(ValueError):
    """Logs whose sessions are not the ones a model's recorded split was made from."""


def sessions_hash(session_ids: Iterable[str]) -> str:
    """sha256 of the sorted unique session ids (one per line)."""
    return hashlib.sha256("\n".join(sorted(set(session_ids))).encode()).hexdigest()


@dataclass(frozen=True)
class SessionSplit:
    """A model's train / validation / test split by session, as recorded in its checkpoint: the config that
    made it, the session ids of each part, and the hash of all of them. Any later step recomputes the split
    from the config and checks it against the recorded parts (:meth:`verify`) before reporting held-out numbers
    on ``test``; logs with other sessions are refused (:class:`SplitMismatch`), never silently re-split."""

    config: SplitConfig
    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]
    sessions_sha256: str

    @classmethod
    def make(cls, session_ids: Iterable[str], config: SplitConfig) -> SessionSplit:
        ids = sorted(set(session_ids))
        parts: dict[str, list[str]] = {p: [] for p in PARTS}
        for s in ids:
            parts[config.part_of(s)].append(s)
        return cls(config, tuple(parts["train"]), tuple(parts["valid"]), tuple(parts["test"]), sessions_hash(ids))

    def part(self, name: str) -> tuple[str, ...]:
        if name not in PARTS:
            raise KeyError(f"no split part {name!r}; parts: {PARTS}")
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        return {p: len(self.part(p)) for p in PARTS}

    def describe(self) -> dict:
        """The compact record (no session lists) for summaries and reports."""
        return {"seed": self.config.seed, "valid_share": self.config.valid_share,
                "test_share": self.config.test_share, "sessions": self.counts(),
                "sessions_sha256": self.sessions_sha256}

    def to_dict(self) -> dict:
        return {"config": {"valid_share": self.config.valid_share, "test_share": self.config.test_share,
                           "seed": self.config.seed},
                "train": list(self.train), "valid": list(self.valid), "test": list(self.test),
                "sessions_sha256": self.sessions_sha256}

    @classmethod
    def from_dict(cls, d: dict) -> SessionSplit:
        split = cls(SplitConfig(**d["config"]), tuple(d["train"]), tuple(d["valid"]), tuple(d["test"]),
                    d["sessions_sha256"])
        split.check_consistent()
        return split

    def check_consistent(self) -> None:
        """The recorded parts are disjoint, hash to the recorded hash and are what the recorded config makes."""
        every = [*self.train, *self.valid, *self.test]
        if len(set(every)) != len(every):
            raise SplitMismatch("the recorded split puts a session in more than one part")
        if sessions_hash(every) != self.sessions_sha256:
            raise SplitMismatch("the recorded split's session lists do not match its recorded hash")
        again = SessionSplit.make(every, self.config)
        if again != self:
            raise SplitMismatch(f"the recorded split is not what its config {self.config} makes from its sessions")

    def verify(self, session_ids: Iterable[str], *, source: str = "the logs") -> None:
        """Raise :class:`SplitMismatch` unless `session_ids` (e.g. the sessions of samples built from a log
        directory) are exactly the sessions this split was made from."""
        have = set(session_ids)
        if sessions_hash(have) == self.sessions_sha256:
            return
        recorded = set(self.train) | set(self.valid) | set(self.test)
        missing, extra = recorded - have, have - recorded
        extra_test = sum(self.config.part_of(s) == "test" for s in extra)
        raise SplitMismatch(
            f"{source} do not hold the sessions this model's split was recorded from: {len(have)} sessions, "
            f"{len(recorded)} recorded ({len(missing)} recorded sessions missing, {len(extra)} sessions not in the "
            f"split{f', e.g. {sorted(extra)[0]!r}' if extra else ''}; {extra_test} of them would hash to test). "
            "Use the log directory the model was trained on; refusing to re-split, since held-out numbers on "
            "other sessions would not be held out from this model's training and validation")

    def apply(self, samples: S, *, source: str = "the logs") -> tuple[S, S, S]:
        """(train, valid, test) parts of `samples` (anything with ``session_ids`` and ``subset``), after
        :meth:`verify` of their sessions."""
        self.verify(samples.session_ids, source=source)
        return self.parts_of(samples)

    def parts_of(self, samples: S) -> tuple[S, S, S]:
        """(train, valid, test) of `samples` by the recorded sessions, without requiring all of them (e.g. a
        subset of the logs' rows); a session outside the split goes nowhere."""
        where = {s: p for p in PARTS for s in self.part(p)}
        idx = {p: np.flatnonzero([where.get(s) == p for s in samples.session_ids]) for p in PARTS}
        return samples.subset(idx["train"]), samples.subset(idx["valid"]), samples.subset(idx["test"])


def split_from_record(record: dict, session_ids: Iterable[str], *, source: str = "the logs") -> SessionSplit:
    """Recompute a split from its compact record (:meth:`SessionSplit.describe`: seed, shares, hash) over
    `session_ids`, refusing (:class:`SplitMismatch`) sessions whose hash differs from the recorded one."""
    ids = set(session_ids)
    cfg = SplitConfig(valid_share=record["valid_share"], test_share=record["test_share"], seed=record["seed"])
    split = SessionSplit.make(ids, cfg)
    if split.sessions_sha256 != record["sessions_sha256"]:
        raise SplitMismatch(f"{source} do not hold the sessions this model's split was recorded from: "
                            f"{len(ids)} sessions here, {sum(record['sessions'].values())} recorded, and their hash "
                            "differs. Use the log directory the model was trained on; refusing to re-split")
    return split


def split_sessions(samples: S, config: SplitConfig | None = None) -> tuple[SessionSplit, S, S, S]:
    """The seeded three-way split of `samples` by session: (record, train, valid, test)."""
    split = SessionSplit.make(samples.session_ids, config or SplitConfig())
    return (split, *split.parts_of(samples))


def list_lengths(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Real candidates per list (the last filled slot + 1): what length bucketing sorts by."""
    m = inputs["cand_mask"] > 0
    return np.where(m.any(axis=1), m.shape[1] - np.argmax(m[:, ::-1], axis=1), 0)


def trim_padding(batch: dict[str, np.ndarray], labels: np.ndarray | None = None
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Cut a batch's candidate and feedback dimensions to its longest real list / sequence (at least one slot).
    Padding is masked everywhere in the model (additive -1e4 in attention, masked losses), so the scores of real
    candidates do not change; the work shrinks from N_max x L_max to what the batch holds."""
    def last(m: np.ndarray) -> int:
        cols = np.flatnonzero(m.any(axis=0))
        return int(cols[-1]) + 1 if len(cols) else 1

    n = last(batch["cand_mask"] > 0)
    n_ev = last((batch["seq_pos_mask"] + batch["seq_neg_mask"]) > 0)
    out = {k: v[:, :n] if k.startswith("cand_") else v[:, :n_ev] if k.startswith("seq_") else v
           for k, v in batch.items()}
    return out, None if labels is None else labels[:, :n]


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            pool: int = 50) -> list[np.ndarray]:
    """Shuffled mini-batches of similar lengths: shuffle, sort each pool of `pool` batches by length, cut into
    batches, shuffle the batches. Every list once per epoch; little padding when lengths vary (long logs)."""
    perm = rng.permutation(len(lengths))
    batches = []
    step = batch_size * pool
    for i in range(0, len(perm), step):
        chunk = perm[i: i + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]
