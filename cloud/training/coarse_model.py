"""Two-tower coarse ranker (SPEC §2, seed 000): query tower and item tower, three matching variants, and the
cross-feature teacher used for distillation.

- ``dot``: one vector per side, score = q·d.
- ``soft``: nq query heads and nd item heads (separate linear heads on a shared trunk), the nq×nd
  head-similarity matrix S, score = Σ softmax(S/β) ⊙ S ("soft attention dot", temperature β).
- ``esim``: ESIM-style matching over the head embeddings as tokens: soft alignment both ways, enhanced
  [a, ã, a−ã, a⊙ã] through a small network, mean+max pooling, an MLP to the score.

Item heads depend on the item only, so they are computed offline for the whole catalog and stored; online
only the query tower runs. ``score_heads(q [B, nq, d], D [B, nd, d])`` scores aligned pairs and
``score_matrix(q [B, nq, d], D [M, nd, d])`` all B×M pairs (in-batch all-pairs distillation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edge_rerank.cloud.ranking.coarse_features import CoarseFeatureSpec

VARIANTS = ("dot", "soft", "esim")


@dataclass(frozen=True)
class CoarseModelConfig:
    variant: str = "soft"  # dot | soft | esim
    dim: int = 16  # head width d
    q_heads: int = 3  # nq (forced to 1 for dot)
    d_heads: int = 3  # nd (forced to 1 for dot)
    hidden: int = 64  # tower trunk width
    id_dim: int = 8  # query / category / brand id embedding width
    beta: float = 0.5  # soft-attention temperature
    esim_hidden: int = 16

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"coarse variant must be one of {VARIANTS}, got {self.variant!r}")

    @property
    def nq(self) -> int:
        return 1 if self.variant == "dot" else self.q_heads

    @property
    def nd(self) -> int:
        return 1 if self.variant == "dot" else self.d_heads

    def to_dict(self) -> dict:
        return asdict(self)


class QueryTower(nn.Module):
    """(query_id [B], query_dense [B, Fq]) -> heads [B, nq, d]."""

    def __init__(self, spec: CoarseFeatureSpec, cfg: CoarseModelConfig):
        super().__init__()
        self.nq, self.dim = cfg.nq, cfg.dim
        self.qemb = nn.Embedding(spec.query_vocab, cfg.id_dim)
        self.trunk = nn.Sequential(nn.Linear(cfg.id_dim + spec.query_dense_dim, cfg.hidden), nn.ReLU(),
                                   nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
        self.heads = nn.Linear(cfg.hidden, cfg.nq * cfg.dim)  # nq separate linear heads, one matmul

    def forward(self, query_id: torch.Tensor, query_dense: torch.Tensor) -> torch.Tensor:
        h = self.trunk(torch.cat([self.qemb(query_id), query_dense], dim=-1))
        return self.heads(h).reshape(-1, self.nq, self.dim)


class ItemTower(nn.Module):
    """(category [B], brand [B], dense [B, Fi]) -> heads [B, nd, d]."""

    def __init__(self, spec: CoarseFeatureSpec, cfg: CoarseModelConfig):
        super().__init__()
        self.nd, self.dim = cfg.nd, cfg.dim
        self.cemb = nn.Embedding(spec.n_categories, cfg.id_dim)
        self.bemb = nn.Embedding(spec.n_brands, cfg.id_dim)
        self.trunk = nn.Sequential(nn.Linear(2 * cfg.id_dim + spec.item_dense_dim, cfg.hidden), nn.ReLU(),
                                   nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
        self.heads = nn.Linear(cfg.hidden, cfg.nd * cfg.dim)

    def forward(self, category: torch.Tensor, brand: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        h = self.trunk(torch.cat([self.cemb(category), self.bemb(brand), dense], dim=-1))
        return self.heads(h).reshape(-1, self.nd, self.dim)


class EsimMatcher(nn.Module):
    """ESIM over head tokens: q [..., nq, d], D [..., nd, d] (broadcast leading dims) -> score [...]."""

    def __init__(self, cfg: CoarseModelConfig):
        super().__init__()
        d, h = cfg.dim, cfg.esim_hidden
        self.enhance = nn.Sequential(nn.Linear(4 * d, h), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(4 * h, h), nn.ReLU(), nn.Linear(h, 1))
        self.dot_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        lead = torch.broadcast_shapes(q.shape[:-2], d.shape[:-2])
        q, d = q.expand(*lead, *q.shape[-2:]), d.expand(*lead, *d.shape[-2:])
        e = q @ d.transpose(-1, -2)  # [..., nq, nd]
        q_al = torch.softmax(e, dim=-1) @ d  # each query head aligned over item heads
        d_al = torch.softmax(e.transpose(-1, -2), dim=-1) @ q
        mq = self.enhance(torch.cat([q, q_al, q - q_al, q * q_al], dim=-1))
        md = self.enhance(torch.cat([d, d_al, d - d_al, d * d_al], dim=-1))
        v = torch.cat([mq.mean(-2), mq.amax(-2), md.mean(-2), md.amax(-2)], dim=-1)
        # plus the mean head similarity: the matcher starts from a dot product and learns a correction
        return self.out(v).squeeze(-1) + self.dot_scale * e.mean(dim=(-1, -2))


class TwoTower(nn.Module):
    def __init__(self, spec: CoarseFeatureSpec, cfg: CoarseModelConfig | None = None):
        super().__init__()
        self.spec = spec
        self.cfg = cfg or CoarseModelConfig()
        self.query = QueryTower(spec, self.cfg)
        self.item = ItemTower(spec, self.cfg)
        self.matcher = EsimMatcher(self.cfg) if self.cfg.variant == "esim" else None

    def score_heads(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """q [..., nq, d], D [..., nd, d] with broadcastable leading dims -> score [...]."""
        if self.cfg.variant == "dot":
            return (q @ d.transpose(-1, -2))[..., 0, 0]  # a matmul, so FLOP counting sees it
        if self.cfg.variant == "soft":
            s = (q @ d.transpose(-1, -2)).flatten(-2)  # [..., nq*nd]
            return (torch.softmax(s / self.cfg.beta, dim=-1) * s).sum(-1)
        assert self.matcher is not None
        return self.matcher(q, d)

    def score_matrix(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """All pairs: q [B, nq, d], D [M, nd, d] -> [B, M]."""
        return self.score_heads(q[:, None], d[None, :])

    def forward(self, query_id, query_dense, category, brand, dense) -> torch.Tensor:
        return self.score_heads(self.query(query_id, query_dense), self.item(category, brand, dense))


class QueryTowerExport(nn.Module):
    """What runs online, per request: the query tower (ONNX: query_id [B], query_dense [B, Fq] -> q_heads)."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.tower = model.query

    def forward(self, query_id: torch.Tensor, query_dense: torch.Tensor) -> torch.Tensor:
        return self.tower(query_id, query_dense)


