"""The device never raises into the app: the feedback stores drop a bad event alone, move a corrupted database
aside and never block on another process's lock; the model manager refuses every bad manifest, feature config,
assignment, file name and model with a typed reason and keeps the last good model serving. ``strict=True`` raises
``DeviceFault`` instead. Real SQLite and real onnxruntime throughout."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


# -- model manager: bundles built from tiny real ONNX graphs -----------------------------------------------------

from edge_rerank.converters.bundle import FEATURE_CONFIG_FILE, write_bundle  # noqa: E402
from edge_rerank.device_sdk.bundle import MANIFEST, sha256_file  # noqa: E402
from edge_rerank.device_sdk.model_manager import HttpBundleSource, ModelManager, load_model  # noqa: E402


def _onnx(path: Path, n_max: int, const: np.ndarray, *, mask_type: str = "FLOAT", concat: bool = False) -> Path:
    """scores = cand_mask * const (or [cand_mask, cand_mask]: the wrong shape): a real model onnxruntime runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tp = getattr(TensorProto, mask_type)
    inp = helper.make_tensor_value_info("cand_mask", tp, [1, n_max])
    node = (helper.make_node("Concat", ["cand_mask", "cand_mask"], ["scores"], axis=1) if concat
            else helper.make_node("Mul", ["cand_mask", "c"], ["scores"]))
    out = helper.make_tensor_value_info("scores", tp, [1, 2 * n_max if concat else n_max])
    c = numpy_helper.from_array(np.asarray(const, dtype=np.float64 if mask_type == "DOUBLE" else np.float32)
                                .reshape(1, n_max), "c")
    model = helper.make_model(helper.make_graph([node], "g", [inp], [out], initializer=[] if concat else [c]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _bundle(tmp: Path, fcfg, version: str, const=None, **kw) -> Path:
    const = np.linspace(1.0, 0.0, fcfg.n_max) if const is None else const
    model = _onnx(tmp / f"{version}-model.onnx", fcfg.n_max, const, **kw)
    return write_bundle(tmp / version, model_file=model, fmt="onnx", name="device-reranker", version=version,
                        feature_config=fcfg)


def _rewrite(bundle: Path, manifest_change=None, config=None, raw_manifest: bytes | None = None,
             raw_config: bytes | None = None) -> Path:
    """Change a bundle's manifest / feature config, keeping the checksums right (so the change itself is tested)."""
    if config is not None or raw_config is not None:
        (bundle / FEATURE_CONFIG_FILE).write_bytes(raw_config if raw_config is not None else
                                                   json.dumps(config).encode())
    m = json.loads((bundle / MANIFEST).read_text())
    m["files"][FEATURE_CONFIG_FILE] = sha256_file(bundle / FEATURE_CONFIG_FILE)
    m["sizes"][FEATURE_CONFIG_FILE] = (bundle / FEATURE_CONFIG_FILE).stat().st_size
    if manifest_change is not None:
        manifest_change(m)
    (bundle / MANIFEST).write_bytes(raw_manifest if raw_manifest is not None else json.dumps(m).encode())
    return bundle


@pytest.fixture
def serving(tmp_path, fcfg):
    mm = ModelManager(root=tmp_path / "models")
    assert mm.install(_bundle(tmp_path, fcfg, "good")), mm.last_error
    return mm


def _deep(n: int = 100_000) -> bytes:
    return b"[" * n + b"]" * n


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


MANIFEST_FAULTS = {
    "not_json": (None, b"{not json", "bad_manifest"),
    "not_utf8": (None, b"\xff\xfe\x00{", "bad_manifest"),
    "not_object": (None, b"[1, 2]", "bad_manifest"),
    "nested": (None, _deep(), "bad_manifest"),
    "huge": (None, b'{"pad": "' + b"x" * (2 << 20) + b'"}', "bad_manifest"),
    "missing_key": (lambda m: m.pop("files"), None, "bad_manifest"),
    "extra_key": (_set("surprise", 1), None, "bad_manifest"),
    "version_not_string": (_set("version", 5), None, "unsafe_name"),
    "version_path": (_set("version", "../../evil"), None, "unsafe_name"),
    "files_wrong_type": (_set("files", ["reranker.onnx"]), None, "bad_manifest"),
    "inputs_wrong_type": (_set("inputs", "cand_mask"), None, "bad_manifest"),
    "shape_nan": (lambda m: m["inputs"][0].__setitem__("shape", [1, float("nan")]), None, "bad_manifest"),
    "size_negative": (lambda m: m["sizes"].__setitem__(FEATURE_CONFIG_FILE, -1), None, "bad_manifest"),
    "size_bool": (lambda m: m["sizes"].__setitem__(FEATURE_CONFIG_FILE, True), None, "bad_manifest"),
    "schema_float": (_set("schema_version", 1.0), None, "bad_manifest"),
    "schema_future": (_set("schema_version", 2), None, "bad_manifest"),
    "metrics_nested": (_set("metrics", {"ndcg": {"at": 10}}), None, "bad_manifest"),
    "format_list": (_set("format", ["onnx"]), None, "bad_manifest"),
    "format_unknown": (_set("format", "tensorrt"), None, "backend"),
    "model_file_traversal": (_set("model_file", "../good-model.onnx"), None, "unsafe_name"),
    "model_file_absolute": (_set("model_file", "/etc/passwd"), None, "unsafe_name"),
    "model_file_backslash": (_set("model_file", "..\\x.onnx"), None, "unsafe_name"),
    "model_file_nul": (_set("model_file", "a\x00.onnx"), None, "unsafe_name"),
    "model_file_dot": (_set("model_file", ".hidden"), None, "unsafe_name"),
    "model_file_empty": (_set("model_file", ""), None, "unsafe_name"),
    "model_file_long": (_set("model_file", "m" * 300), None, "unsafe_name"),
    "file_key_traversal": (lambda m: m["files"].__setitem__("../../x", "0" * 64), None, "unsafe_name"),
}


@pytest.mark.parametrize("fault", sorted(MANIFEST_FAULTS))
def test_every_manifest_shape_is_refused_and_the_last_good_model_keeps_serving(serving, tmp_path, fcfg, fault):
    change, raw, kind = MANIFEST_FAULTS[fault]
    bad = _rewrite(_bundle(tmp_path, fcfg, "v2"), change, raw_manifest=raw)
    assert not serving.install(bad)
    assert serving.current.version == "good" and serving.last_error.startswith(kind + ":"), serving.last_error
    assert serving.faults.counts[kind] == 1


def _cfg(fcfg, **changes) -> dict:
    return {**fcfg.to_dict(), **changes}


CONFIG_FAULTS = {
    "n_max_zero": {"n_max": 0},
    "n_max_negative": {"n_max": -3},
    "n_max_bool": {"n_max": True},
    "n_max_float": {"n_max": 25.0},
    "n_max_string": {"n_max": "25"},
    "n_max_huge": {"n_max": 10 ** 12},
    "l_max_nested": {"l_max": [32]},
    "dwell_nan": {"dwell_threshold_ms": float("nan")},
    "dwell_inf": {"dwell_threshold_ms": float("inf")},
    "dwell_negative": {"dwell_threshold_ms": -1.0},
    "buckets_strings": {"distance_buckets_km": ["a", "b"]},
    "buckets_nested": {"position_buckets": [[1.0], [2.0]]},
    "buckets_nan": {"position_buckets": [1.0, float("nan")]},
    "buckets_not_a_list": {"position_buckets": 3},
    "unknown_op": {"candidate_ops": ["cloud_score", "evil:op"]},
    "ops_a_string": {"candidate_ops": "cloud_score"},
    "ops_nested": {"candidate_ops": [["cloud_score"]]},
    "geo_int": {"geo": 5},
    "extra_key": {"surprise": 1},
}


@pytest.mark.parametrize("fault", sorted(CONFIG_FAULTS) + ["not_object", "nested", "not_json"])
def test_every_feature_config_shape_is_refused(serving, tmp_path, fcfg, fault):
    raw = {"not_object": b"[]", "nested": _deep(), "not_json": b"{"}.get(fault)
    config = None if raw is not None else _cfg(fcfg, **CONFIG_FAULTS[fault])
    bad = _rewrite(_bundle(tmp_path, fcfg, "v2"), config=config, raw_config=raw)
    assert not serving.install(bad)
    assert serving.current.version == "good" and serving.last_error.startswith("bad_feature_config:"), \
        serving.last_error


def test_warm_up_checks_every_output_position(serving, tmp_path, fcfg):
    nan_from_2 = np.ones(fcfg.n_max)
    nan_from_2[2:] = np.nan
    bad = _bundle(tmp_path, fcfg, "nan2", const=nan_from_2)
    assert not serving.install(bad)
    assert serving.current.version == "good" and serving.last_error.startswith("warmup:")
    assert "first: 2" in serving.last_error
    last_only = np.ones(fcfg.n_max)
    last_only[-1] = np.inf  # only a full list reaches the last position
    assert not serving.install(_bundle(tmp_path, fcfg, "inf-last", const=last_only))
    assert "first: 24" in serving.last_error or f"first: {fcfg.n_max - 1}" in serving.last_error
    assert not serving.install(_bundle(tmp_path, fcfg, "wide", concat=True))  # shape (1, 2 n_max)
    assert "shape" in serving.last_error and serving.current.version == "good"


def test_a_runtime_raising_its_own_exception_type_is_refused(serving, tmp_path, fcfg):
    # the graph wants float64: onnxruntime raises InvalidArgument on run
    assert not serving.install(_bundle(tmp_path, fcfg, "f64", mask_type="DOUBLE"))
    assert serving.last_error.startswith("warmup:") and "InvalidArgument" in serving.last_error
    # not a model at all: onnxruntime refuses to load it
    junk = _bundle(tmp_path, fcfg, "junk")
    (junk / "junk-model.onnx").write_bytes(b"\x08junk" * 100)
    _rewrite(junk, lambda m: (m.__setitem__("model_file", "junk-model.onnx"),
                              m["files"].__setitem__("junk-model.onnx", sha256_file(junk / "junk-model.onnx")),
                              m["sizes"].__setitem__("junk-model.onnx", 500)))
    assert not serving.install(junk) and serving.last_error.startswith("backend:")
    # a numpy-format weights file whose config is a list: the reference backend raises AttributeError on load
    npz = tmp_path / "weights.npz"
    np.savez(npz, **{"cat.weight": np.zeros((2, 2), np.float32), "fuse.0.weight": np.zeros((2, 2), np.float32),
                     "head.2.weight": np.zeros((1, 2), np.float32), "__model_config__": np.array("[]")})
    b = write_bundle(tmp_path / "np", model_file=npz, fmt="numpy", name="device-reranker", version="np",
                     feature_config=fcfg)
    assert not serving.install(b) and serving.last_error.startswith("backend:"), serving.last_error
    assert serving.current.version == "good"
    assert not serving.install(tmp_path / "does-not-exist") and not serving.install(None)
    assert serving.current.version == "good"


def test_strict_model_manager_raises_device_fault(tmp_path, fcfg):
    mm = ModelManager(root=tmp_path / "models", strict=True)
    with pytest.raises(DeviceFault) as e:
        mm.install(_rewrite(_bundle(tmp_path, fcfg, "v2"), _set("surprise", 1)))
    assert e.value.kind == "bad_manifest"


def test_load_model_accepts_a_good_tiny_model(tmp_path, fcfg):
    loaded = load_model(_bundle(tmp_path, fcfg, "ok"))
    assert loaded.version == "ok"


# -- model manager: assignments and downloads --------------------------------------------------------------------


class DirSource:
    """A BundleSource serving bundle directories (a stand-in for the registry: real files, no HTTP)."""

    def __init__(self, assignment, bundles: dict[str, Path], overrides: dict | None = None):
        self.assigned, self.bundles, self.overrides = assignment, bundles, overrides or {}

    def assignment(self, name, user_id):
        if isinstance(self.assigned, Exception):
            raise self.assigned
        return self.assigned

    def fetch(self, name, version, rel):
        if rel in self.overrides:
            return self.overrides[rel]
        return (self.bundles[version] / rel).read_bytes()


def _snapshot(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files} | {
        str(Path(d, x).relative_to(root)) for d, dirs, _ in os.walk(root) for x in dirs}


BAD_VERSIONS = ["../../evil", "../evil", "a/b", "a\\b", "a\x00b", ".hidden", "..", "/tmp/abs", "", "v" * 200, 5,
                ["v1"], {"v": 1}, True, 1.5]


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=[repr(v)[:20] for v in BAD_VERSIONS])
def test_unsafe_assigned_versions_are_refused_before_any_path_is_built(serving, tmp_path, fcfg, version):
    (tmp_path / "src").mkdir()
    evil = _bundle(tmp_path / "src", fcfg, "evil")
    before = _snapshot(tmp_path)
    src = DirSource(version, {version: evil} if isinstance(version, str) else {})
    assert not serving.update(src, "device-reranker", "u1")
    kind = "bad_assignment" if not isinstance(version, str) else "unsafe_name"
    assert serving.last_error.startswith(kind + ":"), serving.last_error
    assert _snapshot(tmp_path) == before  # nothing written anywhere, in the model root or outside it
    assert serving.current.version == "good"


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".models", None, 3])
def test_unsafe_model_names_are_refused(serving, tmp_path, name):
    before = _snapshot(tmp_path)
    assert not serving.update(DirSource("v1", {}), name, "u1")
    assert serving.last_error.startswith("unsafe_name:") and _snapshot(tmp_path) == before


