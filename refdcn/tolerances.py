"""Agreement tolerances, defined once and derived rather than tuned.

Two tiers:

float64 (:data:`FLOAT64_RTOL`)
    Every backend computes the same function as the loop reference with the
    same (double) precision; they differ only in summation order.  The
    project's contract is agreement to ``1e-12`` in the normwise relative error
    of :func:`relative_error`: a summation-order difference over n <= 10^4
    terms costs at most ``n * 2^-53 ~ 1e-12`` of the *absolute* sum, and the
    test cases keep cancellation mild (random data), so a real bug (a wrong
    corner, tap, channel or border rule) shows up as an error of order 1e-2
    to 1.

float32 (:func:`float32_bounds`)
    A float32 backend rounds every product and sum.  The classic bound for a
    sum of n rounded products (Higham, *Accuracy and Stability of Numerical
    Algorithms*, eq. 3.5) is ``|fl(s) - s| <= gamma_n * sum |terms|`` with
    ``gamma_n = n u / (1 - n u)`` and ``u = 2^-24``.  :func:`float32_bounds`
    computes, for each of the output and the five gradients, the sum of the
    absolute values of its terms (by running the float64 NumPy im2col backend on
    absolute values) and the length n of the longest chain of rounded
    operations behind one element; the float32 result must lie within
    ``gamma_n * sum|terms|`` of the float64 reference, element by element.
    This assumes sampling coordinates are formed in double precision (all
    refdcn backends do): float32 coordinates would add an error proportional
    to the coordinate's magnitude, which this bound deliberately does not
    allow.
"""

import numpy as np

#: Normwise relative agreement required of every float64 backend.
FLOAT64_RTOL = 1e-12

#: Unit roundoff of each compute dtype.
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}

#: Rounded operations in one bilinear sample times its mask:
#: two fractional parts, four corner weights (2 ops), four products, three sums, the mask.
BILINEAR_OPS = 12

QUANTITIES = ("output", "input", "offset", "mask", "weight", "bias")


def relative_error(actual, expected):
    """Normwise relative error ``max|actual - expected| / max|expected|``.

    NaNs must sit in the same places (else the error is inf); an all-zero
    ``expected`` divides by 1 instead of 0.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    if actual.size == 0:
        return 0.0
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if (nan_a != nan_e).any():
        return float("inf")
    finite = ~nan_e
    if not finite.any():
        return 0.0
    diff = np.abs(actual[finite] - expected[finite])
    scale = np.abs(expected[finite]).max()
    return float(diff.max() / (scale if scale > 0 else 1.0))


def gamma(n, dtype=np.float32):
    """``gamma_n = n u / (1 - n u)`` for the unit roundoff ``u`` of ``dtype``."""
    u = UNIT_ROUNDOFF[np.dtype(dtype)]
    if n * u >= 1:
        return np.inf
    return n * u / (1 - n * u)


def reduction_lengths(geom):
    """Longest chain of rounded operations behind one element of each quantity."""
    K, P, N = geom.taps, geom.out_pixels, geom.batch
    gemm_out = geom.out_per_group            # grad_columns = W^T @ grad_output
    return {
        "output": geom.in_per_group * K + BILINEAR_OPS + 1,
        "weight": N * P + BILINEAR_OPS,
        "bias": N * P,
        "input": gemm_out + 4 * K * P + BILINEAR_OPS,
        "mask": gemm_out + geom.in_per_offset_group + BILINEAR_OPS,
        "offset": gemm_out + geom.in_per_offset_group + BILINEAR_OPS + 2,
    }


def absolute_scales(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    """``sum |terms|`` behind every element of the output and the five gradients (float64).

    Returns a dict keyed by :data:`QUANTITIES` (``mask``/``bias`` None when absent).
    """
    from . import api
    from .geometry import check_arguments
    f64 = lambda a: None if a is None else np.abs(np.asarray(a, dtype=np.float64))
    ax, aw, ab, am, ag = f64(input), f64(weight), f64(bias), f64(mask), f64(grad_output)
    off = np.asarray(offset, dtype=np.float64)
    geom = check_arguments(ax, off, aw, ab, stride, padding, dilation, am)
    scales = {"output": api.deform_conv2d(ax, off, aw, ab, stride, padding, dilation, am,
                                          backend="numpy")}
    g = api.deform_conv2d_backward(ag, ax, off, aw, ab, stride, padding, dilation, am,
                                   backend="numpy")
    scales.update(input=g.input, weight=g.weight, bias=g.bias, mask=g.mask)
    # offset: |dS/dy| <= 2 max|plane| (corner weights sum to 1), times sum_o |W| |G| and |m|
    N, K, P = geom.batch, geom.taps, geom.out_pixels
    wg = aw.reshape(geom.groups, geom.out_per_group, geom.in_per_group * K)
    gg = ag.reshape(N, geom.groups, geom.out_per_group, P)
    col = np.einsum("gor,ngop->ngrp", wg, gg).reshape(N, geom.offset_groups,
                                                       geom.in_per_offset_group, K, P)
    plane_max = ax.reshape(N, geom.offset_groups, geom.in_per_offset_group,
                           geom.height * geom.width).max(axis=3)
    per_tap = np.einsum("ndckp,ndc->ndkp", col, 2 * plane_max)
    if am is not None:
        per_tap = per_tap * am.reshape(N, geom.offset_groups, K, P)
    scales["offset"] = np.repeat(per_tap[:, :, :, None, :], 2, axis=3).reshape(offset.shape)
    return scales, geom


def float32_bounds(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    """Element-wise bounds ``gamma_n * sum|terms|`` on float32 errors, per quantity."""
    scales, geom = absolute_scales(grad_output, input, offset, weight, bias, stride, padding,
                                   dilation, mask)
    lengths = reduction_lengths(geom)
    tiny = np.finfo(np.float32).tiny
    return {q: None if s is None else gamma(lengths[q], np.float32) * s + tiny
            for q, s in scales.items()}
