"""The contracts every part of edge-rerank shares, in one place.

These dataclasses are the in-process form of the protobuf messages in ``proto/edge_rerank.proto``
(``device_sdk.wire`` converts between the two) and of the impression-log rows documented in
``docs/impression_log_schema.md``. Only numpy is needed here, so the phone runtime can use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
MAX_PAGE_INDEX = 1000


class ContractError(ValueError):
    """A value does not satisfy its contract (bad request, bad page, bad event)."""


class EventKind(IntEnum):
    """What happened. Values match ``edge_rerank.v1.EventKind`` on the wire."""

    EXPOSURE = 1  # the item left the screen; dwell_ms = how long it was visible
    CLICK = 2
    DETAIL_RETURN = 3  # back from the detail page; dwell_ms = time spent on the detail page
    ORDER = 4
    LEAVE = 5  # the user left the list; item_id = -1


_KIND_NAMES = {k.value: k.name.lower() for k in EventKind}


class EmbeddingEncoding(IntEnum):
    FP16 = 0
    INT8 = 1


@dataclass(frozen=True)
class Item:
    """A catalog item (a shop in the simulator)."""

    item_id: int
    category: int
    brand: int
    price_level: int
    lat: float
    lon: float
    quality: float = 0.0
    popularity: float = 0.0
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    lat: float = 0.0
    lon: float = 0.0
    hour: int = 12
    device: str = "phone"


@dataclass(frozen=True)
class SearchRequest:
    request_id: str
    session_id: str
    user_id: str
    query: str
    context: Context = field(default_factory=Context)
    page_index: int = 0
    page_size: int = DEFAULT_PAGE_SIZE

    def validate(self) -> SearchRequest:
        """Raise ContractError with a reason if the request cannot be served."""
        if not self.query or len(self.query) > 256:
            raise ContractError("query must be 1..256 characters")
        if not self.user_id or len(self.user_id) > 128:
            raise ContractError("user_id must be 1..128 characters")
        if len(self.request_id) > 128 or len(self.session_id) > 128:
            raise ContractError("request_id and session_id must be at most 128 characters")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ContractError(f"page_size must be in 1..{MAX_PAGE_SIZE}, got {self.page_size}")
        if not 0 <= self.page_index <= MAX_PAGE_INDEX:
            raise ContractError(f"page_index must be in 0..{MAX_PAGE_INDEX}, got {self.page_index}")
        if not (math.isfinite(self.context.lat) and math.isfinite(self.context.lon)):
            raise ContractError("context lat/lon must be finite")
        if not 0 <= self.context.hour <= 23:
            raise ContractError(f"context.hour must be in 0..23, got {self.context.hour}")
        return self


@dataclass(frozen=True)
class PackedEmbedding:
    """A sparse ID embedding row as it travels on the wire: fp16, or int8 with a per-row scale."""

    encoding: EmbeddingEncoding
    data: bytes
    scale: float = 1.0
    found: bool = True

    @staticmethod
    def pack(vector: np.ndarray, encoding: EmbeddingEncoding = EmbeddingEncoding.FP16,
             found: bool = True) -> PackedEmbedding:
        v = np.asarray(vector, dtype=np.float32).ravel()
        if not np.all(np.isfinite(v)):
            raise ContractError("embedding row has non-finite values")
        if encoding == EmbeddingEncoding.FP16:
            return PackedEmbedding(encoding, v.astype("<f2").tobytes(), 1.0, found)
        if encoding == EmbeddingEncoding.INT8:
            peak = float(np.max(np.abs(v))) if v.size else 0.0
            scale = peak / 127.0 if peak > 1e-30 else 1.0  # an all-~0 row quantizes to zeros
            q = np.clip(np.rint(v.astype(np.float64) / scale), -127, 127).astype(np.int8)
            return PackedEmbedding(encoding, q.tobytes(), scale, found)
        raise ContractError(f"unknown embedding encoding {encoding!r}")

    def unpack(self, dim: int | None = None) -> np.ndarray:
        if self.encoding == EmbeddingEncoding.FP16:
            if len(self.data) % 2:
                raise ContractError("fp16 embedding row has an odd number of bytes")
            v = np.frombuffer(self.data, dtype="<f2").astype(np.float32)
        elif self.encoding == EmbeddingEncoding.INT8:
            if not np.isfinite(self.scale):
                raise ContractError("int8 embedding row has a non-finite scale")
            v = np.frombuffer(self.data, dtype=np.int8).astype(np.float32) * np.float32(self.scale)
        else:
            raise ContractError(f"unknown embedding encoding {self.encoding!r}")
        if dim is not None and v.shape[0] != dim:
            raise ContractError(f"embedding row has {v.shape[0]} values, expected {dim}")
        return v


@dataclass
class PageItem:
    """One result as the device receives it: cloud order + what the device model needs."""

    item_id: int
    cloud_position: int
    cloud_score: float
    cloud_dense: np.ndarray  # float32 [dense_dim], the cloud ranker's last hidden layer
    id_embedding: np.ndarray  # float32 [emb_dim], the sparse ID embedding row (decoded)
    category: int
    brand: int
    price_level: int
    lat: float
    lon: float
    embedding_found: bool = True
    # declared item fields beyond the shop's (log format v2): name -> str / int (categorical) or float (numeric);
    # the operators read a declared field from here first, then from the attribute of that name (category, ...)
    attrs: dict[str, str | int | float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # wire precision is canonical: float32 scores, so live and logged features agree bit for bit
        self.cloud_score = float(np.float32(self.cloud_score))
        self.cloud_dense = np.asarray(self.cloud_dense, dtype=np.float32)
        self.id_embedding = np.asarray(self.id_embedding, dtype=np.float32)


@dataclass
class SearchPage:
    request_id: str
    session_id: str
    page_index: int
    model_version: str
    items: list[PageItem]
    has_more: bool = False


@dataclass
class FeedbackEvent:
    """A device-local event. The item's attributes are copied in when the event is recorded,
    so the feature operators never need the page again (and the store is self-contained)."""

    ts_ms: int
    request_id: str
    item_id: int
    kind: EventKind
    position: int = -1
    dwell_ms: float = 0.0
    category: int = -1
    brand: int = -1
    price_level: int = -1
    lat: float = 0.0
    lon: float = 0.0
    id_embedding: np.ndarray | None = None
    attrs: dict[str, str | int | float | None] = field(default_factory=dict)  # the item's declared fields
    # the kind's name in an open set (log format v2: its role comes from the feature config's event_kinds);
    # empty: the name of `kind`. A v2 kind outside EventKind is carried with kind=EXPOSURE and this name.
    kind_name: str = ""

    @property
    def name(self) -> str:
        return self.kind_name or _KIND_NAMES.get(int(self.kind), "")

    def __post_init__(self) -> None:
        self.dwell_ms = float(np.float32(self.dwell_ms))  # float32 on the wire and in the logs
        if self.id_embedding is not None:
            self.id_embedding = np.asarray(self.id_embedding, dtype=np.float32)

    @staticmethod
    def for_item(item: PageItem, kind: EventKind, ts_ms: int, request_id: str, position: int,
                 dwell_ms: float = 0.0) -> FeedbackEvent:
        return FeedbackEvent(ts_ms=ts_ms, request_id=request_id, item_id=item.item_id, kind=kind,
                             position=position, dwell_ms=float(dwell_ms), category=item.category,
                             brand=item.brand, price_level=item.price_level, lat=item.lat, lon=item.lon,
                             id_embedding=item.id_embedding, attrs=dict(item.attrs))


@dataclass
class LoggedCandidate:
    item: PageItem
    shown_position: int
    exposed: bool = False
    clicked: bool = False
    ordered: bool = False
    first_exposure_step: int = -1
    click_step: int = -1  # index into events where the label was earned (v2: label_step)
    exposure_dwell_ms: float = 0.0
    grade: int = -1  # graded label (v2 logs); -1: derived from clicked / ordered (v1: 2 ordered, 1 clicked, 0)

    @property
    def label_grade(self) -> int:
        if self.grade >= 0:
            return self.grade
        return 2 if self.ordered else (1 if self.clicked else 0)


@dataclass
class ImpressionRow:
    """One row of the impression log: one shown list. See docs/impression_log_schema.md."""

    request_id: str
    session_id: str
    user_id: str
    query: str
    context: Context
    page_index: int
    model_version: str
    arm: str
    candidates: list[LoggedCandidate]
    events: list[FeedbackEvent]
    rerank_points: list[int]


_INT64_MAX = (1 << 63) - 1
_EVENT_INT_FIELDS = {"ts_ms": (0, _INT64_MAX), "item_id": (-1, _INT64_MAX), "position": (-1, (1 << 31) - 1),
                     "category": (-1, (1 << 31) - 1), "brand": (-1, (1 << 31) - 1),
                     "price_level": (-1, (1 << 31) - 1)}
MAX_EMBEDDING_DIM = 4096


def _is_int(v: object) -> bool:
    return type(v) is int or (isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_))


def _is_finite_real(v: object) -> bool:
    if type(v) is float:  # the common case first
        return math.isfinite(v)
    if not isinstance(v, int | float | np.integer | np.floating) or isinstance(v, bool | np.bool_):
        return False
    try:
        return bool(np.isfinite(float(v)))
    except OverflowError:  # an int beyond float range
        return False


def validate_feedback_event(event: object, emb_dim: int | None = None) -> FeedbackEvent:
    """Return `event` if every field has its type and range (what the stores and the feature operators assume);
    raise ContractError naming the first bad field otherwise. Ints are real ints (not bool) within their column's
    range (ts_ms >= 0 and < 2^63; ids and positions >= -1, the "none" value); floats are finite (dwell_ms >= 0);
    the embedding is None or a 1-D finite float32 vector (of `emb_dim` values if given)."""
    if type(event) is not FeedbackEvent or not _plain_event_scalars(event):  # else every scalar is fine
        _check_event_scalars(event)
    emb = event.id_embedding
    if emb is not None:
        if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or emb.ndim != 1:
            raise ContractError("id_embedding must be None or a 1-D float32 array")
        size = emb.shape[0]
        if (emb_dim is not None and size != emb_dim) or not 1 <= size <= MAX_EMBEDDING_DIM:
            raise ContractError(f"id_embedding has {size} values, expected {emb_dim or f'1..{MAX_EMBEDDING_DIM}'}")
        if not math.isfinite(float(np.add.reduce(emb, dtype=np.float64))):  # a NaN / inf anywhere makes the sum one
            raise ContractError("id_embedding has non-finite values")
    return event


_INT31_MAX = (1 << 31) - 1
_KIND_VALUES = EventKind._value2member_map_
_F32 = np.dtype(np.float32)


def plain_valid_event(event: object, emb_dim: int | None = None) -> bool:
    """True if `event` is the common event and passes every check of :func:`validate_feedback_event` (a
    ``FeedbackEvent`` itself, plain ints in range, finite floats, dwell >= 0, a short request id, a known kind, no
    kind name, no attrs, and no embedding or a finite native float32 vector of `emb_dim` values): the feedback
    store's per-event fast path. False says nothing: the event then goes through ``validate_feedback_event`` (which
    may accept it). Never True for an event ``validate_feedback_event`` refuses (tests/test_feedback_store_add.py)."""
    if type(event) is not FeedbackEvent or not _plain_event_scalars(event):
        return False
    emb = event.id_embedding
    if emb is None:
        return True
    if type(emb) is not np.ndarray or emb.dtype is not _F32 or emb.ndim != 1:
        return False
    size = emb.shape[0]
    if (emb_dim is not None and size != emb_dim) or not 1 <= size <= MAX_EMBEDDING_DIM:
        return False
    return math.isfinite(float(np.add.reduce(emb, dtype=np.float64)))  # a NaN / inf anywhere makes the sum one


def _plain_event_scalars(e: FeedbackEvent) -> bool:
    """The common event in one expression: plain ints in range, finite floats (dwell >= 0), a short request id, a
    known kind, no kind name, no attrs. False sends the event through every check (which names what is wrong)."""
    ts, item, pos, cat, brand, price, dwell, lat, lon = (e.ts_ms, e.item_id, e.position, e.category, e.brand,
                                                         e.price_level, e.dwell_ms, e.lat, e.lon)
    return (type(ts) is int and type(item) is int and type(pos) is int and type(cat) is int and type(brand) is int
            and type(price) is int and type(dwell) is float and type(lat) is float and type(lon) is float
            and 0 <= ts <= _INT64_MAX and -1 <= item <= _INT64_MAX and -1 <= pos <= _INT31_MAX
            and -1 <= cat <= _INT31_MAX and -1 <= brand <= _INT31_MAX and -1 <= price <= _INT31_MAX
            and math.isfinite(dwell) and math.isfinite(lat) and math.isfinite(lon) and dwell >= 0
            and type(e.request_id) is str and len(e.request_id) <= 128 and e.kind_name == ""
            and type(e.kind) in (EventKind, int) and e.kind in _KIND_VALUES and type(e.attrs) is dict and not e.attrs)


def _check_event_scalars(event: object) -> None:
    if not isinstance(event, FeedbackEvent):
        raise ContractError(f"not a FeedbackEvent: {type(event).__name__}")
    for name, (lo, hi) in _EVENT_INT_FIELDS.items():
        v = getattr(event, name)
        if not _is_int(v):
            raise ContractError(f"{name} must be an int, got {type(v).__name__}")
        if not lo <= int(v) <= hi:
            raise ContractError(f"{name}={int(v)} is outside {lo}..{hi}")
    if not isinstance(event.request_id, str) or len(event.request_id) > 128:
        raise ContractError("request_id must be a string of at most 128 characters")
    kind = event.kind
    if not _is_int(kind) or int(kind) not in EventKind._value2member_map_:
        raise ContractError(f"kind must be an EventKind, got {kind!r:.40}")
    for name in ("dwell_ms", "lat", "lon"):
        v = getattr(event, name)
        if not _is_finite_real(v):
            raise ContractError(f"{name} must be a finite number, got {v!r:.40}")
    if event.dwell_ms < 0:
        raise ContractError(f"dwell_ms must be >= 0, got {event.dwell_ms}")
    if not isinstance(event.kind_name, str) or len(event.kind_name) > 64:
        raise ContractError("kind_name must be a string of at most 64 characters")
    attrs = event.attrs
    if not isinstance(attrs, dict) or len(attrs) > 64 or not all(
            isinstance(k, str) and len(k) <= 64 and (v is None or (isinstance(v, str) and len(v) <= 256)
                                                     or _is_int(v) or _is_finite_real(v))
            for k, v in attrs.items()):
        raise ContractError("attrs must map at most 64 names to None, a string (<= 256 characters) or a finite number")
