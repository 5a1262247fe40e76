"""Why does (or doesn't) the multi-head coarse model beat the single vector? Cheap diagnostics on one small world.

Logs one world's cloud-only sessions once (cached under runs/diag/), then trains model variants on the same views
and reports for each: click AUC among exposed test items, consistency with the fine ranker, recall@100 of its page
1, FLOPs, and for multi-head models the **head diversity** — mean |cos| between a query's heads and between an
item's heads, the attention's effective number of head pairs (exp of the softmax entropy, 1 … nq·nd), and on
polysemous queries the share of test views whose items of different meanings are matched by different query heads.

Also two model-free reference AUCs on the same exposed items: "session meaning" (1 if the item is of the category
the session means — what no tower can see) and "any meaning" (1 if of any of the query's meanings: the OR a
multi-head query is meant to represent; 0.5 when the recall set holds only meanings' items).

Variants: ``variant[:dim[:heads[:beta]]]``, e.g. ``dot:16 dot:48 soft:16:3:0.5 soft:16:3:0.1 soft:8:2``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _views(args, tmp: Path):
    from edge_rerank.cloud.training.coarse_data import CoarseWorld, query_views
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.transport import InProcessCloud
    from edge_rerank.simulator.user_model import UserModel
    from edge_rerank.simulator.world import World, WorldConfig

    cfg = WorldConfig(seed=args.world_seed, n_items=args.items, n_users=args.users,
                      multi_intent_queries=args.multi_intent, intent_by_taste=args.intent_by_taste,
                      polysemy_distractors=args.distractors, n_categories=args.categories)
    world = World(cfg)
    data = world.provision_cloud(tmp / "world")
    cw = CoarseWorld.load(data)
    key = f"{args.world_seed}-{args.items}-{args.users}-{args.multi_intent}-{args.intent_by_taste}-" \
          f"{args.distractors}-{args.categories}-{args.sessions}-{args.seed}"
    cache = ROOT / "runs" / "diag" / f"views-{key}.pkl"
    if cache.exists():
        views = pickle.loads(cache.read_bytes())
    else:
        phone = Phone(UserModel(world), InProcessCloud(str(data)), arm="cloud")
        rows = []
        for i in range(args.sessions):
            rows.extend(phone.run(world.session(i, 100 + args.seed)).rows)
        views = query_views(rows, cw, seed=args.seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(views))
    return world, cw, views


def _reference_aucs(world, cw, te, seed: int) -> dict:
    """Model-free AUCs on the exposed test items: the session's own meaning, and any meaning of the query."""
    from edge_rerank.cloud.training.coarse_train import _auc

    cat = cw.catalog.items["category"]
    own = np.zeros(te.rows.shape)
    anym = np.zeros(te.rows.shape)
    poly = np.zeros(len(te), bool)
    for k, (q, sid, uid) in enumerate(zip(te.queries, te.session_ids, te.user_ids, strict=True)):
        if q not in world.meanings:
            continue
        poly[k] = True
        index = int(sid.split("-")[1])
        m = world.session_meaning(index, 100 + seed, q, world.user_ids.index(uid))
        own[k] = cat[te.rows[k]] == m
        anym[k] = np.isin(cat[te.rows[k]], world.meanings[q])
    ex = te.exposed & poly[:, None]
    return {"polysemous_test_views": int(poly.sum()),
            "auc_session_meaning_on_polysemous": _auc(te.labels[ex], own[ex]) if ex.any() else float("nan"),
            "auc_any_meaning_on_polysemous": _auc(te.labels[ex], anym[ex]) if ex.any() else float("nan")}


