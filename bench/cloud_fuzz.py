"""Cloud fuzzing, JSON out. Two parts:

1. the API fuzz tests (tests/test_cloud_app.py: search, logs, registry routes through Flask's test client; no input
   may produce a 5xx) with many more cases than CI runs (``--cases``; 0 skips them);
2. attacks on the real server (``edge-rerank serve``'s settings: gunicorn, the default worker class, 2 workers) over
   raw sockets (``--attacks`` requests, default 10,000): malformed chunked framing, conflicting or unknown
   transfer codings, bad Content-Length; JSON nested up to 100,000 levels and protobuf groups nested 10,000 deep;
   bodies over the limit (declared and chunked), JSON over the JSON limit, oversized request lines and headers;
   mixed with valid requests. Reported: requests sent, statuses, 5xx count (target 0), connections closed without
   an answer, worker restarts (target 0), tracebacks in the server log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from attacks import deep_json, framing_attacks, raw_request, request_bytes, worker_pids  # noqa: E402

PB = "application/x-protobuf"
KEY = "fuzz-key"
ADMIN = "fuzz-admin"


def _search_body(rng: random.Random) -> bytes:
    from edge_rerank.device_sdk import wire
    from edge_rerank.device_sdk.contracts import Context, SearchRequest

    req = SearchRequest(f"r{rng.randint(0, 999)}", "s", f"u{rng.randint(0, 99):05d}", rng.choice(["hotpot", "pizza"]),
                        Context(rng.uniform(0, 10), rng.uniform(0, 10), rng.randint(0, 23)))
    return wire.request_to_proto(req).SerializeToString()


def attack_requests(rng: random.Random, limit: int) -> list[tuple[str, bytes]]:
    """One round of (class, request) pairs over every route."""
    routes = [("/v1/search", {"Content-Type": PB}), ("/v1/logs", {"Content-Type": PB, "X-API-Key": KEY}),
              ("/v1/models/device-reranker/promote", {"X-Admin-Key": ADMIN, "Content-Type": "application/json"}),
              ("/ping", {}), ("/healthz", {}), ("/v1/models/device-reranker/v1", {"X-Admin-Key": ADMIN})]
    path, h = rng.choice(routes)
    jh = h | {"Content-Type": "application/json"}
    out = [("framing", r) for r in framing_attacks(rng, path, h)]
    depth = rng.choice([33, 1000, 10_000, 100_000])
    out += [("nesting", request_bytes("POST", path, deep_json(depth, rng.choice("[{")), jh)),
            ("nesting", request_bytes("POST", path, b"\x7b" * min(depth, 10_000) + b"\x7c" * min(depth, 10_000),
                                      h | {"Content-Type": PB})),
            ("nesting", request_bytes("POST", path, deep_json(depth, "["), jh, chunked=True))]
    if rng.random() < 0.05:  # size attacks cost the client the whole body: a few per round
        big = rng.randbytes(16) * ((limit + 1024) // 16)
        out += [("size", request_bytes("POST", path, big, h)),
                ("size", request_bytes("POST", path, big, h, chunked=True))]
    out += [("size", request_bytes("POST", path, b"{" * 10 + b" " * (600 * 1024), jh)),
            ("size", request_bytes("GET", "/ping?" + "a" * rng.choice([9000, 20000]), b"")),
            ("size", request_bytes("GET", "/healthz", b"", {f"X-H{i}": "v" for i in range(rng.choice([101, 200]))})),
            ("size", request_bytes("GET", "/healthz", b"", {"X-Big": "v" * rng.choice([9000, 70000])})),
            ("size", request_bytes("POST", path, b"", h | {"Content-Length": str(limit + rng.randint(1, 10**9))}))]
    out += [("valid", request_bytes("POST", "/v1/search", _search_body(rng), {"Content-Type": PB})),
            ("valid", request_bytes("GET", "/healthz", b"")),
            ("random", request_bytes("POST", path, rng.randbytes(rng.randint(0, 2000)), h))]
    return out


def run_attacks(n: int, workers: int, clients: int, seed: int) -> dict:
    from edge_rerank.cloud.app import CloudConfig
    from edge_rerank.cloud.serve import server_process
    from edge_rerank.simulator.world import World, WorldConfig

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="edge-rerank-fuzz-") as tmp:
        tmp = Path(tmp)
        data = World(WorldConfig(seed=0, n_items=600, n_users=100)).provision_cloud(tmp / "cloud_data")
        cfg = CloudConfig(data_dir=str(data), log_dir=str(tmp / "logs"), api_key=KEY, registry_dir=str(tmp / "reg"),
                          admin_key=ADMIN, quota_rows_per_s=0, quota_bytes_per_day=0)
        reqs: list[tuple[str, bytes]] = []
        while len(reqs) < n:
            reqs += attack_requests(rng, cfg.max_body_bytes)
        reqs = reqs[:n]
        log_file = tmp / "server.log"
        with server_process(cfg, workers=workers, log_file=log_file) as srv:
            pids0 = set(worker_pids(srv.proc.pid))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as ex:
                statuses = list(ex.map(lambda r: raw_request(srv.url, r[1], timeout_s=30)[0], reqs))
            seconds = time.perf_counter() - t0
            restarts = len(set(worker_pids(srv.proc.pid)) - pids0)
            alive = srv.proc.poll() is None
        text = log_file.read_text(errors="replace")
    by_class: dict[str, Counter] = {}
    for (cls, _), s in zip(reqs, statuses, strict=True):
        by_class.setdefault(cls, Counter())[str(s)] += 1
    five = sum(1 for s in statuses if s >= 500)
    return {"requests_sent": len(reqs), "seconds": seconds, "statuses": dict(Counter(map(str, statuses))),
            "by_class": {k: dict(v) for k, v in by_class.items()}, "5xx": five,
            "closed_without_answer": statuses.count(0), "worker_restarts": restarts, "master_alive": alive,
            "server_log_tracebacks": text.count("Traceback"),
            "targets_met": {"no_5xx": five == 0, "no_worker_restart": restarts == 0,
                            "at_least_10k": len(reqs) >= 10_000}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=20_000, help="hypothesis examples for the app fuzz test (0: skip)")
    p.add_argument("--attacks", type=int, default=10_000, help="raw requests against the real server (0: skip)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=8, help="concurrent attacking connections")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/cloud_fuzz.json")
    a = p.parse_args()
    res: dict = {"machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}}
    rc = 0
    if a.cases:
        env = {**os.environ, "EDGE_RERANK_FUZZ_CASES": str(a.cases)}
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cloud_app.py",
                            "-k", "fuzz"], cwd=ROOT, env=env, capture_output=True, text=True)
        res["app_fuzz"] = {"cases_main": a.cases, "cases_paths": a.cases // 4, "passed": r.returncode == 0,
                           "seconds": time.perf_counter() - t0, "pytest_tail": r.stdout.strip().splitlines()[-1:]}
        if r.returncode:
            print(r.stdout[-3000:], r.stderr[-2000:], file=sys.stderr)
            rc = 1
    if a.attacks:
        res["server_attacks"] = run_attacks(a.attacks, a.workers, a.clients, a.seed)
        if not all(res["server_attacks"]["targets_met"].values()):
            rc = 1
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
