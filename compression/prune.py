"""Unstructured magnitude pruning of the device reranker, then fine-tuning with the masks held fixed.

What is pruned: the weight matrices of every ``nn.Linear`` (89 % of the default model's parameters: the event /
candidate projections, the MVFAN attention projections, the fusion layer, the PRM block and the head).
What is not, and why:
- embedding tables (category, brand, price, distance/position buckets, event kind): a lookup, not a matmul —
  zeroing single entries saves no compute, only distorts the vector of one category or bucket; they are also
  small (8 % of the parameters) and the item-ID rows, the big table, are not in the device model at all;
- biases and LayerNorm gains/shifts: O(d) per layer (under 3 % together); a zero LayerNorm gain silences a
  channel for every input rather than pruning one connection.

Fine-tuning keeps the masks fixed: each pruned ``Linear`` gets a parametrization ``weight = original * mask``
(``torch.nn.utils.parametrize``), so whatever AdamW does to ``original`` (gradient steps, decoupled weight
decay), a pruned weight is exactly zero after every optimizer step. The epoch loop is the training loop's own
``fit_loop`` (best epoch by validation NDCG@10); the weights right after pruning compete as "epoch -1", so
fine-tuning never returns a model worse on validation than plain pruning. At the end the masks are folded into
plain weights (zeros as ``+0.0``), so the result is an ordinary ``DeviceReranker`` and exports through the
existing ONNX / TFLite converters unchanged.

Size: a dense file (ONNX, TFLite) does not shrink from pruning — a zero is still 4 bytes of fp32. Its
gzip-compressed download does (``compression.sizes.gzip_size``), and ``nonzero_bytes`` says what a sparse
encoding (values + a bitmap) would store.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from edge_rerank.cloud.training.data import Samples, list_lengths
from edge_rerank.cloud.training.losses import LOSSES
from edge_rerank.cloud.training.model import DeviceReranker, n_params
from edge_rerank.cloud.training.train import TrainConfig, evaluate_lists, fit_loop, label_step, predict

SCOPES = ("global", "layer")


def prunable_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules whose weights are pruned, by module name (e.g. ``blocks.0.ff.0``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _smallest(w: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of `w`'s shape with 0 on its `k` smallest |w| entries (ties by position)."""
    flat = torch.ones(w.numel())
    flat[torch.argsort(w.abs().flatten(), stable=True)[:k]] = 0.0
    return flat.reshape(w.shape)


def prune_masks(model: nn.Module, sparsity: float, scope: str = "global", *,
                max_tensor_sparsity: float = 0.95) -> dict[str, torch.Tensor]:
    """Float {0, 1} masks (1 = keep) for every prunable weight; the smallest-|w| entries get 0.

    ``scope="layer"``: ``round(sparsity * numel)`` zeros in each tensor. ``scope="global"``: one magnitude
    ranking over all prunable weights together, ``round(sparsity * total)`` zeros in all, so layers with small
    weights lose more — but no tensor more than `max_tensor_sparsity` of its entries (the excess goes to the
    other tensors by the same ranking). Without that cap, plain global magnitude pruning empties whole layers:
    the fusion layer (fan-in 320, so its weights start ~3x smaller than a fan-in-32 layer's) of the test model is
    100 % zero at a 70 % global target; the output is then a constant and fine-tuning cannot recover (no gradient).
    Ties are broken by position (stable sort), so the masks are deterministic."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    weights = {name: m.weight.detach() for name, m in prunable_layers(model).items()}
    if scope == "layer":
        return {name: _smallest(w, int(round(sparsity * w.numel()))) for name, w in weights.items()}
    if sparsity > max_tensor_sparsity:
        raise ValueError(f"a global sparsity of {sparsity} needs max_tensor_sparsity >= it, got {max_tensor_sparsity}")
    k_total = int(round(sparsity * sum(w.numel() for w in weights.values())))
    capped: dict[str, int] = {}  # tensors held at their cap, with their number of zeros
    while True:
        free = [n for n in weights if n not in capped]
        flat = torch.cat([weights[n].abs().flatten() for n in free])
        cut = torch.ones(flat.numel())
        cut[torch.argsort(flat, stable=True)[: k_total - sum(capped.values())]] = 0.0
        masks, start = {}, 0
        for n in free:
            masks[n] = cut[start: start + weights[n].numel()].reshape(weights[n].shape).clone()
            start += weights[n].numel()
        over = {n: int(max_tensor_sparsity * weights[n].numel()) for n in free
                if (masks[n] == 0).sum() > max_tensor_sparsity * weights[n].numel()}
        if not over:
            break
        capped.update(over)
    masks.update({n: _smallest(weights[n], k) for n, k in capped.items()})
    return {n: masks[n] for n in weights}


class _FixedMask(nn.Module):
    """Parametrization ``weight = original * mask``: the gradient of a masked entry is zero and its value is
    zero whatever the optimizer does to ``original``."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = prunable_layers(model)
    for name, mask in masks.items():
        parametrize.register_parametrization(layers[name], "weight", _FixedMask(mask))


def _fold_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = dict(model.named_modules())
    for name, mask in masks.items():
        parametrize.remove_parametrizations(layers[name], "weight", leave_parametrized=True)
        with torch.no_grad():
            layers[name].weight[mask == 0] = 0.0  # +0.0, not the -0.0 that a negative weight * 0 gives


