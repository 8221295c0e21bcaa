"""Plain numpy float64 reference of the BFP format (written from the spec in fastpaper/bfp.h,
independently of the kernels' code), used by the tests."""

from __future__ import annotations

import numpy as np

MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _uniform24(seed: int, index: np.ndarray) -> np.ndarray:
    """The documented counter-based hash: splitmix64 finaliser of index*phi + seed*c + k."""
    with np.errstate(over="ignore"):
        z = (index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x632BE59BD9B4E019))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64)


def encode(x, block, mbits, twos=False, scale="no_clip", rounding="nearest", seed=0):
    """x: float64 array [rows, cols] holding the exact input values.
    Returns (codes int64 [rows, padded] as stored W-bit fields, exponent bytes uint8 [rows, nb])."""
    x = np.asarray(x, np.float64)
    rows, cols = x.shape
    nb = -(-cols // block)
    padded = nb * block
    xp = np.zeros((rows, padded))
    xp[:, :cols] = x
    xb = xp.reshape(rows, nb, block)
    qmax = 2 ** (mbits - 1) - 1
    finite = np.isfinite(xb).all(axis=-1)
    xb_f = np.where(np.isfinite(xb), xb, 0.0)
    amax = np.abs(xb_f).max(axis=-1)
    _, e2 = np.frexp(amax)                 # amax = m * 2^e2, m in [0.5, 1)
    E = np.where(amax > 0, e2 - 1, -127).astype(np.int64)
    if scale == "no_clip":
        s = np.ldexp(amax, (mbits - 2) - E)
        clips = (s > qmax) if rounding == "stochastic" else (s >= qmax + 0.5)
        E = E + ((amax > 0) & clips & (E < 127))
    E = np.clip(E, -127, 127)
    v = np.ldexp(np.abs(xb_f), ((mbits - 2) - E)[..., None])
    if rounding == "stochastic":
        idx = (np.arange(rows)[:, None] * cols + np.arange(padded)[None, :]).reshape(rows, nb, block)
        u = _uniform24(seed, idx)
        fl = np.floor(v)
        q = fl + (u < (v - fl) * 2.0 ** 24)
    else:
        q = np.rint(v)                     # numpy rounds half to even
    q = np.minimum(q, qmax).astype(np.int64)
    neg = np.signbit(xb)
    field_bits = 4 if mbits <= 4 else 8
    if twos:
        codes = np.where(neg, -q, q) & 0xFF
    else:
        codes = (neg.astype(np.int64) << (field_bits - 1)) | q
    codes = np.where(finite[..., None], codes, 0)
    ebytes = np.where(finite, E + 127, 255).astype(np.uint8)
    return codes.reshape(rows, padded), ebytes


def pack_bytes(codes, mbits):
    """Lay out W-bit fields as the documented mantissa bytes."""
    if mbits <= 4:
        return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return codes.astype(np.uint8)


def decode(codes, ebytes, cols, block, mbits, twos=False):
    """Exact float64 values of stored fields (NaN for blocks with exponent byte 255)."""
    rows, padded = codes.shape
    field_bits = 4 if mbits <= 4 else 8
    E = ebytes.astype(np.int64) - 127
    k = np.repeat(E - (mbits - 2), block, axis=1)
    if twos:
        q = np.where(codes >= 128, codes - 256, codes).astype(np.float64)
        val = np.ldexp(q, k)
    else:
        mag = (codes & ((1 << (field_bits - 1)) - 1)).astype(np.float64)
        val = np.ldexp(mag, k)
        val = np.where((codes >> (field_bits - 1)) & 1, -val, val)
    val = np.where(np.repeat(ebytes == 255, block, axis=1), np.nan, val)
    return val[:, :cols]


def step(ebytes, block, mbits, cols):
    """Quantization step 2^(E - (M-2)) of every element's block."""
    E = ebytes.astype(np.int64) - 127
    return np.ldexp(1.0, np.repeat(E - (mbits - 2), block, axis=1))[:, :cols]
