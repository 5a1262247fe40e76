"""numpy backend: the reference implementation of the device reranker (MVFAN + Match&Aggregate + PRM), in plain
numpy, from a weights file (``.npz``: the trained model's parameters plus its ``ModelConfig`` as JSON under
``__model_config__``, written by ``converters.numpy_ref.export_numpy``).

It mirrors ``cloud/training/model.py`` operation for operation (hand-written attention with additive float masks
and an all-zero slot, ReLU, LayerNorm with eps 1e-5), needs nothing but numpy, runs any batch size, and is what the
other formats are checked against. Slow next to onnxruntime or LiteRT; correct by construction and readable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.backends.base import BackendError, register

NEG = -1e4
CONFIG_KEY = "__model_config__"
VIEWS = ("id", "attr", "context")


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def attend_with_zero_slot(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """q [B,N,d], k/v [B,L,d], mask [B,L]: softmax over the L keys plus one all-zero key/value."""
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + (1.0 - mask)[:, None, :] * NEG
    logits = np.concatenate([logits, np.zeros_like(logits[:, :, :1])], axis=2)
    return _softmax(logits, 2)[:, :, :-1] @ v


class NumpyReranker:
    def __init__(self, weights: dict[str, np.ndarray], config: dict):
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.cfg = config
        self.views = tuple(config.get("views", VIEWS))
        missing = [k for k in ("cat.weight", "fuse.0.weight", "head.2.weight") if k not in self.w]
        if missing:
            raise BackendError(f"weights file lacks {missing}: not a device-reranker export")

    def _lin(self, name: str, x: np.ndarray) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _emb(self, name: str, ids: np.ndarray) -> np.ndarray:
        table = self.w[f"{name}.weight"]
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise BackendError(f"{name} ids out of range 0..{table.shape[0] - 1}")
        return table[ids]

    def _block(self, i: int, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        B, N, d = x.shape
        h = int(self.cfg["n_heads"])
        dh = d // h
        p = f"blocks.{i}"
        q, k, v = self._lin(f"{p}.qkv", x).reshape(B, N, 3, h, dh).transpose(2, 0, 3, 1, 4)
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + (1.0 - mask)[:, None, None, :] * NEG
        a = (_softmax(logits, 3) @ v).transpose(0, 2, 1, 3).reshape(B, N, d)
        x = _layer_norm(x + self._lin(f"{p}.out", a), self.w[f"{p}.ln1.weight"], self.w[f"{p}.ln1.bias"])
        ff = self._lin(f"{p}.ff.2", np.maximum(self._lin(f"{p}.ff.0", x), 0.0))
        return _layer_norm(x + ff, self.w[f"{p}.ln2.weight"], self.w[f"{p}.ln2.bias"])

    def __call__(self, x: dict[str, np.ndarray]) -> np.ndarray:
        w = self.w
        f32 = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in x.items()}
        id_view = self._lin("id_proj", f32["cand_emb"])
        attr_view = (self._emb("cat", x["cand_cat"]) + self._emb("brand", x["cand_brand"])
                     + self._emb("price", x["cand_price"]) + self._emb("dist", x["cand_dist_b"])
                     + self._emb("pos", x["cand_pos_b"]))
        ctx_v = self._lin("ctx", f32["ctx"])[:, None, :]
        num = (f32["cand_num"] - w["num_mean"]) / w["num_std"]
        parts = [id_view, attr_view, self._lin("dense", f32["cand_dense"]) + ctx_v, self._lin("cand_num", num)]
        if self.cfg.get("use_feedback", True):
            pos_m, neg_m = f32["seq_pos_mask"], f32["seq_neg_mask"]
            ev = (self._emb("cat", x["seq_cat"]) + self._emb("brand", x["seq_brand"])
                  + self._emb("price", x["seq_price"]) + self._emb("dist", x["seq_dist_b"])
                  + self._emb("pos", x["seq_pos_b"]) + self._emb("kind", x["seq_kind"])
                  + self._lin("id_proj", f32["seq_emb"])
                  + self._lin("seq_num", (f32["seq_num"] - w["ev_mean"]) / w["ev_std"]))
            if self.cfg.get("cross", True):
                q, k, v = np.split(self._lin("cross_qkv", ev), 3, axis=2)
                over_pos = attend_with_zero_slot(q, k, v, pos_m)
                over_neg = attend_with_zero_slot(q, k, v, neg_m)
                ev = ev + neg_m[:, :, None] * over_pos + pos_m[:, :, None] * over_neg
            kp, vp = np.split(self._lin("kv_pos", ev), 2, axis=2)
            kn, vn = np.split(self._lin("kv_neg", ev), 2, axis=2)
            queries = {"id": id_view, "attr": attr_view, "context": ctx_v}
            for name in self.views:
                q = self._lin(f"q_views.{name}", queries[name])
                for k, v, m in ((kp, vp, pos_m), (kn, vn, neg_m)):
                    a = attend_with_zero_slot(q, k, v, m)
                    parts.append(a if name != "context" else np.broadcast_to(a, id_view.shape))
        h = np.maximum(self._lin("fuse.0", np.concatenate(parts, axis=2)), 0.0)
        for i in range(int(self.cfg.get("n_layers", 1))):
            h = self._block(i, h, f32["cand_mask"])
        score = self._lin("head.2", np.maximum(self._lin("head.0", h), 0.0))[:, :, 0]
        if self.cfg.get("wide", False):
            score = score + self._lin("wide", num)[:, :, 0]
        if self.cfg.get("residual", False):  # w * cloud score + (any feedback) * model, as in the torch model
            has_feedback = np.clip((f32["seq_pos_mask"] + f32["seq_neg_mask"]).sum(axis=1, keepdims=True), 0.0, 1.0)
            score = self.w["cloud_weight"][0] * num[:, :, int(self.cfg["cloud_index"])] + has_feedback * score
        return score.astype(np.float32)


def load_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            weights = {k: z[k] for k in z.files if k != CONFIG_KEY}
            config = json.loads(str(z[CONFIG_KEY])) if CONFIG_KEY in z.files else None
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise BackendError(f"numpy backend cannot read {path}: {exc}") from exc
    if config is None:
        raise BackendError(f"{path} has no {CONFIG_KEY}: not written by converters.numpy_ref.export_numpy")
    return weights, config


@register("numpy", "numpy")
class NumpyBackend:
    name = "numpy"

    def __init__(self, model_path: Path, *, threads: int = 1):
        self.model = NumpyReranker(*load_weights(model_path))

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self.model(inputs)
        except KeyError as exc:
            raise BackendError(f"missing model input or weight: {exc}") from exc
