"""The device reranker (torch): MVFAN feedback attention + Match&Aggregate + the cloud's dense vector, then
a PRM-style transformer over the candidates. Export-friendly by construction (see shared/ARCHITECTURE.md):
hand-written attention with additive float masks, ReLU, fixed N_max/L_max, int32 ids, no boolean tensors.

MVFAN (SPEC §1), each part switchable in ``ModelConfig`` for the ablation:
- every feedback event is the *sum* of its field embeddings: category, brand, price, distance bucket, position
  bucket, kind (click/skip), the projected ID embedding and the numeric event features; the attribute tables
  are shared with the candidates' attribute view;
- ``cross``: DFN-style cross attention, negatives as queries over positives and positives over negatives, each
  with an appended all-zero slot so a side with no events contributes nothing instead of noise;
- ``views``: the candidate's ID embedding, its attributes, and the search context each query the positive and
  the negative sequence (zero slot again); the results are concatenated with the candidate's own vectors.
With ``use_feedback=False`` the model is a plain PRM over the candidates (Match&Aggregate features, if the
feature config has them, still come in through ``cand_num``).

``residual`` (issue 14, "never below the cloud"): the score is ``w * z(cloud_score) + has_feedback * g(x)``,
where ``z`` is the standardised cloud score, ``w`` starts at 1 and ``g``'s last layer starts at zero. So the
untrained model *is* the cloud order, training only learns what to add to it, and a list whose session has no
feedback yet keeps the cloud order exactly (``has_feedback`` is 1 if any feedback slot is filled, computed from
the masks with float ops only: export-friendly).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edge_rerank.cloud.training.configs import VIEWS, ModelConfig  # noqa: F401  (re-exported: configs live torch-free)
from edge_rerank.device_sdk.features import FeatureConfig, input_names

NEG = -1e4





def attend_with_zero_slot(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [B,N,d], k/v [B,L,d], mask [B,L] in {0,1}. Softmax over the L keys plus one all-zero key/value."""
    logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) + (1.0 - mask).unsqueeze(1) * NEG
    logits = torch.cat([logits, torch.zeros_like(logits[:, :, :1])], dim=2)
    w = torch.softmax(logits, dim=2)[:, :, :-1]
    return w @ v


class SelfAttentionBlock(nn.Module):
    """Self-attention over the candidates + feed-forward, post-norm. In training the attention runs through
    torch's fused ``scaled_dot_product_attention`` (no [N, N] weight matrix kept for the backward pass: ~4x less
    CPU on lists of 300); in eval — prediction, validation, every export — the same function written out
    (matmul, softmax, matmul), which is what the ONNX / TFLite / Core ML graphs hold. Both agree within float
    rounding (a test)."""

    fused_in_training = True  # the long-list training bench switches it off to measure the difference

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
        additive = (1.0 - mask)[:, None, None, :] * NEG  # [B,1,1,N]
        if self.training and self.fused_in_training:
            a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=None if bool((mask > 0).all())
                                                           else additive)
        else:
            a = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(self.dh) + additive, dim=3) @ v  # [B,h,N,dh]
        x = self.ln1(x + self.out(a.transpose(1, 2).reshape(B, N, d)))
        return self.ln2(x + self.ff(x))


