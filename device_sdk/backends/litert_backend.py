"""TFLite backends: the LiteRT interpreter (``ai-edge-litert``, the default) and the legacy ``tflite-runtime``.

Both run the exported file through its ``serving_default`` signature (named inputs, output ``scores``). The
file has a fixed batch of 1: larger batches run row by row. ``tflite-runtime`` (last release 2.14) is built
against numpy 1.x and cannot load under numpy 2; it returned wrong scores without an error for an int8 file
in an earlier trial (shared/ARCHITECTURE.md), so every export is checked on each runtime it claims.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.backends.base import BackendError, batch_size, register

SERVING_SIGNATURE = "serving_default"  # the signature the LiteRT converter writes and every caller runs


class _TFLiteSignatureBackend:
    name = "litert"
    _module = "ai_edge_litert.interpreter"
    _extra = "pip install 'edge-rerank[litert]'"

    def __init__(self, model_path: Path, *, threads: int = 1):
        try:
            import importlib

            mod = importlib.import_module(self._module)
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError(f"the {self.name} backend needs {self._module.split('.')[0]}: {self._extra}") from exc
        if not Path(model_path).is_file():
            raise BackendError(f"{self.name}: no model file at {model_path}")
        try:
            self._interp = mod.Interpreter(model_path=str(model_path), num_threads=threads)
            self._runner = self._interp.get_signature_runner(SERVING_SIGNATURE)
        except Exception as exc:  # the interpreters raise ValueError/RuntimeError/SystemError for bad files
            raise BackendError(f"{self.name} cannot load {model_path}: {type(exc).__name__}: {exc}") from exc
        sig = self._interp.get_signature_list()[SERVING_SIGNATURE]
        self.input_names, self.output_name = list(sig["inputs"]), sig["outputs"][0]
        details = self._runner.get_input_details()
        self._dtypes = {n: np.dtype(d["dtype"]) for n, d in details.items()}
        self._shapes = {n: tuple(int(s) for s in d["shape"]) for n, d in details.items()}

    def _run_one(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(self._runner(**feeds)[self.output_name], copy=True)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = batch_size(self.input_names, inputs)
        rows = []
        for b in range(batch):
            feeds = {}
            for n in self.input_names:
                a = np.ascontiguousarray(np.asarray(inputs[n])[b: b + 1], dtype=self._dtypes[n])
                if a.shape != self._shapes[n]:
                    raise BackendError(f"input {n!r} has shape {a.shape[1:]}, the model wants {self._shapes[n][1:]}")
                feeds[n] = a
            rows.append(self._run_one(feeds))
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), dtype=np.float32)


@register("litert", "tflite")
class LiteRTBackend(_TFLiteSignatureBackend):
    name = "litert"
    _module = "ai_edge_litert.interpreter"


@register("tflite-runtime", "tflite")
class TFLiteRuntimeBackend(_TFLiteSignatureBackend):
    """Legacy interpreter; only where numpy < 2 (``pip install tflite-runtime 'numpy<2'`` in its own venv)."""

    name = "tflite-runtime"
    _module = "tflite_runtime.interpreter"
    _extra = "pip install tflite-runtime (needs numpy<2; not part of any extra)"

    def __init__(self, model_path: Path, *, threads: int = 1):
        if int(np.__version__.split(".")[0]) >= 2:
            raise BackendError(f"tflite-runtime (built against numpy 1.x) cannot run under numpy {np.__version__}; "
                               "use the 'litert' backend (ai-edge-litert)")
        super().__init__(model_path, threads=threads)
