"""Data-parallel training on Ray Train (issue 21): the device reranker (``edge-rerank train --ray``) and the cloud
ranker (``train --joint CLOUD_DATA --ray``), one worker loop (:func:`_train_loop`) over a *task* that says what is
trained: its model, its loss on a worker's share of a batch, its validation sums (``_DeviceTask``,
``_CloudRankerTask``; ``ray_stream.StreamedDeviceTask`` builds its own samples).

:func:`fit_ray` is :func:`~edge_rerank.cloud.training.train.fit` on a ``TorchTrainer`` of N CPU workers with gloo
gradient synchronisation (``DistributedDataParallel``), and returns the same model and summary:

- every worker draws the same epoch's mini-batches as the single-process loop (same seeded generator, same length
  bucketing) and takes its share of each (``batch[rank::N]``); each worker's loss is weighted by its share of what
  the loss averages over (pairs for LambdaLoss / RankNet, lists for ListNet: :func:`loss_units`), so the
  all-reduced gradient is the gradient of the whole batch's loss: one step per global batch, the single-process
  optimisation (learning rate, batch size, clipping) unchanged;
- validation NDCG@10 after every epoch is computed on a shard per worker and summed across workers (all-reduce),
  so every worker takes the same early-stopping decision; the best epoch's weights are restored;
- rank 0 reports the best weights as a Ray Train checkpoint; the driver loads them into a ``DeviceReranker`` and
  scores validation and test exactly as ``fit`` does, so ``save_checkpoint`` writes the single-process format.

The samples reach the workers through the object store (``ray.put``: one copy per node). Ray is imported only when
a function here runs; without it the error names the extra (``edge-rerank[ray]``)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_rerank.cloud.training.configs import ModelConfig, TrainConfig
from edge_rerank.cloud.training.data import Samples
from edge_rerank.device_sdk.features import FeatureConfig

CHECKPOINT_FILE = "model_state.pt"
HELD_OUT_FILE = "held_out.pkl"  # streamed training (ray_stream): the workers' per-list held-out metrics


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` of a running cluster (None: start a local one), `workers` training workers
    (one CPU each), `storage` a directory every node can reach for Ray Train's run state (None: a temporary one,
    fine on one machine)."""

    workers: int = 2
    address: str | None = None
    storage: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


def _metric_sums(scores: np.ndarray, samples: Samples) -> np.ndarray:
    """[sum, count] of the per-list NDCG@5, NDCG@10, MRR and AUC (NaN lists left out): what evaluate_lists
    averages, in a form that sums across workers."""
    out = []
    for per_list in _per_list(scores, samples):
        out += [float(np.nansum(per_list)), float(np.sum(~np.isnan(per_list)))]
    return np.asarray(out, dtype=np.float64)


def _per_list(scores: np.ndarray, samples: Samples) -> np.ndarray:
    """[4, lists]: each list's NDCG@5, NDCG@10, MRR and AUC (NaN where undefined), what evaluate_lists averages."""
    from edge_rerank.cloud.training.ranking_metrics import auc, mrr, ndcg_at_k

    m, y = samples.mask, samples.labels
    return np.stack([ndcg_at_k(scores, y, m, 5), ndcg_at_k(scores, y, m, 10), mrr(scores, y, m), auc(scores, y, m)])


def loss_units(labels: np.ndarray, mask: np.ndarray, loss: str) -> float:
    """What the loss averages over in a batch: ordered pairs (i more relevant than j, both real) for the pairwise
    losses (``lambda``, ``pairwise``: sum over pairs / pairs in the batch), lists for ``listnet``."""
    if loss == "listnet":
        return float(len(labels))
    y = labels * mask
    real = mask > 0
    return float(((y[:, :, None] > y[:, None, :]) & real[:, :, None] & real[:, None, :]).sum())


def _fetch(x: Any) -> Any:
    """A Ray object reference's value (the workers), or the value itself (an in-process replay of the loop)."""
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