class ScorerExport(nn.Module):
    """The matching layer online: one query's heads [nq, d] against N items' heads [N, nd, d] -> score [N]."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(self, q_heads: torch.Tensor, item_heads: torch.Tensor) -> torch.Tensor:
        return self.model.score_heads(q_heads[None], item_heads)


class CrossTeacher(nn.Module):
    """The large teacher: one tower over query and item features *and* their crosses (distance, profile
    affinity, price gap) — what the two towers cannot see. (query inputs, item inputs, cross [B, 3]) -> score."""

    def __init__(self, spec: CoarseFeatureSpec, hidden: int = 128, id_dim: int = 16):
        super().__init__()
        self.qemb = nn.Embedding(spec.query_vocab, id_dim)
        self.cemb = nn.Embedding(spec.n_categories, id_dim)
        self.bemb = nn.Embedding(spec.n_brands, id_dim)
        n_in = 3 * id_dim + spec.query_dense_dim + spec.item_dense_dim + 3
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, 1))

    def forward(self, query_id, query_dense, category, brand, dense, cross) -> torch.Tensor:
        x = torch.cat([self.qemb(query_id), self.cemb(category), self.bemb(brand), query_dense, dense, cross], -1)
        return self.net(x).squeeze(-1)


def n_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def flops(fn, *args) -> int:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def online_cost(model: TwoTower) -> dict[str, int]:
    """FLOPs and parameters of what runs online: the query tower (once per request) and the matching of one
    item; and of the offline item tower (once per item)."""
    spec, cfg = model.spec, model.cfg
    qi, qd = torch.zeros(1, dtype=torch.long), torch.zeros(1, spec.query_dense_dim)
    ci = bi = torch.zeros(1, dtype=torch.long)
    idense = torch.zeros(1, spec.item_dense_dim)
    q, d = model.query(qi, qd), model.item(ci, bi, idense)
    return {"query_tower_flops": flops(model.query, qi, qd), "match_flops_per_item": flops(model.score_heads, q, d),
            "item_tower_flops": flops(model.item, ci, bi, idense),
            "query_tower_params": n_params(model.query), "item_tower_params": n_params(model.item),
            "matcher_params": n_params(model.matcher) if model.matcher is not None else 0,
            "item_vector_floats": cfg.nd * cfg.dim}
