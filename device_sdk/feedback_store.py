"""Bounded on-device feedback stores. Nothing here ever leaves the device by itself (uploads go through
``device_sdk.privacy``, off by default).

Two implementations with one interface (``add``, ``add_many``, ``events``, ``sessions``, ``clear``):

- ``FeedbackStore``: in memory, bounded per session and in sessions kept (the simulator's default: fast);
- ``SQLiteFeedbackStore``: a SQLite file in WAL mode, for the app. An event is committed when ``add``
  returns (unless the database is locked, see below), so it survives the app process being killed; eviction by
  age (``max_age_ms``), by events per session and by sessions kept (least recently written first).
  ``synchronous="NORMAL"`` (default) survives a killed process; ``"FULL"`` also survives power loss, at the cost
  of an fsync per commit.

Neither store raises into the app (``strict=True``, for developers, raises ``DeviceFault`` instead); every refusal
is counted in ``store.faults`` (a ``device_sdk.faults.FaultLog``: each reason kind logged once at WARNING):

- ``bad_event``: an event failing ``contracts.validate_feedback_event`` (NaN/inf or negative dwell, an int out of
  its column's range such as >= 2^63, a wrong type or None, an embedding of the wrong dtype/size) is dropped
  alone; the good events of the same ``add_many`` call are stored. ``bad_session``: the session id is not a
  string of 1..128 characters (the whole call is dropped).
- ``corrupt_db``: a file that is not a SQLite database, is truncated or malformed, or has another ``events``
  schema is moved aside to ``<name>.corrupt-<timestamp>`` (with its ``-wal``/``-shm`` files) and a fresh
  database is started, at construction or when a later call finds the corruption.
- ``db_locked``: another process holds the write lock. SQLite waits at most ``busy_timeout_ms`` (a few ms), then
  the events are queued in memory (at most ``max_pending``; ``queue_full`` when the oldest are dropped) and
  written by the next call (or ``flush()``); ``events``/``sessions`` include the queued events meanwhile.
- ``db_error``: any other SQLite error: the call returns (an empty result for reads).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.contracts import (
    ContractError,
    EventKind,
    FeedbackEvent,
    plain_valid_event,
    validate_feedback_event,
)
from edge_rerank.device_sdk.faults import FaultLog
from edge_rerank.device_sdk.feedback_columns import EventColumns, EventColumnsWriter

log = logging.getLogger(__name__)


class FeedbackStore:
    """In memory, bounded per session and in sessions kept (the simulator's default). Each session's events are
    also kept as numpy columns, written once when an event is added (validated then, once): ``snapshot`` hands
    them to the feature builder without a per-rerank conversion (issue 18)."""

    def __init__(self, max_events_per_session: int = 512, max_sessions: int = 8, *, emb_dim: int | None = None,
                 strict: bool = False, logger: logging.Logger | None = None):
        self.max_events = max_events_per_session
        self.max_sessions = max_sessions
        self.emb_dim = emb_dim
        self.faults = FaultLog(logger or log, strict=strict)
        self._sessions: OrderedDict[str, EventColumnsWriter] = OrderedDict()

    def add(self, session_id: str, event: FeedbackEvent) -> int:
        """Store `event` if it is valid (else drop it with a reason); returns 1 or 0. The common event of a session
        already kept takes one check (``contracts.plain_valid_event``) and one write; anything else goes through
        ``add_many``'s checks."""
        stored = self._sessions.get(session_id) if type(session_id) is str else None
        if stored is not None and plain_valid_event(event, self.emb_dim):
            self._sessions.move_to_end(session_id)
            stored.append_plain(event)
            return 1
        return self.add_many(session_id, [event])

    def add_many(self, session_id: str, events: Iterable[FeedbackEvent]) -> int:
        """Store the valid `events` (each invalid one is dropped alone, with a reason); returns how many."""
        good = _valid_events(self.faults, session_id, events, self.emb_dim)
        if not good:
            return 0
        stored = self._sessions.get(session_id)
        if stored is None:
            stored = self._sessions[session_id] = EventColumnsWriter(self.max_events, self.emb_dim or 0)
        self._sessions.move_to_end(session_id)
        stored.extend(good)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return len(good)

    def events(self, session_id: str) -> list[FeedbackEvent]:
        w = self._sessions.get(session_id) if isinstance(session_id, str) else None
        return [] if w is None else w.events()

    def snapshot(self, session_id: str) -> EventColumns:
        """The session's events now, as an immutable ``Sequence[FeedbackEvent]`` that also carries their columns
        (what ``RerankSession`` hands the reranker; later events do not change it)."""
        w = self._sessions.get(session_id) if isinstance(session_id, str) else None
        return EventColumns.from_events(()) if w is None else w.snapshot()

    def sessions(self) -> list[str]:
        return list(self._sessions)

    def clear(self) -> None:
        self._sessions.clear()


def _valid_events(faults: FaultLog, session_id: object, events: Iterable[FeedbackEvent],
                  emb_dim: int | None) -> list[FeedbackEvent]:
    """The events that pass validation; each refused one is recorded (``bad_event``) and dropped alone."""
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= 128:
        faults.record(f"bad_session: session_id must be a string of 1..128 characters, got {session_id!r:.60}")
        return []
    good = []
    try:
        for i, e in enumerate(events):
            try:
                good.append(validate_feedback_event(e, emb_dim))
            except ContractError as exc:
                faults.record(f"bad_event: event {i} dropped: {exc}")
    except TypeError as exc:  # `events` is not iterable
        faults.record(f"bad_event: events are not a sequence of FeedbackEvent: {exc}")
    return good


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


_INSERT = f"INSERT INTO events (session_id, {', '.join(_COLUMNS)}) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})"
_EXPECTED_COLUMNS = ("seq", "session_id", *_COLUMNS)


def _is_lock_error(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _is_corruption(exc: sqlite3.Error) -> bool:
    """Errors that mean the file itself is bad (not a lock, not a bad value)."""
    msg = str(exc).lower()
    return type(exc) is sqlite3.DatabaseError or any(
        k in msg for k in ("not a database", "malformed", "corrupt", "disk image"))


class _Corrupt(Exception):
    pass


class SQLiteFeedbackStore:
    """A SQLite file in WAL mode (for the app): events survive the app being killed."""

    def __init__(self, path: str | Path, *, max_events_per_session: int = 512, max_sessions: int = 8,
                 max_age_ms: int | None = 7 * 24 * 3600 * 1000, synchronous: str = "NORMAL",
                 busy_timeout_ms: float = 5.0, max_pending: int = 1024, emb_dim: int | None = None,
                 strict: bool = False, logger: logging.Logger | None = None):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.max_events, self.max_sessions, self.max_age_ms = max_events_per_session, max_sessions, max_age_ms
        self.emb_dim = emb_dim
        self.faults = FaultLog(logger or log, strict=strict)
        self._synchronous = synchronous
        self._timeout_s = busy_timeout_ms / 1000.0
        self._pending: deque[tuple] = deque()  # rows not yet written (the database was locked)
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.moved_aside: list[Path] = []  # corrupted files this store moved out of the way
        with self._lock:
            self._ensure_open()

    # -- opening, corruption ---------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=self._timeout_s)
        try:
            # read-only checks first: a file that is moved aside is moved aside unchanged
            problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]  # bounded store: a few ms
            if problems != ["ok"]:
                raise _Corrupt(f"integrity check failed: {'; '.join(problems)[:200]}")
            cols = tuple(r[1] for r in db.execute("PRAGMA table_info(events)").fetchall())
            if cols and cols != _EXPECTED_COLUMNS:
                raise _Corrupt(f"events table has columns {cols}, expected {_EXPECTED_COLUMNS}")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            if not cols:
                db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _ensure_open(self) -> bool:
        """Open the database if it is not (moving a corrupted file aside); False if it cannot be used now."""
        if self._db is not None:
            return True
        try:
            try:
                self._db = self._connect()
            except _Corrupt as exc:
                self._recover(str(exc))
            except sqlite3.Error as exc:
                if _is_lock_error(exc) or not _is_corruption(exc):
                    raise
                self._recover(str(exc))
        except sqlite3.Error as exc:
            self.faults.record(f"{'db_locked' if _is_lock_error(exc) else 'db_error'}: cannot open {self.path}: {exc}")
            return False
        except (_Corrupt, OSError) as exc:  # the fresh database is unusable too (disk full, read-only folder)
            self.faults.record(f"db_error: cannot start a fresh database at {self.path}: {exc}")
            return False
        return True

    def _recover(self, reason: str) -> None:
        """Move the corrupted database (and its WAL files) aside and start a fresh one."""
        self.faults.record(f"corrupt_db: {self.path.name}: {reason}; moved aside, starting a fresh database")
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        k = 1
        while aside.exists():
            aside, k = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{k}"), k + 1
        for suffix in ("", "-wal", "-shm", "-journal"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                try:
                    os.replace(src, f"{aside}{suffix}")
                except OSError as exc:  # cannot rename: delete so a fresh database can start
                    log.warning("cannot move %s aside (%s); removing it", src, exc)
                    src.unlink(missing_ok=True)
        self.moved_aside.append(aside)
        self._db = self._connect()

    def _failed(self, op: str, exc: sqlite3.Error) -> None:
        """Record a SQLite error of `op`; a corrupted file is moved aside (the next call starts fresh)."""
        if _is_lock_error(exc):
            self.faults.record(f"db_locked: {op}: {exc}")
        elif _is_corruption(exc):
            try:
                self._recover(f"{op}: {exc}")
            except (sqlite3.Error, _Corrupt, OSError) as again:
                self._db = None
                self.faults.record(f"db_error: {op}: fresh database failed too: {again}")
        else:
            self.faults.record(f"db_error: {op}: {exc}")

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            if self._pending:
                self.faults.record(f"db_locked: closing with {len(self._pending)} unwritten events (dropped)")
                self._pending.clear()
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> SQLiteFeedbackStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _row(session_id: str, e: FeedbackEvent) -> tuple:
        emb = None if e.id_embedding is None else np.asarray(e.id_embedding, dtype="<f4").tobytes()
        return (session_id, int(e.ts_ms), e.request_id, int(e.item_id), int(e.kind), int(e.position),
                float(e.dwell_ms), int(e.category), int(e.brand), int(e.price_level), float(e.lat), float(e.lon), emb)

    @property
    def pending(self) -> int:
        """Events accepted but not yet written (the database was locked)."""
        return len(self._pending)

    def add(self, session_id: str, event: FeedbackEvent) -> int:
        return self.add_many(session_id, [event])

    def add_many(self, session_id: str, events: Iterable[FeedbackEvent]) -> int:
        """Commit the valid `events` in one transaction (after any queued ones), then evict what the bounds no
        longer allow. Returns how many events were accepted (committed, or queued while the database is locked)."""
        rows = [self._row(session_id, e) for e in _valid_events(self.faults, session_id, events, self.emb_dim)]
        with self._lock:
            self._pending.extend(rows)
            self._flush_locked()
            if len(self._pending) > self._max_pending:
                n = len(self._pending) - self._max_pending
                for _ in range(n):
                    self._pending.popleft()
                self.faults.record(f"queue_full: {n} queued events dropped (database locked too long)")
        return len(rows)

    def flush(self) -> bool:
        """Try to write the queued events now; True if none is left."""
        with self._lock:
            self._flush_locked()
            return not self._pending

    def _flush_locked(self) -> None:
        if not self._pending or not self._ensure_open():
            return
        rows = list(self._pending)
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._failed(f"write of {len(rows)} events", exc)
            return
        try:
            try:
                cur.executemany(_INSERT, rows)
            except (sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.ProgrammingError, OverflowError):
                for row in rows:  # one bad row: the statement is undone, the transaction goes on without it
                    try:
                        cur.execute(_INSERT, row)
                    except (sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.ProgrammingError,
                            OverflowError) as exc:
                        self.faults.record(f"bad_event: SQLite refused an event ({exc})")
            for sid in dict.fromkeys(r[0] for r in rows):
                self._evict(cur, sid, newest_ts=max(r[1] for r in rows))
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._failed(f"write of {len(rows)} events", exc)
            return
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        for _ in rows:
            self._pending.popleft()

    def _evict(self, cur: sqlite3.Cursor, session_id: str, newest_ts: int) -> None:
        cur.execute("DELETE FROM events WHERE session_id = ? AND seq <= (SELECT seq FROM events WHERE session_id = ? "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (session_id, session_id, self.max_events))
        cur.execute("DELETE FROM events WHERE session_id IN (SELECT session_id FROM events GROUP BY session_id "
                    "ORDER BY MAX(seq) DESC LIMIT -1 OFFSET ?)", (self.max_sessions,))
        if self.max_age_ms is not None:
            cur.execute("DELETE FROM events WHERE ts_ms < ?", (newest_ts - self.max_age_ms,))

    def _execute(self, op: str, sql: str, params: tuple = ()) -> sqlite3.Cursor | None:
        """Run one statement under the lock's holder; None (reason recorded) on any SQLite error."""
        if not self._ensure_open():
            return None
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            self._failed(op, exc)
            return None

    def evict_older_than(self, ts_ms: int) -> int:
        with self._lock:
            if not _is_int_like(ts_ms):
                self.faults.record(f"bad_argument: evict_older_than needs an int, got {ts_ms!r:.40}")
                return 0
            cur = self._execute("evict", "DELETE FROM events WHERE ts_ms < ?", (int(ts_ms),))
            return 0 if cur is None else cur.rowcount

    # -- reading ---------------------------------------------------------------------------------------------------
    def events(self, session_id: str) -> list[FeedbackEvent]:
        """The session's events, oldest first (queued ones included)."""
        if not isinstance(session_id, str):
            return []
        with self._lock:
            cur = self._execute("read", f"SELECT {', '.join(_COLUMNS)} FROM events WHERE session_id = ? ORDER BY seq",
                                (session_id,))
            try:
                rows = [] if cur is None else cur.fetchall()
            except sqlite3.Error as exc:
                self._failed("read", exc)
                rows = []
            rows += [r[1:] for r in self._pending if r[0] == session_id]
        out = []
        for r in rows[-self.max_events:] if rows else rows:
            try:
                out.append(FeedbackEvent(ts_ms=r[0], request_id=r[1], item_id=r[2], kind=EventKind(r[3]),
                                         position=r[4], dwell_ms=r[5], category=r[6], brand=r[7], price_level=r[8],
                                         lat=r[9], lon=r[10],
                                         id_embedding=None if r[11] is None else np.frombuffer(r[11], "<f4").copy()))
            except (ValueError, TypeError) as exc:  # a row written by something else
                self.faults.record(f"bad_row: unreadable stored event skipped: {exc}")
        return out

    def snapshot(self, session_id: str) -> EventColumns:
        """``events(session_id)`` as columns (built per call: this store keeps rows in SQLite)."""
        return EventColumns.from_events(self.events(session_id))

    def sessions(self) -> list[str]:
        """Sessions kept, least recently written first (the order eviction uses; queued ones last)."""
        with self._lock:
            cur = self._execute("read", "SELECT session_id FROM events GROUP BY session_id ORDER BY MAX(seq)")
            try:
                kept = [] if cur is None else [r[0] for r in cur.fetchall()]
            except sqlite3.Error as exc:
                self._failed("read", exc)
                kept = []
            queued = list(dict.fromkeys(r[0] for r in self._pending))
        return [s for s in kept if s not in queued] + queued

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._execute("clear", "DELETE FROM events")


def _is_int_like(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)
