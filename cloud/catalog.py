"""The cloud's data directory: catalog, user profiles, queries, embedding table, cloud-ranker weights.

Layout of a data directory (written by ``save_cloud_data``; the simulator provisions one for its world):

  items.npz      item_id, category, brand, price_level, lat, lon, quality, popularity  (arrays, one row per item)
  users.npz      user_id (str), pref_vec [U, E] (long-term preference in the ID-embedding space),
                 price_pref, home_lat, home_lon
  queries.json   {"query text": [category, ...]}
  embeddings/    the sparse ID embedding table (see cloud.embedding_store)
  ranker.npz     cloud ranker weights (see cloud.ranking.fine)
  coarse/        optional coarse two-tower bundle (cloud.ranking.coarse; ``edge-rerank coarse export --install``)
  serving.json   optional page-serving settings: {"reshow_share": 0.2} (a feed re-shows items of the previous
                 page in later pages: cloud.ranking.pipeline.SearchPipeline.page_slots)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.cloud.embedding_store import FileEmbeddingStore

ITEM_FIELDS = ("item_id", "category", "brand", "price_level", "lat", "lon", "quality", "popularity")


@dataclass
class Catalog:
    items: dict[str, np.ndarray]  # ITEM_FIELDS -> [n_items]
    user_index: dict[str, int]
    user_pref: np.ndarray  # [U, E]
    user_price_pref: np.ndarray  # [U]
    queries: dict[str, list[int]]
    reshow_share: float = 0.0  # share of page k >= 1 filled with items of page k - 1 (serving.json; feeds)

    @property
    def n_items(self) -> int:
        return int(self.items["item_id"].shape[0])


def save_cloud_data(root: str | Path, *, items: dict[str, np.ndarray], user_ids: list[str], user_pref: np.ndarray,
                    user_price_pref: np.ndarray, user_home: np.ndarray, queries: dict[str, list[int]],
                    embedding_ids: np.ndarray, embedding_rows: np.ndarray, ranker: dict[str, np.ndarray]) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    missing = set(ITEM_FIELDS) - set(items)
    if missing:
        raise ValueError(f"items lack fields {sorted(missing)}")
    np.savez(root / "items.npz", **{k: np.asarray(items[k]) for k in ITEM_FIELDS})
    np.savez(root / "users.npz", user_id=np.asarray(user_ids), pref_vec=user_pref.astype(np.float32),
             price_pref=user_price_pref.astype(np.float32), home_lat=user_home[:, 0], home_lon=user_home[:, 1])
    (root / "queries.json").write_text(json.dumps(queries, indent=1))
    FileEmbeddingStore.write(root / "embeddings", embedding_ids, embedding_rows)
    np.savez(root / "ranker.npz", **ranker)
    return root


def save_serving(root: str | Path, *, reshow_share: float = 0.0) -> None:
    """Write the data directory's page-serving settings (serving.json)."""
    if not 0.0 <= reshow_share < 1.0:
        raise ValueError(f"reshow_share must be in [0, 1), got {reshow_share}")
    (Path(root) / "serving.json").write_text(json.dumps({"reshow_share": float(reshow_share)}, indent=1))


def load_catalog(root: str | Path) -> Catalog:
    root = Path(root)
    with np.load(root / "items.npz") as z:
        items = {k: z[k] for k in ITEM_FIELDS}
    with np.load(root / "users.npz") as z:
        ids = [str(u) for u in z["user_id"]]
        pref, price = z["pref_vec"], z["price_pref"]
    queries = {q: [int(c) for c in cats] for q, cats in json.loads((root / "queries.json").read_text()).items()}
    serving = json.loads((root / "serving.json").read_text()) if (root / "serving.json").exists() else {}
    return Catalog(items=items, user_index={u: i for i, u in enumerate(ids)}, user_pref=pref,
                   user_price_pref=price, queries=queries, reshow_share=float(serving.get("reshow_share", 0.0)))
