"""Issue 15: the cloud service under abuse. One test (or a few) per failure class: memory per request, 5xx from
framing / nesting / size, slow clients, bad rows, bad files, over-limit chunked bodies, anonymous uploads, quotas,
archive bombs, unsigned manifests, SIGTERM. App-level checks use Flask's test client; framing, slow clients and
signals need the real gunicorn server."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.cloud.app import CloudConfig, create_app
from edge_rerank.cloud.log_ingest import IngestError, IngestLimits, split_rows
from edge_rerank.cloud.logs import (
    LogReadReport,
    LogSink,
    _rows_to_table_pylist,
    clean_stale_tmp,
    compact_logs,
    read_logs,
    rows_to_table,
)
from edge_rerank.cloud.quota import FileQuota, QuotaConfig, QuotaExceeded
from edge_rerank.cloud.ranking.pipeline import Ranking, RankingCache
from edge_rerank.cloud.registry import Registry, RegistryError
from edge_rerank.device_sdk import wire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from attacks import (  # noqa: E402
    TrickleClients,
    deep_json,
    framing_attacks,
    peak_growth_mib,
    raw_request,
    request_bytes,
    reset_peak,
    timed_get,
    worker_pids,
)

PB = "application/x-protobuf"
KEY = "k3y"


@pytest.fixture(scope="module")
def rows(world, inproc_cloud):
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.user_model import UserModel

    phone = Phone(UserModel(world), inproc_cloud, arm="cloud")
    out = []
    i = 0
    while len(out) < 12:
        out.extend(phone.run(world.session(i, 5)).rows)
        i += 1
    return out


def _batch(rows) -> bytes:
    return wire.pb.LogBatch(rows=[wire.impression_to_proto(r) for r in rows]).SerializeToString()


@pytest.fixture(scope="module")
def app(cloud_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("hard")
    return create_app(CloudConfig(data_dir=str(cloud_data), log_dir=str(d / "logs"), api_key=KEY,
                                  registry_dir=str(d / "registry"), admin_key="adm", max_log_rows=64,
                                  quota_rows_per_s=0, quota_bytes_per_day=0))


@pytest.fixture()
def client(app):
    return app.test_client()


def _post_logs(client, body: bytes, ctype: str = PB, key: str = KEY):
    return client.post("/v1/logs", data=body, headers={"X-API-Key": key, "Content-Type": ctype})


# ---- memory: bodies that are cheap to send and expensive to parse ----

def test_many_tiny_rows_are_refused_before_any_parse(client):
    tiny = b"\x12\x03\x0a\x01r" * 400_000  # 2 MB of 5-byte rows: the 1.4 GiB request
    t0 = time.perf_counter()
    r = _post_logs(client, tiny)
    assert r.status_code == 413 and "more than 64 rows" in r.json["error"]
    assert time.perf_counter() - t0 < 2.0


def test_oversized_row_and_too_many_candidates_are_413(client, rows):
    m = wire.impression_to_proto(rows[0])
    big = wire.pb.ImpressionLog(request_id="x" * 300_000)
    r = _post_logs(client, wire.pb.LogBatch(rows=[m, big]).SerializeToString())
    assert r.status_code == 413 and "row 1 is" in r.json["error"]
    many = wire.pb.ImpressionLog()
    many.candidates.extend([wire.pb.LoggedCandidate()] * 1025)
    r = _post_logs(client, wire.pb.LogBatch(rows=[many]).SerializeToString())
    assert r.status_code == 413 and "row 0 candidates" in r.json["error"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_row_splitter_on_arbitrary_bytes_only_raises_ingest_errors(data):
    limits = IngestLimits(max_rows=8, max_row_bytes=64)
    try:
        parts = split_rows(data, limits)
    except IngestError as exc:
        assert exc.status in (400, 413)
        return
    assert len(parts) <= 8 and all(len(p) <= 64 for p in parts)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=12), st.text(max_size=10))
def test_row_splitter_finds_exactly_the_rows_protobuf_parses(ids, client_id):
    body = wire.pb.LogBatch(client_id=client_id, rows=[wire.pb.ImpressionLog(request_id=i) for i in ids])
    parts = split_rows(body.SerializeToString(), IngestLimits())
    assert [wire.pb.ImpressionLog.FromString(bytes(p)).request_id for p in parts] == ids


def test_columnar_table_equals_the_reference_conversion(rows):
    a, b = rows_to_table(rows), _rows_to_table_pylist(rows)
    assert a.equals(b) and a.schema.equals(b.schema, check_metadata=True)


# ---- bad rows: refused at the door, row and field named ----

def _bad(rows, fn):
    r = wire.impression_to_proto(rows[1])
    fn(r)
    return wire.pb.LogBatch(rows=[wire.impression_to_proto(rows[0]), r]).SerializeToString()


@pytest.mark.parametrize("mutate, field", [
    (lambda r: setattr(r.candidates[2].item, "cloud_score", math.nan), "candidates[2].item.cloud_score"),
    (lambda r: setattr(r.candidates[0], "exposure_dwell_ms", math.inf), "candidates[0].exposure_dwell_ms"),
    (lambda r: r.candidates[1].item.cloud_dense.__setitem__(0, -math.inf), "candidates[1].item.cloud_dense"),
    (lambda r: r.candidates[3].item.cloud_dense.append(0.5), "candidates[3].item.cloud_dense: must have"),
    (lambda r: setattr(r.candidates[0].item.id_embedding, "data", b"\x00\x3c" * 3),
     "candidates[0].item.id_embedding: must have"),
    (lambda r: setattr(r.context, "hour", 31), "context.hour"),
    (lambda r: setattr(r.context, "lat", math.nan), "context.lat"),
])
def test_invalid_rows_get_400_naming_row_and_field_and_nothing_is_written(app, client, rows, mutate, field):
    log_dir = Path(app.extensions["edge_rerank.logs"].root)
    before = sorted(log_dir.glob("*.parquet"))
    r = _post_logs(client, _bad(rows, mutate))
    assert r.status_code == 400, r.json
    assert r.json["error"].startswith("row 1 ") and field in r.json["error"]
    assert sorted(log_dir.glob("*.parquet")) == before and not list(log_dir.glob(".*.tmp"))


def test_valid_rows_are_accepted_and_read_back(app, client, rows):
    r = _post_logs(client, _batch(rows[:10]))
    assert r.status_code == 200
    ack = wire.parse(wire.pb.LogAck, r.data)
    back = read_logs(Path(app.extensions["edge_rerank.logs"].root) / ack.part)
    assert ack.accepted == 10 and [x.request_id for x in back] == [x.request_id for x in rows[:10]]


# ---- nesting and JSON size ----

@pytest.mark.parametrize("path, headers", [
    ("/v1/search", {}), ("/v1/logs", {"X-API-Key": KEY}),
    ("/v1/models/device-reranker/promote", {"X-Admin-Key": "adm"}),
])
@pytest.mark.parametrize("kind", ["[", "{"])
def test_deep_json_is_a_4xx_everywhere(client, path, headers, kind):
    for depth in (40, 5_000, 100_000):
        r = client.post(path, data=deep_json(depth, kind), headers=headers | {"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (path, depth, r.status_code)


def test_json_log_bodies_are_limited(client):
    body = json.dumps({"rows": [{"request_id": "x" * 100}] * 6000}).encode()
    r = _post_logs(client, body, ctype="application/json")
    assert r.status_code == 413 and "JSON limit" in r.json["error"]


# ---- anonymous uploads and quotas ----

def test_log_ingestion_without_a_key_must_be_asked_for(cloud_data, tmp_path):
    with pytest.raises(ValueError, match="allow_anonymous_logs"):
        create_app(CloudConfig(data_dir=str(cloud_data), log_dir=str(tmp_path / "l")))
    app = create_app(CloudConfig(data_dir=str(cloud_data), log_dir=str(tmp_path / "l"), allow_anonymous_logs=True))
    assert app.test_client().post("/v1/logs", data=b"", headers={"Content-Type": PB}).status_code == 400


def test_serve_refuses_logs_without_key_unless_insecure(cloud_data, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", "serve", "--data-dir", str(cloud_data),
                        "--log-dir", str(tmp_path / "l")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--insecure" in r.stderr and "Traceback" not in r.stderr


def test_quota_rows_per_second_and_bytes_per_day():
    now = [1000.0]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        q = FileQuota(d, QuotaConfig(rows_per_s=10, burst_rows=20, bytes_per_day=1000), clock=lambda: now[0])
        q.charge("a", 20, 100)
        with pytest.raises(QuotaExceeded) as e:
            q.charge("a", 5, 100)
        assert e.value.retry_after_s == 1
        q.charge("b", 20, 100)  # another key has its own bucket
        now[0] += 1.0
        q.charge("a", 10, 100)
        now[0] += 100.0
        with pytest.raises(QuotaExceeded, match="daily"):
            q.charge("a", 1, 801)  # 200 bytes used today
        now[0] = 86400.0 * 2  # next UTC day
        q.charge("a", 1, 800)
        with pytest.raises(QuotaExceeded, match="burst"):
            q.charge("a", 21, 1)


def test_over_quota_upload_is_429_with_retry_after(cloud_data, tmp_path, rows):
    app = create_app(CloudConfig(data_dir=str(cloud_data), log_dir=str(tmp_path / "l"), api_key=KEY,
                                 quota_rows_per_s=1, quota_burst_rows=12))
    c = app.test_client()
    assert _post_logs(c, _batch(rows[:10])).status_code == 200
    r = _post_logs(c, _batch(rows[:10]))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert len(list((tmp_path / "l").glob("part-*.parquet"))) == 1


# ---- ranking cache bounded in bytes ----

def test_ranking_cache_is_bounded_in_bytes_including_encoded_pages():
    cache = RankingCache(capacity=10_000, max_bytes=1 << 20)
    rng = np.random.default_rng(0)
    for k in range(200):
        r = Ranking(rows=np.arange(200), scores=rng.random(200).astype(np.float32),
                    hidden=rng.random((200, 32)).astype(np.float32))
        cache.put((k,), r)
        r.encoded[(0, 25, 1)] = (b"x" * 30_000, True)  # a page encoded after the put, as the pipeline does
        cache.get((k,))
        assert cache.nbytes <= (1 << 20) + 40_000
    assert 0 < len(cache) < 40


def test_ranking_cache_counts_pages_added_to_an_entry_measured_before():
    """Entries are re-measured only when their page count changed: pages encoded after earlier lookups (page 1, 2
    of a search) are still counted at the next lookup, and dropped entries take their pages' bytes with them."""
    from edge_rerank.cloud.ranking.pipeline import ranking_bytes

    cache = RankingCache(capacity=3, max_bytes=1 << 30)
    rs = [Ranking(rows=np.arange(100), scores=np.zeros(100, np.float32), hidden=np.zeros((100, 8), np.float32))
          for _ in range(4)]
    for k in range(3):
        cache.put((k,), rs[k])
    for page in range(3):  # a search paged through: each lookup, then the next page encoded
        assert cache.get((0,)) is rs[0]
        assert cache.nbytes == sum(ranking_bytes(r) for r in rs[:3])
        rs[0].encoded[(page * 25, 25, 1)] = (b"x" * (1000 + page), True)
    assert cache.get((0,)) is rs[0] and cache.get((1,)) is rs[1]  # (0,) re-measured with its 3 pages
    assert cache.nbytes == sum(ranking_bytes(r) for r in rs[:3])
    cache.put((3,), rs[3])  # evicts the least recently used: (2,)
    assert cache.get((2,)) is None
    assert cache.nbytes == sum(ranking_bytes(r) for r in (rs[0], rs[1], rs[3]))


