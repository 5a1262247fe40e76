"""What the app-facing session costs beside the bare rerank call (issue 13): per recorded event that does not
trigger, and per event that triggers a rerank (features + inference + reinsertion + the session's budget check and
apply), with the in-memory and the SQLite feedback store. One thread, the bundle's own backend. Writes JSON.

    .venv/bin/python bench/session_bench.py [--bundle runs/demo/shipped/bundle] [--runs 2000] [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edge_rerank.device_sdk import (  # noqa: E402
    Context,
    EventKind,
    FeedbackEvent,
    PageItem,
    RerankService,
    RerankSession,
    SearchPage,
    SQLiteFeedbackStore,
    load_model,
)


def _page(fc, n: int, rng: np.random.Generator) -> SearchPage:
    items = [PageItem(item_id=1000 + k, cloud_position=k, cloud_score=float(-0.05 * k),
                      cloud_dense=rng.normal(size=fc.dense_dim).astype(np.float32),
                      id_embedding=rng.normal(size=fc.emb_dim).astype(np.float32),
                      category=int(rng.integers(0, fc.n_categories)), brand=int(rng.integers(0, fc.n_brands)),
                      price_level=int(rng.integers(0, fc.n_price_levels)), lat=float(rng.uniform(0, 10)),
                      lon=float(rng.uniform(0, 10))) for k in range(n)]
    return SearchPage(request_id="r0", session_id="s", page_index=0, model_version="", items=items)


def _pct(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def run(bundle: str, runs: int, n_events: int, store: str) -> dict:
    model = load_model(bundle)
    fc = model.bundle.feature_config
    rng = np.random.default_rng(0)
    page = _page(fc, 50, rng)
    ctx = Context(lat=5.0, lon=5.0, hour=19)
    bare, per_event, per_rerank, tmp = [], [], [], tempfile.mkdtemp()
    svc = RerankService(model)
    for i in range(runs):
        st = SQLiteFeedbackStore(Path(tmp) / f"s{i % 4}.db", max_sessions=2) if store == "sqlite" else None
        s = RerankSession(f"s{i}", ctx, svc, store=st)
        s.add_page(page)
        s.reveal(8)
        for k in range(n_events):  # history: long skips of the revealed items
            it = page.items[k % 8]
            s.record(FeedbackEvent.for_item(it, EventKind.EXPOSURE, 100 * k, "r0", k % 8, 2500.0))
        it = s.items[3]
        t = time.perf_counter()
        s.record(FeedbackEvent.for_item(it, EventKind.CLICK, 10_000, "r0", 3))  # no trigger
        per_event.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = s.record(FeedbackEvent.for_item(it, EventKind.DETAIL_RETURN, 19_000, "r0", 3, 9000.0))  # a rerank
        per_rerank.append(time.perf_counter() - t)
        assert r is not None and r.status == "applied", (r and r.fallback_reason)
        events = s.events()
        t = time.perf_counter()
        res = svc.rerank(page.items, 8, events, ctx)
        bare.append(time.perf_counter() - t)
        assert res.applied
        if st is not None:
            st.close()
    out = {"bare_rerank_call": _pct(bare), "session_event_no_trigger": _pct(per_event),
           "session_event_with_rerank": _pct(per_rerank)}
    out["session_overhead_per_rerank_p50_ms"] = (out["session_event_with_rerank"]["p50_ms"]
                                                 - out["bare_rerank_call"]["p50_ms"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="runs/demo/shipped/bundle", help="a bundle directory (default: %(default)s)")
    p.add_argument("--runs", type=int, default=2000, help="sessions timed per store (default: %(default)s)")
    p.add_argument("--events", type=int, default=24,
                   help="feedback events recorded before the timed ones (default: %(default)s)")
    p.add_argument("--out", default="runs/bench/session.json", help="JSON output (default: %(default)s)")
    a = p.parse_args(argv)
    if not (Path(a.bundle) / "manifest.json").is_file():
        p.error(f"--bundle {a.bundle}: no bundle there (run `make demo` first, or pass one)")
    res = {"machine": platform.processor() or platform.machine(), "bundle": a.bundle, "runs": a.runs,
           "events_before": a.events, "stores": {}}
    for store in ("memory", "sqlite"):
        res["stores"][store] = r = run(a.bundle, a.runs, a.events, store)
        bare = r["bare_rerank_call"]
        ev, rr = r["session_event_no_trigger"], r["session_event_with_rerank"]
        print(f"{store:>6}: bare rerank p50/p99 {bare['p50_ms']:.3f}/{bare['p99_ms']:.3f} ms | session event "
              f"(no trigger) {ev['p50_ms']:.3f}/{ev['p99_ms']:.3f} ms | session event with rerank "
              f"{rr['p50_ms']:.3f}/{rr['p99_ms']:.3f} ms")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
