"""Bounded on-device feedback stores. Nothing here ever leaves the device by itself (uploads go through
``device_sdk.privacy``, off by default).

Two implementations with one interface (``add``, ``add_many``, ``events``, ``sessions``, ``clear``):

- ``FeedbackStore``: in memory, bounded per session and in sessions kept (the simulator's default: fast);
- ``SQLiteFeedbackStore``: a SQLite file in WAL mode, for the app. An event is committed when ``add``
  returns, so it survives the app process being killed; eviction by age (``max_age_ms``), by events per session
  and by sessions kept (least recently written first). ``synchronous="NORMAL"`` (default) survives a killed
  process; ``"FULL"`` also survives power loss, at the cost of an fsync per commit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.contracts import EventKind, FeedbackEvent


class FeedbackStore:
    """In memory, bounded per session and in sessions kept (the simulator's default)."""

    def __init__(self, max_events_per_session: int = 512, max_sessions: int = 8):
        self.max_events = max_events_per_session
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, list[FeedbackEvent]] = OrderedDict()

    def add(self, session_id: str, event: FeedbackEvent) -> None:
        events = self._sessions.setdefault(session_id, [])
        self._sessions.move_to_end(session_id)
        events.append(event)
        if len(events) > self.max_events:
            del events[: len(events) - self.max_events]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def add_many(self, session_id: str, events: Iterable[FeedbackEvent]) -> None:
        for e in events:
            self.add(session_id, e)

    def events(self, session_id: str) -> list[FeedbackEvent]:
        return list(self._sessions.get(session_id, ()))

    def sessions(self) -> list[str]:
        return list(self._sessions)

    def clear(self) -> None:
        self._sessions.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    position INTEGER NOT NULL,
    dwell_ms REAL NOT NULL,
    category INTEGER NOT NULL,
    brand INTEGER NOT NULL,
    price_level INTEGER NOT NULL,
    lat REAL NOT NULL,
    lon REAL NOT NULL,
    emb BLOB
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, seq);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts_ms);
"""
_COLUMNS = ("ts_ms", "request_id", "item_id", "kind", "position", "dwell_ms", "category", "brand", "price_level",
            "lat", "lon", "emb")


class SQLiteFeedbackStore:
    """A SQLite file in WAL mode (for the app): events survive the app being killed."""

    def __init__(self, path: str | Path, *, max_events_per_session: int = 512, max_sessions: int = 8,
                 max_age_ms: int | None = 7 * 24 * 3600 * 1000, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.max_events, self.max_sessions, self.max_age_ms = max_events_per_session, max_sessions, max_age_ms
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SQLiteFeedbackStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _row(session_id: str, e: FeedbackEvent) -> tuple:
        emb = None if e.id_embedding is None else np.asarray(e.id_embedding, dtype="<f4").tobytes()
        return (session_id, int(e.ts_ms), e.request_id, int(e.item_id), int(e.kind), int(e.position),
                float(e.dwell_ms), int(e.category), int(e.brand), int(e.price_level), float(e.lat), float(e.lon), emb)

    def add(self, session_id: str, event: FeedbackEvent) -> None:
        self.add_many(session_id, [event])

    def add_many(self, session_id: str, events: Iterable[FeedbackEvent]) -> None:
        """Commit `events` in one transaction, then evict what the bounds no longer allow."""
        rows = [self._row(session_id, e) for e in events]
        if not rows:
            return
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(f"INSERT INTO events (session_id, {', '.join(_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})", rows)
                self._evict(cur, session_id, newest_ts=max(r[1] for r in rows))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _evict(self, cur: sqlite3.Cursor, session_id: str, newest_ts: int) -> None:
        cur.execute("DELETE FROM events WHERE session_id = ? AND seq <= (SELECT seq FROM events WHERE session_id = ? "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (session_id, session_id, self.max_events))
        cur.execute("DELETE FROM events WHERE session_id IN (SELECT session_id FROM events GROUP BY session_id "
                    "ORDER BY MAX(seq) DESC LIMIT -1 OFFSET ?)", (self.max_sessions,))
        if self.max_age_ms is not None:
            cur.execute("DELETE FROM events WHERE ts_ms < ?", (newest_ts - self.max_age_ms,))

    def evict_older_than(self, ts_ms: int) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM events WHERE ts_ms < ?", (int(ts_ms),)).rowcount

    def events(self, session_id: str) -> list[FeedbackEvent]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE session_id = ? ORDER BY seq",
                                    (session_id,)).fetchall()
        return [FeedbackEvent(ts_ms=r[0], request_id=r[1], item_id=r[2], kind=EventKind(r[3]), position=r[4],
                              dwell_ms=r[5], category=r[6], brand=r[7], price_level=r[8], lat=r[9], lon=r[10],
                              id_embedding=None if r[11] is None else np.frombuffer(r[11], dtype="<f4").copy())
                for r in rows]

    def sessions(self) -> list[str]:
        """Sessions kept, least recently written first (the order eviction uses)."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT session_id FROM events GROUP BY session_id ORDER BY MAX(seq)").fetchall()]

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events")