def polysemous_aucs(model, cw, te, world) -> dict:
    """On polysemous test views' exposed items: click AUC, and how well the scores separate items of any meaning
    from the recall-only (distractor) categories — whether the model represents the OR at all."""
    import torch

    from edge_rerank.cloud.training.coarse_train import _auc, _t, item_heads, score_rows

    poly = np.array([q in world.meanings for q in te.queries])
    if not poly.any():
        return {}
    with torch.no_grad():
        q = model.query(_t(te.query_id), _t(te.query_dense))
    s = score_rows(model, item_heads(model, cw), q, te.rows)
    cat = cw.catalog.items["category"]
    anym = np.stack([np.isin(cat[te.rows[k]], world.meanings.get(qn, [])) for k, qn in enumerate(te.queries)])
    ex = te.exposed & poly[:, None]
    return {"auc_polysemous": _auc(te.labels[ex], s[ex]), "or_auc": _auc(anym[ex].astype(float), s[ex])}


def _scores(model, cw, te) -> np.ndarray:
    import torch

    from edge_rerank.cloud.training.coarse_train import _t, item_heads, score_rows

    with torch.no_grad():
        q = model.query(_t(te.query_id), _t(te.query_dense))
    return score_rows(model, item_heads(model, cw), q, te.rows)


def _paired(scores: dict, variants: list[str], te, world, seed: int) -> dict:
    """Every variant vs the first: paired click-AUC bootstrap over test views, all views and polysemous ones."""
    from edge_rerank.cloud.training.coarse_train import paired_auc_bootstrap, rank_auc

    base = variants[0]
    poly = np.array([q in world.meanings for q in te.queries])
    out = {}
    for v in variants[1:]:
        res = {}
        for part, sel in (("all", np.ones(len(te), bool)), ("polysemous", poly), ("other", ~poly)):
            if not sel.any():
                continue
            lab, ex, a, b = te.labels[sel], te.exposed[sel], scores[base][sel], scores[v][sel]
            reps = paired_auc_bootstrap(lab, ex, a, b, seed=seed, n_resamples=500)
            res[part] = {"delta": rank_auc(lab[ex], b[ex]) - rank_auc(lab[ex], a[ex]),
                         "lo": float(np.percentile(reps, 2.5)), "hi": float(np.percentile(reps, 97.5)),
                         "replicates": reps.tolist()}  # to pool seeds: one replicate per seed, averaged
        out[f"{v} vs {base}"] = res
    return out