class _DeviceTask:
    """The device reranker on a worker: its model, its loss on this worker's share of a batch, its validation sums."""

    metric_names = ("ndcg@5", "ndcg@10", "mrr", "auc")
    teacher: Any = None  # fit's LightGBM teacher scores of the training lists (subclasses without one keep None)
    step_share, step_lists = 1.0, 0  # the loop sets them per step (the distillation term's weight)

    def __init__(self, config: dict[str, Any], rank: int, world: int):
        from edge_rerank.cloud.training.data import list_lengths
        from edge_rerank.cloud.training.losses import LOSSES

        self.train, valid = _fetch(config["train"]), _fetch(config["valid"])
        self.tcfg = TrainConfig(**config["tcfg"])
        self.fcfg = FeatureConfig.from_dict(config["fcfg"])
        self.mcfg = ModelConfig.from_dict(config["mcfg"]) if config["mcfg"] is not None else None
        self.loss_fn = LOSSES[self.tcfg.loss]()
        self.n_train = len(self.train)
        self.lengths = list_lengths(self.train.inputs) if self.tcfg.bucket_by_length else None
        self.my_valid = valid.subset(np.arange(rank, len(valid), world))
        self.find_unused = config["find_unused"]
        self.teacher = _fetch(config["teacher"]) if "teacher" in config else None

    def build(self) -> Any:
        from edge_rerank.cloud.training.model import DeviceReranker

        model = DeviceReranker(self.fcfg, self.mcfg)
        model.fit_input_stats(self.train.inputs)  # the whole training set's statistics on every worker, as in fit
        self.names = model.input_names
        return model

    def units(self, idx: np.ndarray) -> float:
        return loss_units(self.train.labels[idx], self.train.inputs["cand_mask"][idx], self.tcfg.loss)

    def loss(self, forward: Any, idx: np.ndarray) -> Any:
        import torch

        from edge_rerank.cloud.training.data import trim_padding
        from edge_rerank.cloud.training.model import to_tensors

        batch, labels = trim_padding({k: v[idx] for k, v in self.train.inputs.items()}, self.train.labels[idx])
        scores = forward(*to_tensors(batch, self.names))
        mask = torch.from_numpy(batch["cand_mask"])
        loss = self.loss_fn(scores, torch.from_numpy(labels), mask)
        if self.teacher is not None and self.tcfg.gbdt_teacher:
            from edge_rerank.cloud.training.train import teacher_term

            # the loop weights this worker's loss by its share of the label loss's units (pairs or lists); the
            # distillation term is a mean over lists, so it is re-weighted to this worker's share of the lists
            lists = len(idx) / self.step_lists if self.step_lists else 1.0
            fix = lists / self.step_share if self.step_share > 0 else 0.0
            loss = loss + self.tcfg.gbdt_teacher * fix * teacher_term(scores, self.teacher, idx, mask)
        return loss

    def valid_sums(self, model: Any) -> np.ndarray:
        from edge_rerank.cloud.training.train import predict

        return _metric_sums(predict(model, self.my_valid), self.my_valid) if len(self.my_valid) else np.zeros(8)


