"""The device reranker (torch): feedback attention over clicks/skips + a PRM-style transformer over the
candidates. Export-friendly by construction (see shared/ARCHITECTURE.md): hand-written attention with
additive float masks, ReLU, fixed N_max/L_max, int32 ids, no boolean tensors.

Feedback attention (a first cut of MVFAN, #4 completes it): every event is the *sum* of its field
embeddings (category, brand, price, kind, projected ID embedding, numeric event features); two *views* of
each candidate (its ID embedding and its attributes) query the click sequence and the skip sequence; each
attention has an appended all-zero slot so an empty sequence attends to nothing instead of to noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from device_sdk.features import FeatureConfig, input_names

NEG = -1e4


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    ffn: int = 64
    use_feedback: bool = True  # False: a PRM over the candidates that ignores the feedback sequence

    def to_dict(self) -> dict:
        return asdict(self)


def attend_with_zero_slot(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [B,N,d], k/v [B,L,d], mask [B,L] in {0,1}. Softmax over the L keys plus one all-zero key/value."""
    logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) + (1.0 - mask).unsqueeze(1) * NEG
    logits = torch.cat([logits, torch.zeros_like(logits[:, :, :1])], dim=2)
    w = torch.softmax(logits, dim=2)[:, :, :-1]
    return w @ v


class SelfAttentionBlock(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Linear(ffn, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, d = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # [B,h,N,dh] each
        logits = q @ k.transpose(2, 3) / math.sqrt(self.dh) + (1.0 - mask)[:, None, None, :] * NEG
        a = torch.softmax(logits, dim=3) @ v  # [B,h,N,dh]
        x = self.ln1(x + self.out(a.transpose(1, 2).reshape(B, N, d)))
        return self.ln2(x + self.ff(x))


class DeviceReranker(nn.Module):
    def __init__(self, fcfg: FeatureConfig, mcfg: ModelConfig | None = None):
        super().__init__()
        self.fcfg, self.mcfg = fcfg, mcfg or ModelConfig()
        d = self.mcfg.d_model
        self.cat = nn.Embedding(fcfg.n_categories + 1, d)
        self.brand = nn.Embedding(fcfg.n_brands + 1, d)
        self.price = nn.Embedding(fcfg.n_price_levels + 1, d)
        self.kind = nn.Embedding(3, d)
        self.id_proj = nn.Linear(fcfg.emb_dim, d)
        self.seq_num = nn.Linear(fcfg.n_event_features, d)
        self.cand_num = nn.Linear(fcfg.n_candidate_features, d)
        self.dense = nn.Linear(fcfg.dense_dim, d)
        self.ctx = nn.Linear(fcfg.n_context_features, d)
        n_parts = 4 + (4 if self.mcfg.use_feedback else 0)
        if self.mcfg.use_feedback:
            self.q_views = nn.ModuleList([nn.Linear(d, d) for _ in range(2)])  # id view, attribute view
            self.kv_pos = nn.Linear(d, 2 * d)
            self.kv_neg = nn.Linear(d, 2 * d)
        self.fuse = nn.Sequential(nn.Linear(n_parts * d, d), nn.ReLU())
        self.blocks = nn.ModuleList([SelfAttentionBlock(d, self.mcfg.n_heads, self.mcfg.ffn)
                                     for _ in range(self.mcfg.n_layers)])
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))

    @property
    def input_names(self) -> list[str]:
        return input_names(self.fcfg)

    def forward(self, cand_cat, cand_brand, cand_price, cand_emb, cand_dense, cand_num, cand_mask,
                seq_cat, seq_brand, seq_price, seq_kind, seq_emb, seq_num, seq_pos_mask, seq_neg_mask, ctx):
        id_view = self.id_proj(cand_emb)
        attr_view = self.cat(cand_cat) + self.brand(cand_brand) + self.price(cand_price)
        ctx_v = self.ctx(ctx).unsqueeze(1).expand_as(id_view)
        parts = [id_view, attr_view, self.dense(cand_dense) + ctx_v, self.cand_num(cand_num)]
        if self.mcfg.use_feedback:
            ev = (self.cat(seq_cat) + self.brand(seq_brand) + self.price(seq_price) + self.kind(seq_kind)
                  + self.id_proj(seq_emb) + self.seq_num(seq_num))
            kp, vp = self.kv_pos(ev).chunk(2, dim=2)
            kn, vn = self.kv_neg(ev).chunk(2, dim=2)
            for view, proj in zip((id_view, attr_view), self.q_views, strict=True):
                q = proj(view)
                parts.append(attend_with_zero_slot(q, kp, vp, seq_pos_mask))
                parts.append(attend_with_zero_slot(q, kn, vn, seq_neg_mask))
        x = self.fuse(torch.cat(parts, dim=2))
        for block in self.blocks:
            x = block(x, cand_mask)
        return self.head(x).squeeze(2)


def to_tensors(inputs: dict, names: list[str]) -> list[torch.Tensor]:
    return [torch.from_numpy(inputs[n]) for n in names]
