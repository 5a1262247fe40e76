"""bench/coarse_heads_pool.py: pooling per-seed paired AUC comparisons of coarse_heads_diag.py runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from coarse_heads_pool import pool  # noqa: E402


def _run(seed: int, shift: float, n: int = 400, variants=("dot:16", "soft:16:3:0.5")) -> dict:
    rng = np.random.default_rng(seed)
    paired = {}
    for part, s in (("all", shift), ("polysemous", 3 * shift), ("other", 0.0)):
        reps = s + 0.01 * rng.standard_normal(n)
        paired[part] = {"delta": float(np.mean(reps)), "lo": float(np.percentile(reps, 2.5)),
                        "hi": float(np.percentile(reps, 97.5)), "replicates": reps.tolist()}
    return {"args": {"seed": seed, "sessions": 900, "multi_intent": 6},
            "variants": {v: {"auc": 0.6 + 0.01 * k + shift, "auc_polysemous": 0.55} for k, v in enumerate(variants)},
            "reference": {"polysemous_test_views": 30 + seed}, "views": {"train": 500, "test": 100},
            "paired": {f"{variants[1]} vs {variants[0]}": paired}}


def test_pooled_delta_is_the_seed_mean_and_its_ci_is_narrower_than_one_seeds():
    runs = [_run(s, shift) for s, shift in ((0, 0.01), (1, 0.02), (2, 0.03))]
    res = pool(runs)
    d = res["paired"]["soft:16:3:0.5 vs dot:16"]
    for part in ("all", "polysemous", "other"):
        per = [r["paired"]["soft:16:3:0.5 vs dot:16"][part]["delta"] for r in runs]
        assert d[part]["pooled"]["delta"] == pytest.approx(np.mean(per))
        assert d[part]["pooled"]["lo"] < d[part]["pooled"]["delta"] < d[part]["pooled"]["hi"]
        width = d[part]["pooled"]["hi"] - d[part]["pooled"]["lo"]
        assert width < min(s["hi"] - s["lo"] for s in d[part]["per_seed"])  # averaging independent replicates
    assert res["polysemous_share"] == pytest.approx((30 + 31 + 32) / 300)
    assert res["auc"]["dot:16"] == [r["variants"]["dot:16"]["auc"] for r in runs]


def test_one_run_pools_to_itself():
    run = _run(0, 0.02)
    res = pool([run])
    for part, d in res["paired"]["soft:16:3:0.5 vs dot:16"].items():
        src = run["paired"]["soft:16:3:0.5 vs dot:16"][part]
        assert d["pooled"] == pytest.approx({"delta": src["delta"], "lo": src["lo"], "hi": src["hi"]})


def test_runs_of_different_comparisons_are_refused():
    with pytest.raises(ValueError, match="variants"):
        pool([_run(0, 0.0), _run(1, 0.0, variants=("dot:16", "soft:8:2"))])
    with pytest.raises(ValueError, match="no runs"):
        pool([])


def test_runs_without_view_counts_leave_the_share_unknown():
    run = _run(0, 0.0)
    del run["views"]
    assert pool([run])["polysemous_share"] is None
