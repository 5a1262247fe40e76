"""Inference backends behind one protocol, registered by name, each importing its runtime lazily."""

# Registration is cheap: each module imports its runtime only when a backend is created.
from edge_rerank.device_sdk.backends import coreml_backend as _coreml  # noqa: F401
from edge_rerank.device_sdk.backends import lightgbm_backend as _lgbm  # noqa: F401
from edge_rerank.device_sdk.backends import litert_backend as _litert  # noqa: F401
from edge_rerank.device_sdk.backends import mnn_backend as _mnn  # noqa: F401
from edge_rerank.device_sdk.backends import numpy_backend as _numpy  # noqa: F401
from edge_rerank.device_sdk.backends import onnxruntime_backend as _ort  # noqa: F401
from edge_rerank.device_sdk.backends.base import (
    DEFAULT_BACKEND,
    Backend,
    BackendError,
    available,
    batch_size,
    create,
    model_format,
    register,
)

__all__ = ["DEFAULT_BACKEND", "Backend", "BackendError", "available", "batch_size", "create", "model_format",
           "register"]
