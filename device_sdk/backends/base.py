"""The backend protocol and registry (by name, with the model format each runs). Each backend module registers
itself here and imports its runtime only when a backend is created."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


class BackendError(RuntimeError):
    """A backend cannot be created or cannot run (missing runtime, bad model file, bad output)."""


@runtime_checkable
class Backend(Protocol):
    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Scores [batch, n_max] for inputs with a leading batch dimension."""
        ...


_REGISTRY: dict[str, Callable[..., Backend]] = {}
_FORMATS: dict[str, str] = {}

# The one format -> runtime table: which backend runs a bundle of each model format by default (the model
# manager, the converters' validation, the compression benchmark and the device benchmark all read it).
DEFAULT_BACKEND: dict[str, str] = {"onnx": "onnxruntime", "tflite": "litert", "coreml": "coreml", "mnn": "mnn",
                                   "lightgbm": "lightgbm", "numpy": "numpy"}


def register(name: str, model_format: str) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    def deco(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        _REGISTRY[name] = factory
        _FORMATS[name] = model_format
        return factory

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def model_format(name: str) -> str:
    return _FORMATS[name]


def batch_size(input_names: list[str], inputs: dict[str, np.ndarray]) -> int:
    """Check every model input is given (BackendError naming the missing ones); the leading dimension."""
    missing = set(input_names) - set(inputs)
    if missing:
        raise BackendError(f"missing model inputs: {sorted(missing)}")
    return int(np.asarray(inputs[input_names[0]]).shape[0])


def create(name: str, model_path: str | Path, *, threads: int = 1) -> Backend:
    """Create backend `name` for the model file at `model_path`."""
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; available: {available()}")
    return _REGISTRY[name](Path(model_path), threads=threads)
