"""TFLite backends: the LiteRT interpreter (``ai-edge-litert``, the default) and the legacy ``tflite-runtime``.

Both run the exported file through its ``serving_default`` signature (named inputs, output ``scores``). The
file has a fixed batch of 1: larger batches run row by row.

Per call, the signature runner resizes every input and re-plans the tensor arena (``ResizeInputTensor`` +
``AllocateTensors``) before it sets the inputs, although our files have fixed shapes: a third of a call's time for
this model. When the signature is the interpreter's primary subgraph with the same tensors (every file the
converters write), the backend sets the input tensors, invokes and reads the output through the interpreter's
tensor calls instead (its pybind wrapper's, which the public methods wrap), on an arena allocated once (same
kernels, same bits: checked at load on a probe input); any other file keeps the signature runner. On that path
only the inputs some operator of the file reads are copied in per call (the default lean graph never reads the
eight ``seq_*`` feedback inputs but the two masks); the others are still checked (present, the model's dtype and
shape), so the backend keeps the full input contract.
``tflite-runtime`` (last release 2.14) is built
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
        # on the primary subgraph (None: the signature runner): (name, tensor index, dtype) of each input copied in
        self._feed: list[tuple[str, int, np.dtype]] | None = None
        self._unread: list[tuple[str, np.dtype, tuple[int, ...]]] = []  # inputs no operator reads: only checked
        self._out_index = -1
        self._calls: tuple | None = None  # (set_tensor, invoke, get_tensor) on the direct path
        self._use_primary_subgraph(details, self._runner.get_output_details())

    def _use_primary_subgraph(self, details: dict, out_details: dict) -> None:
        """Switch to the interpreter's own tensor API when the signature is its primary subgraph (same input and
        output tensors) and a probe input scores the same bits both ways; otherwise keep the signature runner.
        On that path an input no operator reads is not copied in per call: the load checks that changing it does
        not change the runner's scores, and that the direct path gives the runner's bits without setting it."""
        interp = self._interp
        primary_in = {(d["index"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]))
                      for d in interp.get_input_details()}
        sig_in = {(d["index"], self._shapes[n], self._dtypes[n]) for n, d in details.items()}
        out_index = int(out_details[self.output_name]["index"])
        if (len(interp.get_signature_list()) != 1 or primary_in != sig_in
                or out_index not in {d["index"] for d in interp.get_output_details()}):
            return
        index = {n: int(details[n]["index"]) for n in self.input_names}
        read = _read_tensors(interp)
        unread = {n for n in self.input_names if read is not None and index[n] not in read}
        rng = np.random.default_rng(0)

        def value(r: np.random.Generator, n: str, k: int) -> np.ndarray:
            # floats in [0, 1): masks and counts of this positive reach every branch (a sum of masks clamped
            # to [0, 1] gates the model's part of the score; negative draws could switch it off)
            if self._dtypes[n].kind == "f":
                return r.random(self._shapes[n]).astype(self._dtypes[n])
            return np.full(self._shapes[n], k, self._dtypes[n])

        probe = {n: value(rng, n, 0) for n in self.input_names}
        try:
            via_runner = self._run_one(probe)
        except Exception:  # noqa: BLE001 - the runner path, which loaded fine
            return
        if unread:
            other = np.random.default_rng(1)
            changed = {**probe, **{n: value(other, n, 1) for n in unread}}
            try:
                if not np.array_equal(self._run_one(changed), via_runner, equal_nan=True):
                    unread = set()  # an input the op list says nobody reads changed the scores: set them all
            except Exception:  # noqa: BLE001
                unread = set()
        try:
            # the interpreter refuses to invoke while another object (the runner) holds its wrapper
            runner, self._runner = self._runner, None
            del runner
            interp.allocate_tensors()
            self._feed = [(n, index[n], self._dtypes[n]) for n in self.input_names if n not in unread]
            self._unread = [(n, self._dtypes[n], self._shapes[n]) for n in self.input_names if n in unread]
            self._out_index = out_index
            same = False
            for calls in (_wrapper_calls, _public_calls):
                self._calls = None  # (the wrapper's calls held make the public invoke refuse)
                self._calls = calls(interp)
                same = all(np.array_equal(run(probe), via_runner, equal_nan=True)
                           for run in (self._run_one, self._run_fast, self._run_fast))
                if same:
                    break
        except Exception:  # noqa: BLE001 - any surprise: the runner path, which loaded fine
            same = False
        if not same:
            self._feed, self._unread = None, []
            self._calls = None
            self._runner = interp.get_signature_runner(SERVING_SIGNATURE)

    def _run_one(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._feed is None:
            return np.array(self._runner(**feeds)[self.output_name], copy=True)
        set_tensor, invoke, get_tensor = self._calls  # type: ignore[misc]
        for n, i, _ in self._feed:
            set_tensor(i, feeds[n])
        invoke()
        return get_tensor(self._out_index)  # a copy

    def _run_fast(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One list of arrays in the model's (native) dtypes and shapes, as they are; anything else raises one of
        KeyError, AttributeError, ValueError (the interpreter refuses a shape), TypeError: then `run` checks and
        converts. The interpreter checks the dtype's kind but not its byte order (a byte-swapped float32 array would
        go in as raw bytes), hence the dtype test here."""
        set_tensor, invoke, get_tensor = self._calls  # type: ignore[misc]
        for n, i, want in self._feed:  # type: ignore[union-attr]
            a = inputs[n]
            dt = a.dtype
            if dt is not want and dt != want:
                raise TypeError(n)
            set_tensor(i, a)
        for n, want, shape in self._unread:
            a = inputs[n]
            dt = a.dtype
            if (dt is not want and dt != want) or a.shape != shape:
                raise TypeError(n)
        invoke()
        return get_tensor(self._out_index)  # a copy

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self._feed is not None:
            try:  # the common call: one list, arrays of the model's dtypes and shapes go in as they are
                return self._run_fast(inputs)
            except (KeyError, AttributeError, ValueError, TypeError):  # missing, other dtype, shape, batch > 1
                pass
        batch = batch_size(self.input_names, inputs)
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


def _wrapper_calls(interp) -> tuple:
    """(set_tensor, invoke, get_tensor) of the interpreter's pybind wrapper: the calls the public methods make,
    without their Python frame and ``invoke``'s check that no numpy view of the arena (``tensor()``) is alive,
    which this backend never takes (``get_tensor`` copies). Holding them makes the public ``invoke`` refuse,
    so the backend uses these for every direct call. The public methods if the wrapper is not there."""
    w = getattr(interp, "_interpreter", None)
    calls = tuple(getattr(w, a, None) for a in ("SetTensor", "Invoke", "GetTensor"))
    return calls if all(callable(c) for c in calls) else _public_calls(interp)


def _public_calls(interp) -> tuple:
    return interp.set_tensor, interp.invoke, interp.get_tensor


def _read_tensors(interp) -> set[int] | None:
    """Every tensor index some operator of the primary subgraph takes as an input (delegate kernels and the
    nodes they replaced alike), and the subgraph's outputs; None if the interpreter cannot list its operators."""
    try:
        ops = interp._get_ops_details()
        read = {int(t) for op in ops for t in op["inputs"]}
    except Exception:  # noqa: BLE001 - a runtime without the op list: treat every input as read
        return None
    return read | {int(d["index"]) for d in interp.get_output_details()}


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