class _CloudRankerTask:
    """The cloud ranker (``cloud_ranker.CloudRanker``) on a worker: ``fit_cloud_ranker``'s model, step and
    validation NDCG@10 (a sum and a count per worker)."""

    metric_names = ("ndcg@10",)

    def __init__(self, config: dict[str, Any], rank: int, world: int):
        from edge_rerank.cloud.training.losses import LOSSES

        self.train, valid = _fetch(config["train"]), _fetch(config["valid"])
        self.tcfg = TrainConfig(**config["tcfg"])
        self.cfg = config["cloud_cfg"]
        self.loss_fn = LOSSES[self.tcfg.loss]()
        self.n_train = len(self.train)
        self.lengths = None  # pages are all n_max wide: fit_cloud_ranker shuffles plainly
        self.my_valid = valid.subset(np.arange(rank, len(valid), world))
        self.find_unused = False

    def build(self) -> Any:
        from edge_rerank.cloud.training.cloud_ranker import CloudRanker, CloudRankerConfig

        return CloudRanker(self.train.features.shape[2], CloudRankerConfig(**self.cfg))

    def units(self, idx: np.ndarray) -> float:
        return loss_units(self.train.labels[idx], self.train.mask[idx], self.tcfg.loss)

    def loss(self, forward: Any, idx: np.ndarray) -> Any:
        import torch

        s, _ = forward(torch.from_numpy(self.train.features[idx]))
        return self.loss_fn(s, torch.from_numpy(self.train.labels[idx]), torch.from_numpy(self.train.mask[idx]))

    def valid_sums(self, model: Any) -> np.ndarray:
        import torch

        from edge_rerank.cloud.training.ranking_metrics import ndcg_at_k

        if not len(self.my_valid):
            return np.zeros(2)
        with torch.no_grad():
            s, _ = model(torch.from_numpy(self.my_valid.features))
        per_list = ndcg_at_k(s.numpy(), self.my_valid.labels, self.my_valid.mask, 10)
        return np.asarray([float(np.nansum(per_list)), float(np.sum(~np.isnan(per_list)))], dtype=np.float64)


def _global_steps(task: Any, rng: np.random.Generator, rank: int, world: int) -> list[tuple[np.ndarray, float, int]]:
    """One epoch of the single-process loop's mini-batches (the same seeded generator, the same length bucketing)
    as this worker's steps: (its lists ``batch[rank::N]``, its loss weight, the batch's lists)."""
    from edge_rerank.cloud.training.data import length_bucketed_batches

    bs = task.tcfg.batch_size
    if task.lengths is not None:
        batches = length_bucketed_batches(task.lengths, bs, rng)
    else:
        perm = rng.permutation(task.n_train)
        batches = [perm[i: i + bs] for i in range(0, len(perm), bs)]
    steps = []
    for idx in batches:
        mine = idx[rank::world]
        # DDP averages gradients over the workers: weighting each worker's loss by world x its share of what the
        # loss averages over (pairs, or lists) makes the average the whole batch's loss gradient; a worker
        # without lists of this batch joins with weight 0
        if world > 1:
            total = task.units(idx)
            share = task.units(mine) / total if total > 0 else len(mine) / len(idx)
        else:
            share = 1.0
        steps.append((mine if len(mine) else idx[:1], world * share, len(idx)))
    return steps