def test_a_manifest_listing_a_path_outside_the_bundle_writes_nothing_outside_the_root(serving, tmp_path, fcfg):
    (tmp_path / "src").mkdir()
    v2 = _bundle(tmp_path / "src", fcfg, "v2")
    m = json.loads((v2 / MANIFEST).read_text())
    m["files"]["../../../escaped"] = "0" * 64
    outside_before = _snapshot(tmp_path) - {p for p in _snapshot(tmp_path) if p.startswith("models")}
    src = DirSource("v2", {"v2": v2}, {MANIFEST: json.dumps(m).encode(), "../../../escaped": b"pwned"})
    assert not serving.update(src, "device-reranker", "u1")
    assert serving.last_error.startswith("unsafe_name:")
    after = _snapshot(tmp_path)
    assert {p for p in after if not p.startswith("models")} == outside_before
    assert not list((tmp_path / "models").rglob(".staging-*")) and not (tmp_path / "models" / "device-reranker"
                                                                          / "v2").exists()


@pytest.mark.parametrize("case", ["not_bytes", "oversize_file", "manifest_nested", "name_mismatch", "raises"])
def test_bad_downloads_are_refused_with_a_reason(serving, tmp_path, fcfg, case):
    (tmp_path / "src").mkdir()
    v2 = _bundle(tmp_path / "src", fcfg, "v2")
    m = json.loads((v2 / MANIFEST).read_text())
    overrides = {
        "not_bytes": {FEATURE_CONFIG_FILE: "a str"},
        "oversize_file": {FEATURE_CONFIG_FILE: b" " * (m["sizes"][FEATURE_CONFIG_FILE] + 1)},
        "manifest_nested": {MANIFEST: _deep()},
        "name_mismatch": {MANIFEST: json.dumps({**m, "version": "v3"}).encode()},
        "raises": {},
    }[case]
    src = DirSource("v2", {"v2": v2} if case != "raises" else {}, overrides)
    assert not serving.update(src, "device-reranker", "u1")
    kind = {"not_bytes": "download", "oversize_file": "download", "manifest_nested": "bad_manifest",
            "name_mismatch": "bad_manifest", "raises": "download"}[case]
    assert serving.last_error.startswith(kind + ":"), serving.last_error
    assert serving.current.version == "good" and not list((tmp_path / "models").rglob(".staging-*"))


