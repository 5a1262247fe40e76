"""The lean export graph (``converters.lean``) computes the training module's function: random models of several
shapes (heads, layers, wide, residual), random lists with padding and feedback, to float32 rounding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from edge_rerank.cloud.training.configs import ModelConfig
from edge_rerank.cloud.training.model import DeviceReranker
from edge_rerank.converters.lean import LeanDeviceReranker, export_graph, for_tflite

_TABLES = {"cand_cat": "cat", "cand_brand": "brand", "cand_price": "price", "cand_dist_b": "dist", "cand_pos_b": "pos"}


def _inputs(model: DeviceReranker, batch: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    fcfg = model.fcfg
    n, n_seq = fcfg.n_max, fcfg.l_max
    x = {}
    for name in model.input_names:
        if name in _TABLES:
            x[name] = rng.integers(0, getattr(model, _TABLES[name]).num_embeddings, (batch, n))
        elif name.startswith("seq_") and name.endswith("_mask"):
            x[name] = (rng.random((batch, n_seq)) < 0.3).astype(np.float32)
        elif name == "cand_mask":
            real = rng.integers(1, n + 1, batch)
            x[name] = (np.arange(n)[None, :] < real[:, None]).astype(np.float32)
        elif name in ("seq_emb", "seq_num"):
            w = fcfg.emb_dim if name == "seq_emb" else fcfg.n_event_features
            x[name] = rng.standard_normal((batch, n_seq, w)).astype(np.float32)
        elif name.startswith("seq_"):
            x[name] = np.zeros((batch, n_seq), np.int64)
        else:
            x[name] = None
    width = {"cand_emb": fcfg.emb_dim, "cand_dense": fcfg.dense_dim, "cand_num": fcfg.n_candidate_features}
    for name, w in width.items():
        x[name] = rng.standard_normal((batch, n, w)).astype(np.float32)
    x["ctx"] = rng.standard_normal((batch, fcfg.n_context_features)).astype(np.float32)
    x["seq_pos_mask"][0] = 0.0
    x["seq_neg_mask"][0] = 0.0  # one list without feedback
    return {k: torch.from_numpy(v) for k, v in x.items()}


@pytest.mark.parametrize("heads,layers,wide,residual", [(2, 1, False, True), (4, 2, True, True), (1, 2, False, False),
                                                        (8, 1, True, False)])
def test_lean_graph_scores_equal_the_training_module(fcfg, heads, layers, wide, residual):
    torch.manual_seed(heads * 10 + layers)
    fc = replace(fcfg, n_max=12)
    model = DeviceReranker(fc, ModelConfig(d_model=16, n_heads=heads, n_layers=layers, ffn=24, wide=wide,
                                           residual=residual)).eval()
    with torch.no_grad():  # a trained-looking model: no zero-initialised head, LayerNorms off their defaults
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    lean = export_graph(model)
    assert isinstance(lean, LeanDeviceReranker)
    x = _inputs(model, 6, np.random.default_rng(heads))
    args = [x[n] for n in model.input_names]
    with torch.no_grad():
        ref, got = model(*args), lean(*args)
        written_out = for_tflite(lean)(*args)  # the TFLite export's copy: the softmax as exp / sum
    real = x["cand_mask"] > 0
    assert torch.allclose(got[real], ref[real], atol=2e-5, rtol=1e-5)
    assert torch.allclose(written_out[real], ref[real], atol=2e-5, rtol=1e-5)
    assert not torch.equal(written_out, got)  # another op sequence: some last bits differ (the flag is used)
    assert lean.explicit_softmax is False and for_tflite(lean).explicit_softmax is True
    assert for_tflite(lean).qkv is lean.qkv and for_tflite(model) is model  # shared weights; other models as is
    assert float(ref[real].std()) > 0.1  # the scores depend on the lists (the attention reaches them)
