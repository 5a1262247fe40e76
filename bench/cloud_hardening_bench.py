"""Cloud hardening benchmark (issue 15), one run, JSON out.

Against `edge-rerank serve`'s production settings (gunicorn, the default worker class) on loopback:
1. memory: peak growth of worker RSS (VmHWM) for one /v1/logs request at the body limit, made of tiny rows
   (the worst case per byte) and of realistic rows; target <= 64 MiB;
2. framing / nesting / size: status of malformed chunked framing, a 100,000-deep JSON body, a chunked body over
   the limit (target: 4xx, never 5xx or a silent cut);
3. slow clients: /healthz latency (fresh connection each check) while 32 connections trickle one byte every
   0.5 s; target p99 <= 100 ms with every check answered;
4. throughput: bench/cloud_bench.py's HTTP phases in the same run (ratios page / ping >= 0.8, search / ping
   >= 0.5).
The machine is shared: absolute numbers are noisy, ratios measured in one run less so.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from attacks import (  # noqa: E402
    TrickleClients,
    deep_json,
    peak_growth_mib,
    raw_request,
    request_bytes,
    reset_peak,
    timed_get,
    worker_pids,
)

from edge_rerank.cloud.app import CloudConfig  # noqa: E402
from edge_rerank.cloud.serve import server_process  # noqa: E402

PB = "application/x-protobuf"
KEY = "bench-log-key"


def tiny_rows_body(n_bytes: int) -> bytes:
    """A LogBatch of minimal rows (request_id "r": 5 bytes each) filling `n_bytes`."""
    row = b"\x12\x03\x0a\x01r"
    return row * (n_bytes // len(row))


def real_rows_body(world, n_bytes: int) -> tuple[bytes, int]:
    """A LogBatch of simulator rows (cloud-only sessions) up to `n_bytes`; (body, rows)."""
    from edge_rerank.device_sdk import wire
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.transport import InProcessCloud
    from edge_rerank.simulator.user_model import UserModel

    cloud = InProcessCloud(str(world_data[0]))
    phone = Phone(UserModel(world), cloud, arm="cloud")
    rows: list[bytes] = []
    size, i = 0, 0
    while True:
        for r in phone.run(world.session(i, 3)).rows:
            enc = wire.impression_to_proto(r).SerializeToString()
            piece = b"\x12" + _varint(len(enc)) + enc
            if size + len(piece) > n_bytes:
                return b"".join(rows), len(rows)
            rows.append(piece)
            size += len(piece)
        i += 1


world_data: list[Path] = []


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _server_kwargs(**kw) -> dict:
    params = inspect.signature(server_process).parameters
    return {k: v for k, v in kw.items() if k in params}


def bench_memory(url: str, master: int, limit: int, world) -> dict:
    out = {}
    headers = {"Content-Type": PB, "X-API-Key": KEY}
    real, n_real = real_rows_body(world, limit - 64)
    small, _ = real_rows_body(world, 64 * 1024)
    for _ in range(8):  # every worker has taken a log upload before (its one-time start-up allocations)
        raw_request(url, request_bytes("POST", "/v1/logs", small, headers), timeout_s=60)
    cases = (("tiny_rows_2MB", tiny_rows_body(2 * 1024 * 1024)), ("tiny_rows_at_limit", tiny_rows_body(limit)),
             ("real_rows_at_limit", real))
    for name, body in cases:
        before = reset_peak(worker_pids(master))
        t0 = time.perf_counter()
        status, resp = raw_request(url, request_bytes("POST", "/v1/logs", body, headers), timeout_s=120)
        out[name] = {"body_bytes": len(body), "status": status, "seconds": time.perf_counter() - t0,
                     "peak_worker_growth_mib": peak_growth_mib(before), "answer": resp[:160].decode("latin-1")}
        if name == "real_rows_at_limit":
            out[name]["rows"] = n_real
        print(name, json.dumps(out[name]), flush=True)
    return out


def bench_attacks(url: str, limit: int) -> dict:
    h = {"Content-Type": "application/json", "X-API-Key": KEY}
    cases = {
        "bad_chunk_size": request_bytes("POST", "/v1/search", headers=h | {"Transfer-Encoding": "chunked"},
                                        raw_body=b"zz\r\nhello\r\n0\r\n\r\n"),
        "missing_terminator": request_bytes("POST", "/v1/search", headers=h | {"Transfer-Encoding": "chunked"},
                                            raw_body=b"5\r\nhello"),
        "bad_chunk_healthz": request_bytes("GET", "/healthz", headers={"Transfer-Encoding": "chunked"},
                                           raw_body=b"zz\r\n"),
        "json_depth_100k_search": request_bytes("POST", "/v1/search", deep_json(100_000, "{"), h),
        "json_depth_100k_logs": request_bytes("POST", "/v1/logs", deep_json(100_000, "["), h),
        "chunked_over_limit_logs": request_bytes("POST", "/v1/logs", tiny_rows_body(limit + 65536),
                                                 h | {"Content-Type": PB}, chunked=True),
        "content_length_over_limit": request_bytes("POST", "/v1/logs", tiny_rows_body(limit + 65536),
                                                   h | {"Content-Type": PB}),
    }
    out = {}
    for name, req in cases.items():
        status, body = raw_request(url, req, timeout_s=30)
        out[name] = {"status": status, "answer": body[:160].decode("latin-1"),
                     "expect_2xx": name == "bad_chunk_healthz"}  # a GET ignores its body
        print(name, out[name], flush=True)
    return out


def bench_slow_clients(url: str, checks: int, n: int) -> dict:
    lat: list[float | None] = []
    with TrickleClients(url, n=n, interval_s=0.5) as tc:
        time.sleep(2.0)  # every trickler has connected and started its request
        for _ in range(checks):
            lat.append(timed_get(url + "/healthz", timeout_s=3.0))
            time.sleep(0.1)
        sent = tc.bytes_sent
    ok = [x for x in lat if x is not None]
    return {"clients": n, "checks": checks, "answered": len(ok), "trickled_bytes": sent,
            "p50_ms": float(np.percentile(ok, 50) * 1e3) if ok else None,
            "p99_ms": float(np.percentile(ok, 99) * 1e3) if ok else None,
            "max_ms": float(max(ok) * 1e3) if ok else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/cloud_hardening.json")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4, help="threads per worker (gthread workers only)")
    p.add_argument("--worker-class", default=None, help="gunicorn worker class (default: serve's)")
    p.add_argument("--http-parser", default="auto", choices=["auto", "fast", "python"],
                   help="gunicorn's HTTP parser (serve's --http-parser; auto: the C parser when installed)")
    p.add_argument("--checks", type=int, default=60, help="/healthz checks during the slow-client attack")
    p.add_argument("--tricklers", type=int, default=32)
    p.add_argument("--throughput", action="store_true", help="also run bench/cloud_bench.py's HTTP phases")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per throughput phase and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    p.add_argument("--only-throughput", action="store_true", help="skip the attack phases")
    a = p.parse_args()
    from edge_rerank.simulator.world import World, WorldConfig

    res: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                 "note": "shared machine: other sessions' load moves absolute numbers"}
    with tempfile.TemporaryDirectory(prefix="edge-rerank-hard-") as tmp:
        tmp = Path(tmp)
        world = World(WorldConfig(seed=0))
        data = world.provision_cloud(tmp / "cloud_data")
        world_data.append(data)
        cfg = CloudConfig(data_dir=str(data), log_dir=str(tmp / "logs"), api_key=KEY)
        limit = getattr(cfg, "max_log_body_bytes", cfg.max_body_bytes)
        kw = _server_kwargs(workers=a.workers, threads=a.threads, worker_class=a.worker_class,
                            http_parser=a.http_parser)
        if a.worker_class is None:
            kw.pop("worker_class", None)
        if not a.only_throughput:
            with server_process(cfg, log_file=tmp / "server.log", **kw) as srv:
                pids0 = sorted(worker_pids(srv.proc.pid))
                res["server"] = {"workers": a.workers, "threads": a.threads,
                                 "worker_class": a.worker_class or "default", "log_body_limit": limit}
                res["memory"] = bench_memory(srv.url, srv.proc.pid, limit, world)
                res["attacks"] = bench_attacks(srv.url, limit)
                res["slow_clients"] = bench_slow_clients(srv.url, a.checks, a.tricklers)
                print("slow_clients", json.dumps(res["slow_clients"]), flush=True)
                res["worker_restarts"] = len(set(worker_pids(srv.proc.pid)) - set(pids0))
            log_text = (tmp / "server.log").read_text(errors="replace")
            res["server_log_tracebacks"] = log_text.count("Traceback")
            res["server_log_tail"] = log_text.splitlines()[-5:]
        if a.throughput or a.only_throughput:
            import cloud_bench

            args = argparse.Namespace(workers=a.workers, threads=a.threads, client=a.client, procs=1, connections=8,
                                      duration=a.duration, rounds=a.rounds, promote_period=0.25,
                                      worker_class=a.worker_class, http_parser=a.http_parser)
            h = cloud_bench.bench_http(args, tmp)
            res["throughput"] = {k: h[k] for k in ("ratios", "capacity_ratios_from_server_cpu", "ratios_vs_post_ping",
                                                   "targets_met")}
            res["throughput"]["phases"] = {k: {m: h[k][m] for m in ("rps", "p50_ms", "p99_ms", "errors", "non_200",
                                                                   "server_cpu_us_per_request")}
                                           for k in ("ping", "ping_post", "page", "search", "page_steady",
                                                     "page_during_promotion")}
            # every round's req/s and server CPU per request: on a shared machine the spread says how far the medians
            # (and the ratios) can be trusted (page and page_steady are the same workload)
            for k, ph in res["throughput"]["phases"].items():
                ph["rounds_rps"] = [round(x["rps"], 1) for x in h[k]["rounds"]]
                ph["rounds_server_cpu_us"] = [round(x["server_cpu_us_per_request"], 1) for x in h[k]["rounds"]]
            res["throughput"]["worker_class"] = a.worker_class or "default"
            res["throughput"]["http_parser"] = a.http_parser
    if not a.only_throughput:
        mem = max(v["peak_worker_growth_mib"] for v in res["memory"].values() if v["body_bytes"] >= limit - 65536)
        sc = res["slow_clients"]
        res["targets"] = {"peak_worker_mib_at_limit_le_64": mem <= 64,
                          "healthz_p99_le_100ms_all_answered": sc["answered"] == sc["checks"]
                          and (sc["p99_ms"] or 1e9) <= 100,
                          "attacks_all_4xx": all(400 <= v["status"] < 500 for v in res["attacks"].values()
                                                 if not v.get("expect_2xx")),
                          "worker_restarts_0": res["worker_restarts"] == 0}
    res["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res.get("targets")), json.dumps(res.get("throughput"), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
