"""Fit / evaluate loops for the device reranker, with progress bars, seeding and checkpoints."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from edge_rerank.cloud.training.configs import ModelConfig, TrainConfig
from edge_rerank.cloud.training.data import (
    Samples,
    SessionSplit,
    length_bucketed_batches,
    list_lengths,
    trim_padding,
)
from edge_rerank.cloud.training.losses import LOSSES, list_distill_loss
from edge_rerank.cloud.training.model import DeviceReranker, n_params, to_tensors
from edge_rerank.cloud.training.ranking_metrics import auc, gain_with_ci, mrr, ndcg_at_k
from edge_rerank.device_sdk.features import FeatureConfig


def predict(model: DeviceReranker, samples: Samples, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = []
    names = model.input_names
    with torch.no_grad():
        n_max = samples.inputs["cand_mask"].shape[1]
        for i in range(0, len(samples), batch_size):
            batch, _ = trim_padding({k: v[i: i + batch_size] for k, v in samples.inputs.items()})
            s = model(*to_tensors(batch, names)).numpy()
            out.append(np.pad(s, ((0, 0), (0, n_max - s.shape[1]))))  # padding slots: masked by every metric
    return np.concatenate(out)


def evaluate_lists(scores: np.ndarray, samples: Samples) -> dict[str, float]:
    """NDCG@5/10, MRR and AUC of `scores` on `samples`, each the mean over lists (not ``edge_rerank.api.evaluate``)."""
    m = samples.mask
    return {"ndcg@5": float(np.nanmean(ndcg_at_k(scores, samples.labels, m, 5))),
            "ndcg@10": float(np.nanmean(ndcg_at_k(scores, samples.labels, m, 10))),
            "mrr": float(np.nanmean(mrr(scores, samples.labels, m))),
            "auc": float(np.nanmean(auc(scores, samples.labels, m)))}


def cloud_order_scores(samples: Samples) -> np.ndarray:
    """Samples keep the shown (cloud) order, so the cloud's ranking is 'earlier is better'."""
    n = samples.labels.shape[1]
    return np.tile(-np.arange(n, dtype=np.float64), (len(samples), 1))


class EarlyStopping:
    """The best validation NDCG@10 so far and its weights; `update` says when `patience` epochs passed without a
    better one (improvement: more than 1e-5). One rule for every training loop (``fit_loop``, Ray's workers)."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_state, self.bad = patience, -1.0, None, 0

    def update(self, score: float, model: torch.nn.Module) -> bool:
        """Record this epoch's `score`; True when training should stop."""
        if score > self.best + 1e-5:
            self.best, self.best_state, self.bad = score, copy.deepcopy(model.state_dict()), 0
            return False
        self.bad += 1
        return self.bad >= self.patience