class DeviceReranker(nn.Module):
    def __init__(self, fcfg: FeatureConfig, mcfg: ModelConfig | None = None):
        super().__init__()
        self.fcfg, self.mcfg = fcfg, mcfg or ModelConfig()
        d = self.mcfg.d_model
        n_cat, n_brand, n_price = fcfg.slot_sizes  # the declared fields in the 3 categorical slots (+1: unknown)
        self.cat = nn.Embedding(n_cat + 1, d)
        self.brand = nn.Embedding(n_brand + 1, d)
        self.price = nn.Embedding(n_price + 1, d)
        self.dist = nn.Embedding(fcfg.n_distance_buckets, d)
        self.pos = nn.Embedding(fcfg.n_position_buckets, d)
        self.id_proj = nn.Linear(fcfg.emb_dim, d)
        self.cand_num = nn.Linear(fcfg.n_candidate_features, d)
        self.dense = nn.Linear(fcfg.dense_dim, d)
        self.ctx = nn.Linear(fcfg.n_context_features, d)
        n_parts = 4
        if self.mcfg.use_feedback:
            self.kind = nn.Embedding(3, d)
            self.seq_num = nn.Linear(fcfg.n_event_features, d)
            if self.mcfg.cross:
                self.cross_qkv = nn.Linear(d, 3 * d)
            self.q_views = nn.ModuleDict({v: nn.Linear(d, d) for v in self.mcfg.views})
            self.kv_pos = nn.Linear(d, 2 * d)
            self.kv_neg = nn.Linear(d, 2 * d)
            n_parts += 2 * len(self.mcfg.views)
        self.fuse = nn.Sequential(nn.Linear(n_parts * d, d), nn.ReLU(), nn.Dropout(self.mcfg.dropout))
        if self.mcfg.wide:
            self.wide = nn.Linear(fcfg.n_candidate_features, 1)
        self.blocks = nn.ModuleList([SelfAttentionBlock(d, self.mcfg.n_heads, self.mcfg.ffn)
                                     for _ in range(self.mcfg.n_layers)])
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        if self.mcfg.residual:
            if "cloud_score" not in fcfg.candidate_ops:
                raise ValueError("ModelConfig(residual=True) needs the 'cloud_score' operator in the feature config")
            self.cloud_index = fcfg.candidate_ops.index("cloud_score")
            self.cloud_weight = nn.Parameter(torch.ones(1))
            nn.init.zeros_(self.head[2].weight)  # g starts at 0: the untrained model is the cloud order
            nn.init.zeros_(self.head[2].bias)
        # standardisation of the numeric inputs, fitted on the training data (``fit_input_stats``)
        self.register_buffer("num_mean", torch.zeros(fcfg.n_candidate_features))
        self.register_buffer("num_std", torch.ones(fcfg.n_candidate_features))
        self.register_buffer("ev_mean", torch.zeros(fcfg.n_event_features))
        self.register_buffer("ev_std", torch.ones(fcfg.n_event_features))

    @property
    def input_names(self) -> list[str]:
        return input_names(self.fcfg)

    def fit_input_stats(self, inputs: dict) -> None:
        """Mean/std of ``cand_num`` over real candidates and of ``seq_num`` over real events (numpy inputs)."""
        import numpy as np

        for key, mask, mean, std in (("cand_num", inputs["cand_mask"] > 0, self.num_mean, self.num_std),
                                     ("seq_num", (inputs["seq_pos_mask"] + inputs["seq_neg_mask"]) > 0,
                                      self.ev_mean, self.ev_std)):
            x = inputs[key][mask].astype(np.float64)
            if len(x):
                mean.copy_(torch.from_numpy(x.mean(axis=0)).float())
                std.copy_(torch.from_numpy(np.maximum(x.std(axis=0), 1e-3)).float())

    def encode_events(self, seq_cat, seq_brand, seq_price, seq_kind, seq_emb, seq_num, seq_dist_b, seq_pos_b,
                      seq_pos_mask, seq_neg_mask) -> torch.Tensor:
        """[B, L, d]: each event as the sum of its field embeddings, then (``cross``) each negative enriched
        by attention over the positives and each positive by attention over the negatives."""
        ev = (self.cat(seq_cat) + self.brand(seq_brand) + self.price(seq_price) + self.dist(seq_dist_b)
              + self.pos(seq_pos_b) + self.kind(seq_kind) + self.id_proj(seq_emb)
              + self.seq_num((seq_num - self.ev_mean) / self.ev_std))
        if self.mcfg.cross:
            q, k, v = self.cross_qkv(ev).chunk(3, dim=2)
            over_pos = attend_with_zero_slot(q, k, v, seq_pos_mask)
            over_neg = attend_with_zero_slot(q, k, v, seq_neg_mask)
            ev = ev + seq_neg_mask.unsqueeze(2) * over_pos + seq_pos_mask.unsqueeze(2) * over_neg
        return ev

    def forward(self, cand_cat, cand_brand, cand_price, cand_emb, cand_dense, cand_num, cand_mask, cand_dist_b,
                cand_pos_b, seq_cat, seq_brand, seq_price, seq_kind, seq_emb, seq_num, seq_dist_b, seq_pos_b,
                seq_pos_mask, seq_neg_mask, ctx):
        id_view = self.id_proj(cand_emb)
        attr_view = (self.cat(cand_cat) + self.brand(cand_brand) + self.price(cand_price) + self.dist(cand_dist_b)
                     + self.pos(cand_pos_b))
        ctx_v = self.ctx(ctx).unsqueeze(1)  # [B, 1, d]
        num = (cand_num - self.num_mean) / self.num_std
        parts = [id_view, attr_view, self.dense(cand_dense) + ctx_v, self.cand_num(num)]
        if self.mcfg.use_feedback:
            ev = self.encode_events(seq_cat, seq_brand, seq_price, seq_kind, seq_emb, seq_num, seq_dist_b,
                                    seq_pos_b, seq_pos_mask, seq_neg_mask)
            kp, vp = self.kv_pos(ev).chunk(2, dim=2)
            kn, vn = self.kv_neg(ev).chunk(2, dim=2)
            queries = {"id": id_view, "attr": attr_view, "context": ctx_v}
            for name in self.mcfg.views:
                q = self.q_views[name](queries[name])
                for k, v, m in ((kp, vp, seq_pos_mask), (kn, vn, seq_neg_mask)):
                    a = attend_with_zero_slot(q, k, v, m)
                    parts.append(a if name != "context" else a.expand_as(id_view))
        x = self.fuse(torch.cat(parts, dim=2))
        for block in self.blocks:
            x = block(x, cand_mask)
        score = self.head(x).squeeze(2)
        if self.mcfg.wide:
            score = score + self.wide(num).squeeze(2)
        if self.mcfg.residual:
            has_feedback = torch.clamp((seq_pos_mask + seq_neg_mask).sum(dim=1, keepdim=True), 0.0, 1.0)  # [B, 1]
            score = self.cloud_weight * num[:, :, self.cloud_index] + has_feedback * score
        return score


def n_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def to_tensors(inputs: dict, names: list[str]) -> list[torch.Tensor]:
    return [torch.from_numpy(inputs[n]) for n in names]
