"""The trained cloud ranker: the fine ranker that orders the page, and whose last hidden layer is sent with each
item to the device (SPEC §1, "cloud–device joint training": the hidden layer, not the list-relative score).

It reads the same cloud features as the fixed-weight ranker (``cloud.ranking.fine.FEATURES``), recomputed for
every logged candidate from the cloud's own data directory (catalog, user profiles, embedding table): the device
never sees them. Exported to ONNX with input ``features`` [N, F] and outputs ``score`` [N] and ``hidden`` [N, D],
the contract the server's ONNX fine ranker loads from ``ranker.onnx``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_rerank.cloud.catalog import load_catalog
from edge_rerank.cloud.embedding_store import FileEmbeddingStore
from edge_rerank.cloud.ranking.fine import FEATURES, FineRanker, default_ranker_weights
from edge_rerank.cloud.ranking.pipeline import SearchPipeline
from edge_rerank.cloud.training.losses import LOSSES
from edge_rerank.cloud.training.ranking_metrics import ndcg_at_k
from edge_rerank.cloud.training.train import TrainConfig, fit_loop
from edge_rerank.device_sdk.contracts import DEFAULT_PAGE_SIZE, Context, ImpressionRow


class CloudFeaturizer:
    """Cloud features [n, F] for (user, context, items): the search pipeline's own ``features_for``."""

    def __init__(self, data_dir: str | Path):
        catalog = load_catalog(data_dir)
        store = FileEmbeddingStore(Path(data_dir) / "embeddings")
        self._pipeline = SearchPipeline(catalog=catalog, store=store,
                                        ranker=FineRanker.from_weights(default_ranker_weights(store.dim)),
                                        cache_size=0)
        self.catalog = catalog
        self._row = {int(i): k for k, i in enumerate(catalog.items["item_id"])}

    @property
    def n_features(self) -> int:
        return len(FEATURES)

    def rows(self, item_ids: Sequence[int]) -> np.ndarray:
        try:
            return np.array([self._row[int(i)] for i in item_ids], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"logged item {e.args[0]} is not in the cloud catalog") from None

    def __call__(self, user_id: str, context: Context, item_ids: Sequence[int]) -> np.ndarray:
        return self._pipeline.features_for(user_id, context, self.rows(item_ids))


@dataclass(frozen=True)
class CloudRankerConfig:
    hidden: int = 32
    dense_dim: int = 16  # the last hidden layer's width: what the device receives per item

    def to_dict(self) -> dict:
        return asdict(self)


class CloudRanker(nn.Module):
    """features [.., F] -> (score [..], hidden [.., D]); the hidden layer is tanh-bounded (cheap to quantise)."""

    def __init__(self, n_features: int, cfg: CloudRankerConfig | None = None):
        super().__init__()
        self.cfg = cfg or CloudRankerConfig()
        self.n_features = n_features
        self.trunk = nn.Sequential(nn.Linear(n_features, self.cfg.hidden), nn.ReLU(),
                                   nn.Linear(self.cfg.hidden, self.cfg.dense_dim), nn.Tanh())
        self.out = nn.Linear(self.cfg.dense_dim, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(features)
        return self.out(h).squeeze(-1), h


@dataclass
class PageLists:
    """Shown pages as lists for the cloud ranker: features [P, N, F], labels / mask [P, N]."""

    features: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    session_ids: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray) -> PageLists:
        return PageLists(self.features[idx], self.labels[idx], self.mask[idx], [self.session_ids[i] for i in idx])


def page_lists(rows: Sequence[ImpressionRow], featurizer: CloudFeaturizer, n_max: int = DEFAULT_PAGE_SIZE) -> PageLists:
    """Every shown page with at least one click, its exposed items in cloud order, labelled order 2 / click 1."""
    rows = sorted(rows, key=lambda r: (r.session_id, r.page_index, r.request_id))
    feats, labels, masks, sids = [], [], [], []
    F = featurizer.n_features
    for r in rows:
        cands = sorted((c for c in r.candidates if c.exposed), key=lambda c: c.item.cloud_position)[:n_max]
        y = np.array([2.0 if c.ordered else 1.0 if c.clicked else 0.0 for c in cands], dtype=np.float32)
        if len(cands) < 2 or y.sum() == 0:
            continue
        x = np.zeros((n_max, F), np.float32)
        x[: len(cands)] = featurizer(r.user_id, r.context, [c.item.item_id for c in cands])
        lab = np.zeros(n_max, np.float32)
        lab[: len(cands)] = y
        m = np.zeros(n_max, np.float32)
        m[: len(cands)] = 1.0
        feats.append(x), labels.append(lab), masks.append(m), sids.append(r.session_id)
    if not feats:
        raise ValueError("the logs hold no shown page with a click: nothing to train the cloud ranker on")
    return PageLists(np.stack(feats), np.stack(labels), np.stack(masks), sids)


