"""A small hyper-parameter search for the device reranker (``edge-rerank train --tune N``), with Optuna.

Each trial trains on the training sessions and is scored on the **validation** sessions only (NDCG@10 of the
best epoch); the test sessions are never seen, so the reported test numbers stay honest. The sampler is seeded
(TPE), so the same logs, seed and trial count give the same search. The search space covers what issue 14 asks
to tune honestly: capacity (``d_model``, layers), regularisation (dropout, weight decay), the learning rate, and
the architecture switches (MVFAN feedback attention or Match&Aggregate only, the residual on the cloud score).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

from edge_rerank.cloud.training.data import Samples
from edge_rerank.cloud.training.model import ModelConfig
from edge_rerank.cloud.training.train import TrainConfig, fit, gbdt_teacher_scores
from edge_rerank.device_sdk.features import FeatureConfig


@dataclass(frozen=True)
class TuneResult:
    model_config: ModelConfig
    train_config: TrainConfig
    best_valid_ndcg10: float
    trials: list[dict]  # one per trial: its parameters and validation NDCG@10

    def to_dict(self) -> dict:
        return {"model_config": self.model_config.to_dict(), "train_config": asdict(self.train_config),
                "best_valid_ndcg10": self.best_valid_ndcg10, "trials": self.trials}


def _optuna():
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - the [train] extra installs it
        raise RuntimeError("train --tune needs optuna: pip install 'edge-rerank[train]'") from exc
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def suggest(trial, mcfg: ModelConfig, tcfg: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """One point of the search space (starting from the given configs; the rest of their fields are kept)."""
    d_model = trial.suggest_categorical("d_model", [16, 32])
    m = replace(mcfg, d_model=d_model, ffn=2 * d_model, n_layers=trial.suggest_int("n_layers", 1, 2),
                dropout=trial.suggest_float("dropout", 0.0, 0.5),
                use_feedback=trial.suggest_categorical("use_feedback", [True, False]),
                residual=trial.suggest_categorical("residual", [True, False]))
    t = replace(tcfg, lr=trial.suggest_float("lr", 3e-4, 3e-3, log=True),
                weight_decay=trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True))
    return m, t


def tune(train: Samples, valid: Samples, fcfg: FeatureConfig, n_trials: int, *, mcfg: ModelConfig | None = None,
         tcfg: TrainConfig | None = None, progress: bool = True) -> TuneResult:
    """Search `n_trials` configurations; the best by validation NDCG@10 (ties: the earlier trial)."""
    if n_trials < 1:
        raise ValueError(f"--tune needs at least one trial, got {n_trials}")
    optuna = _optuna()
    mcfg, tcfg = mcfg or ModelConfig(), tcfg or TrainConfig()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=tcfg.seed))
    trials: list[dict] = []
    teacher = gbdt_teacher_scores(train, valid, tcfg)  # one LightGBM teacher for every trial (the search keeps it)

    def objective(trial) -> float:
        m, t = suggest(trial, mcfg, tcfg)
        _, summary = fit(train, valid, fcfg, m, t, progress=False, teacher=teacher)
        score = float(summary["valid_model"]["ndcg@10"])
        trials.append({"trial": trial.number, **trial.params, "valid_ndcg10": score,
                       "epochs_run": summary["epochs_run"]})
        return score

    study.optimize(objective, n_trials=n_trials, show_progress_bar=progress)
    best_m, best_t = suggest(optuna.trial.FixedTrial(study.best_params), mcfg, tcfg)
    return TuneResult(best_m, best_t, float(study.best_value), trials)