class _JointTask(_DeviceTask):
    """Stage 3 of joint training (``joint.train_joint``) on a worker: the cloud ranker and the device reranker as
    one graph (``JointModel``), fine-tuned on the device loss plus the weighted cloud ListNet loss of the same
    lists. The two losses average over different units (pairs, lists), so each step's lists carry both shares and
    the task weights each loss by its own; the loop's weight is then the plain world size."""

    def __init__(self, config: dict[str, Any], rank: int, world: int):
        super().__init__(config, rank, world)
        from edge_rerank.cloud.training.losses import LOSSES

        self.x_train = _fetch(config["x_train"])
        x_valid = _fetch(config["x_valid"])
        self.my_x_valid = x_valid[np.arange(rank, len(x_valid), world)]
        self.cloud_loss, self.cloud_weight = LOSSES["listnet"](), config["cloud_loss_weight"]
        self.lengths = None  # fit_loop's stage 3 shuffles plainly
        self.states, self.cloud_cfg = _fetch(config["states"]), config["cloud_cfg"]
        # joint.py's JointModel and predict_joint, passed in (joint.py calls this module: no import back)
        self.joint_cls, self.predict_joint = config["joint_cls"], config["predict_joint"]

    def build(self) -> Any:
        from edge_rerank.cloud.training.cloud_ranker import CloudRanker, CloudRankerConfig
        from edge_rerank.cloud.training.model import DeviceReranker

        cloud = CloudRanker(self.x_train.shape[2], CloudRankerConfig(**self.cloud_cfg))
        device = DeviceReranker(self.fcfg, self.mcfg)
        joint = self.joint_cls(cloud, device)
        joint.load_state_dict(self.states)
        self.names = device.input_names
        return joint

    def epoch_steps(self, rng: np.random.Generator, rank: int, world: int) -> list[tuple[Any, float, int]]:
        bs = self.tcfg.batch_size
        perm = rng.permutation(self.n_train)
        steps = []
        for idx in (perm[i: i + bs] for i in range(0, len(perm), bs)):
            mine = idx[rank::world]
            if world > 1:
                total = self.units(idx)
                dev = self.units(mine) / total if total > 0 else len(mine) / len(idx)
                cloud = len(mine) / len(idx)
            else:
                dev = cloud = 1.0
            steps.append(((mine if len(mine) else idx[:1], dev, cloud), float(world), len(idx)))
        return steps

    def loss(self, forward: Any, step: Any) -> Any:
        import torch

        from edge_rerank.cloud.training.model import to_tensors

        idx, dev_share, cloud_share = step
        batch = dict(zip(self.names, to_tensors({k: v[idx] for k, v in self.train.inputs.items()}, self.names),
                         strict=True))
        y, m = torch.from_numpy(self.train.labels[idx]), batch["cand_mask"]
        s_dev, s_cloud = forward(torch.from_numpy(self.x_train[idx]), batch)
        return dev_share * self.loss_fn(s_dev, y, m) + self.cloud_weight * cloud_share * self.cloud_loss(s_cloud, y, m)

    def valid_sums(self, model: Any) -> np.ndarray:
        if not len(self.my_valid):
            return np.zeros(8)
        return _metric_sums(self.predict_joint(model, self.my_valid, self.my_x_valid)[0], self.my_valid)


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the single-process ``fit_loop`` on this worker's share of every batch, for the model
    family of the task class ``config["task"]`` (the device reranker, the cloud ranker, the joint fine-tune, the
    streamed device reranker: classes travel to the workers by reference, so this module imports none of the
    modules that call it)."""

    import ray
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import prepare_model

    from edge_rerank.cloud.training.train import EarlyStopping

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    task = config["task"](config, rank, world)
    tcfg = task.tcfg
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    model = task.build()
    if rank:  # own dropout draws per worker (the same weights: DDP broadcasts rank 0's); rank 0 keeps fit's stream
        torch.manual_seed(tcfg.seed * 1_000_003 + rank)
    ddp = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": task.find_unused})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                            weight_decay=tcfg.weight_decay)
    rng = np.random.default_rng(tcfg.seed)
    names = task.metric_names

    history, stopper = [], EarlyStopping(tcfg.patience)
    t_start, n_lists = time.perf_counter(), 0
    for epoch in range(tcfg.epochs):
        model.train()
        steps = task.epoch_steps(rng, rank, world) if hasattr(task, "epoch_steps") else \
            _global_steps(task, rng, rank, world)
        losses = []
        for mine, weight, n_batch in steps:
            task.step_share, task.step_lists = weight / world, n_batch
            loss = task.loss(ddp, mine)
            opt.zero_grad()
            (loss * weight).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss.item() * weight / world)
            n_lists += n_batch
        model.eval()
        sums = torch.from_numpy(task.valid_sums(model))
        loss_sum = torch.tensor([float(np.sum(losses))], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
            dist.all_reduce(loss_sum)
            dist.broadcast(sums, src=0)  # one decision for all workers, bit for bit
        s = sums.numpy()
        metrics = {k: float(s[2 * i] / max(s[2 * i + 1], 1.0)) for i, k in enumerate(names)}
        history.append({"epoch": epoch, "loss": float(loss_sum.item() / max(len(steps), 1)), **metrics})
        if stopper.update(metrics["ndcg@10"], model):
            break
    train_s = time.perf_counter() - t_start
    report = {"epochs_run": len(history), "lists_per_s": n_lists / max(train_s, 1e-9), "train_seconds": train_s,
              "history": history}
    held = None
    if hasattr(task, "held_out"):  # the workers hold the held-out lists: score them with the best weights here
        if stopper.best_state is not None:
            model.load_state_dict(stopper.best_state)
        model.eval()
        mine = task.held_out(model)
        held = [mine]
        if world > 1:
            held = [None] * world
            dist.all_gather_object(held, mine)
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            torch.save(stopper.best_state if stopper.best_state is not None else model.state_dict(),
                       Path(d) / CHECKPOINT_FILE)
            if held is not None:
                import pickle

                (Path(d) / HELD_OUT_FILE).write_bytes(pickle.dumps(held))
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(report)


def _run(task: type, data: dict[str, Any], config: dict[str, Any], options: RayOptions
         ) -> tuple[dict, dict, dict, list | None]:
    """Run `task`'s worker loop on a ``TorchTrainer`` of ``options.workers`` CPU workers (`data`: samples put in
    the object store): (best state dict, the loop's summary, ``summary["ray"]``, the streamed task's held-out
    records or None)."""
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from edge_rerank.cloud.training.ray_data import connect

    ray = connect(options.address)
    storage = options.storage or tempfile.mkdtemp(prefix="edge-rerank-ray-train-")
    config = {"task": task, **{k: ray.put(v) for k, v in data.items()}, **config}
    t0 = time.perf_counter()
    trainer = TorchTrainer(_train_loop, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=False),
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=RunConfig(storage_path=str(Path(storage).resolve()),
                                                name=f"{task.__name__.strip('_')}-{int(time.time() * 1000)}"))
    result = trainer.fit()
    wall_s = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint: {result.error}")
    held = None
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        if (Path(d) / HELD_OUT_FILE).exists():
            import pickle

            held = pickle.loads((Path(d) / HELD_OUT_FILE).read_bytes())  # written by rank 0 of this run
    loop = {k: result.metrics[k] for k in ("epochs_run", "lists_per_s", "train_seconds", "history")}
    info = {"workers": options.workers, "address": options.address, "wall_seconds": wall_s,
            "cluster_cpus": float(ray.cluster_resources().get("CPU", 0.0))}
    return state, loop, info, held


def fit_ray(train: Samples, valid: Samples, fcfg: FeatureConfig, mcfg: ModelConfig | None = None,
            tcfg: TrainConfig | None = None, *, test: Samples | None = None, options: RayOptions | None = None,
            progress: bool = True) -> tuple[Any, dict]:
    """:func:`~edge_rerank.cloud.training.train.fit` on Ray Train: the same (model, summary), with
    ``summary["ray"]`` saying how it ran. `progress` is accepted for symmetry (Ray Train logs its own)."""
    import torch

    from edge_rerank.cloud.training.model import DeviceReranker, n_params
    from edge_rerank.cloud.training.train import (
        choose_on_validation,
        evaluate_lists,
        gbdt_teacher_scores,
        held_out_metrics,
        predict,
    )

    tcfg = tcfg or TrainConfig()
    teacher, teacher_info = gbdt_teacher_scores(train, valid, tcfg)  # on the driver, as fit does it

    def train_once(scores: np.ndarray | None) -> tuple[Any, dict, dict]:
        data = {"train": train, "valid": valid, **({"teacher": scores} if scores is not None else {})}
        state, loop, info, _ = _run(_DeviceTask, data, {
            "fcfg": fcfg.to_dict(), "mcfg": mcfg.to_dict() if mcfg is not None else None, "tcfg": asdict(tcfg),
            # MVFAN off leaves no parameter unused; a feedback model without feedback in a batch may
            "find_unused": bool(mcfg is not None and mcfg.use_feedback)}, options or RayOptions())
        torch.manual_seed(tcfg.seed)
        model = DeviceReranker(fcfg, mcfg)
        model.load_state_dict(state)
        model.eval()
        return model, loop, info

    model, loop, info = train_once(teacher)
    if teacher is not None and tcfg.gbdt_teacher_choice:  # fit's choice, on the same validation lists
        plain, plain_loop, plain_info = train_once(None)
        keep, teacher_info = choose_on_validation(evaluate_lists(predict(model, valid), valid)["ndcg@10"],
                                                  evaluate_lists(predict(plain, valid), valid)["ndcg@10"],
                                                  teacher_info)
        if not keep:
            model, loop, info = plain, plain_loop, plain_info
    summary = {
        "train_lists": len(train), **loop,
        **held_out_metrics(predict(model, valid), valid, "valid"),
        **(held_out_metrics(predict(model, test), test, "test") if test is not None else {}),
        "train_config": asdict(tcfg), "model_config": model.mcfg.to_dict(),
        "params": n_params(model), "gbdt_teacher": teacher_info,
        "ray": info,
    }
    return model, summary


def fit_cloud_ranker_ray(train: Any, valid: Any, cfg: Any = None, tcfg: TrainConfig | None = None, *,
                         options: RayOptions | None = None, progress: bool = True) -> tuple[Any, dict]:
    """:func:`~edge_rerank.cloud.training.cloud_ranker.fit_cloud_ranker` on Ray Train (`train` / `valid`:
    ``PageLists``): the same (model, summary) — with one worker the same model bit for bit — and
    ``summary["ray"]``; ``save_cloud_ranker`` writes it in the single-process format."""
    from edge_rerank.cloud.training.cloud_ranker import (
        CLOUD_TRAIN_CONFIG,
        CloudRanker,
        CloudRankerConfig,
        cloud_ranker_summary,
    )

    tcfg = tcfg or CLOUD_TRAIN_CONFIG
    cfg = cfg or CloudRankerConfig()
    state, loop, info, _ = _run(_CloudRankerTask, {"train": train, "valid": valid},
                                {"tcfg": asdict(tcfg), "cloud_cfg": cfg.to_dict()},
                             options or RayOptions())
    model = CloudRanker(train.features.shape[2], cfg)
    model.load_state_dict(state)
    model.eval()
    speed = {k: loop[k] for k in ("lists_per_s", "train_seconds")}  # not in the single-process summary
    return model, cloud_ranker_summary(model, train, valid, loop) | {"ray": info | speed}



def finetune_joint_ray(joint: Any, train: Samples, valid: Samples, x_train: np.ndarray, x_valid: np.ndarray,
                       tcfg: TrainConfig, cloud_loss_weight: float, *, predict_joint: Any,
                       options: RayOptions | None = None) -> dict:
    """Stage 3 of ``joint.train_joint`` on Ray Train: `joint` (a ``JointModel``, trained in place: the best
    epoch's weights are loaded into it) fine-tuned on `train` with `tcfg` (its epochs and learning rate the
    fine-tune's); `predict_joint` is ``joint.predict_joint`` (passed in: joint.py imports this module, not the
    reverse). Returns the loop's summary as ``fit_loop``'s, with ``ray``."""
    mcfg = joint.device.mcfg
    state, loop, info, _ = _run(_JointTask, {"train": train, "valid": valid, "x_train": x_train, "x_valid": x_valid,
                                          "states": joint.state_dict()}, {
        "fcfg": joint.device.fcfg.to_dict(), "mcfg": mcfg.to_dict(), "tcfg": asdict(tcfg),
        "cloud_cfg": joint.cloud.cfg.to_dict(), "cloud_loss_weight": cloud_loss_weight,
        "joint_cls": type(joint), "predict_joint": predict_joint,
        "find_unused": bool(mcfg.use_feedback)}, options or RayOptions())
    joint.load_state_dict(state)
    joint.eval()
    return loop | {"ray": info}
