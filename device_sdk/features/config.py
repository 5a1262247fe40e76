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
import math
import numbers
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


_INT_RANGES = {"n_max": (1, 4096), "l_max": (1, 4096), "max_positives": (0, 4096), "emb_dim": (1, 4096),
               "dense_dim": (1, 4096), "n_categories": (1, 1 << 20), "n_brands": (1, 1 << 20),
               "n_price_levels": (1, 1 << 20)}


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_types_and_ranges(cfg: FeatureConfig) -> None:
    """ValueError unless every field has its type and range (a config read from a bundle is untrusted);
    lists become tuples."""
    for name, (lo, hi) in _INT_RANGES.items():
        v = getattr(cfg, name)
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an int in {lo}..{hi}, got {v!r:.40}")
    v = cfg.dwell_threshold_ms
    if not _is_real(v) or not math.isfinite(v) or v < 0:
        raise ValueError(f"dwell_threshold_ms must be a finite number >= 0, got {v!r:.40}")
    if not isinstance(cfg.version, str) or len(cfg.version) > 64 or not isinstance(cfg.geo, str):
        raise ValueError("version and geo must be strings (version at most 64 characters)")
    finite = (lambda e: _is_real(e) and math.isfinite(e), "finite numbers")
    for name, (ok, what) in (("distance_buckets_km", finite), ("position_buckets", finite),
                             ("candidate_ops", (lambda e: isinstance(e, str) and len(e) <= 128, "operators"))):
        v = getattr(cfg, name)
        if not isinstance(v, tuple | list) or len(v) > 256 or not all(ok(e) for e in v):
            raise ValueError(f"{name} must be a list of at most 256 {what}, got {v!r:.60}")
        object.__setattr__(cfg, name, tuple(v))


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
        _check_types_and_ranges(self)
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
        if not isinstance(d, dict):
            raise ValueError(f"a feature config is a JSON object, got {type(d).__name__}")
        d = dict(d)
        d.setdefault("candidate_ops", DEFAULT_CANDIDATE_OPS)
        for name in ("distance_buckets_km", "position_buckets"):
            if isinstance(d.get(name), list | tuple):  # other shapes are refused by __post_init__
                d[name] = tuple(float(v) if _is_real(v) else v for v in d[name])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown feature config keys: {sorted(map(str, unknown))[:10]}")
        return cls(**d)  # operator names are checked where they are compiled (FeatureBuilder, read_bundle)

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
        if not isinstance(d, dict):
            raise ValueError(f"feature config {path} is not a JSON object")
        fp = d.pop("fingerprint", None)
        cfg = cls.from_dict(d)
        if fp is not None and fp != cfg.fingerprint():
            raise ValueError(f"feature config {path} fingerprint mismatch: file says {fp}, "
                             f"content hashes to {cfg.fingerprint()}")
        return cfg