# the cloud ranker's training defaults, in the device reranker's config shape (it trains through the same loop)
CLOUD_TRAIN_CONFIG = TrainConfig(epochs=20, batch_size=128, lr=3e-3, weight_decay=1e-5, loss="listnet", seed=0,
                                 patience=4, bucket_by_length=False)


def _ndcg10(model: CloudRanker, lists: PageLists) -> float:
    with torch.no_grad():
        s, _ = model(torch.from_numpy(lists.features))
    return float(np.nanmean(ndcg_at_k(s.numpy(), lists.labels, lists.mask, 10)))


def page_step(model: CloudRanker, train: PageLists, loss_fn) -> Callable[[np.ndarray], torch.Tensor]:
    """The training step for ``fit_loop``: the ranking loss of the cloud ranker's scores on the pages `idx`."""

    def step(idx: np.ndarray) -> torch.Tensor:
        s, _ = model(torch.from_numpy(train.features[idx]))
        return loss_fn(s, torch.from_numpy(train.labels[idx]), torch.from_numpy(train.mask[idx]))

    return step


def fit_cloud_ranker(train: PageLists, valid: PageLists, cfg: CloudRankerConfig | None = None,
                     tcfg: TrainConfig | None = None, *, progress: bool = True) -> tuple[CloudRanker, dict]:
    """Train on `train` pages through ``fit_loop`` (default config ``CLOUD_TRAIN_CONFIG``), best epoch on `valid`."""
    tcfg = tcfg or CLOUD_TRAIN_CONFIG
    torch.set_num_threads(tcfg.threads)  # as fit and the Ray workers do (oversubscribed threads thrash on a busy host)
    torch.manual_seed(tcfg.seed)
    model = CloudRanker(train.features.shape[2], cfg)
    loop = fit_loop(model, page_step(model, train, LOSSES[tcfg.loss]()), lambda: {"ndcg@10": _ndcg10(model, valid)},
                    len(train), tcfg, desc="cloud ranker", progress=progress)
    return model, cloud_ranker_summary(model, train, valid, loop)


def cloud_ranker_summary(model: CloudRanker, train: PageLists, valid: PageLists, loop: dict) -> dict:
    """The trained cloud ranker's summary (its validation NDCG@10 and the logged order's) from its loop's
    (``fit_loop``, or the Ray Train workers')."""
    logged = -np.tile(np.arange(valid.labels.shape[1], dtype=np.float64), (len(valid), 1))
    return {"valid_ndcg@10": _ndcg10(model, valid),
            "valid_ndcg@10_logged_order": float(np.nanmean(ndcg_at_k(logged, valid.labels, valid.mask, 10))),
            "train_pages": len(train), "valid_pages": len(valid), "history": loop["history"],
            "epochs_run": loop["epochs_run"]}


def export_cloud_ranker_onnx(model: CloudRanker, path: str | Path) -> Path:
    """ONNX for the server's fine ranker: ``features`` [N, F] -> ``score`` [N], ``hidden`` [N, D], N dynamic."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(8, model.n_features)
    n = torch.export.Dim("n", min=1, max=100_000)
    torch.onnx.export(model, (example,), str(path), input_names=["features"], output_names=["score", "hidden"],
                      dynamic_shapes=({0: n},), dynamo=True, opset_version=18, external_data=False, verbose=False)
    onnx.checker.check_model(str(path))
    return path


def save_cloud_ranker(model: CloudRanker, path: str | Path, summary: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": model.cfg.to_dict(), "n_features": model.n_features,
                "summary": json.loads(json.dumps(summary or {}))}, path)
    return path


def load_cloud_ranker(path: str | Path) -> CloudRanker:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = CloudRanker(int(ck["n_features"]), CloudRankerConfig(**ck["config"]))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model
