"""A session's feedback events as numpy columns (issue 18): what the feature builder reads without touching the
event objects.

``EventColumnsWriter`` keeps one session's events in preallocated columns, appended in place as events arrive
(the in-memory ``FeedbackStore`` writes each validated event once, at ``add`` time); ``snapshot()`` returns an
:class:`EventColumns`: an immutable ``Sequence[FeedbackEvent]`` (the events themselves, for any reranker) that also
carries the column views. Rows below a snapshot's end are never written again: growing or dropping the oldest
events (the per-session bound) copies into fresh buffers, so an old snapshot keeps seeing exactly its events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import overload

import numpy as np

from edge_rerank.device_sdk.contracts import _KIND_NAMES, FeedbackEvent

# the FeedbackEvent attributes kept as int64 columns, in this order (the shop world's categorical fields)
CAT_FIELDS = ("category", "brand", "price_level")


class _Buffers:
    """Preallocated columns of `cap` rows; rows [0, size) are written, once."""

    def __init__(self, cap: int, width: int):
        self.cap, self.width = cap, width
        self.item = np.zeros(cap, np.int64)
        self.kind = np.zeros(cap, np.int64)
        self.dwell = np.zeros(cap, np.float64)
        self.position = np.zeros(cap, np.float64)
        self.lat = np.zeros(cap, np.float64)
        self.lon = np.zeros(cap, np.float64)
        self.cats = np.zeros((len(CAT_FIELDS), cap), np.int64)
        self.emb = np.zeros((cap, width), np.float32)
        self.has_emb = np.zeros(cap, bool)
        self.plain = np.zeros(cap, bool)  # no attrs, no kind_name: every value the builder needs is in the columns
        self.events: list[FeedbackEvent] = []
        self.derived: dict = {}  # per feature builder: what it derived from rows [0, k) (features.event_rows)
        self.last_odd = -1  # the last row that is not plain

    def copy_rows(self, lo: int, hi: int, cap: int, width: int) -> _Buffers:
        out = _Buffers(cap, width)
        k = hi - lo
        for name in ("item", "kind", "dwell", "position", "lat", "lon", "has_emb", "plain"):
            getattr(out, name)[:k] = getattr(self, name)[lo:hi]
        out.cats[:, :k] = self.cats[:, lo:hi]
        if width == self.width:
            out.emb[:k] = self.emb[lo:hi]
        out.events = self.events[lo:hi]
        odd = np.flatnonzero(~out.plain[:k])
        out.last_odd = int(odd[-1]) if odd.size else -1
        return out


def _plain_int(v: object) -> bool:
    return type(v) is int and -(1 << 62) < v < (1 << 62)


def _write_scalars(b: _Buffers, i: int, e: FeedbackEvent) -> None:
    """Row `i`'s scalar columns from `e` (what every append writes, plain or not)."""
    b.item[i] = e.item_id
    b.kind[i] = e.kind
    b.dwell[i] = e.dwell_ms
    b.position[i] = e.position
    b.lat[i] = e.lat
    b.lon[i] = e.lon


class EventColumnsWriter:
    """One session's events in columns, oldest first, at most `max_events` (the oldest are dropped)."""

    def __init__(self, max_events: int, width: int = 0, cap: int = 64):
        self.max_events = max(0, int(max_events))
        self._b = _Buffers(max(1, min(cap, self.max_events)), width)
        self._lo = 0  # first kept row
        self.ragged = False  # an embedding of another width than the column's arrived: vectors from the events

    def __len__(self) -> int:
        return len(self._b.events) - self._lo

    def append(self, e: FeedbackEvent) -> None:
        """Write one event (validated by the caller: ``contracts.validate_feedback_event``) in place."""
        b = self._b
        i = len(b.events)
        emb = e.id_embedding
        if emb is not None and emb.size and b.width == 0 and not self.ragged:  # the first vector sets the width
            b = self._b = b.copy_rows(self._lo, i, b.cap, int(emb.size))
            i -= self._lo
            self._lo = 0
        if i == b.cap:  # full: drop what the bound no longer keeps, grow if still full
            keep = min(len(self), self.max_events)
            lo = i - keep
            b = self._b = b.copy_rows(lo, i, max(b.cap, min(2 * keep + 1, 2 * self.max_events)), b.width)
            i, self._lo = keep, 0
        _write_scalars(b, i, e)
        cats = (e.category, e.brand, e.price_level)
        plain = not e.attrs and not e.kind_name and e.kind in _KIND_NAMES and all(map(_plain_int, cats))
        if plain:
            b.cats[:, i] = cats
        if emb is not None and emb.size:
            if emb.shape == (b.width,):
                b.emb[i] = emb
                b.has_emb[i] = True
            else:
                self.ragged = True
        b.plain[i] = plain
        if not plain:
            b.last_odd = i
        b.events.append(e)
        if len(self) > self.max_events:
            self._lo += 1

    def append_plain(self, e: FeedbackEvent) -> None:
        """``append`` of an event ``contracts.plain_valid_event`` accepted (plain: no attrs, no kind name, a known
        kind, plain ints): the same columns, written without re-deriving what that check established. Events that
        need the buffer to change (the first vector, a full buffer, a vector of another width) take ``append``."""
        b = self._b
        i = len(b.events)
        emb = e.id_embedding
        if i == b.cap or (emb is not None and emb.shape[0] != b.width):
            self.append(e)
            return
        _write_scalars(b, i, e)
        cats = b.cats
        cats[0, i] = e.category
        cats[1, i] = e.brand
        cats[2, i] = e.price_level
        if emb is not None:
            b.emb[i] = emb
            b.has_emb[i] = True
        b.plain[i] = True
        b.events.append(e)
        if i + 1 - self._lo > self.max_events:
            self._lo += 1

    def extend(self, events: Iterable[FeedbackEvent]) -> None:
        for e in events:
            self.append(e)

    def events(self) -> list[FeedbackEvent]:
        return self._b.events[self._lo:]

    def snapshot(self) -> EventColumns:
        return EventColumns(self._b, self._lo, len(self._b.events), self.ragged)