def head_diversity(model, cw, te, world) -> dict:
    """Mean |cos| between query heads and between item heads, effective head pairs, meaning-to-head separation."""
    import torch

    from edge_rerank.cloud.training.coarse_train import _t, item_heads

    if model.cfg.nq * model.cfg.nd == 1:
        return {}
    heads = item_heads(model, world_cw := cw)
    with torch.no_grad():
        q = model.query(_t(te.query_id), _t(te.query_dense)).numpy()

    def mean_abs_cos(x: np.ndarray) -> float:
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)
        c = np.abs(x @ np.swapaxes(x, -1, -2))
        n = x.shape[-2]
        iu = np.triu_indices(n, 1)
        return float(c[..., iu[0], iu[1]].mean())

    d = heads[te.fine_rows]  # [Q, M, nd, dim]
    s = np.einsum("qid,qmjd->qmij", q, d).reshape(len(te), d.shape[1], -1)
    beta = model.cfg.beta
    if model.cfg.variant == "soft":
        p = np.exp((s - s.max(-1, keepdims=True)) / beta)
        p /= p.sum(-1, keepdims=True)
        eff = float(np.exp(-(p * np.log(np.maximum(p, 1e-12))).sum(-1)).mean())
    else:
        eff = float("nan")
    cat = world_cw.catalog.items["category"]
    sep, n = 0, 0
    best_q_head = s.argmax(-1) // model.cfg.nd  # [Q, M]
    for k, qname in enumerate(te.queries):
        if qname not in world.meanings:
            continue
        cats = cat[te.fine_rows[k]]
        modal = [np.bincount(best_q_head[k][cats == c], minlength=model.cfg.nq).argmax()
                 for c in world.meanings[qname] if (cats == c).any()]
        if len(modal) >= 2:
            n += 1
            sep += len(set(modal)) >= 2
    return {"query_heads_abs_cos": mean_abs_cos(q), "item_heads_abs_cos": mean_abs_cos(heads[:5000]),
            "effective_head_pairs": eff, "meanings_on_distinct_query_heads": sep / max(n, 1),
            "polysemous_views_checked": n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--sessions", type=int, default=900)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--multi-intent", type=int, default=6)
    p.add_argument("--intent-by-taste", type=float, default=0.7)
    p.add_argument("--distractors", type=int, default=0)
    p.add_argument("--categories", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--select", action="store_true", help="keep each model's best epoch by validation click AUC")
    p.add_argument("--ortho", type=float, default=0.0, help="CoarseTrainConfig.head_orthogonality")
    p.add_argument("--out", default=str(ROOT / "runs" / "diag" / "heads_diag.json"))
    args = p.parse_args(argv)
    import torch

    from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
    from edge_rerank.cloud.training.coarse_train import CoarseTrainConfig, evaluate_coarse, fit_coarse

    torch.set_num_threads(1)
    out: dict = {"args": vars(args), "variants": {}}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        world, cw, views = _views(args, Path(d))
        tr, te = views.split("train"), views.split("test")
        out["reference"] = _reference_aucs(world, cw, te, args.seed)
        out["meanings"] = world.meanings
        out["views"] = {"train": len(tr), "test": len(te)}
        print(f"views: {len(tr)} train, {len(te)} test ({time.perf_counter() - t0:.0f} s); meanings "
              f"{world.meanings}; reference {out['reference']}", flush=True)
        scores: dict[str, np.ndarray] = {}
        for spec in args.variants:
            parts = spec.split(":")
            variant = parts[0]
            dim = int(parts[1]) if len(parts) > 1 else 16
            heads = int(parts[2]) if len(parts) > 2 else 3
            beta = float(parts[3]) if len(parts) > 3 else 0.5
            mcfg = CoarseModelConfig(variant=variant, dim=dim, q_heads=heads, d_heads=heads, beta=beta)
            t = time.perf_counter()
            model, summ = fit_coarse(cw, tr, mcfg, CoarseTrainConfig(epochs=args.epochs, seed=args.seed, lr=args.lr,
                                                                         head_orthogonality=args.ortho),
                                     valid=views.split("valid") if args.select else None)
            m = evaluate_coarse(model, cw, te, recall_views=150)
            div = {**polysemous_aucs(model, cw, te, world), **head_diversity(model, cw, te, world)}
            row = {"auc": m["auc"], "consistency": m["consistency"]["mean"],
                   "recall@100": m["recall@100_of_fine_page1"]["mean"], "query_tower_flops": m["query_tower_flops"],
                   "match_flops_per_item": m["match_flops_per_item"], "item_vector_floats": m["item_vector_floats"],
                   "best_epoch": summ["best_epoch"], **div, "seconds": time.perf_counter() - t}
            out["variants"][spec] = row
            scores[spec] = _scores(model, cw, te)
            print(f"  {spec:16s} AUC {row['auc']:.4f} cons {row['consistency']:.4f} rec {row['recall@100']:.3f} "
                  f"match FLOPs {row['match_flops_per_item']:>5} floats {row['item_vector_floats']:>3} "
                  + " ".join(f"{k} {v:.3f}" for k, v in div.items() if isinstance(v, float))
                  + f" best epoch {row['best_epoch']} ({row['seconds']:.0f} s)", flush=True)
        out["paired"] = _paired(scores, args.variants, te, world, args.seed)
        for k, v in out["paired"].items():
            print(f"  {k}: " + ", ".join(f"{part} {d['delta'] * 100:+.2f} [{d['lo'] * 100:+.2f}, {d['hi'] * 100:+.2f}]"
                                        for part, d in v.items()) + " AUC points", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
