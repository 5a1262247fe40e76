"""Padding trimmed per batch and length-bucketed batches: the same scores on real candidates, every list once."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.cloud.training.data import length_bucketed_batches, list_lengths, trim_padding
from edge_rerank.cloud.training.model import DeviceReranker, ModelConfig, to_tensors


@given(st.lists(st.integers(0, 700), min_size=1, max_size=400), st.integers(1, 64), st.integers(0, 2**31 - 1))
@settings(max_examples=60)
def test_bucketed_batches_cover_every_list_once(lengths, batch_size, seed):
    lengths = np.asarray(lengths)
    batches = length_bucketed_batches(lengths, batch_size, np.random.default_rng(seed))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(0 < len(b) <= batch_size for b in batches)


def test_trimmed_batches_score_real_candidates_as_the_padded_ones(samples, fcfg):
    x = {k: v[:64].copy() for k, v in samples.inputs.items()}
    rng = np.random.default_rng(0)
    for i in range(64):  # lists of varied length: cut some short, and some feedback sequences too
        n = int(rng.integers(2, fcfg.n_max + 1))
        for k in x:
            if k.startswith("cand_"):
                x[k][i, n:] = 0
    lengths = list_lengths(x)
    short = np.argsort(lengths)[:16]  # the shortest lists: trimming cuts their batch hard
    batch = {k: v[short] for k, v in x.items()}
    trimmed, _ = trim_padding(batch)
    assert trimmed["cand_mask"].shape[1] == lengths[short].max() < fcfg.n_max
    for mcfg in (ModelConfig(), ModelConfig(use_feedback=False, residual=True)):
        torch.manual_seed(0)
        model = DeviceReranker(fcfg, mcfg).eval()
        model.fit_input_stats(samples.inputs)
        with torch.no_grad():
            full = model(*to_tensors(batch, model.input_names)).numpy()
            cut = model(*to_tensors(trimmed, model.input_names)).numpy()
        m = trimmed["cand_mask"] > 0
        np.testing.assert_allclose(cut[m], full[:, : cut.shape[1]][m], atol=1e-5, rtol=1e-5)
