"""The on-device feedback stores: SQLite (WAL) behaves like the in-memory store, keeps every committed event
when the process is killed, and evicts by size, sessions and age."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import EventKind, FeedbackEvent
from edge_rerank.device_sdk.feedback_store import FeedbackStore, SQLiteFeedbackStore


def _event(k: int, ts: int | None = None, emb: bool = True) -> FeedbackEvent:
    return FeedbackEvent(ts_ms=k if ts is None else ts, request_id=f"r{k % 3}", item_id=1000 + k,
                         kind=EventKind(1 + k % 5), position=k % 25, dwell_ms=123.5 + k, category=k % 7,
                         brand=k % 11, price_level=k % 5, lat=0.25 * k, lon=-0.5 * k,
                         id_embedding=np.arange(4, dtype=np.float32) + k if emb else None)


def _same(a: FeedbackEvent, b: FeedbackEvent) -> bool:
    ea = None if a.id_embedding is None else a.id_embedding.tolist()
    eb = None if b.id_embedding is None else b.id_embedding.tolist()
    return (a.ts_ms, a.request_id, a.item_id, a.kind, a.position, a.dwell_ms, a.category, a.brand, a.price_level,
            a.lat, a.lon, ea) == (b.ts_ms, b.request_id, b.item_id, b.kind, b.position, b.dwell_ms, b.category,
                                  b.brand, b.price_level, b.lat, b.lon, eb)


def test_round_trip_keeps_every_field(tmp_path):
    with SQLiteFeedbackStore(tmp_path / "fb.db") as s:
        evs = [_event(k, emb=k % 2 == 0) for k in range(6)]
        s.add_many("s1", evs)
        got = s.events("s1")
    assert len(got) == 6 and all(_same(a, b) for a, b in zip(evs, got, strict=True))
    with SQLiteFeedbackStore(tmp_path / "fb.db") as s:  # reopened: still there
        assert len(s.events("s1")) == 6 and s.events("nope") == []


@settings(max_examples=40)
@given(ops=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 4)), min_size=1, max_size=30))
def test_property_sqlite_store_matches_the_in_memory_store(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("fb") / "fb.db"
    mem = FeedbackStore(max_events_per_session=5, max_sessions=3)
    with SQLiteFeedbackStore(path, max_events_per_session=5, max_sessions=3, max_age_ms=None) as sql:
        k = 0
        for session, n in ops:
            batch = [_event(k + i) for i in range(n)]
            k += n
            mem.add_many(f"s{session}", batch)
            sql.add_many(f"s{session}", batch)
        assert sql.sessions() == mem.sessions()
        for sid in mem.sessions():
            a, b = mem.events(sid), sql.events(sid)
            assert len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


def test_age_eviction(tmp_path):
    with SQLiteFeedbackStore(tmp_path / "fb.db", max_age_ms=1000) as s:
        s.add_many("s", [_event(k, ts=t) for k, t in enumerate([0, 500, 900])])
        s.add("s", _event(9, ts=1700))  # everything older than 700 ms before the newest event goes
        assert [e.ts_ms for e in s.events("s")] == [900, 1700]
        assert s.evict_older_than(1000) == 1


_WRITER = """
import sys
from tests.test_feedback_store import _event
from edge_rerank.device_sdk.feedback_store import SQLiteFeedbackStore
s = SQLiteFeedbackStore(sys.argv[1], max_events_per_session=100000, max_age_ms=None)
for k in range(100000):
    s.add("s", _event(k))
    print(k, flush=True)  # acknowledged: add() returned, the event is committed
"""


def test_killed_process_loses_no_committed_event(tmp_path):
    db = tmp_path / "fb.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    acked = -1
    deadline = time.time() + 60
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300 or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert acked >= 300
    with SQLiteFeedbackStore(db, max_events_per_session=100000, max_age_ms=None) as s:
        got = s.events("s")
    assert len(got) >= acked + 1  # every acknowledged event (and maybe the one in flight)
    assert [e.item_id for e in got] == [1000 + k for k in range(len(got))]  # in order, no holes, no torn rows
