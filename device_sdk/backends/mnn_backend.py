"""MNN backend (PyPI ``mnn``): the runtime the production system used, CPU, fp32 ("high" precision).

Uses MNN's Module API (``MNN.nn.load_module_from_file``) with the inputs in the file's declared order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.backends.base import BackendError, batch_size, register


@register("mnn", "mnn")
class MNNBackend:
    name = "mnn"

    def __init__(self, model_path: Path, *, threads: int = 1, input_names: list[str] | None = None):
        try:
            import MNN
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("the mnn backend needs the [mnn] extra: pip install 'edge-rerank[mnn]'") from exc
        if not Path(model_path).is_file():
            raise BackendError(f"mnn: no model file at {model_path}")
        self._F = MNN.expr
        try:
            info = MNN.nn.load_module_from_file(str(model_path), [], [], dynamic=True).get_info()
            self.input_names = list(input_names or info["inputNames"])
            self.output_name = info["outputNames"][0]
            rt = MNN.nn.create_runtime_manager(({"backend": 0, "precision": "high", "numThread": int(threads)},))
            self._module = MNN.nn.load_module_from_file(str(model_path), self.input_names, [self.output_name],
                                                        runtime_manager=rt)
        except Exception as exc:  # MNN raises generic errors (or returns None) for bad files
            raise BackendError(f"mnn cannot load {model_path}: {type(exc).__name__}: {exc}") from exc
        declared = dict(zip(info["inputNames"], info.get("inputs", []), strict=False))
        self._int = {n for n, v in declared.items() if "int" in str(v.dtype).lower()}
        self._shapes = {n: tuple(int(d) for d in v.shape) for n, v in declared.items()}

    def _const(self, name: str, a: np.ndarray):
        F = self._F
        want = self._shapes.get(name)
        if want is not None and a.shape != want:
            raise BackendError(f"input {name!r} has shape {a.shape[1:]}, the model wants {want[1:]}")
        if name in self._int:
            a = np.ascontiguousarray(a, dtype=np.int32)
            return F.const(a, list(a.shape), F.NCHW, F.int)
        a = np.ascontiguousarray(a, dtype=np.float32)
        return F.const(a, list(a.shape), F.NCHW, F.float)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = batch_size(self.input_names, inputs)
        rows = []
        for b in range(batch):
            out = self._module.forward([self._const(n, np.asarray(inputs[n])[b: b + 1]) for n in self.input_names])
            out = out[0] if isinstance(out, list | tuple) else out
            rows.append(np.array(out.read(), dtype=np.float32).reshape(out.shape))
        return np.concatenate(rows, axis=0)
