"""Feature operators and their declarative config (one implementation for training and device)."""

from edge_rerank.device_sdk.features.config import DEFAULT_CANDIDATE_OPS, FeatureConfig
from edge_rerank.device_sdk.features.operators import (
           FeatureBuilder,
           FeatureError,
           input_names,
           input_specs,
           stack_batch,
)

__all__ = ["DEFAULT_CANDIDATE_OPS", "FeatureBuilder", "FeatureConfig", "FeatureError", "input_names",
           "input_specs", "stack_batch"]
