"""Training the coarse two-tower model (seed 000): a student loss on logged clicks, distillation from a
cross-feature teacher (pairwise score distillation, then in-batch all-pairs similarity distillation), and
distillation of the fine ranker into the coarse one (consistency), with its weight ramped up over training and,
in the last share of epochs, the student loss dropped (the seed's schedule).

Metrics (:func:`evaluate_coarse`) on held-out sessions: AUC of clicks among exposed items, **consistency** with the
fine ranker (share of recall-item pairs both order the same way, per query view, mean with a bootstrap CI),
recall@K of the fine ranker's page 1 in the coarse top-K, FLOPs and parameters.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from edge_rerank.cloud.training.coarse_data import CoarseWorld, QueryViews
from edge_rerank.cloud.training.coarse_model import CoarseModelConfig, CrossTeacher, TwoTower, n_params, online_cost

TEACHER_MODES = ("none", "pairwise", "all_pairs")


@dataclass(frozen=True)
class CoarseTrainConfig:
    epochs: int = 8
    batch_size: int = 64  # query views per step
    lr: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0
    teacher: str = "none"  # none | pairwise | all_pairs (all_pairs = pairwise + in-batch all-pairs)
    teacher_weight: float = 1.0
    teacher_epochs: int = 8
    random_negative_weight: float = 1.0  # weight of the sampled recall negatives in the click loss
    fine_weight: float = 0.0  # fine ranker -> coarse distillation (0: off)
    fine_temperature: float = 1.0
    fine_ramp_epochs: int = 4  # the fine distillation weight grows linearly over these epochs
    fine_only_tail: float = 0.25  # last share of epochs: student and teacher losses off, fine distillation only
    # of the 32 fine-ranker samples per training view, how many come from the fine ranker's own top 50 of the recall
    # set (the rest: uniform over it). Used where training views are built from logs (coarse_pipeline, the demo);
    # evaluation views stay uniform, so consistency keeps its meaning
    fine_top_samples: int = 16
    # multi-head models: weight of a penalty on the mean squared cosine between the heads of one query (and of one
    # item), pushing heads apart; without it the heads of a trained soft model end up nearly parallel (|cos| 0.85-0.92
    # in bench/coarse_heads_diag.py), i.e. one vector in three copies. 0: off (the default)
    head_orthogonality: float = 0.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.teacher not in TEACHER_MODES:
            raise ValueError(f"teacher must be one of {TEACHER_MODES}, got {self.teacher!r}")
        if not (self.head_orthogonality >= 0.0 and np.isfinite(self.head_orthogonality)):
            raise ValueError(f"head_orthogonality must be a finite number >= 0, got {self.head_orthogonality!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


class _Inputs:
    """Tensors of one batch of query views (item inputs gathered from the catalog-wide arrays)."""

    def __init__(self, world: CoarseWorld, v: QueryViews, idx: np.ndarray):
        self.qid, self.qdense = _t(v.query_id[idx]), _t(v.query_dense[idx])
        self.rows, self.labels, self.mask = v.rows[idx], _t(v.labels[idx]), _t(v.mask[idx])
        self.fine_rows, self.fine = v.fine_rows[idx], _t(v.fine_scores[idx].astype(np.float32))
        self.world, self.v, self.idx = world, v, idx

    def item(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        it = self.world.items
        return _t(it["category"][rows]), _t(it["brand"][rows]), _t(it["dense"][rows])

    def cross(self, rows: np.ndarray) -> torch.Tensor:
        """Teacher crosses for this batch's query views (dim 0) against item rows [B, ...]."""
        v, i = self.v, self.idx
        extra = (1,) * (rows.ndim - 1)
        pref = v.pref[i].reshape(len(i), *extra, -1)
        return _t(self.world.cross(pref, v.price_pref[i].reshape(len(i), *extra), v.lat[i].reshape(len(i), *extra),
                                   v.lon[i].reshape(len(i), *extra), rows))


def _teacher_scores(teacher: CrossTeacher, b: _Inputs, rows: np.ndarray) -> torch.Tensor:
    """Teacher scores for each query view of the batch against its own item rows [B, L]."""
    B, L = rows.shape
    c, br, d = b.item(rows.reshape(-1))
    return teacher(b.qid.repeat_interleave(L), b.qdense.repeat_interleave(L, dim=0), c, br, d,
                   b.cross(rows).reshape(B * L, -1)).reshape(B, L)


def _student_loss(s: torch.Tensor, b: _Inputs, bias: torch.Tensor, random_weight: float = 1.0) -> torch.Tensor:
    m = b.mask.float()
    if random_weight != 1.0:
        exposed = torch.from_numpy(b.v.exposed[b.idx])
        m = m * torch.where(exposed, 1.0, random_weight)
    bce = F.binary_cross_entropy_with_logits(s + bias, b.labels, reduction="none")
    return (bce * m).sum() / m.sum().clamp(min=1)