def fit_loop(model: torch.nn.Module, step: Callable[[np.ndarray], torch.Tensor],
             validate: Callable[[], dict[str, float]], n_train: int, tcfg: TrainConfig, *, lr: float | None = None,
             desc: str = "train", progress: bool = True, lengths: np.ndarray | None = None) -> dict:
    """Shared epoch loop: shuffled mini-batches (``step(idx)`` returns the loss), AdamW, gradient clipping,
    validation NDCG@10 after each epoch, early stopping, best weights restored. Returns the loop's summary.
    With `lengths` (real candidates per list) the batches group lists of similar length
    (``length_bucketed_batches``), so a step that trims padding does little wasted work on long, varied lists."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr or tcfg.lr,
                            weight_decay=tcfg.weight_decay)
    rng = np.random.default_rng(tcfg.seed)
    history, stopper = [], EarlyStopping(tcfg.patience)
    t_start, n_lists = time.perf_counter(), 0
    bar = tqdm(range(tcfg.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        if lengths is not None:
            batches = length_bucketed_batches(lengths, tcfg.batch_size, rng)
        else:
            perm = rng.permutation(n_train)
            batches = [perm[i: i + tcfg.batch_size] for i in range(0, len(perm), tcfg.batch_size)]
        losses = []
        for idx in batches:
            loss = step(idx)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss.item())
            n_lists += len(idx)
        model.eval()
        metrics = validate()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **metrics})
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", ndcg10=f"{metrics['ndcg@10']:.4f}")
        if stopper.update(metrics["ndcg@10"], model):
            break
    train_s = time.perf_counter() - t_start
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    model.eval()
    return {"epochs_run": len(history), "lists_per_s": n_lists / max(train_s, 1e-9), "train_seconds": train_s,
            "history": history}


def gbdt_teacher_scores(train: Samples, valid: Samples, tcfg: TrainConfig) -> tuple[np.ndarray | None, dict]:
    """With ``tcfg.gbdt_teacher`` > 0: a LightGBM lambdarank (``cloud.training.gbdt``, the same per-candidate
    features) fitted on `train`, early-stopped on `valid`, and its scores of the training lists ([B, N] float32)
    for the distillation term; else (None, {})."""
    if not tcfg.gbdt_teacher:
        return None, {}
    from edge_rerank.cloud.training.gbdt import GBDTConfig, fit_gbdt, predict_gbdt

    model, info = fit_gbdt(train, valid, GBDTConfig(seed=tcfg.seed, threads=tcfg.threads))
    return predict_gbdt(model, train).astype(np.float32), {"weight": tcfg.gbdt_teacher, **info}


def teacher_term(scores: torch.Tensor, teacher: np.ndarray, idx: np.ndarray, mask: torch.Tensor) -> torch.Tensor:
    """The distillation term of a batch: KL(softmax(teacher) || softmax(scores)) over each list's real candidates
    (``losses.list_distill_loss``, temperature 1), mean over the lists."""
    return list_distill_loss(scores, torch.from_numpy(teacher[idx][:, : scores.shape[1]]), mask)


def label_step(model: DeviceReranker, train: Samples, loss_fn, teacher: np.ndarray | None = None,
               teacher_weight: float = 0.0) -> Callable[[np.ndarray], torch.Tensor]:
    """The plain training step for ``fit_loop``: the ranking loss of `model`'s scores on the lists `idx`, plus
    `teacher_weight` x the distillation term when `teacher` scores are given."""
    names = model.input_names

    def step(idx: np.ndarray) -> torch.Tensor:
        batch, labels = trim_padding({k: v[idx] for k, v in train.inputs.items()}, train.labels[idx])
        scores = model(*to_tensors(batch, names))
        mask = torch.from_numpy(batch["cand_mask"])
        loss = loss_fn(scores, torch.from_numpy(labels), mask)
        if teacher is not None and teacher_weight:
            loss = loss + teacher_weight * teacher_term(scores, teacher, idx, mask)
        return loss

    return step


def held_out_metrics(scores: np.ndarray, samples: Samples, prefix: str) -> dict:
    """``{prefix}_model``, ``{prefix}_cloud_order``, ``{prefix}_lists`` and ``{prefix}_gain_over_cloud`` (NDCG@10
    model minus cloud order per list, with a session-resampled 95 % CI: the headline offline number) on
    `samples`."""
    cloud = cloud_order_scores(samples)
    gain = gain_with_ci(ndcg_at_k(scores, samples.labels, samples.mask, 10),
                        ndcg_at_k(cloud, samples.labels, samples.mask, 10), samples.session_ids)
    return {f"{prefix}_model": evaluate_lists(scores, samples), f"{prefix}_cloud_order": evaluate_lists(cloud, samples),
            f"{prefix}_lists": len(samples), f"{prefix}_gain_over_cloud": gain}


def choose_on_validation(with_teacher: float, without: float, info: dict) -> tuple[bool, dict]:
    """``TrainConfig.gbdt_teacher_choice``: keep the model trained with the teacher unless the one trained on the
    labels alone scores higher on the validation lists (NDCG@10). (keep the teacher's?, the info recorded)."""
    keep = with_teacher >= without
    return keep, {**info, "valid_ndcg10_with": with_teacher, "valid_ndcg10_without": without, "kept": keep}


def fit(train: Samples, valid: Samples, fcfg: FeatureConfig, mcfg: ModelConfig | None = None,
        tcfg: TrainConfig | None = None, *, test: Samples | None = None, progress: bool = True,
        teacher: tuple[np.ndarray | None, dict] | None = None) -> tuple[DeviceReranker, dict]:
    """Train on `train`; every epoch is scored on `valid` (early stopping, best epoch). `test`, if given, is
    scored once at the end (``test_model``, ``test_cloud_order``): the numbers to report, never seen by the
    loop. With ``tcfg.gbdt_teacher`` > 0 the loss adds that weight x a list-KL term to a LightGBM teacher fitted
    on `train` first (``gbdt_teacher_scores``; `teacher` passes its result in when several fits share it); with
    ``tcfg.gbdt_teacher_choice`` the same model is also trained on the labels alone and the one with the higher
    validation NDCG@10 is kept (``summary["gbdt_teacher"]["kept"]``)."""
    tcfg = tcfg or TrainConfig()
    torch.set_num_threads(tcfg.threads)
    teacher, teacher_info = teacher if teacher is not None else gbdt_teacher_scores(train, valid, tcfg)

    def train_once(scores: np.ndarray | None) -> tuple[DeviceReranker, dict]:
        torch.manual_seed(tcfg.seed)
        model = DeviceReranker(fcfg, mcfg)
        model.fit_input_stats(train.inputs)
        step = label_step(model, train, LOSSES[tcfg.loss](), scores, tcfg.gbdt_teacher)
        return model, fit_loop(model, step, lambda: evaluate_lists(predict(model, valid), valid), len(train), tcfg,
                               lengths=list_lengths(train.inputs) if tcfg.bucket_by_length else None,
                               progress=progress)

    model, loop = train_once(teacher)
    if teacher is not None and tcfg.gbdt_teacher_choice:
        plain, plain_loop = train_once(None)
        keep, teacher_info = choose_on_validation(evaluate_lists(predict(model, valid), valid)["ndcg@10"],
                                                  evaluate_lists(predict(plain, valid), valid)["ndcg@10"],
                                                  teacher_info)
        if not keep:
            model, loop = plain, plain_loop
    summary = {
        "train_lists": len(train), **loop,
        **held_out_metrics(predict(model, valid), valid, "valid"),
        **(held_out_metrics(predict(model, test), test, "test") if test is not None else {}),
        "train_config": asdict(tcfg), "model_config": model.mcfg.to_dict(),
        "params": n_params(model), "gbdt_teacher": teacher_info,
    }
    return model, summary


class NoRecordedSplit(ValueError):
    """A checkpoint saved without its train / validation / test split: its held-out sessions are unknown."""


@dataclass
class Checkpoint:
    model: DeviceReranker
    summary: dict
    split: SessionSplit | None  # None only for checkpoints saved before splits were recorded
    path: Path

    def require_split(self) -> SessionSplit:
        if self.split is None:
            raise NoRecordedSplit(f"{self.path} records no train / validation / test split, so its held-out "
                                  "sessions are unknown: retrain it (edge-rerank train) to get one that does")
        return self.split


def save_checkpoint(model: DeviceReranker, path: str | Path, summary: dict | None = None,
                    split: SessionSplit | None = None) -> Path:
    """Weights, configs, the training summary and — for a model whose numbers are reported — its split (the
    session ids of each part, the config and seed that made it, their hash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = dict(summary or {})
    if split is not None:
        summary["split"] = split.describe()
    torch.save({"state_dict": model.state_dict(), "feature_config": model.fcfg.to_dict(),
                "model_config": model.mcfg.to_dict(), "summary": json.loads(json.dumps(summary)),
                "split": split.to_dict() if split is not None else None}, path)
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The model (eval mode), its training summary and its recorded split (verified consistent)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = DeviceReranker(FeatureConfig.from_dict(ck["feature_config"]), ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    split = SessionSplit.from_dict(ck["split"]) if ck.get("split") else None
    return Checkpoint(model, ck.get("summary", {}), split, Path(path))


def load_checkpoint(path: str | Path) -> tuple[DeviceReranker, dict]:
    ck = read_checkpoint(path)
    return ck.model, ck.summary
