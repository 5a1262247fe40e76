"""Evaluate a converted Core ML ML program (its MIL ops) in numpy, fp32, off macOS.

Core ML prediction needs macOS. This interpreter runs the *converted program* op by op with the MIL
semantics of the ops the device reranker lowers to, so a conversion error (a wrong transpose, a mask
inverted, a dropped op) shows up as a numeric difference on Linux too. It does not exercise Core ML's own
kernels: the macOS parity test does. An op it does not know raises ``UnsupportedOp``, never a guess.

Compressed programs (``coremltools.optimize.coreml``) store weights in ``constexpr_*`` ops that Core ML
decompresses at load time; they are evaluated here with the formulas of coremltools' op definitions:
``constexpr_affine_dequantize`` (iOS16 linear int8), ``constexpr_lut_to_dense`` (iOS16 packed-bit palette and
iOS18 unpacked per-group palette), ``constexpr_blockwise_shift_scale`` (iOS18 linear, block-wise).
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


def _per_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A scalar or a vector along `axis`, reshaped to broadcast against a rank-`rank` tensor."""
    v = np.asarray(v)
    if v.ndim == 0:
        return v
    shape = [1] * rank
    shape[_axis(axis, rank)] = v.shape[0]
    return v.reshape(shape)


def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    """iOS16: ``scale * (quantized_data - zero_point)``, scale/zero_point scalars or vectors along `axis`;
    the output has the scale's dtype."""
    q = np.asarray(quantized_data)
    scale = np.asarray(scale)
    zp = _per_axis(np.asarray(zero_point).astype(np.float64), q.ndim, int(axis))
    out = (q.astype(np.float64) - zp) * _per_axis(scale.astype(np.float64), q.ndim, int(axis))
    return out.astype(scale.dtype)


def unpack_lsb_first(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """`count` unsigned `nbits`-bit values packed into bytes starting at the least significant bit (an index may
    straddle two bytes: its low bits fill the high bits of one byte, the rest the low bits of the next)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: nbits * count]
    weights = (1 << np.arange(nbits)).astype(np.int64)
    return (bits.reshape(count, nbits).astype(np.int64) * weights).sum(axis=1)


def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    """iOS16 (with `shape`): `indices` is a byte vector of packed log2(len(lut))-bit keys, output
    ``lut[keys].reshape(shape)``. iOS18 (no `shape`): `indices` has the output's shape (unpacked), `lut` has
    rank ``rank(indices) + 2`` ``[g_0, ..., g_{r-1}, NUM_PALETTES, VECTOR_SIZE]``: element ``i`` reads palette
    ``i // (indices.shape / lut.shape[:r])`` (vector palettes, VECTOR_SIZE > 1, are not supported here)."""
    lut = np.asarray(lut)
    if shape is not None:
        shape = tuple(int(d) for d in np.asarray(shape))
        nbits = int(np.log2(lut.size))
        keys = unpack_lsb_first(indices, nbits, int(np.prod(shape)))
        return lut[keys].reshape(shape)
    idx = np.asarray(indices).astype(np.int64)
    r = idx.ndim
    if lut.ndim != r + 2:
        raise UnsupportedOp(f"constexpr_lut_to_dense: lut rank {lut.ndim} != indices rank {r} + 2")
    if lut.shape[-1] != 1:
        raise UnsupportedOp("constexpr_lut_to_dense with vector palettes (VECTOR_SIZE > 1)")
    groups = lut.shape[:r]
    block = [d // g for d, g in zip(idx.shape, groups, strict=True)]
    grid = np.meshgrid(*[np.arange(d) // b for d, b in zip(idx.shape, block, strict=True)], indexing="ij")
    return lut[(*grid, idx, np.zeros_like(idx))]


def constexpr_blockwise_shift_scale(data, scale, offset=None):
    """iOS18: ``scale[i // block] * (data[i] - offset[i // block])`` per dimension, block = data.shape /
    scale.shape; the output has the scale's dtype."""
    scale = np.asarray(scale)
    d = np.asarray(data).astype(np.float64)
    s = scale.astype(np.float64)
    o = None if offset is None else np.asarray(offset).astype(np.float64)
    for ax, (n, m) in enumerate(zip(d.shape, s.shape, strict=True)):
        if n % m:
            raise ValueError(f"constexpr_blockwise_shift_scale: dim {ax}: {n} not a multiple of {m} scales")
        s = np.repeat(s, n // m, axis=ax)
        o = None if o is None else np.repeat(o, n // m, axis=ax)
    return ((d if o is None else d - o) * s).astype(scale.dtype)


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
    # the residual on the cloud score (has_feedback = clamp(sum of the feedback masks, 0, 1))
    "reduce_sum": lambda x, axes=None, keep_dims=False: np.sum(
        x, axis=None if axes is None else tuple(int(a) for a in np.atleast_1d(axes)), keepdims=bool(keep_dims)),
    "clip": lambda x, alpha, beta: np.clip(x, alpha, beta),
    "identity": lambda x: np.asarray(x),
    # iOS18 conversions of the same model add these two (seen while checking the iOS18 constexpr ops)
    "greater_equal": lambda x, y: np.greater_equal(x, y),
    "select": lambda cond, a, b: np.where(cond, a, b),
    "constexpr_affine_dequantize": constexpr_affine_dequantize,
    "constexpr_lut_to_dense": constexpr_lut_to_dense,
    "constexpr_blockwise_shift_scale": constexpr_blockwise_shift_scale,
}


def _f32(a):
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype == np.float64 else a


def load_program(mlpackage):
    """The MIL program of a saved ``.mlpackage`` (read from its protobuf and weight file; no Core ML runtime)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models.utils import _convert_model_spec_to_pymil_prog

    mlmodel = ct.models.MLModel(str(mlpackage), skip_model_load=True)
    return _convert_model_spec_to_pymil_prog(mlmodel, mlmodel.get_spec().specificationVersion, milproto.load)


class MILEvaluator:
    """Runs the main function of ``mlmodel._mil_program`` (or of a MIL ``Program`` given directly) on numpy
    inputs (batch-1, the spec's shapes)."""

    def __init__(self, mlmodel):
        prog = mlmodel if hasattr(mlmodel, "functions") else getattr(mlmodel, "_mil_program", None)
        if prog is None:
            raise ValueError("the model carries no MIL program (use the object returned by the converter, "
                             "or mil_eval.load_program on a saved .mlpackage)")
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