def fit_teacher(world: CoarseWorld, train: QueryViews, cfg: CoarseTrainConfig) -> CrossTeacher:
    """The large cross-feature teacher, trained on the same clicks (BCE)."""
    torch.manual_seed(cfg.seed)
    teacher = CrossTeacher(world.spec)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([*teacher.parameters(), bias], lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 1)
    for _ in range(cfg.teacher_epochs):
        perm = rng.permutation(len(train))
        for s in range(0, len(perm), cfg.batch_size):
            b = _Inputs(world, train, perm[s: s + cfg.batch_size])
            loss = _student_loss(_teacher_scores(teacher, b, b.rows), b, bias)
            opt.zero_grad()
            loss.backward()
            opt.step()
    teacher.eval()
    return teacher


def _pairwise_distill(s: torch.Tensor, t: torch.Tensor, b: _Inputs) -> torch.Tensor:
    """Pairwise score distillation: on (clicked, not clicked) pairs of a list, P(pos > neg) of the student
    follows the teacher's."""
    lab, m = b.labels, b.mask
    pair = (lab[:, :, None] > lab[:, None, :]) & m[:, :, None] & m[:, None, :]
    if not pair.any():
        return s.sum() * 0.0
    ds, dt = (s[:, :, None] - s[:, None, :])[pair], (t[:, :, None] - t[:, None, :])[pair]
    return F.binary_cross_entropy_with_logits(ds, torch.sigmoid(dt))


def _all_pairs_distill(model: TwoTower, teacher: CrossTeacher, b: _Inputs, q: torch.Tensor) -> torch.Tensor:
    """In-batch all-pairs similarity distillation: every query view of the batch against one item of every list
    (its first clicked item, else its first exposed one); row-wise softmax of the teacher as the target."""
    first = np.where(b.v.labels[b.idx].any(1), b.v.labels[b.idx].argmax(1), 0)
    docs = b.rows[np.arange(len(b.idx)), first]  # [B]
    B = len(docs)
    grid = np.broadcast_to(docs[None, :], (B, B))
    with torch.no_grad():
        t = _teacher_scores(teacher, b, np.ascontiguousarray(grid))
    d = model.item(*b.item(docs))
    s = model.score_matrix(q, d)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")


def _fine_distill(model: TwoTower, b: _Inputs, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Fine ranker -> coarse: list-wise KL between the fine ranker's softmax over recall samples and the coarse one."""
    B, M = b.fine_rows.shape
    d = model.item(*b.item(b.fine_rows.reshape(-1))).reshape(B, M, model.cfg.nd, model.cfg.dim)
    s = model.score_heads(q[:, None], d)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(b.fine / temperature, -1), log_target=True,
                    reduction="batchmean")


