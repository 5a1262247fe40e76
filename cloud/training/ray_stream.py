"""Streamed training on Ray Train (issue 21): every worker reads its own log parts and builds, splits and trains on
its own shard of samples, so no sample passes through the driver or the object store and logs larger than the
driver's memory train. The worker loop is ``ray_train``'s (:func:`~edge_rerank.cloud.training.ray_train._train_loop`);
:class:`StreamedDeviceTask` is the device task that feeds itself.

Ray is imported only when a function here runs; without it the error names the extra (``edge-rerank[ray]``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edge_rerank.cloud.training.configs import ModelConfig, TrainConfig
from edge_rerank.cloud.training.data import Samples
from edge_rerank.cloud.training.ray_train import RayOptions, _DeviceTask, _per_list, _run
from edge_rerank.device_sdk.features import FeatureConfig


class StreamedDeviceTask(_DeviceTask):
    """The device reranker on a worker that builds its own shard of the samples: the log parts ``parts[rank::N]``
    read and featurised here (``ray_data.shard_samples``), split by session with the run's split config (a
    session's part depends on its id alone), so no sample passes through the driver or the object store.

    Every worker steps the same number of times per epoch (the global lists / batch size): its own shard shuffled
    (rank 0 with the single-process generator) and cut in that many local batches; each step's loss weights come
    from one all-reduce per epoch of the steps' loss units, so the all-reduced gradient is that of the union of
    the workers' local batches. The input statistics are all-reduced (count, sum, sum of squares). Unlike the
    driver-fed tasks, a global batch is not the single-process one (no length bucketing either)."""

    def __init__(self, config: dict[str, Any], rank: int, world: int):
        import torch.distributed as dist

        from edge_rerank.cloud.training.data import SplitConfig
        from edge_rerank.cloud.training.losses import LOSSES
        from edge_rerank.cloud.training.ray_data import shard_samples

        self.tcfg = TrainConfig(**config["tcfg"])
        self.fcfg = FeatureConfig.from_dict(config["fcfg"])
        self.mcfg = ModelConfig.from_dict(config["mcfg"]) if config["mcfg"] is not None else None
        self.loss_fn = LOSSES[self.tcfg.loss]()
        self.find_unused = config["find_unused"]
        self.rank, self.world = rank, world
        parts = [(k, p) for k, p in enumerate(config["parts"])][rank::world]
        samples, keys, self.metas, self.unknown = shard_samples(parts, self.fcfg)
        self.shards: dict[str, Any] = {}
        self.keys: dict[str, list] = {}
        split = SplitConfig(**config["split"])
        where = [split.part_of(s) for s in samples.session_ids] if samples is not None else []
        for name in ("train", "valid", "test"):
            idx = np.asarray([i for i, w in enumerate(where) if w == name], dtype=np.int64)
            self.shards[name] = samples.subset(idx) if len(idx) else None
            self.keys[name] = [keys[i] for i in idx]
        self.train, self.my_valid = self.shards["train"], self.shards["valid"]
        n = np.asarray([len(self.keys["train"])], dtype=np.float64)
        if world > 1:
            n = _all_reduce(n, dist)
        self.n_train = int(n[0])
        if self.n_train == 0:
            raise ValueError("the logs hold no training lists")
        if self.train is None:
            raise ValueError(f"worker {rank} of {world} got no training lists from its {len(parts)} log parts: "
                             "use fewer workers, or logs in more parts")
        self.lengths = None
        self.rng = np.random.default_rng(self.tcfg.seed if rank == 0 else [self.tcfg.seed, rank])

    def build(self) -> Any:
        import torch
        import torch.distributed as dist

        model = super().build() if self.world == 1 else self._build_with_global_stats(dist, torch)
        return model

    def _build_with_global_stats(self, dist: Any, torch: Any) -> Any:
        from edge_rerank.cloud.training.model import DeviceReranker

        model = DeviceReranker(self.fcfg, self.mcfg)
        self.names = model.input_names
        x = self.train.inputs
        for key, mask, mean, std in (("cand_num", x["cand_mask"] > 0, model.num_mean, model.num_std),
                                     ("seq_num", (x["seq_pos_mask"] + x["seq_neg_mask"]) > 0,
                                      model.ev_mean, model.ev_std)):
            v = x[key][mask].astype(np.float64)
            m = _all_reduce(np.concatenate([[len(v)], v.sum(axis=0), (v * v).sum(axis=0)]), dist)
            n, d = m[0], v.shape[1]
            if n:
                mu = m[1: 1 + d] / n
                mean.copy_(torch.from_numpy(mu).float())
                std.copy_(torch.from_numpy(np.maximum(np.sqrt(np.maximum(m[1 + d:] / n - mu * mu, 0.0)),
                                                      1e-3)).float())
        return model

    def valid_sums(self, model: Any) -> np.ndarray:
        return super().valid_sums(model) if self.my_valid is not None else np.zeros(8)  # a worker without any

    def epoch_steps(self, rng: np.random.Generator, rank: int, world: int) -> list[tuple[np.ndarray, float, int]]:
        import torch.distributed as dist

        bs = self.tcfg.batch_size
        n_steps = -(-self.n_train // bs)
        perm = self.rng.permutation(len(self.train))
        b = bs if world == 1 else -(-len(perm) // n_steps)
        chunks = [perm[i * b: (i + 1) * b] for i in range(n_steps)]
        mine = np.asarray([[self.units(c), len(c)] for c in chunks], dtype=np.float64)
        total = _all_reduce(mine, dist) if world > 1 else mine
        steps = []
        for c, (u, n), (tu, tn) in zip(chunks, mine, total, strict=True):
            share = (u / tu if tu > 0 else n / max(tn, 1.0)) if world > 1 else 1.0
            steps.append((c if len(c) else perm[:1], world * share if len(c) else 0.0, int(tn)))
        return steps

    def held_out(self, model: Any) -> dict[str, Any]:
        """This worker's per-list metrics of `model` and of the logged cloud order on its validation and test
        lists, with their keys, and the read records of its parts: what the driver needs for the summary."""
        from edge_rerank.cloud.training.train import cloud_order_scores, predict

        out: dict[str, Any] = {"metas": self.metas, "unknown": self.unknown, "sessions": {}, "lists": {},
                               "digest": {}}
        for name in ("train", "valid", "test"):
            sh = self.shards[name]
            out["sessions"][name] = sorted(set(sh.session_ids)) if sh is not None else []
            out["lists"][name] = len(self.keys[name])
            out["digest"][name] = samples_digest(sh) if sh is not None else 0
            if name == "train":
                continue
            if sh is None:
                out[name] = {"keys": [], "model": np.zeros((4, 0)), "cloud": np.zeros((4, 0))}
                continue
            out[name] = {"keys": self.keys[name], "model": _per_list(predict(model, sh), sh),
                         "cloud": _per_list(cloud_order_scores(sh), sh)}
        return out


def samples_digest(samples: Samples) -> int:
    """An order-free digest of a set of lists (session, items, labels, every input array), summable across
    shards: equal digests, the same lists (up to a 64-bit hash collision)."""
    import hashlib

    total = 0
    keys = sorted(samples.inputs)
    for i in range(len(samples)):
        h = hashlib.blake2b(samples.session_ids[i].encode(), digest_size=8)
        h.update(samples.item_ids[i].tobytes())
        h.update(samples.labels[i].tobytes())
        for k in keys:
            h.update(np.ascontiguousarray(samples.inputs[k][i]).tobytes())
        total = (total + int.from_bytes(h.digest(), "little")) % (1 << 64)
    return total


def _all_reduce(a: np.ndarray, dist: Any) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    dist.all_reduce(t)
    return t.numpy()


def fit_ray_streaming(logs: str | Path, fcfg: FeatureConfig, mcfg: ModelConfig | None = None,
                      tcfg: TrainConfig | None = None, *, split: Any = None, options: RayOptions | None = None
                      ) -> tuple[Any, dict, Any, Any]:
    """Train the device reranker on Ray Train with every worker reading its own log parts (``parts[rank::N]``)
    and building, splitting and training on its own shard of samples (:class:`StreamedDeviceTask`): the driver
    lists file names and receives weights and per-list held-out metrics only, so logs larger than its memory
    train. Returns (model, summary as ``fit``'s, the split record, the log read report); ``save_checkpoint``
    writes the single-process format. Unreadable parts are quarantined (on the driver, after the run) and skipped
    rows counted, as ``read_logs`` does. Needs at least one training list per worker. No LightGBM teacher here (a
    worker holds only its shard of the training lists): `tcfg` must say ``gbdt_teacher=0``."""
    import torch

    from edge_rerank.cloud.logs import LogReadReport
    from edge_rerank.cloud.training.data import SessionSplit, SplitConfig
    from edge_rerank.cloud.training.model import DeviceReranker, n_params
    from edge_rerank.cloud.training.ranking_metrics import gain_with_ci
    from edge_rerank.cloud.training.ray_data import log_part_paths, merge_unknown, record_parts, warn_merged

    tcfg = tcfg or TrainConfig(gbdt_teacher=0.0)
    if tcfg.gbdt_teacher:
        raise ValueError("streamed training has no LightGBM teacher (each worker holds only its shard of the "
                         "training lists): pass TrainConfig(gbdt_teacher=0), or train with fit / fit_ray")
    split = split or SplitConfig(seed=tcfg.seed)
    options = options or RayOptions()
    parts = log_part_paths(logs)
    state, loop, info, held = _run(StreamedDeviceTask, {}, {
        "parts": [str(p.resolve()) for p in parts], "split": asdict(split), "fcfg": fcfg.to_dict(),
        "mcfg": mcfg.to_dict() if mcfg is not None else None, "tcfg": asdict(tcfg),
        "find_unused": bool(mcfg is not None and mcfg.use_feedback)}, options)
    if held is None:
        raise RuntimeError("Ray Train's streamed run returned no held-out records")
    torch.manual_seed(tcfg.seed)
    model = DeviceReranker(fcfg, mcfg)
    model.load_state_dict(state)
    model.eval()
    report = LogReadReport()
    record_parts([m for h in held for m in h["metas"]], logs, parts, report)
    warn_merged(merge_unknown(h["unknown"] for h in held))
    record = SessionSplit.make([s for h in held for p in ("train", "valid", "test") for s in h["sessions"][p]],
                               split)
    summary = {"train_lists": sum(h["lists"]["train"] for h in held), **loop}
    for name in ("valid", "test"):
        keys = [k for h in held for k in h[name]["keys"]]
        order = sorted(range(len(keys)), key=keys.__getitem__)  # the single-process list order
        mod = np.concatenate([h[name]["model"] for h in held], axis=1)[:, order]
        cld = np.concatenate([h[name]["cloud"] for h in held], axis=1)[:, order]
        names = ("ndcg@5", "ndcg@10", "mrr", "auc")
        summary |= {f"{name}_model": {k: float(np.nanmean(mod[i])) for i, k in enumerate(names)},
                    f"{name}_cloud_order": {k: float(np.nanmean(cld[i])) for i, k in enumerate(names)},
                    f"{name}_lists": len(keys),
                    f"{name}_gain_over_cloud": gain_with_ci(mod[1], cld[1], [keys[i][0] for i in order])}
    summary |= {"train_config": asdict(tcfg), "model_config": model.mcfg.to_dict(), "params": n_params(model),
                "ray": info | {"streamed": True, "samples_digest": {
                    p: sum(h["digest"][p] for h in held) % (1 << 64) for p in ("train", "valid", "test")}}}
    return model, summary, record, report
