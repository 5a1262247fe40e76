"""Which pyproject extra installs which importable module: one table behind the "pip install ..." hints (the
CLI's one-line error for a missing module, ``compress --list``). It lives in the package every other one may
import; ``tests/test_packaging.py`` checks it against pyproject.toml, so a hint never names an extra that does
not bring the module."""

from __future__ import annotations

import importlib.util

# extra -> who pays for it (README "Install"); `all` is every extra, `make` installs all + dev
EXTRAS: dict[str, str] = {
    "onnx": "device runtime: onnxruntime (the default bundle format)",
    "litert": "device runtime: the LiteRT / TFLite interpreter only",
    "tflite": "TFLite conversion (litert-torch, ai-edge-quantizer; pulls jax and transformers) + the interpreter",
    "coreml": "Core ML conversion and compression (coremltools, scikit-learn)",
    "mnn": "MNN conversion and runtime",
    "cloud": "the companion service: Flask, gunicorn, Parquet logs, Redis client, Prometheus metrics",
    "train": "training and ONNX export: torch (install the pinned wheel first), LightGBM, Optuna",
    "sim": "the phone-session simulator, A/B reports and plots, the Gymnasium env",
    "ray": "simulate --ray (Ray core); train --ray (Ray Data sample building, Ray Train data-parallel training)",
    "sign": "ed25519 bundle signatures",
    "coarse": "approximate retrieval (faiss-cpu) for the cloud's coarse two-tower stage over large catalogs",
}

# top-level module -> the extra that brings it
MODULE_EXTRA: dict[str, str] = {
    "onnxruntime": "onnx",
    "ai_edge_litert": "litert",
    "litert_torch": "tflite",
    "ai_edge_quantizer": "tflite",
    "coremltools": "coreml",
    "sklearn": "coreml",
    "MNN": "mnn",
    "faiss": "coarse",
    "flask": "cloud",
    "gunicorn": "cloud",
    "gevent": "cloud",
    "pyarrow": "cloud",
    "redis": "cloud",
    "prometheus_client": "cloud",
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "lightgbm": "train",
    "optuna": "train",
    "tqdm": "train",
    "scipy": "sim",
    "matplotlib": "sim",
    "gymnasium": "sim",
    "requests": "sim",
    "greenlet": "sim",
    "ray": "ray",
    "cryptography": "sign",
}


def extra_for(module: str) -> str | None:
    """The extra that installs `module` (a dotted name counts by its top-level package), or None if none does."""
    return MODULE_EXTRA.get(module.split(".", 1)[0])


def install_hint(modules: list[str] | tuple[str, ...], fallback: str | None = None) -> str:
    """``pip install 'edge-rerank[a,b]'`` for the extras that bring `modules` (`fallback` for modules no extra
    knows; empty string if there is nothing to suggest)."""
    extras = sorted({e for e in (extra_for(m) or fallback for m in modules) if e})
    return f"pip install 'edge-rerank[{','.join(extras)}]'" if extras else ""


def importable(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
