"""torch -> the numpy reference format: the model's parameters and buffers as an ``.npz`` with its ModelConfig
(JSON) under ``__model_config__``. Run by ``device_sdk.backends.numpy_backend`` (no runtime beyond numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.backends.numpy_backend import CONFIG_KEY


def export_numpy(model, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    if CONFIG_KEY in arrays:
        raise ValueError(f"a parameter is named {CONFIG_KEY}")
    config = model.mcfg.to_dict()
    if model.mcfg.residual:
        config["cloud_index"] = model.cloud_index  # where the cloud score sits in cand_num
    arrays[CONFIG_KEY] = np.array(json.dumps(config))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path
