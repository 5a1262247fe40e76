"""Feature operators and their declarative config (one implementation for training and device)."""

from device_sdk.features.config import DEFAULT_CANDIDATE_OPS, FeatureConfig
from device_sdk.features.operators import FeatureBuilder, FeatureError, input_names, input_specs, stack_batch

__all__ = ["DEFAULT_CANDIDATE_OPS", "FeatureBuilder", "FeatureConfig", "FeatureError", "input_names",
           "input_specs", "stack_batch"]