def test_a_source_raising_anything_on_assignment_is_refused(serving):
    for exc in (KeyError("x"), RecursionError(), ValueError("bad")):
        assert not serving.update(DirSource(exc, {}), "device-reranker", "u1")
        assert serving.last_error.startswith("bad_assignment:")
    assert not serving.update(DirSource(None, {}), "device-reranker", "u1")  # nothing assigned: not an error
    assert not ModelManager().update(DirSource("v1", {}), "device-reranker", "u1")  # no root: a reason, no raise


def test_a_good_update_still_installs(serving, tmp_path, fcfg):
    (tmp_path / "src").mkdir()
    v2 = _bundle(tmp_path / "src", fcfg, "v2")
    assert serving.update(DirSource("v2", {"v2": v2}), "device-reranker", "u1"), serving.last_error
    assert serving.current.version == "v2" and (tmp_path / "models" / "device-reranker" / "v2" / MANIFEST).is_file()


class _Handler(BaseHTTPRequestHandler):
    body = b""
    headers_extra: dict = {}

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        for k, v in self.headers_extra.items():
            self.send_header(k, v)
        if "Content-Length" not in self.headers_extra:
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


ASSIGNMENT_FAULTS = {
    "not_json": (b"<html>oops</html>", {}, "bad_assignment"),
    "not_object": (b'["v1"]', {}, "bad_assignment"),
    "version_int": (b'{"version": 3}', {}, "bad_assignment"),
    "version_nested": (b'{"version": {"v": "v1"}}', {}, "bad_assignment"),
    "version_traversal": (b'{"version": "../../etc"}', {}, "unsafe_name"),
    "nested": (_deep(), {}, "download"),  # larger than the assignment limit
    "deep_small": (_deep(5000), {}, "bad_assignment"),
    "huge": (b'{"version": "' + b"v" * (1 << 20) + b'"}', {}, "download"),
    "bad_content_length": (b'{"version": "v1"}', {"Content-Length": "abc"}, "download"),
    "not_utf8": (b"\xff\xfe", {}, "bad_assignment"),
}


@pytest.mark.parametrize("fault", sorted(ASSIGNMENT_FAULTS))
def test_every_assignment_shape_is_refused(serving, tmp_path, fault):
    body, headers, kind = ASSIGNMENT_FAULTS[fault]
    handler = type("H", (_Handler,), {"body": body, "headers_extra": headers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        before = _snapshot(tmp_path)
        assert not serving.update(HttpBundleSource(f"http://127.0.0.1:{server.server_port}", timeout_s=5),
                                  "device-reranker", "u1")
    finally:
        server.shutdown()
        server.server_close()
    assert serving.last_error.startswith(kind + ":"), serving.last_error
    assert serving.current.version == "good" and _snapshot(tmp_path) == before
