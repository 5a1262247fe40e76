"""The classical baseline: LightGBM lambdarank on the same per-candidate features as the device reranker
(Match&Aggregate, cloud score/position/dense vector, ID embedding, categorical ids), one query group per list.
It sees the feedback only through the Match&Aggregate features: no sequence model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_rerank.cloud.training.data import Samples
from edge_rerank.device_sdk.features.operators import N_CATEGORICAL_TABLE_COLUMNS, candidate_table


@dataclass(frozen=True)
class GBDTConfig:
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 20
    early_stopping_rounds: int = 30
    seed: int = 0
    threads: int = 2


def _table(samples: Samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of real candidates only, their labels, and the group sizes."""
    x = candidate_table(samples.inputs)
    keep = samples.mask.reshape(-1) > 0
    y = samples.labels.reshape(-1)[keep].astype(np.int32)
    return x[keep], y, samples.mask.sum(axis=1).astype(np.int64)


def fit_gbdt(train: Samples, valid: Samples, cfg: GBDTConfig | None = None):
    import lightgbm

    cfg = cfg or GBDTConfig()
    xt, yt, gt = _table(train)
    xv, yv, gv = _table(valid)
    cat = list(range(xt.shape[1] - N_CATEGORICAL_TABLE_COLUMNS, xt.shape[1]))
    model = lightgbm.LGBMRanker(objective="lambdarank", n_estimators=cfg.n_estimators, learning_rate=cfg.learning_rate,
                                num_leaves=cfg.num_leaves, min_child_samples=cfg.min_child_samples,
                                random_state=cfg.seed, n_jobs=cfg.threads, deterministic=True, force_row_wise=True,
                                verbose=-1)
    model.fit(xt, yt, group=gt, eval_X=(xv,), eval_y=(yv,), eval_group=[gv], eval_at=[10], categorical_feature=cat,
              callbacks=[lightgbm.early_stopping(cfg.early_stopping_rounds, verbose=False)])
    return model, {"best_iteration": int(model.best_iteration_ or cfg.n_estimators), "config": asdict(cfg)}


def predict_gbdt(model, samples: Samples) -> np.ndarray:
    B, N = samples.mask.shape
    return model.predict(candidate_table(samples.inputs)).reshape(B, N)


def save_gbdt(model, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(str(path))
    return path
