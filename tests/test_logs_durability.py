"""/v1/logs is durable on arrival: a real gunicorn server is killed with SIGKILL (master and workers) while
clients are uploading, and every batch it acknowledged is on disk. Compaction to Parquet is crash-safe."""

import dataclasses
import json
import shutil
import threading
import time

import pyarrow.parquet as pq
import requests

from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.logs import IMPRESSION_SCHEMA, LogSink, compact_logs, live_log_files, read_logs
from edge_rerank.cloud.serve import server_process
from edge_rerank.device_sdk import wire

PB = {"Content-Type": "application/x-protobuf", "X-API-Key": "k"}


def _batch(rows, tag: str) -> tuple[list[str], bytes]:
    out = [dataclasses.replace(r, request_id=f"{tag}-{k}") for k, r in enumerate(rows)]
    return [r.request_id for r in out], wire.log_batch_to_bytes(out)


def test_kill_9_during_ingestion_loses_no_acknowledged_log(cloud_data, logged_rows, tmp_path):
    log_dir = tmp_path / "logs"
    cfg = CloudConfig(data_dir=str(cloud_data), log_dir=str(log_dir), api_key="k")
    acked: list[str] = []
    sent = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def client(t: int, url: str) -> None:
        http = requests.Session()
        n = 0
        while not stop.is_set():
            ids, body = _batch(logged_rows[(3 * n) % 120: (3 * n) % 120 + 3], f"t{t}-b{n}")
            n += 1
            with lock:
                sent[0] += 1
            try:
                r = http.post(url + "/v1/logs", data=body, headers=PB, timeout=10)
            except requests.RequestException:
                return  # the server is gone
            if r.status_code == 200 and wire.parse(wire.pb.LogAck, r.content).accepted == len(ids):
                with lock:
                    acked.extend(ids)

    with server_process(cfg, workers=2, log_file=tmp_path / "server.log") as server:
        threads = [threading.Thread(target=client, args=(t, server.url)) for t in range(4)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 60
        while len(acked) < 3 * 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # SIGKILL to master and workers, requests in flight
        server.proc.wait(timeout=10)
        stop.set()
        for th in threads:
            th.join(timeout=15)
    assert len(acked) >= 3 * 60, "the server acknowledged too few batches before the kill"
    assert sent[0] > len(acked) // 3, "no request was in flight at the kill"
    stored = {r.request_id for r in read_logs(log_dir)}
    lost = set(acked) - stored
    assert not lost, f"{len(lost)} acknowledged rows lost"
    # a leftover temp file from a killed write is never read as a part
    assert all(p.name.startswith(("part-", "compacted-")) for p in live_log_files(log_dir))

    # a restarted server appends next to them; compaction merges everything without loss or duplicates
    with server_process(cfg, workers=1) as server:
        ids, body = _batch(logged_rows[:2], "after-restart")
        assert requests.post(server.url + "/v1/logs", data=body, headers=PB, timeout=10).status_code == 200
    before = [r.request_id for r in read_logs(log_dir)]
    res = compact_logs(log_dir)
    assert res["rows"] == len(before) and len(list(log_dir.glob("part-*.parquet"))) == 0
    after = read_logs(log_dir)
    assert sorted(r.request_id for r in after) == sorted(before) and set(ids) <= set(before)
    out = log_dir / res["output"]
    assert pq.read_schema(out).metadata[b"edge_rerank.impression_schema"] == b"1"
    assert pq.read_schema(out).remove_metadata() == IMPRESSION_SCHEMA.remove_metadata()


def test_a_crash_inside_compaction_never_loses_or_duplicates_rows(logged_rows, tmp_path):
    src = tmp_path / "src"
    sink = LogSink(src)
    for k in range(4):
        sink.append(_batch_rows(logged_rows, k))
    expect = sorted(r.request_id for r in read_logs(src))

    # crash after the output was renamed into place but before the inputs were deleted
    a = tmp_path / "a"
    shutil.copytree(src, a)
    inputs = sorted(p.name for p in a.glob("part-*.parquet"))
    merged = "compacted-x.parquet"
    pq.write_table(pq.read_table(a / inputs[0]), a / merged)  # stands for the merged output of inputs[:1]
    (a / "compact-1.journal").write_text(json.dumps({"output": merged, "inputs": inputs[:1]}))
    assert sorted(r.request_id for r in read_logs(a)) == expect
    compact_logs(a)
    assert sorted(r.request_id for r in read_logs(a)) == expect and not list(a.glob("*.journal"))

    # crash before the output was renamed: the inputs stay live, the temp output is dropped
    b = tmp_path / "b"
    shutil.copytree(src, b)
    (b / ".compacted-y.parquet.tmp").write_bytes(b"partial")
    (b / "compact-2.journal").write_text(json.dumps({"output": "compacted-y.parquet",
                                                     "inputs": sorted(p.name for p in b.glob("part-*"))}))
    assert sorted(r.request_id for r in read_logs(b)) == expect
    compact_logs(b)
    assert sorted(r.request_id for r in read_logs(b)) == expect
    assert not list(b.glob(".*.tmp")) and len(list(b.glob("*.parquet"))) == 1


def _batch_rows(rows, k):
    return [dataclasses.replace(r, request_id=f"c{k}-{i}") for i, r in enumerate(rows[3 * k: 3 * k + 3])]


def test_compaction_command(logged_rows, tmp_path):
    import subprocess
    import sys

    sink = LogSink(tmp_path)
    for k in range(3):
        sink.append(_batch_rows(logged_rows, k))
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cloud.logs", "compact", "--log-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["parts"] == 3 and res["rows"] == 9 and len(read_logs(tmp_path)) == 9
    again = subprocess.run([sys.executable, "-m", "edge_rerank.cloud.logs", "compact", "--log-dir", str(tmp_path)],
                           capture_output=True, text=True)
    assert json.loads(again.stdout)["output"] is None  # nothing to merge
