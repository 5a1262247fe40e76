"""The numpy MIL interpreter's ops against torch (the semantics Core ML's ops are defined to match)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_rerank.converters.coreml.mil_eval import OPS, UnsupportedOp, _gather

floats = st.floats(-1e3, 1e3, width=32, allow_nan=False)


@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(2, 9)), elements=floats),
       st.integers(-3, 2))
def test_softmax_matches_torch(x, axis):
    np.testing.assert_allclose(OPS["softmax"](x, axis), torch.softmax(torch.from_numpy(x), dim=axis).numpy(),
                               atol=1e-6)


@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(2, 9)), elements=floats))
def test_layer_norm_matches_torch(x):
    d = x.shape[-1]
    g, b = np.linspace(0.5, 1.5, d, dtype=np.float32), np.linspace(-1, 1, d, dtype=np.float32)
    want = torch.nn.functional.layer_norm(torch.from_numpy(x), (d,), torch.from_numpy(g), torch.from_numpy(b))
    np.testing.assert_allclose(OPS["layer_norm"](x, axes=np.array([-1]), gamma=g, beta=b, epsilon=1e-5),
                               want.numpy(), atol=2e-3, rtol=1e-4)


@given(st.data())
def test_slice_by_index_matches_python_slicing(data):
    shape = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)))
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    begin = np.array([data.draw(st.integers(0, s - 1)) for s in shape])
    end = np.array([data.draw(st.integers(b + 1, s)) for b, s in zip(begin, shape, strict=True)])
    bm = np.array(data.draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    em = np.array(data.draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    want = x[tuple(slice(None if bm[i] else begin[i], None if em[i] else end[i]) for i in range(3))]
    np.testing.assert_array_equal(OPS["slice_by_index"](x, begin, end, begin_mask=bm, end_mask=em), want)


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.booleans(), st.booleans())
def test_matmul_transposes(b, m, k, n, tx, ty):
    rng = np.random.default_rng(b * 1000 + m * 100 + k * 10 + n)
    x = rng.normal(size=(b, m, k)).astype(np.float32)
    y = rng.normal(size=(b, k, n)).astype(np.float32)
    got = OPS["matmul"](np.swapaxes(x, 1, 2) if tx else x, np.swapaxes(y, 1, 2) if ty else y, tx, ty)
    np.testing.assert_allclose(got, (torch.from_numpy(x) @ torch.from_numpy(y)).numpy(), rtol=1e-5, atol=1e-5)


def test_gather_refuses_out_of_range_and_batch_dims():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(_gather(table, np.array([[3, 0]])), table[[[3, 0]]])
    for bad in (np.array([4]), np.array([-1])):
        try:
            _gather(table, bad)
        except IndexError:
            continue
        raise AssertionError(f"index {bad} accepted")
    try:
        _gather(table, np.array([0]), batch_dims=1)
    except UnsupportedOp:
        return
    raise AssertionError("batch_dims accepted")
