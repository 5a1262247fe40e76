"""Coarse two-tower benchmark (issue 16), one run, table printed, JSON out (runs/bench/coarse_bench.json).

1. Ablation on a small simulated world, for each seed (world sessions and training seed): single-vector dot vs
   multi-head soft-attention dot vs ESIM; without / with teacher distillation (pairwise, pairwise + in-batch
   all-pairs); without / with fine-ranker distillation. Held-out sessions: AUC (clicks among exposed items),
   consistency with the fine ranker (share of recall-item pairs ordered the same way; bootstrap CI over query
   views), recall@100 of the fine ranker's page 1, FLOPs (query tower per request, matching per item), parameters.
   Baselines: random, popularity, the fine ranker itself. Paired consistency gain of fine distillation per seed.
2. Retrieval at scale: a catalog of --items items (item tower of a trained model), candidates = the whole
   catalog: exact scoring vs the faiss IVF index — per-query latency (one thread) and ANN recall@200 vs exact.
3. /v1/search under gunicorn with the coarse stage vs without, and bare POST /ping, same run (--http).

The machine is shared (2 cores, other jobs): latencies and throughputs are noisy; ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# torch-heavy imports live inside the functions: the load generator's spawned client processes re-import this
# module and must start fast


def _training():
    from edge_rerank.cloud.training import coarse_data, coarse_model, coarse_train

    return coarse_data, coarse_model, coarse_train

ARMS = [  # (label, variant, teacher, fine distillation[, overrides of CoarseModelConfig / CoarseTrainConfig])
    ("dot", "dot", "none", False),
    ("dot +teacher", "dot", "all_pairs", False),
    ("dot +fine", "dot", "none", True),
    ("dot +teacher +fine", "dot", "all_pairs", True),
    ("soft", "soft", "none", False),
    ("soft +teacher(pairwise)", "soft", "pairwise", False),
    ("soft +teacher", "soft", "all_pairs", False),
    ("soft +fine", "soft", "none", True),
    ("soft +teacher +fine", "soft", "all_pairs", True),
    ("esim", "esim", "none", False),
    ("esim +teacher", "esim", "all_pairs", False),
    ("esim +fine", "esim", "none", True),
    ("esim +teacher +fine", "esim", "all_pairs", True),
    # multi-head comparison extras (issue 16): the single vector as wide as the soft model's 3 item heads together
    # (same floats stored per item), and soft heads pushed apart by CoarseTrainConfig.head_orthogonality
    ("dot x3 width", "dot", "none", False, {"dim_factor": 3}),
    ("soft +orth", "soft", "none", False, {"head_orthogonality": 1.0}),
]
DEFAULT_ARMS = [a[0] for a in ARMS[:13]]
# paired click-AUC comparisons reported per seed and pooled (b vs a: b − a)
AUC_PAIRS = [("dot", "soft"), ("dot", "esim"), ("dot x3 width", "soft"), ("dot", "soft +orth"), ("dot", "dot x3 width")]


def _world_cfg(args, n_items: int):
    from edge_rerank.simulator.world import WorldConfig

    return WorldConfig(seed=args.world_seed, n_items=n_items, n_users=args.users,
                       multi_intent_queries=args.multi_intent, intent_by_taste=args.intent_by_taste,
                       polysemy_distractors=args.distractors)


def _logs(world, data_dir: Path, n_sessions: int, seed: int) -> list:
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.transport import InProcessCloud
    from edge_rerank.simulator.user_model import UserModel

    phone = Phone(UserModel(world), InProcessCloud(str(data_dir)), arm="cloud")
    rows = []
    for i in range(n_sessions):
        rows.extend(phone.run(world.session(i, 100 + seed)).rows)
    return rows


def _list_scores(model, cw, te) -> np.ndarray:
    """The model's scores [Q, L] of the test views' list items (what the click AUC is computed on)."""
    import torch

    from edge_rerank.cloud.training.coarse_train import _t, item_heads, score_rows

    with torch.no_grad():
        q = model.query(_t(te.query_id), _t(te.query_dense))
    return score_rows(model, item_heads(model, cw), q, te.rows)


def ablation(args, tmp: Path) -> dict:
    from edge_rerank.cloud.training.coarse_data import CoarseWorld, query_views
    from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
    from edge_rerank.cloud.training.coarse_train import (
        CoarseTrainConfig,
        baseline_scores,
        evaluate_coarse,
        fit_coarse,
        fit_teacher,
        mean_ci,
        paired_auc_bootstrap,
        rank_auc,
    )
    from edge_rerank.simulator.world import World

    world = World(_world_cfg(args, args.small_items))
    data = world.provision_cloud(tmp / "small")
    cw = CoarseWorld.load(data)
    runs: dict[str, list[dict]] = {a[0]: [] for a in ARMS if a[0] in (args.arms or DEFAULT_ARMS)}
    base: dict[str, list[dict]] = {"random": [], "popularity": [], "fine": []}
    gains: dict[str, list[dict]] = {}
    auc_pairs: dict[str, list[dict]] = {}
    auc_reps: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    if args.skip_ablation:  # only the small world's logs, for the retrieval / HTTP parts' models
        return {"_cw": cw, "_views": query_views(_logs(world, data, args.sessions, 0), cw)}
    for seed in range(args.seeds):
        rows = _logs(world, data, args.sessions, seed)
        views = query_views(rows, cw, seed=seed)
        tr, va, te = views.split("train"), views.split("valid"), views.split("test")
        for k in base:
            m = baseline_scores(cw, te, k, seed=seed)
            base[k].append({"auc": m["auc"], "consistency": m["consistency"]["mean"],
                            "recall": m["recall@100_of_fine_page1"]["mean"]})
        tcfg = CoarseTrainConfig(epochs=args.epochs, seed=seed)
        # one teacher per seed, shared by every arm that distils one
        teacher_model = fit_teacher(cw, tr, tcfg) if any(a[2] != "none" and a[0] in runs for a in ARMS) else None
        per_view: dict[str, np.ndarray] = {}
        list_scores: dict[str, np.ndarray] = {}
        for label, variant, teacher, fine, *extra in ARMS:
            if label not in runs:
                continue
            over = dict(extra[0]) if extra else {}
            dim = args.dim * over.pop("dim_factor", 1)
            cfg = CoarseTrainConfig(**{**tcfg.to_dict(), "teacher": teacher, "fine_weight": 1.0 if fine else 0.0,
                                       **over})
            model, summary = fit_coarse(cw, tr, CoarseModelConfig(variant=variant, dim=dim), cfg,
                                        teacher=teacher_model if teacher != "none" else None,
                                        valid=va if args.select_epoch else None)
            m = evaluate_coarse(model, cw, te)
            per_view[label] = m["consistency_per_view"]
            list_scores[label] = ls = _list_scores(model, cw, te)
            poly = np.array([q in world.meanings for q in te.queries])
            by_kind = {f"auc_{kind}": rank_auc(te.labels[te.exposed & sel[:, None]], ls[te.exposed & sel[:, None]])
                       for kind, sel in (("polysemous", poly), ("other_queries", ~poly)) if sel.any()}
            runs[label].append({"seed": seed, "auc": m["auc"], "consistency": m["consistency"],
                                "recall@100": m["recall@100_of_fine_page1"],
                                "query_tower_flops": m["query_tower_flops"],
                                "match_flops_per_item": m["match_flops_per_item"], "params": m["params"],
                                "item_vector_floats": m["item_vector_floats"], "train_s": summary["train_seconds"],
                                "best_epoch": summary["best_epoch"], "train_views": len(tr), "test_views": len(te),
                                **by_kind})
            print(f"  seed {seed} {label:26s} AUC {m['auc']:.4f} cons {m['consistency']['mean']:.4f} "
                  f"rec@100 {m['recall@100_of_fine_page1']['mean']:.3f} epoch {summary['best_epoch'] + 1} "
                  f"({summary['train_seconds']:.0f} s)", flush=True)
        for a, b in AUC_PAIRS:
            if a in list_scores and b in list_scores:
                reps = paired_auc_bootstrap(te.labels, te.exposed, list_scores[a], list_scores[b], seed=seed)
                ex = te.exposed
                d = rank_auc(te.labels[ex], list_scores[b][ex]) - rank_auc(te.labels[ex], list_scores[a][ex])
                auc_reps.setdefault(f"{b} vs {a}", []).append(reps)
                auc_pairs.setdefault(f"{b} vs {a}", []).append(
                    {"seed": seed, "delta": d, "lo": float(np.percentile(reps, 2.5)),
                     "hi": float(np.percentile(reps, 97.5))})
        for v in ("dot", "soft", "esim"):
            for with_t in ("", " +teacher"):
                a, b = f"{v}{with_t}", f"{v}{with_t} +fine"
                if a not in per_view or b not in per_view:
                    continue
                gains.setdefault(f"{b} vs {a}", []).append(
                    {"seed": seed, **mean_ci(per_view[b] - per_view[a], seed=seed)})
    pooled = {}
    for k, reps in auc_reps.items():  # seeds are independent: a pooled replicate is the mean of one per seed
        p = np.mean(np.stack(reps), axis=0)
        pooled[k] = {"delta": float(np.mean([x["delta"] for x in auc_pairs[k]])),
                     "lo": float(np.percentile(p, 2.5)), "hi": float(np.percentile(p, 97.5))}
    table = {}
    for label, rs in runs.items():
        table[label] = {
            "auc_mean": float(np.mean([r["auc"] for r in rs])), "auc_per_seed": [r["auc"] for r in rs],
            "auc_seed_sd": float(np.std([r["auc"] for r in rs], ddof=1)) if len(rs) > 1 else float("nan"),
            "best_epoch_per_seed": [r["best_epoch"] for r in rs],
            **{f"{k}_per_seed": [r[k] for r in rs] for k in ("auc_polysemous", "auc_other_queries") if k in rs[0]},
            "consistency_mean": float(np.mean([r["consistency"]["mean"] for r in rs])),
            "consistency_per_seed": [r["consistency"] for r in rs],
            "recall@100_mean": float(np.mean([r["recall@100"]["mean"] for r in rs])),
            "query_tower_flops": rs[0]["query_tower_flops"], "match_flops_per_item": rs[0]["match_flops_per_item"],
            "params": rs[0]["params"], "item_vector_floats": rs[0]["item_vector_floats"]}
    return {"world": {"items": args.small_items, "users": args.users, "sessions_per_seed": args.sessions,
                      "epochs": args.epochs, "seeds": args.seeds, "multi_intent_queries": args.multi_intent,
                      "intent_by_taste": args.intent_by_taste, "meanings": world.meanings, "dim": args.dim,
                      "polysemy_distractors": args.distractors, "distractors": world.distractors,
                      "select_epoch": args.select_epoch},
            "arms": table, "runs": runs, "baselines": {k: {"auc_mean": float(np.mean([x["auc"] for x in v])),
                                                           "consistency_mean": float(np.mean([x["consistency"]
                                                                                              for x in v])),
                                                           "recall@100_mean": float(np.mean([x["recall"] for x in v]))}
                                                       for k, v in base.items()},
            "fine_distillation_consistency_gain": gains, "auc_paired_per_seed": auc_pairs, "auc_paired_pooled": pooled,
            "seconds": time.perf_counter() - t0,
            "_cw": cw, "_views": views}


def retrieval(args, tmp: Path, small: dict) -> dict:
    """Large catalog: the soft / dot models' item tower over --items items, exact vs ANN per query."""
    from edge_rerank.cloud.ranking.coarse import CoarseServing, TwoTowerCoarse
    from edge_rerank.cloud.ranking.coarse_index import AnnConfig
    from edge_rerank.cloud.training.coarse_data import CoarseWorld
    from edge_rerank.cloud.training.coarse_export import write_coarse_bundle
    from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
    from edge_rerank.cloud.training.coarse_train import CoarseTrainConfig, fit_coarse, mean_ci
    from edge_rerank.device_sdk.contracts import Context, SearchRequest
    from edge_rerank.simulator.world import World

    cw, views = small["_cw"], small["_views"]
    big_world = World(_world_cfg(args, args.items))
    t = time.perf_counter()
    big = big_world.provision_cloud(tmp / "big")
    out: dict = {"items": args.items, "provision_s": time.perf_counter() - t}
    rng = np.random.default_rng(0)
    queries = list(big_world.queries)
    reqs = [SearchRequest(f"r{i}", f"s{i}", big_world.user_ids[i % args.users], queries[i % len(queries)],
                          Context(float(rng.uniform(0, 10)), float(rng.uniform(0, 10)), int(7 + i % 16)))
            for i in range(args.queries)]
    for variant in args.retrieval_variants:
        model, _ = fit_coarse(cw, views.split("train"), CoarseModelConfig(variant=variant),
                              CoarseTrainConfig(epochs=args.epochs))
        bw = CoarseWorld.load(big, model.spec)
        serving = CoarseServing(top_k=200, exact_threshold=min(50_000, args.items // 2),
                                ann=AnnConfig(nprobe=args.nprobe))
        t = time.perf_counter()
        bundle = write_coarse_bundle(model, bw, tmp / f"bundle-{variant}", version="bench", serving=serving)
        build_s = time.perf_counter() - t
        ann = TwoTowerCoarse(bundle, bw.catalog)
        all_rows = np.arange(bw.catalog.n_items)
        _, vec = ann.store.table()
        heads = np.asarray(vec).reshape(-1, ann.nd, ann.dim)
        for req in reqs[:10]:  # warm-up: first-call allocations of onnxruntime and faiss
            ann.select(req, all_rows)
        lat_ann, cpu_ann, lat_exact, rec = [], [], [], []
        for i, req in enumerate(reqs):
            t, c = time.perf_counter(), time.thread_time()
            sel = ann.select(req, all_rows)
            lat_ann.append(time.perf_counter() - t)
            cpu_ann.append(time.thread_time() - c)  # this thread's CPU: what other jobs on the machine barely move
            if i < args.exact_queries:
                t = time.perf_counter()
                s = ann.score_items(ann.query_heads(req), heads)
                exact = np.argpartition(-s, 199)[:200]
                lat_exact.append(time.perf_counter() - t)
                rec.append(len(set(sel.tolist()) & set(exact.tolist())) / 200)

        def pct(v: list[float]) -> dict:
            return {f"p{q}": 1e3 * float(np.percentile(v, q)) for q in (50, 90, 99)} | {"n": len(v)}

        out[variant] = {"bundle_build_s": build_s, "index_lists": int(ann.index.nlist), "nprobe": int(ann.index.nprobe),
                        "ann_ms": pct(lat_ann), "ann_thread_cpu_ms": pct(cpu_ann), "exact_ms": pct(lat_exact),
                        "ann_recall@200_vs_exact": mean_ci(np.array(rec)), "loadavg": list(os.getloadavg())}
        print(f"  {variant}: {args.items} items, ANN p50 {out[variant]['ann_ms']['p50']:.2f} ms p99 "
              f"{out[variant]['ann_ms']['p99']:.2f} ms "
              f"(thread CPU p99 {out[variant]['ann_thread_cpu_ms']['p99']:.2f} ms), "
              f"exact p50 {out[variant]['exact_ms']['p50']:.1f} ms, "
              f"recall@200 {out[variant]['ann_recall@200_vs_exact']['mean']:.3f}", flush=True)
    return out


def http(args, tmp: Path, small: dict) -> dict:
    """/v1/search (nothing cached) with and without the coarse stage vs bare POST /ping, one gunicorn worker."""
    from cloud_bench import _bodies, server_cpu_s
    from loadgen import run_load, write_bodies

    from edge_rerank.cloud.app import CloudConfig
    from edge_rerank.cloud.ranking.coarse import CoarseServing
    from edge_rerank.cloud.serve import server_process
    from edge_rerank.cloud.training.coarse_data import CoarseWorld
    from edge_rerank.cloud.training.coarse_export import write_coarse_bundle
    from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
    from edge_rerank.cloud.training.coarse_train import CoarseTrainConfig, fit_coarse
    from edge_rerank.simulator.world import World

    cw, views = small["_cw"], small["_views"]
    world = World(_world_cfg(args, args.http_items))
    model, _ = fit_coarse(cw, views.split("train"), CoarseModelConfig(variant="soft"),
                          CoarseTrainConfig(epochs=args.epochs, fine_weight=1.0))
    out: dict = {"items": args.http_items}
    for arm in ("without", "with"):
        data = world.provision_cloud(tmp / f"http-{arm}")
        if arm == "with":
            write_coarse_bundle(model, CoarseWorld.load(data, model.spec), data / "coarse", version="bench",
                                serving=CoarseServing(top_k=200))
        body = tmp / "search.bin"
        write_bodies(str(body), _bodies(world, 20_000, unique=True, seed=2))
        cfg = CloudConfig(data_dir=str(data), ranking_cache_size=0)
        with server_process(cfg, workers=1, threads=1, log_file=tmp / f"server-{arm}.log") as srv:
            health = __import__("requests").get(srv.url + "/healthz", timeout=5).json()
            res = {}
            for name, kw in (("ping", dict(url=srv.url + "/ping", method="POST", bodies=str(body),
                                           content_type="application/x-protobuf")),
                             ("search", dict(url=srv.url + "/v1/search", method="POST", bodies=str(body),
                                             content_type="application/x-protobuf"))):
                run_load(kw["url"], duration=1.0, procs=1, threads=2, **{k: v for k, v in kw.items() if k != "url"})
                c0 = server_cpu_s(srv.proc.pid)
                r = run_load(kw["url"], duration=args.duration, procs=1, threads=4,
                             **{k: v for k, v in kw.items() if k != "url"})
                r["server_cpu_us_per_request"] = (server_cpu_s(srv.proc.pid) - c0) / max(r["ok"], 1) * 1e6
                res[name] = r
        res["healthz"] = health
        res["search_vs_ping_rps"] = res["search"]["rps"] / max(res["ping"]["rps"], 1e-9)
        res["search_vs_ping_server_cpu"] = res["ping"]["server_cpu_us_per_request"] / max(
            res["search"]["server_cpu_us_per_request"], 1e-9)
        out[arm] = res
        print(f"  /v1/search {arm} coarse: {res['search']['rps']:.0f} req/s vs ping {res['ping']['rps']:.0f} "
              f"({res['search_vs_ping_rps']:.2f}); server CPU/request {res['search']['server_cpu_us_per_request']:.0f}"
              f" vs {res['ping']['server_cpu_us_per_request']:.0f} µs", flush=True)
    return out


def online(args, tmp: Path, small: dict) -> dict:
    """Cloud-only sessions of the ablation's world served with vs without the coarse stage (soft + teacher + fine
    distillation, top 200): the same users, intents and random draws in both arms; QV_CTR and clicks per query,
    paired differences with bootstrap CIs over sessions."""
    from edge_rerank.cloud.ranking.coarse import COARSE_DIR, CoarseServing, TwoTowerCoarse
    from edge_rerank.cloud.training.coarse_export import write_coarse_bundle
    from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
    from edge_rerank.cloud.training.coarse_train import CoarseTrainConfig, fit_coarse, mean_ci
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.transport import InProcessCloud
    from edge_rerank.simulator.user_model import UserModel
    from edge_rerank.simulator.world import World

    cw, views = small["_cw"], small["_views"]
    world = World(_world_cfg(args, args.small_items))
    model, _ = fit_coarse(cw, views.split("train"), CoarseModelConfig(variant="soft"),
                          CoarseTrainConfig(epochs=args.epochs, teacher="all_pairs", fine_weight=1.0))
    out: dict = {"sessions": args.online, "items": args.small_items, "top_k": 200}
    per: dict[str, dict[str, np.ndarray]] = {}
    for arm in ("without", "with"):
        data = world.provision_cloud(tmp / f"online-{arm}")
        if arm == "with":
            write_coarse_bundle(model, cw, data / COARSE_DIR, version="online", serving=CoarseServing(top_k=200))
        cloud = InProcessCloud(str(data), wire=False)
        assert isinstance(cloud._pipeline.coarse, TwoTowerCoarse) == (arm == "with")
        phone = Phone(UserModel(world), cloud, arm="cloud")
        res = [phone.run(world.session(i, 7_000)) for i in range(args.online)]
        per[arm] = {"qv_ctr": np.array([r.clicks > 0 for r in res], float),
                    "clicks": np.array([r.clicks for r in res], float),
                    "orders": np.array([r.orders for r in res], float)}
        out[arm] = {k: mean_ci(v) for k, v in per[arm].items()}
    out["delta_with_minus_without"] = {k: mean_ci(per["with"][k] - per["without"][k]) for k in per["with"]}
    d = out["delta_with_minus_without"]["qv_ctr"]
    print(f"  QV_CTR without coarse {out['without']['qv_ctr']['mean']:.4f}, with {out['with']['qv_ctr']['mean']:.4f}:"
          f" Δ {d['mean'] * 100:+.2f} pp [{d['lo'] * 100:+.2f}, {d['hi'] * 100:+.2f}]", flush=True)
    return out


def print_table(ab: dict) -> None:
    print(f"\n| arm | AUC (mean of {ab['world']['seeds']} seeds) | AUC per seed | consistency w/ fine | "
          "recall@100 of fine page 1 | query-tower FLOPs | match FLOPs/item | floats/item | params | epochs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, b in ab["baselines"].items():
        print(f"| baseline: {k} | {b['auc_mean']:.4f} | | {b['consistency_mean']:.4f} | {b['recall@100_mean']:.3f} "
              "| – | – | – | – | – |")
    for label, a in ab["arms"].items():
        print(f"| {label} | {a['auc_mean']:.4f} | {' / '.join(f'{x:.3f}' for x in a['auc_per_seed'])} | "
              f"{a['consistency_mean']:.4f} | {a['recall@100_mean']:.3f} | {a['query_tower_flops']:,} | "
              f"{a['match_flops_per_item']:,} | {a['item_vector_floats']} | {a['params']:,} | "
              f"{' / '.join(str(e + 1) for e in a['best_epoch_per_seed'])} |")
    if ab.get("auc_paired_per_seed"):
        print("\nclick AUC, paired per seed (b − a, 95 % bootstrap CI over test query views) and pooled over seeds:")
        for k, g in ab["auc_paired_per_seed"].items():
            pl = ab["auc_paired_pooled"][k]
            print(f"  {k}: " + ", ".join(f"{x['delta']*100:+.2f} [{x['lo']*100:+.2f}, {x['hi']*100:+.2f}]" for x in g)
                  + f"; pooled {pl['delta']*100:+.2f} [{pl['lo']*100:+.2f}, {pl['hi']*100:+.2f}] AUC points")
    print("\nfine-ranker distillation, paired consistency gain per seed (95 % bootstrap CI over query views):")
    for k, g in ab["fine_distillation_consistency_gain"].items():
        print(f"  {k}: " + ", ".join(f"{x['mean']*100:+.1f} pp [{x['lo']*100:+.1f}, {x['hi']*100:+.1f}]" for x in g))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "coarse_bench.json"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--small-items", type=int, default=3000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--sessions", type=int, default=900)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--items", type=int, default=200_000, help="catalog size of the retrieval benchmark (1e6: slow)")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--exact-queries", type=int, default=60)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--retrieval-variants", nargs="+", default=["dot", "soft"])
    p.add_argument("--http", action="store_true", help="also run /v1/search under gunicorn with vs without coarse")
    p.add_argument("--http-items", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--skip-retrieval", action="store_true")
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--online", type=int, default=0, help="sessions per arm of the with / without coarse comparison")
    p.add_argument("--multi-intent", type=int, default=0,
                   help="polysemous queries in the world (WorldConfig.multi_intent_queries; 0: none, the default)")
    p.add_argument("--intent-by-taste", type=float, default=0.7,
                   help="share of a polysemous query's sessions meaning the user's taste-closest category")
    p.add_argument("--distractors", type=int, default=0,
                   help="recall-only categories per polysemous query (WorldConfig.polysemy_distractors; 0: none)")
    p.add_argument("--select-epoch", action="store_true",
                   help="keep each arm's best epoch by validation click AUC (fit_coarse(valid=...)), up to --epochs")
    p.add_argument("--dim", type=int, default=16, help="head width of the ablation's towers (CoarseModelConfig.dim)")
    p.add_argument("--arms", nargs="+", default=None,
                   help=f"ablation arms to run (default: the first 13): {[a[0] for a in ARMS]}")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    _training()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("ablation:", flush=True)
        ab = ablation(args, tmp)
        res = {"ablation": {k: v for k, v in ab.items() if not k.startswith("_")}}
        if not args.skip_retrieval:
            print("retrieval:", flush=True)
            res["retrieval"] = retrieval(args, tmp, ab)
        if args.online:
            print("online:", flush=True)
            res["online"] = online(args, tmp, ab)
        if args.http:
            print("http:", flush=True)
            res["http"] = http(args, tmp, ab)
    res["total_s"] = time.perf_counter() - t0
    if not args.skip_ablation:
        print_table(res["ablation"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"\nJSON: {out}  (total {res['total_s']:.0f} s; machine shared with other jobs: timings are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
