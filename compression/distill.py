"""Distillation of a trained device reranker (teacher) into a smaller one (student), after seed 000's towers:

- the label loss (the repo's LambdaLoss by default, ``TrainConfig.loss``) on the logged clicks/orders;
- **score distillation**: MSE between student and teacher scores on the real candidates of each list;
- **in-batch list distillation**: KL(teacher || student) between the softmax of the teacher's and the student's
  scores (divided by a temperature) over each list's real candidates, scaled by temperature² so its gradients
  keep their size as the temperature changes (Hinton et al.). The list plays the part of seed 000's in-batch
  all-pairs similarity matrix: every candidate against every other one of the same query.

The teacher here is the trained network, so ``TrainConfig.gbdt_teacher`` (plain training's LightGBM teacher) is
not used, and the label-only comparison trains with it off: the two differ in the distillation terms only.
Teacher scores are computed once up front, in eval mode without gradients. The student shares the teacher's
``FeatureConfig`` (same inputs, so the same exported interface), fits its own input statistics on the training
lists and trains with the training loop's ``fit_loop`` (best epoch by validation NDCG@10).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from edge_rerank.cloud.training.data import Samples, list_lengths, trim_padding
from edge_rerank.cloud.training.losses import LOSSES, list_distill_loss  # noqa: F401  (re-exported)
from edge_rerank.cloud.training.model import DeviceReranker, ModelConfig, n_params, to_tensors
from edge_rerank.cloud.training.train import TrainConfig, evaluate_lists, fit, fit_loop, predict
from edge_rerank.converters.validate import fidelity

STUDENT_PRESETS: dict[str, ModelConfig] = {
    # half the width of the default (d_model 32, ffn 64), every query view: ~29 % of its parameters
    "small": ModelConfig(d_model=16, n_heads=2, ffn=32),
    # a quarter of the width and no context view: ~9 % of the default's parameters
    "tiny": ModelConfig(d_model=8, n_heads=2, ffn=16, views=("id", "attr")),
}


def score_distill_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real candidates ([B, N] tensors, mask in {0, 1}); padding contributes
    nothing (and gets zero gradient) whatever the teacher's score there."""
    diff = torch.where(mask > 0, student - teacher, torch.zeros_like(student))
    return (diff * diff).sum() / mask.sum().clamp_min(1.0)


def distill(teacher: DeviceReranker, train: Samples, valid: Samples, *, student_cfg: ModelConfig,
            tcfg: TrainConfig | None = None, alpha_label: float = 1.0, alpha_score: float = 0.1,
            alpha_list: float = 1.0, temperature: float = 2.0, compare_label_only: bool = True,
            progress: bool = False) -> tuple[DeviceReranker, dict]:
    """Train a `student_cfg` student on `train` against `teacher` with
    ``alpha_label · label loss + alpha_score · score MSE + alpha_list · list KL`` (see the module docstring),
    `tcfg` for epochs, lr, loss, seed, patience; best epoch by validation NDCG@10 on `valid`.

    Returns the student (eval mode) and a report: parameters of teacher and student, validation NDCG@10 of the
    teacher and the distilled student, mean Kendall τ of the student vs the teacher on validation lists, the
    training history, and — with `compare_label_only` — the same student architecture trained on labels only
    with the same `tcfg` (``cloud.training.train.fit``): its NDCG@10 and τ vs the teacher."""
    tcfg = tcfg or TrainConfig()
    torch.set_num_threads(tcfg.threads)
    teacher.eval()
    t_train, t_valid = predict(teacher, train), predict(teacher, valid)  # once, no grad

    torch.manual_seed(tcfg.seed)
    student = DeviceReranker(teacher.fcfg, student_cfg)
    student.fit_input_stats(train.inputs)
    label_loss = LOSSES[tcfg.loss]()
    names = student.input_names

    def step(idx: np.ndarray) -> torch.Tensor:  # batches trimmed and bucketed as in plain training (train.fit)
        batch, labels = trim_padding({k: v[idx] for k, v in train.inputs.items()}, train.labels[idx])
        s = student(*to_tensors(batch, names))
        m, t = torch.from_numpy(batch["cand_mask"]), torch.from_numpy(t_train[idx][:, : s.shape[1]])
        loss = alpha_label * label_loss(s, torch.from_numpy(labels), m)
        if alpha_score:
            loss = loss + alpha_score * score_distill_loss(s, t, m)
        if alpha_list:
            loss = loss + alpha_list * list_distill_loss(s, t, m, temperature)
        return loss

    loop = fit_loop(student, step, lambda: evaluate_lists(predict(student, valid), valid), len(train), tcfg,
                    lengths=list_lengths(train.inputs) if tcfg.bucket_by_length else None, desc="distill",
                    progress=progress)
    s_valid = predict(student, valid)
    report = {
        "teacher_params": n_params(teacher), "student_params": n_params(student),
        "student_config": student.mcfg.to_dict(),
        "losses": {"label": tcfg.loss, "alpha_label": alpha_label, "alpha_score": alpha_score,
                   "alpha_list": alpha_list, "temperature": temperature},
        "ndcg10_teacher": evaluate_lists(t_valid, valid)["ndcg@10"],
        "ndcg10_student": evaluate_lists(s_valid, valid)["ndcg@10"],
        "tau_vs_teacher": fidelity(s_valid, t_valid, valid.mask)[2],
        "distill": loop,
    }
    if compare_label_only:
        base, summary = fit(train, valid, teacher.fcfg, student_cfg, replace(tcfg, gbdt_teacher=0.0),
                            progress=progress)
        b_valid = predict(base, valid)
        report["label_only"] = {
            "ndcg10": evaluate_lists(b_valid, valid)["ndcg@10"],
            "tau_vs_teacher": fidelity(b_valid, t_valid, valid.mask)[2],
            "epochs_run": summary["epochs_run"],
        }
    student.eval()
    return student, report