class EventColumns(Sequence[FeedbackEvent]):
    """An immutable snapshot of a session's events (a ``Sequence[FeedbackEvent]``, oldest first) with their
    columns: ``item``, ``kind``, ``dwell``, ``position``, ``lat``, ``lon`` [n], ``cats`` [3, n] (``CAT_FIELDS``),
    ``emb`` [n, width] (zeros where ``has_emb`` is False). ``plain``: no event has ``attrs`` or a ``kind_name``
    (else the columns do not hold everything and readers use the events); ``ragged``: some embedding has another
    width than ``width`` (readers take vectors from the events)."""

    __slots__ = ("_b", "_lo", "_hi", "ragged", "_plain")

    def __init__(self, buffers: _Buffers, lo: int, hi: int, ragged: bool = False):
        self._b, self._lo, self._hi, self.ragged = buffers, lo, hi, ragged
        self._plain: bool | None = None

    @staticmethod
    def from_events(events: Iterable[FeedbackEvent]) -> EventColumns:
        """Columns of any events (for stores that do not keep columns); the events are not validated here."""
        evs = list(events)
        width = next((int(e.id_embedding.size) for e in evs if e.id_embedding is not None and e.id_embedding.size), 0)
        w = EventColumnsWriter(max(1, len(evs)), width, cap=max(1, len(evs)))
        w.extend(evs)
        return w.snapshot()

    def __len__(self) -> int:
        return self._hi - self._lo

    @overload
    def __getitem__(self, i: int) -> FeedbackEvent: ...

    @overload
    def __getitem__(self, i: slice) -> list[FeedbackEvent]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._b.events[self._lo:self._hi][i]
        n = self._hi - self._lo
        if not -n <= i < n:
            raise IndexError("event index out of range")
        return self._b.events[self._lo + (i % n)]

    def __iter__(self):
        return iter(self._b.events[self._lo:self._hi])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EventColumns | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EventColumns({len(self)} events)"

    @property
    def plain(self) -> bool:
        if self._plain is None:  # rows are written once: no odd row at or after lo (within hi) means all plain
            last = self._b.last_odd
            self._plain = last < self._lo or (last >= self._hi and bool(self._b.plain[self._lo:self._hi].all()))
        return self._plain

    @property
    def width(self) -> int:
        return self._b.width

    def _col(self, name: str) -> np.ndarray:
        return getattr(self._b, name)[self._lo:self._hi]

    item = property(lambda self: self._col("item"))
    kind = property(lambda self: self._col("kind"))
    dwell = property(lambda self: self._col("dwell"))
    position = property(lambda self: self._col("position"))
    lat = property(lambda self: self._col("lat"))
    lon = property(lambda self: self._col("lon"))
    emb = property(lambda self: self._col("emb"))
    has_emb = property(lambda self: self._col("has_emb"))

    @property
    def cats(self) -> np.ndarray:
        return self._b.cats[:, self._lo:self._hi]


def event_columns(events: Sequence[FeedbackEvent]) -> EventColumns:
    """`events` as columns (itself when it already is)."""
    return events if isinstance(events, EventColumns) else EventColumns.from_events(events)