def sparsity_report(model: nn.Module) -> dict:
    """Zeros per prunable weight and overall: {"per_tensor": {name.weight: {...}}, "pruned_tensors": ...,
    "params_total", "params_nonzero", "model_sparsity"} (``model_sparsity`` counts every parameter)."""
    per = {}
    for name, m in prunable_layers(model).items():
        n, z = m.weight.numel(), int((m.weight == 0).sum())
        per[f"{name}.weight"] = {"numel": n, "zeros": z, "sparsity": z / n}
    n_pr, z_pr = sum(v["numel"] for v in per.values()), sum(v["zeros"] for v in per.values())
    total = n_params(model)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"per_tensor": per, "pruned_params": n_pr, "pruned_zeros": z_pr, "sparsity": z_pr / max(n_pr, 1),
            "params_total": total, "params_nonzero": nonzero, "model_sparsity": 1.0 - nonzero / max(total, 1)}


def nonzero_bytes(model: nn.Module, value_bytes: int = 4) -> dict[str, int]:
    """What the parameters would cost stored densely vs sparsely (``value_bytes`` per value: 4 fp32, 2 fp16,
    1 int8). ``dense``: every parameter; ``nonzero_values``: only the nonzero values (a lower bound);
    ``sparse_bitmap``: the prunable weights as nonzero values + a 1-bit-per-entry bitmap, everything else dense
    (what a simple sparse encoding ships). Buffers (input statistics) are not counted. A dense ONNX/TFLite file
    stores ``dense``, whatever the sparsity."""
    layers = prunable_layers(model)
    pruned_ids = {id(m.weight) for m in layers.values()}
    dense = n_params(model) * value_bytes
    nz = sum(int((p != 0).sum()) for p in model.parameters()) * value_bytes
    bitmap = 0
    for p in model.parameters():
        if id(p) in pruned_ids:
            bitmap += int((p != 0).sum()) * value_bytes + (p.numel() + 7) // 8
        else:
            bitmap += p.numel() * value_bytes
    return {"dense": dense, "nonzero_values": nz, "sparse_bitmap": bitmap}


def _ndcg10(model: DeviceReranker, valid: Samples) -> float:
    return evaluate_lists(predict(model, valid), valid)["ndcg@10"]


def magnitude_prune(model: DeviceReranker, train: Samples, valid: Samples, *, sparsity: float,
                    finetune_epochs: int = 3, tcfg: TrainConfig | None = None, scope: str = "global",
                    max_tensor_sparsity: float = 0.95, progress: bool = False) -> tuple[DeviceReranker, dict]:
    """Prune `sparsity` of the ``Linear`` weights by magnitude (`scope` "global" or "layer", and the global cap
    `max_tensor_sparsity`: see ``prune_masks``),
    then fine-tune on `train` for `finetune_epochs` epochs (they override ``tcfg.epochs``; the rest of `tcfg` —
    loss, lr, weight decay, batch size, seed, patience — applies) with the masks fixed, keeping the best of
    {right after pruning, each fine-tuning epoch} by validation NDCG@10 on `valid`.

    Returns a new model (`model` itself is not modified) with the zeros folded into plain weights, and a report:
    scope, target and achieved sparsity (over the pruned tensors, and per tensor), parameter counts (total,
    nonzero), ``nonzero_bytes``, validation NDCG@10 of the original, right after pruning and after fine-tuning,
    and the fine-tuning history."""
    tcfg = tcfg or TrainConfig()
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    ndcg_orig = _ndcg10(model, valid)
    pruned = copy.deepcopy(model)
    masks = prune_masks(pruned, sparsity, scope, max_tensor_sparsity=max_tensor_sparsity)
    _apply_masks(pruned, masks)
    ndcg_pruned = _ndcg10(pruned, valid)
    loop, kept = None, "pruned"
    if finetune_epochs > 0:
        after_prune = copy.deepcopy(pruned.state_dict())
        step = label_step(pruned, train, LOSSES[tcfg.loss]())
        loop = fit_loop(pruned, step, lambda: evaluate_lists(predict(pruned, valid), valid), len(train),
                        replace(tcfg, epochs=finetune_epochs), desc=f"prune {sparsity:.0%} fine-tune",
                        lengths=list_lengths(train.inputs) if tcfg.bucket_by_length else None, progress=progress)
        if max(h["ndcg@10"] for h in loop["history"]) > ndcg_pruned:
            kept = "finetuned"  # fit_loop restored its best epoch
        else:
            pruned.load_state_dict(after_prune)
    _fold_masks(pruned, masks)
    pruned.eval()
    ndcg_ft = _ndcg10(pruned, valid)
    sp = sparsity_report(pruned)
    report = {
        "scope": scope, "target_sparsity": sparsity, "achieved_sparsity": sp["sparsity"],
        "model_sparsity": sp["model_sparsity"], "per_tensor": sp["per_tensor"],
        "params_total": sp["params_total"], "params_nonzero": sp["params_nonzero"],
        "pruned_params": sp["pruned_params"], "bytes": nonzero_bytes(pruned),
        "ndcg10_original": ndcg_orig, "ndcg10_pruned": ndcg_pruned, "ndcg10_finetuned": ndcg_ft,
        "kept": kept, "finetune_epochs": finetune_epochs,
        "finetune": loop,
    }
    return pruned, report
