"""The device never raises into the app: the feedback stores drop a bad event alone, move a corrupted database
aside and never block on another process's lock; the model manager refuses every bad manifest, feature config,
assignment, file name and model with a typed reason and keeps the last good model serving. ``strict=True`` raises
``DeviceFault`` instead. Real SQLite and real onnxruntime throughout."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import ContractError, EventKind, FeedbackEvent, validate_feedback_event
from edge_rerank.device_sdk.faults import DeviceFault
from edge_rerank.device_sdk.feedback_store import FeedbackStore, SQLiteFeedbackStore

# -- feedback events ---------------------------------------------------------------------------------------------


def _event(k: int, **changes) -> FeedbackEvent:
    e = FeedbackEvent(ts_ms=1000 + k, request_id="r", item_id=k, kind=EventKind.EXPOSURE, position=k % 25,
                      dwell_ms=300.0, category=1, brand=2, price_level=3, lat=1.5, lon=-2.0,
                      id_embedding=np.arange(4, dtype=np.float32))
    for name, v in changes.items():  # after construction: the dataclass would convert some values itself
        object.__setattr__(e, name, v)
    return e


# one entry per fault class: (field, bad value)
BAD_EVENTS = {
    "nan_dwell": ("dwell_ms", float("nan")),
    "inf_dwell": ("dwell_ms", float("inf")),
    "negative_dwell": ("dwell_ms", -1.0),
    "int_2_63": ("item_id", 1 << 63),
    "huge_int": ("ts_ms", 10 ** 30),
    "negative_ts": ("ts_ms", -5),
    "negative_position": ("position", -7),
    "bool_where_int": ("category", True),
    "float_where_int": ("brand", 2.5),
    "str_where_int": ("price_level", "3"),
    "none_field": ("request_id", None),
    "none_int": ("ts_ms", None),
    "long_string": ("request_id", "x" * 10_000),
    "unknown_kind": ("kind", 99),
    "nan_lat": ("lat", float("nan")),
    "int_beyond_float_lon": ("lon", 10 ** 400),
    "emb_wrong_dtype": ("id_embedding", np.arange(4, dtype=np.float64)),
    "emb_wrong_size": ("id_embedding", np.zeros(5000, dtype=np.float32)),
    "emb_nested": ("id_embedding", np.zeros((2, 2), dtype=np.float32)),
    "emb_nan": ("id_embedding", np.array([0.0, np.nan], dtype=np.float32)),
    "emb_list": ("id_embedding", [0.0, 1.0]),
}


@pytest.mark.parametrize("fault", sorted(BAD_EVENTS))
def test_event_validator_refuses_each_fault_class(fault):
    field, value = BAD_EVENTS[fault]
    with pytest.raises(ContractError, match=field):
        validate_feedback_event(_event(0, **{field: value}))


def test_event_validator_checks_the_embedding_size_when_told():
    assert validate_feedback_event(_event(0), emb_dim=4)
    with pytest.raises(ContractError, match="id_embedding"):
        validate_feedback_event(_event(0), emb_dim=16)
    with pytest.raises(ContractError, match="FeedbackEvent"):
        validate_feedback_event({"ts_ms": 1})


_ints = st.integers(-1, (1 << 31) - 1)
_good_events = st.builds(
    FeedbackEvent, ts_ms=st.integers(0, (1 << 63) - 1), request_id=st.text(max_size=128),
    item_id=st.integers(-1, (1 << 63) - 1), kind=st.sampled_from(list(EventKind)), position=_ints,
    dwell_ms=st.floats(0, 1e30), category=_ints, brand=_ints, price_level=_ints,
    lat=st.floats(allow_nan=False, allow_infinity=False), lon=st.floats(allow_nan=False, allow_infinity=False),
    id_embedding=st.none() | st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=8).map(
        lambda v: np.array(v, dtype=np.float32)))


@settings(max_examples=60)
@given(e=_good_events)
def test_property_every_in_range_event_is_valid_and_round_trips_through_sqlite(tmp_path_factory, e):
    assert validate_feedback_event(e) is e
    with SQLiteFeedbackStore(tmp_path_factory.mktemp("p") / "fb.db", max_age_ms=None, strict=True) as s:
        assert s.add("s", e) == 1
        (got,) = s.events("s")
    assert (got.ts_ms, got.item_id, got.request_id, got.dwell_ms, got.lat) == (
        e.ts_ms, e.item_id, e.request_id, e.dwell_ms, e.lat)


@settings(max_examples=60)
@given(e=_good_events, fault=st.sampled_from(sorted(BAD_EVENTS)))
def test_property_one_bad_field_makes_any_event_invalid(e, fault):
    field, value = BAD_EVENTS[fault]
    object.__setattr__(e, field, value)
    with pytest.raises(ContractError):
        validate_feedback_event(e)


# -- feedback stores: one bad event is dropped alone ---------------------------------------------------------------


def _stores(tmp_path):
    return [FeedbackStore(), SQLiteFeedbackStore(tmp_path / "fb.db", max_age_ms=None)]


@pytest.mark.parametrize("fault", sorted(BAD_EVENTS))
def test_a_bad_event_is_dropped_alone_and_the_good_ones_commit(tmp_path, fault, caplog):
    field, value = BAD_EVENTS[fault]
    for store in _stores(tmp_path):
        batch = [_event(0), _event(1, **{field: value}), _event(2)]
        with caplog.at_level(logging.WARNING):
            assert store.add_many("s", batch) == 2
        assert [e.item_id for e in store.events("s")] == [0, 2]
        assert store.faults.counts["bad_event"] == 1 and field in store.faults.last
        if isinstance(store, SQLiteFeedbackStore):
            store.close()
            with SQLiteFeedbackStore(tmp_path / "fb.db", max_age_ms=None) as again:  # committed: survives
                assert [e.item_id for e in again.events("s")] == [0, 2]
    assert any("bad_event" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("session_id", [None, "", "x" * 129, 7, b"s"])
def test_a_bad_session_id_is_refused_not_raised(tmp_path, session_id):
    for store in _stores(tmp_path):
        assert store.add("s", _event(0)) == 1
        assert store.add_many(session_id, [_event(1)]) == 0 and store.faults.counts["bad_session"] == 1
        assert store.events(session_id) == [] and store.sessions() == ["s"]


def test_not_a_sequence_of_events_is_refused(tmp_path):
    for store in _stores(tmp_path):
        assert store.add_many("s", 42) == 0 and store.faults.counts["bad_event"] == 1
        assert store.add_many("s", [None, "e", _event(3)]) == 1


def test_strict_stores_raise_device_fault(tmp_path):
    for store in (FeedbackStore(strict=True), SQLiteFeedbackStore(tmp_path / "fb.db", strict=True)):
        with pytest.raises(DeviceFault) as e:
            store.add("s", _event(0, dwell_ms=float("nan")))
        assert e.value.kind == "bad_event"


# -- corrupted database files ------------------------------------------------------------------------------------


def _write_good_db(path: Path, n: int = 2000) -> None:
    with SQLiteFeedbackStore(path, max_events_per_session=n, max_age_ms=None) as s:
        s.add_many("s", [_event(k) for k in range(n)])


def _corrupt(kind: str, path: Path) -> None:
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    elif kind == "text_file":
        path.write_text("this is not a database\n" * 50)
    elif kind == "truncated":
        _write_good_db(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "garbled_pages":
        _write_good_db(path)
        data = bytearray(path.read_bytes())
        data[4096 * 2: 4096 * 6] = b"\xa5" * (4096 * 4)
        path.write_bytes(bytes(data))
    elif kind == "wrong_schema":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE events (id INTEGER, payload TEXT)")
        db.execute("INSERT INTO events VALUES (1, 'theirs')")
        db.commit()
        db.close()


@pytest.mark.parametrize("kind", ["random_bytes", "text_file", "truncated", "garbled_pages", "wrong_schema"])
def test_corrupted_database_is_moved_aside_and_a_fresh_one_started(tmp_path, kind, caplog):
    path = tmp_path / "fb.db"
    _corrupt(kind, path)
    original = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        store = SQLiteFeedbackStore(path, max_age_ms=None)
    aside = list(tmp_path.glob("fb.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == original and store.moved_aside == aside
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt_db" in warnings[0]  # logged once, with the reason
    assert store.add_many("s", [_event(1), _event(2)]) == 2 and len(store.events("s")) == 2
    store.close()
    with SQLiteFeedbackStore(path, max_age_ms=None) as again:  # the fresh file is a good one
        assert [e.item_id for e in again.events("s")] == [1, 2] and not again.faults.counts


def test_corrupted_database_in_strict_mode_raises_and_is_left_alone(tmp_path):
    path = tmp_path / "fb.db"
    _corrupt("text_file", path)
    with pytest.raises(DeviceFault) as e:
        SQLiteFeedbackStore(path, strict=True)
    assert e.value.kind == "corrupt_db" and not list(tmp_path.glob("*.corrupt-*"))


def test_corruption_found_by_a_later_call_is_recovered(tmp_path):
    path = tmp_path / "fb.db"
    store = SQLiteFeedbackStore(path, max_age_ms=None)
    store.add("s", _event(0))
    store.close()
    store = SQLiteFeedbackStore(path, max_age_ms=None)
    path.write_bytes(b"\0garbage" * 2048)  # the file is replaced under the open store
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store._db.close()  # drop SQLite's cached pages, as a restart of the app would
    store._db = None
    assert store.add("s", _event(1)) == 1
    assert [e.item_id for e in store.events("s")] == [1] and store.faults.counts["corrupt_db"] == 1
    store.close()


# -- another process holds the write lock ------------------------------------------------------------------------

_LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
db.execute("COMMIT")
"""


