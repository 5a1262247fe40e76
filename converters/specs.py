"""One export spec per model family: input/output names, dtypes, fixed shapes, per-target tolerance.

Every converter and every validation reads its contract from here, so a format folder never guesses names or
shapes. The shapes are fixed (batch 1, ``N_max`` candidates, ``L_max`` feedback events): LiteRT via
litert-torch only converts fixed shapes, and the device pads anyway (see shared/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_rerank.device_sdk.features import FeatureConfig, input_specs

FORMATS = ("onnx", "tflite", "coreml", "mnn")
# model file name per format (Core ML's .mlpackage is a directory: the bundle ships it zipped)
MODEL_FILES = {"onnx": "reranker.onnx", "tflite": "reranker.tflite", "coreml": "reranker.mlpackage.zip",
               "mnn": "reranker.mnn"}


class ToolchainMissing(RuntimeError):
    """A format's toolchain (an optional extra) is not installed or cannot run here; the message says which
    extra to install or why it cannot work."""


@dataclass(frozen=True)
class IOSpec:
    name: str
    shape: tuple[int, ...]  # including the batch dimension (1)
    dtype: str  # numpy dtype name: "int32" | "float32"


@dataclass(frozen=True)
class Tolerance:
    """What an export must meet on every validation list (scores compared on the real candidates only)."""

    max_abs_diff: float = 1e-4
    min_kendall_tau: float = 0.98  # the worst list
    min_top5_overlap: float = 0.8  # the worst list (near-ties may swap places at the 1e-6 level)

    def to_dict(self) -> dict[str, float]:
        return {"max_abs_diff": self.max_abs_diff, "min_kendall_tau": self.min_kendall_tau,
                "min_top5_overlap": self.min_top5_overlap}


@dataclass(frozen=True)
class ExportSpec:
    family: str
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)  # per format; missing -> Tolerance()

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def tolerance(self, fmt: str) -> Tolerance:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
        return self.tolerances.get(fmt, Tolerance())

    def check_inputs(self, x: dict[str, np.ndarray]) -> None:
        """Raise ValueError naming the first input that is missing or has the wrong shape/dtype."""
        for s in self.inputs:
            if s.name not in x:
                raise ValueError(f"{self.family}: missing input {s.name!r}")
            a = x[s.name]
            if tuple(a.shape) != s.shape or a.dtype != np.dtype(s.dtype):
                raise ValueError(f"{self.family}: input {s.name!r} is {a.dtype}{list(a.shape)}, "
                                 f"the spec wants {s.dtype}{list(s.shape)}")

    def zeros(self) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.shape, dtype=s.dtype) for s in self.inputs}


def device_reranker_spec(fcfg: FeatureConfig) -> ExportSpec:
    """The MVFAN + PRM device reranker (cloud/training/model.py): 20 inputs in the model's argument order,
    one output ``scores`` [1, N_max]. fp32 everywhere, so every target is held to 1e-4."""
    inputs = tuple(IOSpec(n, (1, *shape), dt) for n, shape, dt in input_specs(fcfg))
    outputs = (IOSpec("scores", (1, fcfg.n_max), "float32"),)
    tol = Tolerance()
    return ExportSpec("device-reranker", inputs, outputs, {f: tol for f in FORMATS})


SPECS: dict[str, Callable[[FeatureConfig], ExportSpec]] = {"device-reranker": device_reranker_spec}


def get_spec(family: str, fcfg: FeatureConfig) -> ExportSpec:
    if family not in SPECS:
        raise ValueError(f"no export spec for model family {family!r}; known: {sorted(SPECS)}")
    return SPECS[family](fcfg)
