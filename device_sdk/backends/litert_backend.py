"""TFLite backends: the LiteRT interpreter (``ai-edge-litert``, the default) and the legacy ``tflite-runtime``.

Both run the exported file through its ``serving_default`` signature (named inputs, output ``scores``). The
file has a fixed batch of 1: larger batches run row by row.

Per call, the signature runner resizes every input and re-plans the tensor arena (``ResizeInputTensor`` +
``AllocateTensors``) before it sets the inputs, although our files have fixed shapes: a third of a call's time for
this model. When the signature is the interpreter's primary subgraph with the same tensors (every file the
converters write), the backend sets the input tensors, invokes and reads the output through the interpreter's
public tensor API instead, on an arena allocated once (same kernels, same bits: checked at load on a probe
input); any other file keeps the signature runner. ``tflite-runtime`` (last release 2.14) is built
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
        self.output_dtype = np.dtype(self._runner.get_output_details()[self.output_name]["dtype"])
        self._direct: list[tuple[str, int]] | None = None  # (input name, tensor index) on the primary subgraph
        self._out_index = -1
        self._use_primary_subgraph(details, self._runner.get_output_details())

    def _use_primary_subgraph(self, details: dict, out_details: dict) -> None:
        """Switch to the interpreter's own tensor API when the signature is its primary subgraph (same input and
        output tensors) and a probe input scores the same bits both ways; otherwise keep the signature runner."""
        interp = self._interp
        primary_in = {(d["index"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]))
                      for d in interp.get_input_details()}
        sig_in = {(d["index"], self._shapes[n], self._dtypes[n]) for n, d in details.items()}
        out_index = int(out_details[self.output_name]["index"])
        if (len(interp.get_signature_list()) != 1 or primary_in != sig_in
                or out_index not in {d["index"] for d in interp.get_output_details()}):
            return
        rng = np.random.default_rng(0)
        probe = {n: (rng.standard_normal(self._shapes[n]).astype(self._dtypes[n])
                     if self._dtypes[n].kind == "f" else np.zeros(self._shapes[n], self._dtypes[n]))
                 for n in self.input_names}
        try:
            via_runner = self._run_one(probe)
            # the interpreter refuses to invoke while another object (the runner) holds its wrapper
            runner, self._runner = self._runner, None
            del runner
            interp.allocate_tensors()
            self._direct, self._out_index = [(n, int(details[n]["index"])) for n in self.input_names], out_index
            same = np.array_equal(self._run_one(probe), via_runner, equal_nan=True)
        except Exception:  # noqa: BLE001 - any surprise: the runner path, which loaded fine
            same = False
        if not same:
            self._direct = None
            self._runner = interp.get_signature_runner(SERVING_SIGNATURE)

    def _run_one(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._direct is None:
            return np.array(self._runner(**feeds)[self.output_name], copy=True)
        interp = self._interp
        for n, i in self._direct:
            interp.set_tensor(i, feeds[n])
        interp.invoke()
        return interp.get_tensor(self._out_index)  # a copy

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = batch_size(self.input_names, inputs)
        if batch == 1 and self._direct is not None:
            try:  # the common call: arrays of the model's dtypes and shapes go in as they are
                return self._run_one(inputs)
            except (ValueError, TypeError):  # the interpreter refused one (dtype, shape): convert or say which
                pass
        rows = []
        for b in range(batch):
            feeds = {}
            for n in self.input_names:
                a = inputs[n]
                a = a if batch == 1 and type(a) is np.ndarray else np.asarray(a)[b: b + 1]
                if a.dtype != self._dtypes[n] or not a.flags.c_contiguous:
                    a = np.ascontiguousarray(a, dtype=self._dtypes[n])
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
