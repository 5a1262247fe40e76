"""Core ML weight compression of the exported fp32 ``.mlpackage`` with ``coremltools.optimize.coreml``.

Methods (``METHODS``): ``linear-int8`` (``linear_quantize_weights``: symmetric per-channel int8), and
``palettize-6bit`` / ``palettize-4bit`` (``palettize_weights`` with k-means: each weight tensor becomes a
64- / 16-entry look-up table plus packed indices; k-means comes from scikit-learn). The program keeps the fp32
exporter's deployment target (iOS16), so the compressed weights are ``constexpr_affine_dequantize`` and
``constexpr_lut_to_dense`` ops that Core ML expands at load time; the math stays fp32.

``weight_threshold`` (default 256 elements, coremltools' default is 2048) decides which weights are compressed:
the device reranker has 35k parameters in many small matrices, and at 2048 only three of them were compressed
(zipped size 141.9 -> 98.9 KB instead of 53.7 KB for linear int8). Bias and layer-norm vectors stay fp32.

Core ML *prediction* needs macOS: ``coreml_scores`` runs the Core ML runtime there and the converted MIL program
in numpy (``converters.coreml.mil_eval``, which evaluates the constexpr ops itself) everywhere else, and says
which in ``.evaluated_by``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_rerank.converters.coreml.convert import save_package, zip_package
from edge_rerank.converters.coreml.mil_eval import MILEvaluator, load_program
from edge_rerank.device_sdk import backends
from edge_rerank.device_sdk.backends import BackendError
from edge_rerank.device_sdk.backends.coreml_backend import _extract

METHODS = ("linear-int8", "palettize-6bit", "palettize-4bit")
EXTRA = "pip install 'edge-rerank[coreml]'"
MIL_NUMPY = "MIL program in numpy"
CORE_ML = "coreml"


def _cto():
    try:
        import coremltools as ct
        import coremltools.optimize.coreml as cto
    except ImportError as exc:
        raise RuntimeError(f"Core ML compression needs coremltools (the [coreml] extra): {EXTRA}") from exc
    return ct, cto


def compression_config(method: str, *, weight_threshold: int = 256):
    """The ``coremltools.optimize.coreml.OptimizationConfig`` for `method`."""
    _, cto = _cto()
    if method == "linear-int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=weight_threshold)
    elif method in ("palettize-6bit", "palettize-4bit"):
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=int(method.split("-")[1][0]), granularity="per_tensor",
                                    weight_threshold=weight_threshold)
    else:
        raise ValueError(f"unknown Core ML compression {method!r}; known: {METHODS}")
    return cto.OptimizationConfig(global_config=op)


def compress_coreml(fp32_mlpackage: str | Path, out_mlpackage: str | Path, *, method: str,
                    weight_threshold: int = 256) -> Path:
    """Compress the weights of the fp32 ML program at `fp32_mlpackage`; save the result as `out_mlpackage`."""
    ct, cto = _cto()
    config = compression_config(method, weight_threshold=weight_threshold)
    if method.startswith("palettize"):
        try:
            import sklearn.cluster  # noqa: F401  # coremltools' k-means
        except ImportError as exc:
            raise RuntimeError(f"Core ML palettization needs scikit-learn (the [coreml] extra): {EXTRA}") from exc
    mlmodel = ct.models.MLModel(str(fp32_mlpackage), skip_model_load=True)
    if method == "linear-int8":
        compressed = cto.linear_quantize_weights(mlmodel, config)
    else:
        import warnings

        with warnings.catch_warnings():  # "Number of distinct clusters (1) found smaller than n_clusters"
            warnings.simplefilter("ignore")
            compressed = cto.palettize_weights(mlmodel, config)
    return save_package(compressed, out_mlpackage)


def package_size(mlpackage: str | Path) -> int:
    """Bytes of the package zipped the way the converters ship it in a bundle (``zip_package``)."""
    with tempfile.TemporaryDirectory(prefix="coreml-size-") as tmp:
        return zip_package(mlpackage, Path(tmp) / "model.mlpackage.zip").stat().st_size


class Scores(np.ndarray):
    """Scores [B, N] that remember what computed them (``evaluated_by``: "coreml" or "MIL program in numpy")."""

    evaluated_by: str = ""

    def __array_finalize__(self, obj) -> None:
        self.evaluated_by = getattr(obj, "evaluated_by", "")


def coreml_runner(mlpackage_or_program) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], str]:
    """(run, evaluated_by) for an ``.mlpackage`` (directory or zip) or a MIL ``Program`` / converted MLModel:
    the Core ML runtime on macOS for files, the MIL program in numpy otherwise."""
    if not isinstance(mlpackage_or_program, str | Path):
        return MILEvaluator(mlpackage_or_program).run, MIL_NUMPY
    path = Path(mlpackage_or_program)
    try:
        return backends.create("coreml", path, threads=1).run, CORE_ML
    except BackendError:
        pass  # not macOS (or no runtime): evaluate the program itself
    if path.suffix == ".zip":
        tmp = tempfile.mkdtemp(prefix="coreml-mil-")
        path = _extract(path, Path(tmp))
        program = load_program(path)
        shutil.rmtree(tmp, ignore_errors=True)  # the program holds its weights in memory
    else:
        program = load_program(path)
    return MILEvaluator(program).run, MIL_NUMPY


def coreml_scores(mlpackage_or_program, inputs: dict[str, np.ndarray]) -> Scores:
    """Scores [B, N] of the Core ML model for `inputs` (leading batch dimension); ``.evaluated_by`` says
    whether the Core ML runtime or the MIL program in numpy computed them."""
    run, by = coreml_runner(mlpackage_or_program)
    out = np.asarray(run(inputs), dtype=np.float32).view(Scores)
    out.evaluated_by = by
    return out