def test_a_lock_held_by_another_process_never_blocks_the_caller(tmp_path):
    path = tmp_path / "fb.db"
    store = SQLiteFeedbackStore(path, max_age_ms=None)
    store.add("s", _event(0))
    proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        took = []
        for k in (1, 2, 3):
            t0 = time.perf_counter()
            assert store.add("s", _event(k)) == 1
            took.append(time.perf_counter() - t0)
        assert max(took) < 0.05, took  # a few ms of busy timeout, not 5 s
        assert store.pending == 3 and store.faults.counts["db_locked"] == 3
        assert [e.item_id for e in store.events("s")] == [0, 1, 2, 3]  # queued events are visible meanwhile
        assert not store.flush()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    assert store.add("s", _event(4)) == 1 and store.pending == 0  # the next call writes the queue first
    store.close()
    with SQLiteFeedbackStore(path, max_age_ms=None) as again:
        assert [e.item_id for e in again.events("s")] == [0, 1, 2, 3, 4]


def test_the_queue_is_bounded(tmp_path):
    path = tmp_path / "fb.db"
    store = SQLiteFeedbackStore(path, max_age_ms=None, max_pending=4)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert store.add_many("s", [_event(k) for k in range(6)]) == 6
        assert store.pending == 4 and store.faults.counts["queue_full"] == 1
    finally:
        other.execute("COMMIT")
        other.close()
    assert store.flush() and [e.item_id for e in store.events("s")] == [2, 3, 4, 5]
    store.close()


def test_sqlite_errors_are_returned_not_raised(tmp_path):
    path = tmp_path / "fb.db"
    store = SQLiteFeedbackStore(path, max_age_ms=None)
    store.add("s", _event(0))
    store._db.execute("DROP TABLE events")  # another writer broke the schema under us
    assert store.add("s", _event(1)) == 1 and store.events("s")[-1].item_id == 1  # queued, still visible
    assert store.sessions() == ["s"] and store.evict_older_than(10) == 0 and store.clear() is None
    assert store.evict_older_than("soon") == 0
    assert store.faults.counts["db_error"] >= 3
    store.close()
    strict = SQLiteFeedbackStore(tmp_path / "strict.db", strict=True)
    strict._db.execute("DROP TABLE events")
    with pytest.raises(DeviceFault):
        strict.events("s")
