"""Post-training int8 quantization of the exported fp32 ``.tflite`` with Google's AI Edge Quantizer.

``ai-edge-quantizer`` (PyPI) reads and writes the LiteRT flatbuffer directly and runs calibration in the LiteRT
interpreter: no TensorFlow, no torch. It is already a dependency of ``litert-torch`` (the [tflite] extra).

Modes (every one keeps the backend contract: the signature's float32/int32 inputs under their names, float32
``scores`` [1, N]):

* ``weight-only-int8``: symmetric per-channel int8 weights, dequantized to float before each op (float math).
* ``dynamic-int8``: the same int8 weights; activations quantized on the fly by the kernels (integer matmuls).
* ``full-int8``: static int8, weights per-channel and activations per-tensor, ranges calibrated on real lists.
  Two deviations from the quantizer's stock ``static_wi8_ai8`` recipe: (1) the graph inputs and output stay
  float (the quantizer inserts quantize/dequantize ops inside the model), so the device feeds the same tensors
  as for fp32; (2) ranges are the true min/max over the calibration lists (the quantizer's default is a moving
  average over calibration batches, which at batch 1 clips the rare large activations), and every op that
  touches a tensor whose calibrated range exceeds ``float_range_threshold`` stays float. Those are the
  attention-mask additions (``(1 - mask) * -1e4``), the softmaxes after them and the concatenations feeding
  them: an int8 step of ~40 would flatten every real logit into one bucket. The ops kept float are reported in
  ``info["float_ops"]`` as (op name, op scope). Measured on the trained test reranker (97 held-out lists, vs
  the fp32 file): stock recipe with float io max abs diff 1.11, mean Kendall τ 0.72; float islands alone 1.12 /
  0.72; true min/max alone 0.94 / 0.87; both 0.105 / 0.979. Neither change alone is enough.
  The result is not faster than fp32 on this CPU (XNNPACK, one thread, a full list: 0.14 ms vs 0.09 ms): the
  float islands cost quantize/dequantize pairs. And it is a mixed graph (31 of 206 ops float on the test
  model): an integer-only accelerator would run those ops on the CPU. The weight-only and dynamic modes are
  smaller (no int32 biases, no quantize/dequantize ops) and closer to fp32.

Calibration and the float islands use two non-exported helpers of ai-edge-quantizer 0.10 (``Calibrator`` with a
``qsv_update_func``, ``Quantizer._float_model``): the [tflite] extra pins ``ai-edge-quantizer>=0.10,<0.11``
(litert-torch itself pins ``0.10.*``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from edge_rerank.device_sdk.backends.litert_backend import SERVING_SIGNATURE

MODES = ("weight-only-fp16", "weight-only-int8", "dynamic-int8", "full-int8")
EXTRA = "pip install 'edge-rerank[tflite]'"


def _aeq():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise RuntimeError(f"LiteRT quantization needs ai-edge-quantizer (the [tflite] extra): {EXTRA}") from exc
    return quantizer, recipe


def calibration_lists(calibration: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """Up to `n` batch-1 inputs spread evenly over the rows of `calibration` (``Samples.inputs``-like)."""
    size = int(next(iter(calibration.values())).shape[0])
    if size == 0:
        raise ValueError("calibration inputs are empty")
    idx = np.unique(np.linspace(0, size - 1, min(n, size)).round().astype(int))
    return [{k: np.ascontiguousarray(v[i: i + 1]) for k, v in calibration.items()} for i in idx]


def quantize_tflite(fp32_tflite: str | Path, out_path: str | Path, *, mode: str,
                    calibration: dict[str, np.ndarray] | None = None, n_calibration: int = 200,
                    float_range_threshold: float = 1e3, info: dict[str, Any] | None = None) -> Path:
    """Quantize the fp32 LiteRT model at `fp32_tflite` to `out_path` with `mode` (one of ``MODES``).

    ``full-int8`` needs `calibration`: real model inputs with a leading row dimension (e.g. the training
    ``Samples.inputs``; at most `n_calibration` rows are used, one list at a time). If `info` is a dict it is
    filled with what was done (recipe, calibration lists, ops kept float)."""
    if mode not in MODES:
        raise ValueError(f"unknown LiteRT quantization mode {mode!r}; known: {MODES}")
    quantizer, recipe = _aeq()
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    fp32_tflite, out_path = Path(fp32_tflite), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    info = {} if info is None else info
    info.update(mode=mode, float_ops=[], n_calibration=0)
    # the quantizer logs each step and draws progress bars on stdout/stderr: keep the caller's output clean
    quiet = contextlib.ExitStack()
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    absl_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with quiet:
            if mode == "weight-only-fp16":  # fp16 weights of the matmuls and lookups, float compute
                q = quantizer.Quantizer(str(fp32_tflite))
                for op in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.EMBEDDING_LOOKUP):
                    q.add_weight_only_config(".*", op, 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
                result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
            elif mode == "weight-only-int8":
                q = quantizer.Quantizer(str(fp32_tflite), recipe.weight_only_wi8_afp32())
                result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
            elif mode == "dynamic-int8":
                q = quantizer.Quantizer(str(fp32_tflite), recipe.dynamic_wi8_afp32())
                result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
            else:
                if not calibration:
                    raise ValueError("full-int8 needs calibration inputs (a dict of numpy arrays, rows = lists)")
                q = quantizer.Quantizer(str(fp32_tflite), recipe.static_wi8_ai8())
                io_ops = (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT)
                for io_op in io_ops:  # float graph inputs/outputs: the same interface as fp32
                    q.update_quantization_recipe(".*", io_op, None, AlgorithmName.NO_QUANTIZE)
                lists = calibration_lists(calibration, n_calibration)
                qsvs = _calibrate_min_max(q, lists)
                for scope, op_name in _wide_range_ops(q, qsvs, float_range_threshold):
                    q.update_quantization_recipe("^" + re.escape(scope) + "$", op_name, None,
                                                 AlgorithmName.NO_QUANTIZE)
                    info["float_ops"].append((op_name.value, scope))
                info["n_calibration"] = len(lists)
                result = q.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
            info["recipe"] = q.get_quantization_recipe()
    finally:
        logging.getLogger().setLevel(absl_level)
    out_path.write_bytes(bytes(result.quantized_model))
    return out_path


def _calibrate_min_max(q, lists: list[dict[str, np.ndarray]]) -> dict:
    """Calibrate with the true min/max over all lists (not the quantizer's default moving average)."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    interp_inputs = _signature_dtypes(q)
    feeds = [{k: np.ascontiguousarray(v, dtype=interp_inputs.get(k, v.dtype)) for k, v in x.items()
              if k in interp_inputs} for x in lists]
    cal = calibrator.Calibrator(q._float_model_buffer, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    cal.calibrate({SERVING_SIGNATURE: feeds}, q._recipe_manager)
    return cal.get_model_qsvs()


def _signature_dtypes(q) -> dict[str, np.dtype]:
    from ai_edge_litert import interpreter

    interp = interpreter.Interpreter(model_content=bytes(q._float_model_buffer))
    details = interp.get_signature_runner(SERVING_SIGNATURE).get_input_details()
    return {n: np.dtype(d["dtype"]) for n, d in details.items()}


def _wide_range_ops(q, qsvs: dict, threshold: float) -> list[tuple[str, Any]]:
    """(scope, op name) of every op of the main graph with an input or output whose calibrated |range| >
    `threshold`."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    def extent(name: str) -> float:
        v = qsvs.get(name)
        if not v:
            return 0.0
        return max(abs(float(np.min(v["min"]))), abs(float(np.max(v["max"]))))

    model = q._float_model
    out = []
    for sg in model.subgraphs:
        for op in sg.operators:
            names = [fu.get_tensor_name(sg.tensors[i]) for i in [*op.inputs, *op.outputs] if i != -1]
            if any(extent(n) > threshold for n in names):
                op_name = fu.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
                if op_name is not None:
                    out.append((fu.get_op_scope(op, sg.tensors), op_name))
    return out
