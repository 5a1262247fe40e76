"""What the command line prints besides results: log levels for ``-q`` / ``-v`` and the third-party noise that
conversion toolchains print (torch / torchvision registration warnings, torchao's missing ``.so``, coremltools'
version notes, oneDNN and TensorFlow C++ logging), hidden unless ``-v``."""

from __future__ import annotations

import logging
import os
import warnings

# loggers of libraries whose INFO / WARNING lines are not the user's business unless they ask (-v)
THIRD_PARTY_LOGGERS = ("absl", "ai_edge_quantizer", "coremltools", "jax", "jax._src", "litert_torch", "matplotlib",
                       "onnxscript", "optuna", "ray", "tensorflow", "torch", "torchao", "urllib3")
# warnings raised from these packages (the module a warning is attributed to)
THIRD_PARTY_WARNINGS = (r"(torch|torchvision|torchao|coremltools|onnx|onnxscript|onnxruntime|jax|litert_torch|"
                        r"ai_edge_\w+|transformers|ray|optuna|sklearn|google\.protobuf|lightgbm|gymnasium)(\.|$)")
# messages seen from them in `export` / `compress` runs, whatever module they are attributed to
NOISY_MESSAGES = (r".*(torchvision|torchao|oneDNN|TensorFlow|coremltools|onnxscript|scikit-learn version|"
                  r"Torch version|torch\.export|TracerWarning|_register_pytree_node|pkg_resources|LeafSpec|"
                  r"Iterating over a tensor might cause the trace).*")
# logging settings the toolchains read from the environment when they load (TF / glog C++ logging, torch._logging)
# (TQDM_DISABLE changes tqdm's *default*: coremltools' pass-pipeline bars go, ours pass `disable=` and stay)
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "2", "TORCH_LOGS": "-torch", "TQDM_DISABLE": "1"}


def configure_output(*, quiet: bool = False, verbose: bool = False) -> None:
    """Our loggers (``edge_rerank.*``) at INFO (DEBUG with `verbose`, WARNING with `quiet`); third-party loggers at
    ERROR, their warnings and C++ logging off unless `verbose`. Environment variables already set are kept."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edge_rerank").setLevel(level)
    if verbose:
        return
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=THIRD_PARTY_WARNINGS)
    warnings.filterwarnings("ignore", message=NOISY_MESSAGES)
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)  # subprocesses (gunicorn, Ray workers) inherit it too