def head_cos2(h: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between distinct heads of each row: h [..., n, d] -> scalar (0: orthogonal heads)."""
    n = h.shape[-2]
    if n < 2:
        return h.sum() * 0.0
    u = F.normalize(h, dim=-1)
    c = u @ u.transpose(-1, -2)
    off = ~torch.eye(n, dtype=torch.bool)
    return (c[..., off] ** 2).mean()


def _valid_auc(model: TwoTower, world: CoarseWorld, views: QueryViews) -> float:
    """Click AUC among the exposed items of `views` (the selection metric of ``fit_coarse(valid=...)``)."""
    model.eval()
    with torch.no_grad():
        q = model.query(_t(views.query_id), _t(views.query_dense))
        s = score_rows(model, item_heads(model, world), q, views.rows)
    return _auc(views.labels[views.exposed], s[views.exposed])


def fit_coarse(world: CoarseWorld, train: QueryViews, mcfg: CoarseModelConfig | None = None,
               tcfg: CoarseTrainConfig | None = None, *, teacher: CrossTeacher | None = None,
               valid: QueryViews | None = None) -> tuple[TwoTower, dict]:
    """Train the two towers on `train`; with ``tcfg.teacher != 'none'`` a teacher is trained first (or `teacher`
    reused), with ``tcfg.fine_weight > 0`` the fine ranker is distilled in. With `valid` views, the click AUC on them
    is measured after every epoch and the model of the best epoch is returned (``summary['best_epoch']``): each
    variant gets the training length that suits it, chosen without the test views."""
    tcfg = tcfg or CoarseTrainConfig()
    torch.set_num_threads(tcfg.threads)
    t0 = time.perf_counter()
    if tcfg.teacher != "none" and teacher is None:
        teacher = fit_teacher(world, train, tcfg)
    torch.manual_seed(tcfg.seed)
    model = TwoTower(world.spec, mcfg)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([*model.parameters(), bias], lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    rng = np.random.default_rng(tcfg.seed)
    tail_from = tcfg.epochs - int(round(tcfg.fine_only_tail * tcfg.epochs)) if tcfg.fine_weight > 0 else tcfg.epochs
    history = []
    best: tuple[float, int, dict] | None = None
    for epoch in range(tcfg.epochs):
        model.train()
        w_fine = tcfg.fine_weight * min(1.0, (epoch + 1) / max(tcfg.fine_ramp_epochs, 1))
        fine_only = epoch >= tail_from
        perm = rng.permutation(len(train))
        losses = []
        for s0 in range(0, len(perm), tcfg.batch_size):
            b = _Inputs(world, train, perm[s0: s0 + tcfg.batch_size])
            q = model.query(b.qid, b.qdense)
            loss = torch.zeros(())
            if not fine_only:
                B, L = b.rows.shape
                d = model.item(*b.item(b.rows.reshape(-1))).reshape(B, L, model.cfg.nd, model.cfg.dim)
                s = model.score_heads(q[:, None], d)
                loss = loss + _student_loss(s, b, bias, tcfg.random_negative_weight)
                if teacher is not None:
                    with torch.no_grad():
                        t = _teacher_scores(teacher, b, b.rows)
                    loss = loss + tcfg.teacher_weight * _pairwise_distill(s, t, b)
                    if tcfg.teacher == "all_pairs":
                        loss = loss + tcfg.teacher_weight * _all_pairs_distill(model, teacher, b, q)
            if w_fine > 0:
                loss = loss + w_fine * _fine_distill(model, b, q, tcfg.fine_temperature)
            if tcfg.head_orthogonality > 0 and model.cfg.nq * model.cfg.nd > 1:
                d_heads = model.item(*b.item(b.rows[:, 0]))
                loss = loss + tcfg.head_orthogonality * (head_cos2(q) + head_cos2(d_heads))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.item()))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "fine_weight": w_fine,
                        "fine_only": fine_only})
        if valid is not None:
            history[-1]["valid_auc"] = auc = _valid_auc(model, world, valid)
            if best is None or auc > best[0]:
                best = (auc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    return model, {"train_seconds": time.perf_counter() - t0, "history": history, "train_views": len(train),
                   "model": model.cfg.to_dict(), "train": tcfg.to_dict(),
                   "best_epoch": best[1] if best is not None else tcfg.epochs - 1,
                   "best_valid_auc": best[0] if best is not None else float("nan"),
                   "teacher_params": n_params(teacher) if teacher is not None else 0}


# ---------------------------------------------------------------------------------------------- scoring + metrics

@torch.no_grad()
def item_heads(model: TwoTower, world: CoarseWorld, batch: int = 65536) -> np.ndarray:
    """Item vectors of the whole catalog [n_items, nd, d] (what serving stores)."""
    it = world.items
    out = [model.item(_t(it["category"][s: s + batch]), _t(it["brand"][s: s + batch]), _t(it["dense"][s: s + batch]))
           for s in range(0, world.catalog.n_items, batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def score_rows(model: TwoTower, heads: np.ndarray, q: torch.Tensor, rows: np.ndarray) -> np.ndarray:
    """Scores [B, L] of query heads q [B, nq, d] against catalog rows [B, L]."""
    d = _t(heads[rows])  # [B, L, nd, d]
    return model.score_heads(q[:, None], d).numpy().astype(np.float64)


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def concordance(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Per row: share of item pairs (fine scores not tied) that both orders agree on. [Q, M] -> [Q]."""
    df = np.sign(fine[:, :, None] - fine[:, None, :])
    dc = np.sign(coarse[:, :, None] - coarse[:, None, :])
    iu = np.triu_indices(fine.shape[1], 1)
    df, dc = df[:, iu[0], iu[1]], dc[:, iu[0], iu[1]]
    valid = df != 0
    return ((df == dc) & valid).sum(1) / np.maximum(valid.sum(1), 1)


def mean_ci(values: np.ndarray, *, seed: int = 0, n_resamples: int = 2000) -> dict[str, float]:
    """Mean with a 95 % percentile bootstrap CI (scipy.stats.bootstrap), resampling query views."""
    from scipy.stats import bootstrap

    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2 or np.all(v == v[0]):
        m = float(v.mean()) if len(v) else float("nan")
        return {"mean": m, "lo": m, "hi": m, "n": int(len(v))}
    res = bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(seed))
    return {"mean": float(v.mean()), "lo": float(res.confidence_interval.low),
            "hi": float(res.confidence_interval.high), "n": int(len(v))}


