"""Evaluate a converted Core ML ML program (its MIL ops) in numpy, fp32, off macOS.

Core ML prediction needs macOS. This interpreter runs the *converted program* op by op with the MIL
semantics of the ops the device reranker lowers to, so a conversion error (a wrong transpose, a mask
inverted, a dropped op) shows up as a numeric difference on Linux too. It does not exercise Core ML's own
kernels: the macOS parity test does. An op it does not know raises ``UnsupportedOp``, never a guess.
"""

from __future__ import annotations

import numpy as np


class UnsupportedOp(NotImplementedError):
    pass


def _axis(a: int, rank: int) -> int:
    return int(a) + rank if int(a) < 0 else int(a)


def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    r = x.ndim
    stride = np.ones(r, dtype=int) if stride is None else stride
    begin_mask = np.zeros(r, bool) if begin_mask is None else begin_mask
    end_mask = np.zeros(r, bool) if end_mask is None else end_mask
    sl = tuple(slice(None if begin_mask[i] else int(begin[i]), None if end_mask[i] else int(end[i]), int(stride[i]))
               for i in range(r))
    y = x[sl]
    if squeeze_mask is not None and np.any(squeeze_mask):
        y = y.squeeze(axis=tuple(int(i) for i in np.flatnonzero(squeeze_mask)))
    return y


def _layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    axes = tuple(range(x.ndim)) if axes is None else tuple(_axis(a, x.ndim) for a in np.atleast_1d(axes))
    x64 = x.astype(np.float64)  # statistics in float64: a constant row must normalise to exactly 0
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = ((x64 - mean) / np.sqrt(var + float(epsilon))).astype(np.float32)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


def _split(x, axis, split_sizes=None, num_splits=None):
    axis = _axis(axis, x.ndim)
    if split_sizes is not None:
        return np.split(x, np.cumsum(split_sizes)[:-1], axis=axis)
    return np.split(x, int(num_splits), axis=axis)


def _matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x:
        x = np.swapaxes(x, -1, -2)
    if transpose_y:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    if int(batch_dims) != 0:
        raise UnsupportedOp("gather with batch_dims != 0")
    idx = np.asarray(indices)
    if np.any(idx < 0) or np.any(idx >= x.shape[int(axis)]):
        raise IndexError(f"gather index out of range [0, {x.shape[int(axis)]})")
    return np.take(x, idx, axis=int(axis))


_CAST = {"fp32": np.float32, "fp16": np.float16, "int32": np.int32, "bool": np.bool_, "int16": np.int16}

OPS = {
    "linear": lambda x, weight, bias=None: x @ weight.T + (0 if bias is None else bias),
    "gather": _gather,
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "real_div": lambda x, y: x / y,
    "expand_dims": lambda x, axes: np.expand_dims(x, tuple(int(a) for a in np.atleast_1d(axes))),
    "split": _split,
    "matmul": _matmul,
    "concat": lambda values, axis, interleave=False: np.concatenate(values, axis=int(axis)),
    "softmax": _softmax,
    "slice_by_index": _slice_by_index,
    "tile": lambda x, reps: np.tile(x, tuple(int(r) for r in reps)),
    "relu": lambda x: np.maximum(x, 0),
    "reshape": lambda x, shape: np.reshape(x, tuple(int(s) for s in shape)),
    "transpose": lambda x, perm: np.transpose(x, tuple(int(p) for p in perm)),
    "squeeze": lambda x, axes=None: np.squeeze(x, None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))),
    "layer_norm": _layer_norm,
    "cast": lambda x, dtype: np.asarray(x).astype(_CAST[str(dtype)]),
}


def _f32(a):
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype == np.float64 else a


class MILEvaluator:
    """Runs ``mlmodel._mil_program``'s main function on numpy inputs (batch-1, the spec's shapes)."""

    def __init__(self, mlmodel):
        prog = getattr(mlmodel, "_mil_program", None)
        if prog is None:
            raise ValueError("the model carries no MIL program (use the object returned by the converter)")
        self._fn = prog.functions["main"]
        unknown = sorted({op.op_type for op in self._fn.operations} - set(OPS) - {"const"})
        if unknown:
            raise UnsupportedOp(f"no numpy evaluation for MIL ops {unknown}")
        self.output_names = [v.name for v in self._fn.outputs]

    def _value(self, env: dict, var):
        if isinstance(var, list | tuple):
            return [self._value(env, v) for v in var]
        if var.name in env:
            return env[var.name]
        if var.val is not None:
            return _f32(var.val)
        raise KeyError(f"MIL var {var.name!r} has no value yet")

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Scores of the first output; inputs with a leading batch dimension of 1 (larger batches row by row)."""
        names = list(self._fn.inputs)
        batch = int(np.asarray(inputs[names[0]]).shape[0])
        if batch != 1:
            return np.concatenate([self.run({k: v[b: b + 1] for k, v in inputs.items()}) for b in range(batch)])
        env = {n: np.asarray(inputs[n]) for n in names}
        for op in self._fn.operations:
            if op.op_type == "const":
                env[op.outputs[0].name] = _f32(op.outputs[0].val)
                continue
            kwargs = {k: self._value(env, v) for k, v in op.inputs.items()}
            out = OPS[op.op_type](**kwargs)
            outs = out if isinstance(out, list) else [out]
            for var, val in zip(op.outputs, outs, strict=True):
                env[var.name] = _f32(val)
        return np.asarray(env[self.output_names[0]], dtype=np.float32)
