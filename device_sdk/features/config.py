"""The declarative feature config shared by training and the device.

A config is a list of operator expressions (strings) interpreted by one implementation,
``device_sdk.features.operators``. It is saved as JSON next to every exported model; the device
refuses a model whose feature config it cannot reproduce.

Item fields are *declared* (``fields``): categorical fields (integer ids in a fixed range, a vocabulary, or
hashed into buckets; every categorical field has one more "unknown" bucket, and the builder counts what falls in
it) and numeric fields (bucketised by quantile edges). An empty ``fields`` is the shop world's declaration:
``category``, ``brand``, ``price_level`` as integer ids in ``n_categories`` / ``n_brands`` / ``n_price_levels``
(configs written before declared fields existed load unchanged and keep their fingerprint).

Candidate operator grammar (one float per candidate):
  ``cloud_score`` | ``cloud_position``            bias features from the cloud
  ``dist:context``                                log1p distance candidate -> search location
  ``dist_last:click`` | ``dist_min:click``        log1p distance to the last / nearest clicked item
  ``hit:FIELDS:SEQ`` | ``freq:FIELDS:SEQ`` | ``step:FIELDS:SEQ``
                                                  Match&Aggregate: FIELDS is any declared categorical field or
                                                  ``item`` (the item's identity), or a ``+``-joined combination;
                                                  SEQ is ``click`` (positives), ``skip`` (negatives) or ``seen``
                                                  (every exposure so far, not truncated to l_max)
  ``seen:item`` | ``skipped:item`` | ``clicked:item``
                                                  log1p of how often this very item was shown / skipped / clicked
                                                  earlier in the session (the whole history, not just l_max)
  ``dwell_max:item``                              log1p of the longest dwell (s) on this item earlier in the session
  ``num:FIELD``                                   a declared numeric field's quantile bucket / number of buckets
  ``sim_max:SEQ`` | ``sim_mean:SEQ``              cosine of the ID embedding (item vector) to the sequence's items
  any Match&Aggregate or sim operator may end in ``@K``: only the last K events of the sequence count
  (``hit:brand:click@2`` = "the brand of one of the two latest clicks").

Event kinds are an open set: ``event_kinds`` maps a kind's name to its role (``positive``, ``positive_dwell``,
``negative``, ``negative_dwell``, ``neutral``; the ``_dwell`` roles count only when the event's dwell reaches
``dwell_threshold_ms``). Negative kinds are exposures: an item with a positive is never a negative. Kinds the
config does not name are neutral. Graded labels map to training gains through ``label_gain``.

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

# Item-identity feedback operators (issue 14). Not in the default: the shop world never re-shows an item within a
# session (pages are disjoint slices of one ranking), so they would be constant there, and adding them would change
# the default feature width, i.e. every default bundle's fingerprint. `logs infer-config` adds them, and a world
# that re-shows items (the feed world) adds them to its config.
IDENTITY_OPS: tuple[str, ...] = (
    "seen:item", "skipped:item", "clicked:item", "dwell_max:item",
    "step:item:seen", "step:item:click", "step:item:skip",
)

ROLES = ("positive", "positive_dwell", "negative", "negative_dwell", "neutral")
DEFAULT_EVENT_KINDS: tuple[tuple[str, str], ...] = (
    ("click", "positive"), ("exposure", "negative_dwell"), ("detail_return", "neutral"), ("order", "neutral"),
    ("leave", "neutral"),
)
DEFAULT_LABEL_GAIN: tuple[float, ...] = (0.0, 1.0, 2.0)  # v1 logs: 0 = shown, 1 = clicked, 2 = ordered
CATEGORICAL_MODES = ("ids", "vocab", "hash")
MAX_VOCAB = 1 << 16

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


_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
RESERVED_NAMES = frozenset({"item", "click", "skip", "seen", "context"})


@dataclass(frozen=True)
class FieldSpec:
    """One declared item field. Categorical (``kind="categorical"``): ``mode`` ``ids`` (integer values
    0..size-1), ``vocab`` (the listed values, str or int, get ids 0..len-1) or ``hash`` (crc32 of the value's text
    modulo ``size``); anything else (out of range, not in the vocabulary, null) goes to the unknown bucket ``n``.
    Numeric (``kind="numeric"``): ``edges`` are ascending bucket edges (from quantiles)."""

    name: str
    kind: str = "categorical"
    mode: str = "ids"
    size: int = 0  # ids: the id range; hash: the number of buckets; vocab: ignored (len(vocab))
    vocab: tuple[str | int, ...] = ()
    edges: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        """Known buckets (ids 0..n-1); the unknown bucket is id n."""
        if self.kind == "numeric":
            return len(self.edges) + 1
        return len(self.vocab) if self.mode == "vocab" else self.size

    def check(self) -> None:
        name = self.name
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= _NAME_OK \
                or name in RESERVED_NAMES:
            raise ValueError(f"field name must be 1..64 characters of a-z, 0-9, _ and not one of "
                             f"{sorted(RESERVED_NAMES)}, got {name!r:.70}")
        if self.kind not in ("categorical", "numeric"):
            raise ValueError(f"field {name}: kind must be 'categorical' or 'numeric', got {self.kind!r:.40}")
        if not isinstance(self.vocab, tuple | list) or not isinstance(self.edges, tuple | list):
            raise ValueError(f"field {name}: vocab and edges must be lists")
        object.__setattr__(self, "vocab", tuple(self.vocab))
        object.__setattr__(self, "edges", tuple(float(e) if _is_real(e) else e for e in self.edges))
        if self.kind == "numeric":
            if self.vocab or self.size or self.mode != "ids":
                raise ValueError(f"numeric field {name} takes only edges (no mode, size or vocab)")
            e = self.edges
            if len(e) > 256 or not all(_is_real(v) and math.isfinite(v) for v in e) or list(e) != sorted(set(e)):
                raise ValueError(f"numeric field {name}: edges must be at most 256 strictly ascending finite numbers")
            return
        if self.edges:
            raise ValueError(f"categorical field {name} takes no edges")
        if self.mode not in CATEGORICAL_MODES:
            raise ValueError(f"field {name}: mode must be one of {CATEGORICAL_MODES}, got {self.mode!r:.40}")
        if self.mode == "vocab":
            v = self.vocab
            if not 1 <= len(v) <= MAX_VOCAB or len(set(v)) != len(v) or not all(
                    (isinstance(x, str) and len(x) <= 256) or (isinstance(x, int) and not isinstance(x, bool))
                    for x in v):
                raise ValueError(f"field {name}: vocab must be 1..{MAX_VOCAB} distinct strings (<= 256 characters) "
                                 "or ints")
            if self.size not in (0, len(v)):
                raise ValueError(f"field {name}: size must be 0 or len(vocab) in vocab mode")
            object.__setattr__(self, "size", len(v))
        else:
            if self.vocab:
                raise ValueError(f"field {name}: a vocab needs mode 'vocab'")
            if not isinstance(self.size, int) or isinstance(self.size, bool) or not 1 <= self.size <= 1 << 20:
                raise ValueError(f"field {name}: size must be an int in 1..{1 << 20}, got {self.size!r:.40}")

    def to_dict(self) -> dict:
        if self.kind == "numeric":
            return {"name": self.name, "kind": "numeric", "edges": list(self.edges)}
        d: dict = {"name": self.name, "kind": "categorical", "mode": self.mode}
        if self.mode == "vocab":
            d["vocab"] = list(self.vocab)
        else:
            d["size"] = self.size
        return d

    @classmethod
    def from_dict(cls, d: object) -> FieldSpec:
        if not isinstance(d, dict):
            raise ValueError(f"a declared field is a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown keys in declared field: {sorted(map(str, unknown))[:10]}")
        if "name" not in d:
            raise ValueError("a declared field needs a name")
        return cls(**d)

    def __post_init__(self) -> None:
        self.check()


def _check_declarations(cfg: FeatureConfig) -> None:
    if not isinstance(cfg.fields, tuple | list) or len(cfg.fields) > 64:
        raise ValueError("fields must be a list of at most 64 declared fields")
    fields = tuple(FieldSpec.from_dict(f) if isinstance(f, dict) else f for f in cfg.fields)
    if not all(isinstance(f, FieldSpec) for f in fields):
        raise ValueError("fields must hold declared fields (objects with name, kind, ...)")
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"declared field names must be unique, got {names}")
    object.__setattr__(cfg, "fields", fields)
    kinds = cfg.event_kinds
    if isinstance(kinds, dict):
        kinds = tuple(kinds.items())
    if not isinstance(kinds, tuple | list) or len(kinds) > 64 or not all(
            isinstance(k, tuple | list) and len(k) == 2 and isinstance(k[0], str) and 1 <= len(k[0]) <= 64
            and k[1] in ROLES for k in kinds):
        raise ValueError(f"event_kinds must map at most 64 kind names to a role in {ROLES}, got {kinds!r:.80}")
    kinds = tuple((str(k), str(r)) for k, r in kinds)
    if len({k for k, _ in kinds}) != len(kinds):
        raise ValueError("event_kinds names a kind twice")
    object.__setattr__(cfg, "event_kinds", kinds)
    g = cfg.label_gain
    if not isinstance(g, tuple | list) or not 1 <= len(g) <= 64 or not all(
            _is_real(v) and math.isfinite(v) and v >= 0 for v in g):
        raise ValueError(f"label_gain must be 1..64 finite numbers >= 0 (gain of grade 0, 1, ...), got {g!r:.60}")
    object.__setattr__(cfg, "label_gain", tuple(float(v) for v in g))
    emb = cfg.embedding_fields
    cats = [f.name for f in cfg.declared_fields if f.kind == "categorical"]
    if not isinstance(emb, tuple | list) or len(emb) > 3 or not all(isinstance(e, str) and e in cats for e in emb):
        raise ValueError(f"embedding_fields must name at most 3 declared categorical fields {cats}, got {emb!r:.60}")
    object.__setattr__(cfg, "embedding_fields", tuple(emb))


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
    # declared item fields (empty: the shop world's category / brand / price_level, sized by n_* above)
    fields: tuple[FieldSpec, ...] = ()
    # the declared categorical fields feeding the model's three categorical embedding slots (default: the first
    # three categorical fields; a slot without a field is constant)
    embedding_fields: tuple[str, ...] = ()
    event_kinds: tuple[tuple[str, str], ...] = DEFAULT_EVENT_KINDS  # kind name -> role
    label_gain: tuple[float, ...] = DEFAULT_LABEL_GAIN  # grade -> training gain (grades beyond: the last gain)

    def __post_init__(self) -> None:
        _check_types_and_ranges(self)
        _check_declarations(self)
        if self.geo not in ("planar", "haversine"):
            raise ValueError(f"geo must be 'planar' or 'haversine', got {self.geo!r}")
        if self.max_positives > self.l_max:
            raise ValueError("max_positives must be <= l_max")
        for name in ("distance_buckets_km", "position_buckets"):
            edges = getattr(self, name)
            if list(edges) != sorted(edges) or len(set(edges)) != len(edges):
                raise ValueError(f"{name} must be strictly ascending, got {edges}")

    @property
    def declared_fields(self) -> tuple[FieldSpec, ...]:
        """The item fields the operators use: ``fields``, or the shop world's three integer-id fields."""
        if self.fields:
            return self.fields
        return (FieldSpec("category", size=self.n_categories), FieldSpec("brand", size=self.n_brands),
                FieldSpec("price_level", size=self.n_price_levels))

    def field_spec(self, name: str) -> FieldSpec | None:
        return next((f for f in self.declared_fields if f.name == name), None)

    @property
    def slot_fields(self) -> tuple[str | None, str | None, str | None]:
        """The categorical field feeding each of the model's three categorical embedding slots (None: unused)."""
        names = self.embedding_fields or tuple(f.name for f in self.declared_fields if f.kind == "categorical")[:3]
        return tuple((*names, None, None, None)[:3])  # type: ignore[return-value]

    @property
    def slot_sizes(self) -> tuple[int, int, int]:
        """Known buckets of each embedding slot (the model's tables have one more row, the unknown bucket)."""
        sizes = [(self.field_spec(f).n if f else 1) for f in self.slot_fields]  # type: ignore[union-attr]
        return sizes[0], sizes[1], sizes[2]

    def role_of(self, kind_name: str) -> str:
        return dict(self.event_kinds).get(kind_name, "neutral")

    def gain(self, grade: int) -> float:
        return self.label_gain[max(0, min(grade, len(self.label_gain) - 1))]

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
        """JSON-ready dict. The declaration keys (fields, embedding_fields, event_kinds, label_gain) are left out
        at their defaults, so a shop config serialises (and fingerprints) exactly as before they existed."""
        d = asdict(self)
        d["candidate_ops"] = list(self.candidate_ops)
        d["distance_buckets_km"] = list(self.distance_buckets_km)
        d["position_buckets"] = list(self.position_buckets)
        d["fields"] = [f.to_dict() for f in self.fields]
        d["embedding_fields"] = list(self.embedding_fields)
        d["event_kinds"] = dict(self.event_kinds)
        d["label_gain"] = list(self.label_gain)
        for name, default in (("fields", []), ("embedding_fields", []), ("event_kinds", dict(DEFAULT_EVENT_KINDS)),
                              ("label_gain", list(DEFAULT_LABEL_GAIN))):
            if d[name] == default:
                del d[name]
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
        if isinstance(d.get("fields"), list):
            d["fields"] = tuple(FieldSpec.from_dict(f) for f in d["fields"])
        for name in ("embedding_fields", "label_gain"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        if isinstance(d.get("event_kinds"), dict):
            d["event_kinds"] = tuple(d["event_kinds"].items())
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
        try:
            cfg = cls.from_dict(d)  # values and structure; operators: operators.load_feature_config
        except (TypeError, ValueError) as exc:
            raise ValueError(f"feature config {path}: {exc}") from None
        if fp is not None and fp != cfg.fingerprint():
            raise ValueError(f"feature config {path} fingerprint mismatch: file says {fp}, "
                             f"content hashes to {cfg.fingerprint()}")
        return cfg
