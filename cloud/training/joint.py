"""Cloud–device joint training (SPEC §1), in three stages:

1. train the cloud ranker on the shown pages (cloud features -> click/order labels);
2. train the device reranker on the trained cloud ranker's outputs: every logged candidate's ``cand_dense``
   (the cloud's last hidden layer) and ``cloud_score`` feature are recomputed with the new cloud ranker, exactly
   what the cloud will send once it serves that ranker;
3. fine-tune both together: the device loss flows into the cloud ranker's hidden layer, and a cloud loss on the
   same lists (weight ``cloud_loss_weight``) keeps the cloud ranker a good ranker of its own page.

The result is a pair: the cloud ranker to serve (ONNX, ``ranker.onnx`` in the cloud data dir) and the device
reranker to export; they only make sense together, so ``save_joint`` writes both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edge_rerank.cloud.training.cloud_ranker import (
    CLOUD_TRAIN_CONFIG,
    CloudFeaturizer,
    CloudRanker,
    CloudRankerConfig,
    fit_cloud_ranker,
    page_lists,
    save_cloud_ranker,
)
from edge_rerank.cloud.training.data import Samples, SessionSplit
from edge_rerank.cloud.training.losses import LOSSES
from edge_rerank.cloud.training.model import DeviceReranker, ModelConfig, n_params, to_tensors
from edge_rerank.cloud.training.train import (
    TrainConfig,
    evaluate_lists,
    fit,
    fit_loop,
    held_out_metrics,
    save_checkpoint,
)
from edge_rerank.device_sdk.contracts import ImpressionRow
from edge_rerank.device_sdk.features import FeatureConfig

if TYPE_CHECKING:
    from edge_rerank.cloud.training.ray_train import RayOptions


@dataclass(frozen=True)
class JointConfig:
    cloud: TrainConfig = CLOUD_TRAIN_CONFIG
    cloud_model: CloudRankerConfig = CloudRankerConfig()
    finetune_epochs: int = 4
    finetune_lr_scale: float = 0.3  # stage 3 runs at this share of the device learning rate
    cloud_loss_weight: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def cloud_features_for(samples: Samples, featurizer: CloudFeaturizer) -> np.ndarray:
    """[S, N, F] cloud features of every sample's candidates (zeros on padding)."""
    S, N = samples.item_ids.shape
    if len(samples.user_ids) != S:
        raise ValueError("samples carry no user/context per list: build them with cloud.training.data.build_samples")
    out = np.zeros((S, N, featurizer.n_features), np.float32)
    for s in range(S):
        ids = samples.item_ids[s]
        n = int((ids >= 0).sum())
        out[s, :n] = featurizer(samples.user_ids[s], samples.contexts[s], ids[:n])
    return out