# ---- archives and signatures ----

def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_bombs_are_refused_while_reading(tmp_path):
    reg = Registry(tmp_path / "reg")
    bomb = _tar({"manifest.json": b"{}", "model.onnx": bytes(4 << 20)})
    assert len(bomb) < 20_000
    with pytest.raises(RegistryError) as e:
        reg.publish_archive(bomb, max_unpacked_bytes=1 << 20)
    assert e.value.status == 413
    with pytest.raises(RegistryError) as e:
        reg.publish_archive(_tar({f"f{i}": b"x" for i in range(300)}))
    assert e.value.status == 413 and "members" in e.value.reason
    assert not any(tmp_path.glob("reg/**/model.onnx"))


def test_device_checks_the_signature_before_downloading_files(tmp_path, fcfg):
    pytest.importorskip("cryptography")
    from edge_rerank.converters.bundle import write_bundle
    from edge_rerank.device_sdk.model_manager import ModelManager
    from edge_rerank.device_sdk.signing import generate_keypair, sign_manifest

    model = tmp_path / "m.onnx"
    model.write_bytes(os.urandom(1024))
    b = write_bundle(tmp_path / "b", model_file=model, fmt="onnx", name="dev", version="v1", feature_config=fcfg)
    _, pub = generate_keypair()
    forger, _ = generate_keypair()
    fetched = []

    class Source:
        def assignment(self, name, user_id):
            return "v1"

        def fetch(self, name, version, rel):
            fetched.append(rel)
            if rel == "manifest.sig":
                return sign_manifest((b / "manifest.json").read_bytes(), forger)
            return (b / rel).read_bytes()

    mm = ModelManager(root=tmp_path / "models", public_key=pub)
    assert mm.update(Source(), "dev", "u1") is False
    assert mm.last_error.startswith("bad_signature") and fetched == ["manifest.json", "manifest.sig"]


