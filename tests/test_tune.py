"""`train --tune N`: an Optuna search scored on validation sessions only, seeded, recorded."""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")

from edge_rerank.cloud.training import tune as tune_mod  # noqa: E402
from edge_rerank.cloud.training.train import TrainConfig  # noqa: E402


def test_search_uses_validation_only_and_is_seeded(split_parts, fcfg, monkeypatch):
    _, train, valid, test = split_parts
    seen = []
    real_fit = tune_mod.fit

    def spy(tr, va, *args, **kw):
        seen.append((len(tr), len(va), kw.get("test")))
        return real_fit(tr, va, *args, **kw)

    monkeypatch.setattr(tune_mod, "fit", spy)
    tcfg = TrainConfig(epochs=1, seed=3)
    a = tune_mod.tune(train, valid, fcfg, 2, tcfg=tcfg, progress=False)
    assert seen == [(len(train), len(valid), None)] * 2  # never the test lists
    assert len(a.trials) == 2 and a.best_valid_ndcg10 == max(t["valid_ndcg10"] for t in a.trials)
    b = tune_mod.tune(train, valid, fcfg, 2, tcfg=tcfg, progress=False)
    assert [sorted(t.items()) for t in a.trials] == [sorted(t.items()) for t in b.trials] or \
        [{k: v for k, v in t.items() if k != "valid_ndcg10"} for t in a.trials] == \
        [{k: v for k, v in t.items() if k != "valid_ndcg10"} for t in b.trials]  # the same points searched
    assert a.model_config.d_model in (16, 32) and a.train_config.epochs == 1
    with pytest.raises(ValueError, match="at least one trial"):
        tune_mod.tune(train, valid, fcfg, 0)