class JointModel(nn.Module):
    """Cloud ranker + device reranker as one graph: the cloud's outputs replace the logged ``cand_dense`` and
    ``cloud_score`` inputs (padding stays zero), so gradients reach the cloud ranker's hidden layer."""

    def __init__(self, cloud: CloudRanker, device: DeviceReranker):
        super().__init__()
        self.cloud, self.device = cloud, device
        ops = device.fcfg.candidate_ops
        self.score_col = ops.index("cloud_score") if "cloud_score" in ops else -1

    def forward(self, cloud_x: torch.Tensor, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        score, hidden = self.cloud(cloud_x)
        mask = inputs["cand_mask"]
        x = dict(inputs)
        x["cand_dense"] = hidden * mask.unsqueeze(2)
        if self.score_col >= 0:
            col = torch.clamp(score, -10.0, 10.0) * mask
            num = x["cand_num"]
            x["cand_num"] = torch.cat([num[..., : self.score_col], col.unsqueeze(2), num[..., self.score_col + 1:]], 2)
        return self.device(*[x[n] for n in self.device.input_names]), score


def with_cloud_outputs(samples: Samples, cloud: CloudRanker, cloud_x: np.ndarray, fcfg: FeatureConfig) -> Samples:
    """A copy of `samples` whose cand_dense / cloud_score inputs come from `cloud`, as served pages would carry."""
    cloud.eval()
    with torch.no_grad():
        score, hidden = cloud(torch.from_numpy(cloud_x))
    mask = samples.inputs["cand_mask"]
    inputs = dict(samples.inputs)
    inputs["cand_dense"] = (hidden.numpy() * mask[..., None]).astype(np.float32)
    ops = fcfg.candidate_ops
    if "cloud_score" in ops:
        num = inputs["cand_num"].copy()
        num[..., ops.index("cloud_score")] = (np.clip(score.numpy(), -10.0, 10.0) * mask).astype(np.float32)
        inputs["cand_num"] = num
    return Samples(inputs, samples.labels, samples.session_ids, samples.item_ids, samples.user_ids, samples.contexts)


def train_joint(rows: Sequence[ImpressionRow], cloud_data: str | Path, train: Samples, valid: Samples,
                fcfg: FeatureConfig, mcfg: ModelConfig | None = None, tcfg: TrainConfig | None = None,
                jcfg: JointConfig | None = None, *, test: Samples | None = None, progress: bool = True,
                ray: RayOptions | None = None) -> tuple[CloudRanker, DeviceReranker, dict]:
    """The three stages on logs `rows` (the cloud ranker's pages) and their device samples, split by session into
    `train` and `valid`; the cloud ranker trains on the pages of the training sessions only, and every stage picks
    its best epoch on the validation sessions. `test` (other sessions, as logged) is scored once at the end —
    device model, logged cloud order and the new cloud ranker — and never seen by a stage. With `ray`, the three
    stages train data-parallel on Ray Train (``ray_train``: the cloud ranker, the device reranker, the two as one
    graph); the pages and the cloud features are computed here."""
    tcfg, jcfg = tcfg or TrainConfig(), jcfg or JointConfig()
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    featurizer = CloudFeaturizer(cloud_data)

    # stage 1: the cloud ranker on shown pages
    train_sessions, valid_sessions = set(train.session_ids), set(valid.session_ids)
    p_train = page_lists([r for r in rows if r.session_id in train_sessions], featurizer, n_max=fcfg.n_max)
    p_valid = page_lists([r for r in rows if r.session_id in valid_sessions], featurizer, n_max=fcfg.n_max)
    if ray is None:
        cloud, cloud_summary = fit_cloud_ranker(p_train, p_valid, jcfg.cloud_model, jcfg.cloud, progress=progress)
    else:
        from edge_rerank.cloud.training.ray_train import fit_cloud_ranker_ray

        cloud, cloud_summary = fit_cloud_ranker_ray(p_train, p_valid, jcfg.cloud_model, jcfg.cloud, options=ray)

    # stage 2: the device reranker on the trained cloud ranker's outputs
    x_train, x_valid = cloud_features_for(train, featurizer), cloud_features_for(valid, featurizer)
    s_train = with_cloud_outputs(train, cloud, x_train, fcfg)
    s_valid = with_cloud_outputs(valid, cloud, x_valid, fcfg)
    if ray is None:
        device, stage2 = fit(s_train, s_valid, fcfg, mcfg, tcfg, progress=progress)
    else:
        from edge_rerank.cloud.training.ray_train import fit_ray

        device, stage2 = fit_ray(s_train, s_valid, fcfg, mcfg, tcfg, options=ray)

    # stage 3: fine-tune together
    joint = JointModel(cloud, device)
    loss_fn, cloud_loss = LOSSES[tcfg.loss](), LOSSES["listnet"]()
    names = device.input_names

    def step(idx: np.ndarray) -> torch.Tensor:
        batch = dict(zip(names, to_tensors({k: v[idx] for k, v in train.inputs.items()}, names), strict=True))
        y, m = torch.from_numpy(train.labels[idx]), batch["cand_mask"]
        s_dev, s_cloud = joint(torch.from_numpy(x_train[idx]), batch)
        return loss_fn(s_dev, y, m) + jcfg.cloud_loss_weight * cloud_loss(s_cloud, y, m)

    def validate() -> dict[str, float]:
        return evaluate_lists(predict_joint(joint, valid, x_valid)[0], valid)

    ft = TrainConfig(**{**asdict(tcfg), "epochs": jcfg.finetune_epochs})
    if ray is None:
        stage3 = fit_loop(joint, step, validate, len(train), ft, lr=tcfg.lr * jcfg.finetune_lr_scale,
                          desc="joint fine-tune", progress=progress)
    else:
        from edge_rerank.cloud.training.ray_train import finetune_joint_ray

        stage3 = finetune_joint_ray(joint, train, valid, x_train, x_valid,
                                    replace(ft, lr=tcfg.lr * jcfg.finetune_lr_scale), jcfg.cloud_loss_weight,
                                    predict_joint=predict_joint, options=ray)
    joint.eval()
    dev_scores, cloud_scores = predict_joint(joint, valid, x_valid)
    held_out = {**held_out_metrics(dev_scores, valid, "valid"),
                "valid_new_cloud_ranker": evaluate_lists(cloud_scores, valid)}
    if test is not None:
        t_dev, t_cloud = predict_joint(joint, test, cloud_features_for(test, featurizer))
        held_out |= {**held_out_metrics(t_dev, test, "test"), "test_new_cloud_ranker": evaluate_lists(t_cloud, test)}
    summary = {
        "cloud_ranker": {k: v for k, v in cloud_summary.items() if k != "history"},
        "stage2_valid_model": stage2["valid_model"],
        **held_out,
        "finetune": {k: v for k, v in stage3.items() if k != "history"},
        "train_lists": len(train), "lists_per_s": stage2["lists_per_s"],
        "joint_config": jcfg.to_dict(), "train_config": asdict(tcfg), "model_config": device.mcfg.to_dict(),
        "params": n_params(device), "cloud_params": n_params(cloud),
        **({"ray": stage2["ray"] | {"stages": ["cloud_ranker", "device", "fine-tune"]}} if ray is not None else {}),
    }
    return joint.cloud, joint.device, summary


def predict_joint(joint: JointModel, samples: Samples, cloud_x: np.ndarray, batch_size: int = 512
                  ) -> tuple[np.ndarray, np.ndarray]:
    joint.eval()
    names = joint.device.input_names
    dev, cl = [], []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            b = dict(zip(names, to_tensors({k: v[i: i + batch_size] for k, v in samples.inputs.items()}, names),
                         strict=True))
            d, c = joint(torch.from_numpy(cloud_x[i: i + batch_size]), b)
            dev.append(d.numpy())
            cl.append(c.numpy())
    return np.concatenate(dev), np.concatenate(cl)


def predict_cloud(cloud: CloudRanker, samples: Samples, featurizer: CloudFeaturizer) -> np.ndarray:
    """The cloud ranker's own scores for the samples' candidates (the order it would serve them in)."""
    cloud.eval()
    with torch.no_grad():
        return cloud(torch.from_numpy(cloud_features_for(samples, featurizer)))[0].numpy()


def served_samples(samples: Samples, cloud: CloudRanker, featurizer: CloudFeaturizer, fcfg: FeatureConfig) -> Samples:
    """`samples` as the device would see them once the cloud serves `cloud` (for validation and export)."""
    return with_cloud_outputs(samples, cloud, cloud_features_for(samples, featurizer), fcfg)


def save_joint(cloud: CloudRanker, device: DeviceReranker, out: str | Path, summary: dict,
               split: SessionSplit | None = None) -> tuple[Path, Path]:
    out = Path(out)
    return (save_cloud_ranker(cloud, out / "cloud_ranker.pt", summary.get("cloud_ranker")),
            save_checkpoint(device, out / "checkpoint.pt", summary, split))
