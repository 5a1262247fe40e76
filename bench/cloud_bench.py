"""Cloud service benchmark, one run, JSON out.

1. HTTP under gunicorn (serve's default worker class, gevent; ``--worker-class``), bounded closed-loop load
   from a second process (bench/loadgen.py) on loopback:
   - ping: GET /ping (the bare server: routing, metrics middleware, HTTP); ping_post: POST /ping with a
     search body (the same HTTP cost as a search request, none of its work)
   - page: POST /v1/search for searches whose ranking is precomputed (the per-worker ranking cache is
     warmed first; pages 0-3 of 64 searches)
   - search: POST /v1/search with a new (user, query, context) every request: recall -> fine ranker ->
     page, nothing cached
   - page serving again while the admin API promotes / stages / rolls back a model every 0.25 s:
     p99 against the steady-state page p99
2. Embedding stores in-process: file-backed (memmap) and Redis (a real redis-server on loopback), rows/s
   for batch sizes from one page (25) up.

Targets (issue #6): page >= 80 % and search >= 50 % of ping req/s; file store >= 10 M rows/s; p99 during
promotion <= 2x steady state. Client and server share this machine's cores: numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import run_load, run_wrk, write_bodies  # noqa: E402

from edge_rerank.cloud.app import CloudConfig  # noqa: E402
from edge_rerank.cloud.embedding_store import FileEmbeddingStore  # noqa: E402
from edge_rerank.cloud.serve import server_process  # noqa: E402
from edge_rerank.device_sdk import wire  # noqa: E402
from edge_rerank.device_sdk.contracts import Context, SearchRequest  # noqa: E402

PB = "application/x-protobuf"


def _bodies(world, n: int, *, unique: bool, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    queries = list(world.queries)
    out = []
    for i in range(n):
        if unique:  # a new search every time: a context no one asked for before
            req = SearchRequest(f"r{i}", f"s{i}", world.user_ids[i % len(world.user_ids)], queries[i % len(queries)],
                                Context(float(rng.uniform(0, 10)), float(rng.uniform(0, 10)), int(i % 24)))
        else:  # 64 searches x pages 0..3
            k = i % 64
            req = SearchRequest(f"r{k}", f"s{k}", world.user_ids[k], queries[k % len(queries)],
                                Context(5.0 + k * 0.01, 5.0, 19), page_index=(i // 64) % 4)
        out.append(wire.request_to_proto(req).SerializeToString())
    return out


def server_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every process of a process group (gunicorn master +
    workers), from /proc: a measure of server cost per request that other load on the machine barely moves."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[0] is the state: pgrp is field 5 of stat
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _publish_versions(url: str, admin: str, tmp: Path, fcfg, n: int = 3) -> list[str]:
    """Bundles written by the real bundle writer; the payload is random bytes (the registry delivers files,
    it does not run them)."""
    import io
    import tarfile

    from edge_rerank.converters.bundle import write_bundle

    versions = []
    rng = np.random.default_rng(0)
    for k in range(n):
        model = tmp / f"model-{k}.onnx"
        model.write_bytes(rng.bytes(256 * 1024))
        b = write_bundle(tmp / f"bundle-{k}", model_file=model, fmt="onnx", name="device-reranker",
                         version=f"b{k}", feature_config=fcfg)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            t.add(b, arcname=".")
        r = requests.put(f"{url}/v1/models/device-reranker/b{k}", data=buf.getvalue(),
                         headers={"X-Admin-Key": admin}, timeout=30)
        r.raise_for_status()
        versions.append(f"b{k}")
    return versions


def _churn(url: str, admin: str, versions: list[str], stop: threading.Event, period_s: float, log: list) -> None:
    """Promote, stage a canary, roll back, again and again, while the load runs."""
    h = {"X-Admin-Key": admin}
    k = 0
    while not stop.is_set():
        v = versions[k % len(versions)]
        ops = [("promote", {"version": v}), ("promote", {"version": versions[(k + 1) % len(versions)],
                                                         "rollout_percent": 20}), ("rollback", None)]
        op, body = ops[k % 3]
        t0 = time.perf_counter()
        r = requests.post(f"{url}/v1/models/device-reranker/{op}", json=body, headers=h, timeout=10)
        log.append({"op": op, "status": r.status_code, "ms": (time.perf_counter() - t0) * 1e3})
        k += 1
        stop.wait(period_s)


def bench_http(args, tmp: Path) -> dict:
    from edge_rerank.pipeline import feature_config_for
    from edge_rerank.simulator.world import World, WorldConfig

    wcfg = WorldConfig(seed=0)
    world = World(wcfg)
    data = world.provision_cloud(tmp / "cloud_data")
    admin = "bench-admin"
    cfg = CloudConfig(data_dir=str(data), registry_dir=str(tmp / "registry"), admin_key=admin,
                      model_version="fallback")
    page_file, search_file = tmp / "page.bin", tmp / "search.bin"
    page_bodies = _bodies(world, 256, unique=False, seed=1)
    write_bodies(str(page_file), page_bodies)
    write_bodies(str(search_file), _bodies(world, 60_000, unique=True, seed=2))
    out: dict = {"server": {"workers": args.workers, "threads": args.threads, "items": int(world.item_id.shape[0])},
                 "client": {"connections": args.connections, "duration_s": args.duration}}
    pgid = [0]

    def load_fn(url, **kw):
        c0 = server_cpu_s(pgid[0])
        if args.client == "wrk":
            r = run_wrk(url, duration=args.duration, threads=1, connections=args.connections, **kw)
        else:
            r = run_load(url, duration=args.duration, procs=args.procs, threads=args.connections, **kw)
        r["server_cpu_us_per_request"] = (server_cpu_s(pgid[0]) - c0) / max(r["ok"], 1) * 1e6
        return r
    out["client"]["tool"] = args.client
    with server_process(cfg, workers=args.workers, threads=args.threads, log_file=tmp / "server.log",
                        worker_class=getattr(args, "worker_class", None),
                        http_parser=getattr(args, "http_parser", "auto")) as srv:
        url = srv.url
        pgid[0] = srv.proc.pid  # started in its own session: pgid == pid
        versions = _publish_versions(url, admin, tmp, feature_config_for(wcfg))
        requests.post(f"{url}/v1/models/device-reranker/promote", json={"version": versions[0]},
                      headers={"X-Admin-Key": admin}, timeout=10).raise_for_status()
        # warm every worker's ranking cache for the page bodies (and the interpreter)
        load_fn(url + "/v1/search", method="POST", bodies=str(page_file), content_type=PB)
        load_fn(url + "/ping")
        # phases interleaved over rounds, medians reported: other load on a shared machine drifts over time
        phases = {"ping": dict(url=url + "/ping"),
                  "ping_post": dict(url=url + "/ping", method="POST", bodies=str(page_file), content_type=PB),
                  "page": dict(url=url + "/v1/search", method="POST", bodies=str(page_file), content_type=PB),
                  "search": dict(url=url + "/v1/search", method="POST", bodies=str(search_file), content_type=PB)}
        runs: dict[str, list[dict]] = {k: [] for k in [*phases, "page_steady", "page_during_promotion"]}
        log: list = []
        for r in range(args.rounds):
            for name, kw in phases.items():
                print(f"round {r + 1}/{args.rounds}: {name} ...", flush=True)
                kw = dict(kw)
                runs[name].append(load_fn(kw.pop("url"), **kw))
            print(f"round {r + 1}/{args.rounds}: page steady / during promotions ...", flush=True)
            runs["page_steady"].append(load_fn(url + "/v1/search", method="POST", bodies=str(page_file),
                                               content_type=PB))
            stop = threading.Event()
            churn = threading.Thread(target=_churn, args=(url, admin, versions, stop, args.promote_period, log))
            churn.start()
            try:
                runs["page_during_promotion"].append(load_fn(url + "/v1/search", method="POST",
                                                             bodies=str(page_file), content_type=PB))
            finally:
                stop.set()
                churn.join()
        for name, rs in runs.items():
            out[name] = {"rps": float(np.median([x["rps"] for x in rs])),
                         "server_cpu_us_per_request": float(np.median([x["server_cpu_us_per_request"] for x in rs])),
                         "p50_ms": float(np.median([x["p50_ms"] for x in rs])),
                         "p99_ms": float(np.median([x["p99_ms"] for x in rs])),
                         "errors": int(sum(x["errors"] for x in rs)),
                         "non_200": int(sum(v for x in rs for k, v in x["statuses"].items() if k != "200")),
                         "rounds": rs}
        out["promotions"] = {"n": len(log), "statuses": sorted({e["status"] for e in log}),
                             "admin_call_p50_ms": float(np.median([e["ms"] for e in log])) if log else None}
        metrics = requests.get(url + "/metrics", timeout=10).text
        out["metrics_excerpt"] = [ln for ln in metrics.splitlines() if ln.startswith(
            ("edge_rerank_ranking_cache_total", "edge_rerank_embedding_lookups_total", "edge_rerank_model_events"))]
    ping = out["ping"]["rps"]
    cpu = {k: out[k]["server_cpu_us_per_request"] for k in ("ping", "page", "search")}
    out["capacity_ratios_from_server_cpu"] = {"page_vs_ping": cpu["ping"] / cpu["page"],
                                              "search_vs_ping": cpu["ping"] / cpu["search"]}
    out["ratios_vs_post_ping"] = {"page": out["page"]["rps"] / out["ping_post"]["rps"],
                                  "search": out["search"]["rps"] / out["ping_post"]["rps"]}
    out["ratios"] = {"page_vs_ping": out["page"]["rps"] / ping, "search_vs_ping": out["search"]["rps"] / ping,
                     "promotion_p99_vs_steady": out["page_during_promotion"]["p99_ms"] / out["page_steady"]["p99_ms"]}
    out["targets_met"] = {"page_ge_80pct_ping": out["ratios"]["page_vs_ping"] >= 0.8,
                          "search_ge_50pct_ping": out["ratios"]["search_vs_ping"] >= 0.5,
                          "promotion_p99_le_2x": out["ratios"]["promotion_p99_vs_steady"] <= 2.0}
    return out


def _store_rates(store, ids: np.ndarray, batches: list[int], min_s: float) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        q = ids[rng.integers(0, len(ids), size=b)]
        store.get(q)  # warm
        n, t0 = 0, time.perf_counter()
        while (el := time.perf_counter() - t0) < min_s:
            rows, found = store.get(q)
            n += b
        assert found.all()
        out[str(b)] = {"rows_per_s": n / el, "us_per_call": el / (n / b) * 1e6}
    return out


def bench_stores(args, tmp: Path) -> dict:
    from edge_rerank.cloud.embedding_store.redis_server import redis_server_binary, running_redis

    rng = np.random.default_rng(0)
    n, dim = args.store_rows, 16
    ids = rng.permutation(np.arange(10_000_000, 10_000_000 + 4 * n, dtype=np.int64))[:n]  # dense-ish id space
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    FileEmbeddingStore.write(tmp / "emb_dense", ids, rows)
    sparse_ids = np.unique(rng.integers(0, 2**62, size=n)).astype(np.int64)
    FileEmbeddingStore.write(tmp / "emb_sparse", sparse_ids, rows[: len(sparse_ids)])
    out = {"rows": n, "dim": dim,
           "file_dense_ids": _store_rates(FileEmbeddingStore(tmp / "emb_dense"), ids, [25, 1000, 100_000], 1.0),
           "file_sparse_ids": _store_rates(FileEmbeddingStore(tmp / "emb_sparse"), sparse_ids, [25, 1000, 100_000],
                                           1.0)}
    if redis_server_binary() is None:
        out["redis"] = {"skipped": "redis-server not installed"}
        return out
    from edge_rerank.cloud.embedding_store import RedisEmbeddingStore

    rn = min(n, args.redis_rows)
    with running_redis() as url:
        t0 = time.perf_counter()
        RedisEmbeddingStore.write(url, ids[:rn], rows[:rn])
        load_s = time.perf_counter() - t0
        out["redis"] = {"rows": rn, "load_rows_per_s": rn / load_s,
                        "get": _store_rates(RedisEmbeddingStore(url), ids[:rn], [25, 1000, 10_000], 1.0)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/cloud.json")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (gthread workers)")
    p.add_argument("--worker-class", choices=["gevent", "gthread", "sync"], help="default: serve's (gevent)")
    p.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python",
                   help="load generator: wrk (apt) or bench/loadgen.py")
    p.add_argument("--procs", type=int, default=1, help="python load generator processes")
    p.add_argument("--connections", type=int, default=8, help="concurrent connections (closed loop)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per HTTP phase and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all phases (medians reported)")
    p.add_argument("--promote-period", type=float, default=0.25, help="seconds between admin operations")
    p.add_argument("--store-rows", type=int, default=1_000_000)
    p.add_argument("--redis-rows", type=int, default=200_000)
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-stores", action="store_true")
    a = p.parse_args()
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "platform": platform.platform()},
                 "note": "load generator and server share the machine's cores; expect +-20-30 % run to run"}
    with tempfile.TemporaryDirectory(prefix="edge-rerank-bench-") as tmp:
        if not a.skip_http:
            res["http"] = bench_http(a, Path(tmp))
        if not a.skip_stores:
            res["stores"] = bench_stores(a, Path(tmp))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    if "http" in res:
        h = res["http"]
        print("| phase (median of rounds) | req/s | p50 ms | p99 ms | server CPU µs/req | errors | non-200 |\n"
              "|---|---|---|---|---|---|---|")
        for k in ("ping", "ping_post", "page", "search", "page_steady", "page_during_promotion"):
            r = h[k]
            print(f"| {k} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{r['server_cpu_us_per_request']:.0f} | {r['errors']} | {r['non_200']} |")
        print(json.dumps(h["ratios"]), json.dumps(h["capacity_ratios_from_server_cpu"]),
              json.dumps(h["ratios_vs_post_ping"]))
        print(json.dumps(h["targets_met"]), json.dumps(h["promotions"]))
    if "stores" in res:
        print(json.dumps(res["stores"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
