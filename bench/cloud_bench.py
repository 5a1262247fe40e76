"""Cloud service benchmark, one run, JSON out.

1. HTTP under gunicorn, bounded closed-loop load from a second process (bench/loadgen.py) on loopback:
   - ping: GET /ping (the bare server: routing, metrics middleware, HTTP)
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

from loadgen import run_load, write_bodies  # noqa: E402

from cloud.app import CloudConfig  # noqa: E402
from cloud.embedding_store import FileEmbeddingStore  # noqa: E402
from cloud.serve import server_process  # noqa: E402
from device_sdk import wire  # noqa: E402
from device_sdk.contracts import Context, SearchRequest  # noqa: E402

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


def _publish_versions(url: str, admin: str, tmp: Path, fcfg, n: int = 3) -> list[str]:
    """Bundles written by the real bundle writer; the payload is random bytes (the registry delivers files,
    it does not run them)."""
    import io
    import tarfile

    from converters.bundle import write_bundle

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
    from simulator.world import World, WorldConfig

    wcfg = WorldConfig(seed=0)
    world = World(wcfg)
    data = world.provision_cloud(tmp / "cloud_data")
    admin = "bench-admin"
    cfg = CloudConfig(data_dir=str(data), registry_dir=str(tmp / "registry"), admin_key=admin,
                      model_version="fallback")
    page_file, search_file = tmp / "page.bin", tmp / "search.bin"
    page_bodies = _bodies(world, 256, unique=False, seed=1)
    write_bodies(str(page_file), page_bodies)
    write_bodies(str(search_file), _bodies(world, 100_000, unique=True, seed=2))
    out: dict = {"server": {"workers": args.workers, "threads": args.threads, "items": int(world.item_id.shape[0])},
                 "client": {"procs": args.procs, "threads": args.client_threads, "duration_s": args.duration}}
    load = dict(duration=args.duration, procs=args.procs, threads=args.client_threads)
    with server_process(cfg, workers=args.workers, threads=args.threads, log_file=tmp / "server.log") as srv:
        url = srv.url
        versions = _publish_versions(url, admin, tmp, feature_config_for(wcfg))
        requests.post(f"{url}/v1/models/device-reranker/promote", json={"version": versions[0]},
                      headers={"X-Admin-Key": admin}, timeout=10).raise_for_status()
        # warm every worker's ranking cache for the page bodies (and the interpreter)
        run_load(url + "/v1/search", method="POST", bodies=str(page_file), content_type=PB, duration=2.0,
                 procs=1, threads=4)
        run_load(url + "/ping", duration=1.0, procs=1, threads=4)
        print("ping ...", flush=True)
        out["ping"] = run_load(url + "/ping", **load)
        print("page ...", flush=True)
        out["page"] = run_load(url + "/v1/search", method="POST", bodies=str(page_file), content_type=PB, **load)
        print("search ...", flush=True)
        out["search"] = run_load(url + "/v1/search", method="POST", bodies=str(search_file), content_type=PB, **load)
        print("page during promotions ...", flush=True)
        stop, log = threading.Event(), []
        churn = threading.Thread(target=_churn, args=(url, admin, versions, stop, args.promote_period, log))
        churn.start()
        try:
            out["page_during_promotion"] = run_load(url + "/v1/search", method="POST", bodies=str(page_file),
                                                    content_type=PB, **load)
        finally:
            stop.set()
            churn.join()
        out["promotions"] = {"n": len(log), "statuses": sorted({e["status"] for e in log}),
                             "admin_call_p50_ms": float(np.median([e["ms"] for e in log])) if log else None}
        print("page steady (again) ...", flush=True)
        out["page_after"] = run_load(url + "/v1/search", method="POST", bodies=str(page_file), content_type=PB,
                                     **load)
        metrics = requests.get(url + "/metrics", timeout=10).text
        out["metrics_excerpt"] = [ln for ln in metrics.splitlines() if ln.startswith(
            ("edge_rerank_ranking_cache_total", "edge_rerank_embedding_lookups_total", "edge_rerank_model_events"))]
    ping = out["ping"]["rps"]
    steady_p99 = max(out["page"]["p99_ms"], out["page_after"]["p99_ms"])
    out["ratios"] = {
        "page_vs_ping": out["page"]["rps"] / ping, "search_vs_ping": out["search"]["rps"] / ping,
        "promotion_p99_vs_steady": out["page_during_promotion"]["p99_ms"] / out["page"]["p99_ms"],
        "promotion_p99_vs_worse_steady_run": out["page_during_promotion"]["p99_ms"] / steady_p99}
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
    from cloud.embedding_store.redis_server import redis_server_binary, running_redis

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
    from cloud.embedding_store import RedisEmbeddingStore

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
    p.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (1 = sync workers)")
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    p.add_argument("--client-threads", type=int, default=8, help="connections per load generator process")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per HTTP phase")
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
        print("| phase | req/s | p50 ms | p99 ms | errors | non-200 |\n|---|---|---|---|---|---|")
        for k in ("ping", "page", "search", "page_during_promotion", "page_after"):
            r = h[k]
            bad = sum(v for s, v in r["statuses"].items() if s != "200")
            print(f"| {k} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {bad} |")
        print(json.dumps(h["ratios"], indent=1), json.dumps(h["promotions"]))
    if "stores" in res:
        print(json.dumps(res["stores"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