def evaluate_scores(world: CoarseWorld, views: QueryViews, list_scores: np.ndarray, fine_sample_scores: np.ndarray,
                    recall_scores=None, *, k: int = 100, page: int = 25, max_recall_views: int = 300) -> dict:
    """Held-out metrics of any scorer: `list_scores` [Q, L] on the list items, `fine_sample_scores` [Q, M] on the
    fine ranker's recall samples, `recall_scores(view index, rows) -> scores` for recall@K (optional)."""
    ex = views.exposed
    auc = _auc(views.labels[ex], list_scores[ex])
    per_view = concordance(fine_sample_scores, views.fine_scores)
    out = {"auc": auc, "consistency": mean_ci(per_view), "consistency_per_view": per_view}
    if recall_scores is not None:
        hits = []
        for i in range(min(len(views), max_recall_views)):
            rows = world.pipeline.recall(views.queries[i])
            if len(rows) <= page:
                continue
            fine = world.fine_scores(views.user_ids[i], views.contexts[i], rows)
            top_fine = set(rows[np.argsort(-fine, kind="stable")[:page]].tolist())
            c = recall_scores(i, rows)
            top_coarse = set(rows[np.argsort(-c, kind="stable")[:k]].tolist())
            hits.append(len(top_fine & top_coarse) / page)
        out[f"recall@{k}_of_fine_page1"] = mean_ci(np.array(hits))
    return out


def evaluate_coarse(model: TwoTower, world: CoarseWorld, views: QueryViews, *, k: int = 100,
                    recall_views: int = 300) -> dict:
    heads = item_heads(model, world)
    with torch.no_grad():
        q = model.query(_t(views.query_id), _t(views.query_dense))
    list_scores = score_rows(model, heads, q, views.rows)
    fine_sample = score_rows(model, heads, q, views.fine_rows)

    def recall_scores(i: int, rows: np.ndarray) -> np.ndarray:
        return score_rows(model, heads, q[i: i + 1], rows[None])[0]

    out = evaluate_scores(world, views, list_scores, fine_sample, recall_scores, k=k, max_recall_views=recall_views)
    out.update(online_cost(model))
    out["params"] = n_params(model)
    return out


def baseline_scores(world: CoarseWorld, views: QueryViews, kind: str, seed: int = 0, *,
                    recall_views: int = 300) -> dict:
    """Metrics of the baselines: ``random``, ``popularity`` (log popularity) and ``fine`` (the fine ranker
    itself, the ceiling of consistency)."""
    rng = np.random.default_rng(seed)
    kw = {"max_recall_views": recall_views}
    pop = np.log1p(world.catalog.items["popularity"]).astype(np.float64)
    if kind == "random":
        return evaluate_scores(world, views, rng.random(views.rows.shape), rng.random(views.fine_rows.shape),
                               lambda i, rows: rng.random(len(rows)), **kw)
    if kind == "popularity":
        return evaluate_scores(world, views, pop[views.rows], pop[views.fine_rows], lambda i, rows: pop[rows], **kw)
    if kind == "fine":
        ls = np.stack([world.fine_scores(u, c, r) for u, c, r in zip(views.user_ids, views.contexts, views.rows,
                                                                        strict=True)])
        return evaluate_scores(world, views, ls, views.fine_scores,
                               lambda i, rows: world.fine_scores(views.user_ids[i], views.contexts[i], rows), **kw)
    raise ValueError(f"unknown baseline {kind!r}")


def paired_delta(a: np.ndarray, b: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Per-view paired difference b − a with a bootstrap CI (same query views, same pairs)."""
    return mean_ci(np.asarray(b) - np.asarray(a), seed=seed)


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of binary `labels` by `scores`, by ranks (ties averaged: sklearn's value); NaN with one class only.
    Cheap enough for :func:`paired_auc_bootstrap`, which calls it thousands of times."""
    from scipy.stats import rankdata

    pos = labels > 0.5
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def paired_auc_bootstrap(labels: np.ndarray, exposed: np.ndarray, sa: np.ndarray, sb: np.ndarray, *, seed: int,
                         n_resamples: int = 1000) -> np.ndarray:
    """Bootstrap replicates of AUC(b) − AUC(a) on the exposed items, resampling whole test query views (the same
    resample for both scorers: a paired comparison). [Q, L] arrays -> [n_resamples]."""
    rng = np.random.default_rng(seed)
    Q = labels.shape[0]
    out = np.empty(n_resamples)
    for k in range(n_resamples):
        i = rng.integers(0, Q, Q)
        ex = exposed[i]
        y = labels[i][ex]
        out[k] = rank_auc(y, sb[i][ex]) - rank_auc(y, sa[i][ex])
    return out


def with_variant(mcfg: CoarseModelConfig, **kw) -> CoarseModelConfig:
    return replace(mcfg, **kw)
