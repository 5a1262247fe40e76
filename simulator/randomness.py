"""Common random numbers: every random draw of a simulation is a pure function of (seed, keys), so the same
session meets the same luck in every A/B arm, process and Ray worker. ``crn_uniform`` (scalar, Python ints) and
``crn_uniform_array`` (numpy, broadcast over array keys) are bit-identical splitmix64 streams; the purpose
constants name what a draw decides."""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1


def crn_uniform(seed: int, *keys: int) -> float:
    """A uniform [0, 1) draw determined by (seed, keys): splitmix64 over the keys."""
    x = seed & _MASK
    for k in keys:
        x = (x ^ (k & _MASK)) & _MASK
        x = (x + 0x9E3779B97F4A7C15) & _MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        x = z ^ (z >> 31)
    return (x >> 11) / float(1 << 53)


_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _mix(x: int, k: int) -> int:
    x = ((x ^ (k & _MASK)) + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _mix_in_place(x):
    """The rest of :func:`_mix` after the key's xor, on uint64 values (in place when `x` is an array; returned, as a
    0-d result is a numpy scalar)."""
    x += _GOLDEN
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def crn_uniform_array(seed: int, *keys: int | np.ndarray) -> np.ndarray:
    """Vectorised :func:`crn_uniform`: keys may be integer arrays (broadcast); bit-identical results.
    Leading scalar keys are mixed in Python, so only the array keys cost numpy operations."""
    x0 = seed & _MASK
    i = 0
    while i < len(keys) and isinstance(keys[i], int | np.integer):
        x0 = _mix(x0, int(keys[i]))
        i += 1
    if i == len(keys):
        return np.asarray((x0 >> 11) / float(1 << 53))
    if i == len(keys) - 1:  # the common case: one array key (its ops wrap silently; numpy scalars would warn)
        a = np.asarray(keys[i])
        if a.ndim:
            x = (a.view(np.uint64) if a.dtype == np.int64 else a.astype(np.int64).view(np.uint64)
                 if a.dtype != np.uint64 else a) ^ np.uint64(x0)  # a new array
            _mix_in_place(x)
            x >>= _S11
            return x.astype(np.float64) * (1.0 / float(1 << 53))
    x: np.ndarray = np.asarray(x0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in keys[i:]:
            a = np.asarray(k)
            x = x ^ (a.astype(np.int64).view(np.uint64) if a.dtype != np.uint64 else a)  # a new array
            x = _mix_in_place(x)
        x >>= _S11
    return x.astype(np.float64) * (1.0 / float(1 << 53))


# purposes of draws
CLICK, ORDER, DETAIL, EXAMINE, SKIM, DWELL, LEAVE, LEAVE_AFTER_ORDER, SPEED, NETWORK, BUSY, SHUFFLE = range(1, 13)
SCREEN, ITEM = 101, 102  # streams of the batched per-screen and per-item draws