# ---- bad files: quarantine, reports, stale temp parts ----

def test_unreadable_parts_are_quarantined_with_a_reason_and_one_warning(tmp_path, rows, caplog):
    d = tmp_path / "logs"
    sink = LogSink(d)
    sink.append(rows[:5])
    good = pq.read_table(next(d.glob("part-*.parquet")))
    (d / "part-empty.parquet").write_bytes(b"")
    raw = (d / next(d.glob("part-*.parquet")).name).read_bytes()
    (d / "part-trunc.parquet").write_bytes(raw[: len(raw) // 2])
    (d / "part-random.parquet").write_bytes(np.random.default_rng(0).bytes(5000))
    pq.write_table(pa.table({"x": [1, 2]}), d / "part-schema.parquet")
    pq.write_table(good.drop_columns(["candidates"]).append_column("candidates", pa.array([1] * 5)),
                   d / "part-types.parquet")
    bad = sorted(["part-empty.parquet", "part-trunc.parquet", "part-random.parquet", "part-schema.parquet",
                  "part-types.parquet"])
    report = LogReadReport()
    with caplog.at_level(logging.WARNING, logger="edge_rerank.cloud.logs"):
        got = read_logs(d, report=report)
    assert [r.request_id for r in got] == [r.request_id for r in rows[:5]]
    assert sorted(report.skipped_files) == bad and report.files_read == 1
    q = d / "quarantine"
    assert sorted(p.name for p in q.glob("*.parquet")) == bad
    assert all((q / f"{n}.reason.txt").read_text().strip() for n in bad)
    warned = [r.getMessage() for r in caplog.records]
    assert all(sum(n in m for m in warned) == 1 for n in bad)
    assert read_logs(d) and not list(q.glob("*.tmp"))  # a second read finds nothing more to move


def test_training_reads_skip_invalid_rows_and_count_them(tmp_path, rows):
    d = tmp_path / "logs"
    sink = LogSink(d)
    bad = rows[3]
    bad_nan = type(bad)(**{**bad.__dict__, "context": type(bad.context)(math.nan, 0.0, 3)})
    sink.append(rows[:3] + [bad_nan])
    report = LogReadReport()
    got = read_logs(d, report=report)
    assert len(got) == 3 and report.skipped_rows == {"context.lat": 1}
    assert "skipped 1 invalid rows" in report.summary()


def test_stale_temp_parts_are_cleaned_at_start_up_and_by_compaction(tmp_path, rows):
    d = tmp_path / "logs"
    d.mkdir()
    old, fresh = d / ".part-dead.parquet.tmp", d / ".part-live.parquet.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    sink = LogSink(d)
    assert not old.exists() and fresh.exists()
    os.utime(fresh, (time.time() - 7200, time.time() - 7200))  # its upload died since: compaction removes it
    sink.append(rows[:2])
    sink.append(rows[2:4])
    (d / "part-bad.parquet").write_bytes(b"junk")
    res = compact_logs(d)
    assert res["rows"] == 4 and res["quarantined"] == ["part-bad.parquet"] and not fresh.exists()
    assert clean_stale_tmp(d) == []


# ---- the real server: framing, over-limit chunked bodies, slow clients, no tracebacks ------------------------------

@pytest.fixture(scope="module")
def server(cloud_data, tmp_path_factory):
    from edge_rerank.cloud.serve import server_process

    d = tmp_path_factory.mktemp("srv")
    cfg = CloudConfig(data_dir=str(cloud_data), log_dir=str(d / "logs"), api_key=KEY, registry_dir=str(d / "reg"),
                      admin_key="adm", max_body_bytes=1 << 20)
    with server_process(cfg, workers=2, log_file=d / "server.log") as srv:
        yield srv, d


def test_malformed_framing_is_never_a_5xx_and_never_logs_a_traceback(server):
    import random

    srv, d = server
    pids = set(worker_pids(srv.proc.pid))
    rng = random.Random(0)
    statuses, reqs = [], []
    for path, h in (("/v1/search", {"Content-Type": PB}), ("/v1/logs", {"Content-Type": PB, "X-API-Key": KEY}),
                    ("/v1/models/device-reranker/promote", {"X-Admin-Key": "adm"}), ("/ping", {}),
                    ("/healthz", {})):
        for req in framing_attacks(rng, path, h):
            statuses.append(raw_request(srv.url, req)[0])
            reqs.append(req[:300])
    assert statuses and all(s < 500 for s in statuses), [x for x in zip(statuses, reqs, strict=True) if x[0] >= 500]
    assert set(worker_pids(srv.proc.pid)) == pids  # no worker died
    assert "Traceback" not in (d / "server.log").read_text(errors="replace")


def test_both_http_parsers_answer_every_framing_attack_alike(cloud_data, tmp_path):
    """gunicorn's C parser (the [cloud] extra; serve's default when installed) and its pure-Python one give the same
    status to every malformed request, and neither a 5xx nor a traceback (the server fixture runs the default)."""
    import random

    from edge_rerank.cloud.serve import server_process
    from edge_rerank.device_sdk.extras import importable

    if not importable("gunicorn_h1c"):
        pytest.skip("gunicorn_h1c (the C parser of the [cloud] extra) is not installed")
    cfg = CloudConfig(data_dir=str(cloud_data), registry_dir=str(tmp_path / "reg"), admin_key="adm")
    answers = {}
    for parser in ("python", "fast"):
        log = tmp_path / f"server-{parser}.log"
        with server_process(cfg, workers=1, log_file=log, http_parser=parser) as srv:
            rng = random.Random(1)
            reqs = [req for _ in range(6) for path, h in (("/v1/search", {"Content-Type": PB}), ("/ping", {}))
                    for req in framing_attacks(rng, path, h)]
            answers[parser] = [raw_request(srv.url, req)[0] for req in reqs]
        assert answers[parser] and all(s < 500 for s in answers[parser]), parser
        assert "Traceback" not in log.read_text(errors="replace"), parser
    assert answers["fast"] == answers["python"], [
        (a, b, r[:120]) for a, b, r in zip(answers["python"], answers["fast"], reqs, strict=True) if a != b]


def test_serve_refuses_an_unknown_http_parser():
    from edge_rerank.cloud.serve import gunicorn_command

    with pytest.raises(ValueError, match="http_parser"):
        gunicorn_command("127.0.0.1", 8080, 1, http_parser="c")
    assert gunicorn_command("127.0.0.1", 8080, 1, http_parser="python")[-1].endswith("app_from_env()")


def test_chunked_body_over_the_limit_is_413_never_cut(server, rows):
    srv, d = server
    body = _batch(rows) * 1  # a valid batch ...
    while len(body) <= (1 << 20):
        body += _batch(rows)  # ... repeated past the 1 MiB limit (concatenated LogBatches are one LogBatch)
    parts = sorted((d / "logs").glob("part-*.parquet"))
    status, answer = raw_request(srv.url, request_bytes("POST", "/v1/logs", body, {"Content-Type": PB,
                                                                                   "X-API-Key": KEY}, chunked=True))
    assert status == 413, answer[:200]
    assert sorted((d / "logs").glob("part-*.parquet")) == parts


def test_log_request_at_the_limit_stays_within_bounded_memory(server):
    srv, _ = server
    before = reset_peak(worker_pids(srv.proc.pid))
    tiny = b"\x12\x03\x0a\x01r" * ((1 << 20) // 5)
    status, _ = raw_request(srv.url, request_bytes("POST", "/v1/logs", tiny, {"Content-Type": PB, "X-API-Key": KEY}))
    assert status == 413 and peak_growth_mib(before) < 64


def test_trickling_clients_do_not_starve_healthz(server):
    pytest.importorskip("gevent", reason="serve's default gevent workers need the [cloud] extra")
    srv, _ = server
    with TrickleClients(srv.url, n=32, interval_s=0.5):
        time.sleep(1.0)
        lat = [timed_get(srv.url + "/healthz", timeout_s=3.0) for _ in range(10)]
    assert all(x is not None for x in lat), lat
    assert max(lat) < 1.0  # the benchmark measures p99 against 100 ms on a quiet machine


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_sigterm_and_sigint(cloud_data, tmp_path, sig):
    from edge_rerank.cloud.serve import free_port

    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "edge_rerank.cli", "serve", "--data-dir", str(cloud_data),
                          "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while timed_get(f"http://127.0.0.1:{port}/healthz", 1.0) is None:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.2)
        master = worker_pids(p.pid)
        assert master
        p.send_signal(sig)  # to the CLI process only, as a process manager does
        assert p.wait(timeout=20) == 0
        assert timed_get(f"http://127.0.0.1:{port}/healthz", 1.0) is None
        assert not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in master)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_simulator_client_waits_out_a_429_as_retry_after_says(cloud_data, tmp_path, rows):
    """An app that uploads faster than its quota is told when to come back; the simulator's HTTP client (what
    the demo logs through) waits and retries instead of failing the run."""
    from edge_rerank.cloud.serve import running_server
    from edge_rerank.simulator.transport import HttpCloud

    cfg = CloudConfig(data_dir=str(cloud_data), log_dir=str(tmp_path / "l"), api_key=KEY, quota_rows_per_s=20,
                      quota_burst_rows=12)
    with running_server(cfg) as url:
        cloud = HttpCloud(url, api_key=KEY)
        assert cloud.post_logs(rows[:10]) == 10
        t0 = time.monotonic()
        assert cloud.post_logs(rows[:10]) == 10  # over the burst: 429, Retry-After 1 s, then accepted
        assert time.monotonic() - t0 >= 0.9 and cloud.requests == 3
