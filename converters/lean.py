"""A leaner graph of the same function for export (issue 18): what the exporters convert instead of the training
module, when it applies.

For the default device reranker (Match&Aggregate + PRM, ``use_feedback=False``) the four candidate parts
(``id_proj(cand_emb)``, the attribute embeddings, ``dense(cand_dense) + ctx(ctx)``, ``cand_num(standardised
cand_num)``) only ever enter ``fuse.0``, a linear layer; so the exported graph folds them into it:

- one matmul ``[cand_emb | cand_dense | cand_num] @ W`` replaces three projections, the concatenation and the wide
  ``fuse`` matmul (W = the fuse block times each projection, the standardisation folded in: ~0.4 of the model's
  1.85 MFLOP at N = 50 go away);
- the five attribute tables are stored pre-multiplied by their fuse block (gathers, no matmul);
- the additive attention mask ``(1 - cand_mask) * NEG`` is computed once, already shaped for the heads;
- the residual's standardised cloud score is one affine op on its column;
- the attention's ``1/sqrt(d_head)`` is folded into the query rows of each block's ``qkv`` (no multiply over the
  ``[heads, N, N]`` scores).

The TFLite export takes ``for_tflite(graph)``: the same graph with the attention's softmax written out
(``exp(z - max z) * 1/sum``). litert-torch keeps the written-out form as REDUCE_MAX, SUB, EXP, SUM, DIV, MUL, which
XNNPACK runs ~3 µs faster per call than its SOFTMAX over the ``[1, 2, 50, 50]`` scores followed by the value
matmul (issue 18, branch h33); onnxruntime is slower with it, so the other formats keep ``torch.softmax``.

The transformer block and the head are the trained ones. Scores equal the training module's up to float
rounding (the converters' parity checks hold every export to 1e-4 against the *unfolded* torch model). Models
with MVFAN (``use_feedback``) are exported as they are.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from edge_rerank.cloud.training.model import NEG, DeviceReranker


def lean_applies(model: nn.Module) -> bool:
    return isinstance(model, DeviceReranker) and not model.mcfg.use_feedback


class LeanDeviceReranker(nn.Module):
    """The folded graph of a trained DeviceReranker (eval mode; same 20 inputs in the same order, same output)."""

    def __init__(self, model: DeviceReranker):
        super().__init__()
        if not lean_applies(model):
            raise ValueError("the lean graph covers DeviceReranker with use_feedback=False")
        self.fcfg, self.mcfg = model.fcfg, model.mcfg
        d = model.mcfg.d_model
        with torch.no_grad():
            wf = model.fuse[0].weight.double()  # [d, 4d]: id | attr | dense+ctx | num
            bf = model.fuse[0].bias.double()
            w_id, w_attr, w_dense, w_num = (wf[:, k * d:(k + 1) * d] for k in range(4))
            std, mean = model.num_std.double(), model.num_mean.double()
            num_w = model.cand_num.weight.double() / std[None, :]  # standardisation folded in
            num_b = model.cand_num.bias.double() - num_w @ mean
            big = torch.cat([w_id @ model.id_proj.weight.double(), w_dense @ model.dense.weight.double(),
                             w_num @ num_w], dim=1)  # [d, E + D + F]
            bias = bf + w_id @ model.id_proj.bias.double() + w_dense @ model.dense.bias.double() + w_num @ num_b
            self.proj = nn.Linear(big.shape[1], d)
            self.proj.weight.copy_(big.float())
            self.proj.bias.copy_(bias.float())
            self.ctx = nn.Linear(model.ctx.in_features, d)
            self.ctx.weight.copy_((w_dense @ model.ctx.weight.double()).float())
            self.ctx.bias.copy_((w_dense @ model.ctx.bias.double()).float())
            for name in ("cat", "brand", "price", "dist", "pos"):
                table = getattr(model, name).weight.double() @ w_attr.T
                setattr(self, name, nn.Embedding.from_pretrained(table.float(), freeze=True))
            if model.mcfg.wide:
                self.wide = nn.Linear(model.fcfg.n_candidate_features, 1)
                ww = model.wide.weight.double() / std[None, :]
                self.wide.weight.copy_(ww.float())
                self.wide.bias.copy_((model.wide.bias.double() - ww @ mean).float())
            if model.mcfg.residual:
                ci = model.cloud_index
                self.cloud_index = ci
                cw = model.cloud_weight.double()
                self.register_buffer("cloud_scale", (cw / std[ci]).float())
                self.register_buffer("cloud_shift", (-cw * mean[ci] / std[ci]).float())
        self.blocks = model.blocks
        self.qkv = nn.ModuleList()  # each block's qkv with the query rows scaled by 1/sqrt(d_head)
        for b in model.blocks:
            qkv = nn.Linear(b.qkv.in_features, b.qkv.out_features)
            scale = torch.ones(b.qkv.out_features, dtype=torch.float64)
            scale[: b.h * b.dh] = 1.0 / math.sqrt(b.dh)
            with torch.no_grad():
                qkv.weight.copy_((b.qkv.weight.double() * scale[:, None]).float())
                qkv.bias.copy_((b.qkv.bias.double() * scale).float())
            self.qkv.append(qkv)
        self.head = model.head
        self.explicit_softmax = False  # True in the TFLite export's copy (``for_tflite``)
        self.eval()

    @property
    def input_names(self) -> list[str]:
        return DeviceReranker.input_names.fget(self)  # type: ignore[attr-defined]

    def forward(self, cand_cat, cand_brand, cand_price, cand_emb, cand_dense, cand_num, cand_mask, cand_dist_b,
                cand_pos_b, seq_cat, seq_brand, seq_price, seq_kind, seq_emb, seq_num, seq_dist_b, seq_pos_b,
                seq_pos_mask, seq_neg_mask, ctx):
        x = (self.proj(torch.cat([cand_emb, cand_dense, cand_num], dim=2)) + self.ctx(ctx).unsqueeze(1)
             + self.cat(cand_cat) + self.brand(cand_brand) + self.price(cand_price) + self.dist(cand_dist_b)
             + self.pos(cand_pos_b))
        x = torch.relu(x)
        add_mask = ((1.0 - cand_mask) * NEG)[:, None, None, :]  # once, shaped for [B, heads, N, N]
        for block, qkv in zip(self.blocks, self.qkv, strict=True):
            x = _block(block, qkv, x, add_mask, self.explicit_softmax)
        score = self.head(x).squeeze(2)
        if self.mcfg.wide:
            score = score + self.wide(cand_num).squeeze(2)
        if self.mcfg.residual:
            has_feedback = torch.clamp((seq_pos_mask + seq_neg_mask).sum(dim=1, keepdim=True), 0.0, 1.0)
            score = self.cloud_scale * cand_num[:, :, self.cloud_index] + self.cloud_shift + has_feedback * score
        return score


def _block(b, qkv: nn.Linear, x: torch.Tensor, add_mask: torch.Tensor, explicit_softmax: bool = False) -> torch.Tensor:
    """SelfAttentionBlock.forward with the additive mask given and the scaled `qkv` (same ops otherwise; with
    `explicit_softmax` the softmax written out)."""
    B, N, d = x.shape
    q, k, v = qkv(x).reshape(B, N, 3, b.h, b.dh).permute(2, 0, 3, 1, 4)
    z = q @ k.transpose(2, 3) + add_mask
    if explicit_softmax:
        e = torch.exp(z - z.amax(dim=3, keepdim=True))
        a = (e * torch.reciprocal(e.sum(dim=3, keepdim=True))) @ v
    else:
        a = torch.softmax(z, dim=3) @ v
    x = b.ln1(x + b.out(a.transpose(1, 2).reshape(B, N, d)))
    return b.ln2(x + b.ff(x))


def export_graph(model: nn.Module, lean: bool = True) -> nn.Module:
    """What the exporters convert: the lean graph when it applies (and `lean`), else the model itself."""
    return LeanDeviceReranker(model) if lean and lean_applies(model) else model  # type: ignore[arg-type]


def for_tflite(graph: nn.Module) -> nn.Module:
    """The graph the TFLite converter should see: for the lean graph a copy sharing its weights with the softmax
    written out (see the module's docstring); anything else as it is."""
    if not isinstance(graph, LeanDeviceReranker):
        return graph
    out = copy.copy(graph)  # a shallow copy: the same submodules and weights, its own flag
    out.explicit_softmax = True
    return out
