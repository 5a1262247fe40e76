"""The declarative feature config shared by training and the device.

A config is a list of operator expressions (strings) interpreted by one implementation,
``device_sdk.features.operators``. It is saved as JSON next to every exported model; the device
refuses a model whose feature config it cannot reproduce.

Candidate operator grammar (one float per candidate):
  ``cloud_score`` | ``cloud_position``            bias features from the cloud
  ``dist:context``                                log1p distance candidate -> search location
  ``dist_last:click`` | ``dist_min:click``        log1p distance to the last / nearest clicked item
  ``hit:FIELDS:SEQ`` | ``freq:FIELDS:SEQ`` | ``step:FIELDS:SEQ``
                                                  Match&Aggregate: FIELDS is ``category``, ``brand``,
                                                  ``price_level`` or a ``+``-joined combination;
                                                  SEQ is ``click`` (positives) or ``skip`` (negatives)
  ``sim_max:SEQ`` | ``sim_mean:SEQ``              cosine of the ID embedding to the sequence's items
  any Match&Aggregate or sim operator may end in ``@K``: only the last K events of the sequence count
  (``hit:brand:click@2`` = "the brand of one of the two latest clicks").

Besides the float operators, bucketisers turn distances and positions into small integer ids
(``distance_buckets_km``, ``position_buckets``): the embedding fields of candidates and feedback events.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_CANDIDATE_OPS: tuple[str, ...] = (
    "cloud_score",
    "cloud_position",
    "dist:context",
    "dist_last:click",
    "dist_min:click",
    "hit:category:click", "freq:category:click", "step:category:click",
    "hit:brand:click", "freq:brand:click", "step:brand:click",
    "hit:price_level:click", "freq:price_level:click",
    "hit:category+price_level:click",
    "hit:category:click@2", "hit:brand:click@2",
    "hit:category:skip", "freq:category:skip", "step:category:skip",
    "hit:brand:skip", "freq:brand:skip",
    "hit:price_level:skip", "freq:price_level:skip",
    "sim_max:click", "sim_mean:click",
    "sim_max:skip", "sim_mean:skip",
    "sim_max:click@2",
)

# The version of the operators' *code* (device_sdk/features/operators.py). Part of every fingerprint, so a bundle
# built before an operator changed what it computes is refused instead of being fed different features.
# tests/test_features.py pins a digest of the operators' output on a fixed input to this version: change the
# operators' output and that test fails until this is bumped (and the digest updated).
OPERATORS_VERSION = "ops-3"

EVENT_NUMERIC = ("log_dwell_s", "steps_ago", "position", "log_dist_context")
CONTEXT_NUMERIC = ("hour_sin", "hour_cos", "n_clicks", "n_skips", "has_click")


@dataclass(frozen=True)
class FeatureConfig:
    version: str = "features-v2"
    n_max: int = 25  # candidates per rerank (padded)
    l_max: int = 32  # feedback events (padded)
    max_positives: int = 8  # at most this many of l_max slots go to clicks; the rest to skips
    emb_dim: int = 16  # sparse ID embedding row width
    dense_dim: int = 16  # cloud ranker's last hidden layer width
    n_categories: int = 16  # ids >= this map to the "unknown" bucket
    n_brands: int = 64
    n_price_levels: int = 5
    dwell_threshold_ms: float = 1200.0  # an exposure is a negative only if visible at least this long
    geo: str = "planar"  # "planar" (lat/lon in km) or "haversine" (degrees)
    # bucketiser edges (ascending): value v gets id = number of edges <= v, so ids run 0..len(edges)
    distance_buckets_km: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0)
    position_buckets: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 25.0, 50.0, 100.0)
    candidate_ops: tuple[str, ...] = field(default=DEFAULT_CANDIDATE_OPS)

    def __post_init__(self) -> None:
        if self.geo not in ("planar", "haversine"):
            raise ValueError(f"geo must be 'planar' or 'haversine', got {self.geo!r}")
        if self.max_positives > self.l_max:
            raise ValueError("max_positives must be <= l_max")
        for name in ("distance_buckets_km", "position_buckets"):
            edges = getattr(self, name)
            if list(edges) != sorted(edges) or len(set(edges)) != len(edges):
                raise ValueError(f"{name} must be strictly ascending, got {edges}")

    @property
    def n_candidate_features(self) -> int:
        return len(self.candidate_ops)

    @property
    def n_distance_buckets(self) -> int:
        return len(self.distance_buckets_km) + 1

    @property
    def n_position_buckets(self) -> int:
        return len(self.position_buckets) + 1

    @property
    def n_event_features(self) -> int:
        return len(EVENT_NUMERIC)

    @property
    def n_context_features(self) -> int:
        return len(CONTEXT_NUMERIC)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["candidate_ops"] = list(self.candidate_ops)
        d["distance_buckets_km"] = list(self.distance_buckets_km)
        d["position_buckets"] = list(self.position_buckets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        d = dict(d)
        d["candidate_ops"] = tuple(d.get("candidate_ops", DEFAULT_CANDIDATE_OPS))
        for name in ("distance_buckets_km", "position_buckets"):
            if name in d:
                d[name] = tuple(float(v) for v in d[name])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown feature config keys: {sorted(unknown)}")
        return cls(**d)

    def fingerprint(self) -> str:
        """A short hash of everything that changes the features — the config's values and the operators' code
        version (``OPERATORS_VERSION``): the device checks it against a bundle."""
        blob = json.dumps({**self.to_dict(), "operators_version": OPERATORS_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({**self.to_dict(), "fingerprint": self.fingerprint()}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> FeatureConfig:
        d = json.loads(Path(path).read_text())
        fp = d.pop("fingerprint", None)
        cfg = cls.from_dict(d)
        if fp is not None and fp != cfg.fingerprint():
            raise ValueError(f"feature config {path} fingerprint mismatch: file says {fp}, "
                             f"content hashes to {cfg.fingerprint()}")
        return cfg
