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
    allow.  It is the **strict** tier (``refdcn verify --strict``).

float32 implementations (:func:`float32_implementation_bounds`)
    Almost every real float32 kernel forms the sampling point, its fraction
    and its corner weights in float32.  The default tier of ``refdcn verify
    --dtype float32`` adds what that costs to the strict bound, from this
    rounding model (``u = 2^-24``, ``y = base + dy`` with the integer
    ``base = oy*sh - ph + i*dh`` and the float32 input ``dy``; same for x):

    * coordinate: ``fl(base + dy)`` is off by at most ``u |y|``;
    * fraction ``l = y - floor(y)``: exact by Sterbenz's lemma except on
      (-1, 0), where ``y + 1`` rounds once: ``+ u``;
    * the 1-D weight in each common algebraic form: ``1 - l`` (torchvision,
      ONNX Runtime): ``+ u``; ``y_high - y`` / ``(y + 1 - h)`` (MSRA lineage:
      mmcv, Paddle, CharlesShang/DCNv2 im2col and col2im): ``fl(y + 1)`` rounds
      by ``u (|y| + 1)``, the subtraction of the integer is exact; ``off + 1 -
      ceil(off)`` (MindSpore, the fraction taken from the offset alone):
      ``u (|dy| + 1) + u``.

    Every form is within ``2 u M`` of the exact weight with
    ``M = |base| + |dy| + 1 >= |y| + 1``; the bound uses
    :data:`COORDINATE_ULPS` ``= 4``, i.e. ``e_y = 4 u M_y``, to cover up to
    two more rounded steps in forming the point (``base`` accumulated in
    floats, an ``offset_scale``).  The weight of input row ``q``,
    ``max(0, 1 - |y - q|)``, is 1-Lipschitz in ``y``, so every corner weight
    (also across a grid line, where the corner set changes) is off by at
    most ``e_y`` and a corner product by ``e_y + e_x`` (products and sums
    are already in the strict bound).  Propagated:

    * a sample ``S_c`` moves by at most ``4 max|x[n, c]| (e_y + e_x)`` (up to
      3 x 3 pixels carry a changed weight; the weight changes total at most
      ``3 e`` per axis);
    * output, grad_weight and grad_mask sum those moves with ``|W| |m|``,
      ``|grad_output| |m|`` and ``|columns|`` as their own terms;
    * grad_input receives ``|columns m| (e_y + e_x)`` on every pixel the
      sample touches before or after rounding (rows ``floor(y - e_y)`` to
      ``floor(y + e_y) + 1``);
    * grad_offset: ``dS/dy`` depends on the x-weights only, so moves by
      ``4 max|x| e_x``; and it jumps across a grid line (including -1 and H),
      by at most ``4 max|x|``, when ``y`` lies within ``e_y`` of an integer
      without being one (an integer ``y`` is exact in float32: the exact
      border cases keep their full power).

    Samples outside ``[-1 - e_y, H + e_y] x [-1 - e_x, W + e_x]`` are 0 either
    way and add nothing.
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

#: Bound on the error of a float32 implementation's 1-D bilinear weight, in units of
#: ``u * (|base| + |offset| + 1)`` (derived in the module docstring).
COORDINATE_ULPS = 4


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


def _coordinate_errors(geom, offset, dtype=np.float32):
    """Per sample: ``(y, x, e_y, e_x, active)`` of shape (N, D, K, H_out, W_out).

    ``e_y``, ``e_x`` bound the error of a float32 implementation's 1-D weights
    (:data:`COORDINATE_ULPS` ``* u * (|base| + |offset| + 1)``); ``active`` is
    False where the sample is 0 with or without that error.
    """
    from .bilinear import sampling_point
    u = UNIT_ROUNDOFF[np.dtype(dtype)]
    N, D, K = geom.batch, geom.offset_groups, geom.taps
    off = np.asarray(offset, np.float64).reshape(N, D, K, 2, geom.out_h, geom.out_w)
    i, j = np.divmod(np.arange(K), geom.kw)
    by = sampling_point(np.arange(geom.out_h)[None, :, None], geom.stride[0], geom.padding[0],
                        i[:, None, None], geom.dilation[0], 0.0)
    bx = sampling_point(np.arange(geom.out_w)[None, None, :], geom.stride[1], geom.padding[1],
                        j[:, None, None], geom.dilation[1], 0.0)
    dy, dx = off[:, :, :, 0], off[:, :, :, 1]
    y, x = by + dy, bx + dx
    e_y = COORDINATE_ULPS * u * (np.abs(by) + np.abs(dy) + 1)
    e_x = COORDINATE_ULPS * u * (np.abs(bx) + np.abs(dx) + 1)
    active = (y >= -1 - e_y) & (y <= geom.height + e_y) & (x >= -1 - e_x) & \
        (x <= geom.width + e_x)
    e_y, e_x = np.where(active, e_y, 0.0), np.where(active, e_x, 0.0)
    return y, x, e_y, e_x, active


def _near_grid_line(v, e):
    """Whether ``v`` is within ``e`` of an integer without being one."""
    dist = np.abs(v - np.round(v))
    return (dist > 0) & (dist <= e)


def _scatter_touched(values, y, x, e_y, e_x, geom):
    """``sum`` of ``values`` (N, C, K, P) over the pixels each sample touches, rounded or not.

    Returns (N, C, H, W).
    """
    N, C = values.shape[:2]
    H, W = geom.height, geom.width
    out = np.zeros(N * C * H * W)
    with np.errstate(invalid="ignore"):
        y0, x0 = np.floor(y - e_y), np.floor(x - e_x)
        y_third, x_third = np.floor(y + e_y) > y0, np.floor(x + e_x) > x0
    n_idx = np.arange(N)[:, None, None, None]
    c_idx = np.arange(C)[None, :, None, None]
    for a in range(3):
        for b in range(3):
            rows, cols = y0 + a, x0 + b
            ok = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W) & (values != 0)
            if a == 2:
                ok &= y_third
            if b == 2:
                ok &= x_third
            if not ok.any():
                continue
            flat = ((n_idx * C + c_idx) * H + np.where(ok, rows, 0).astype(np.int64)) * W + \
                np.where(ok, cols, 0).astype(np.int64)
            out += np.bincount(flat[ok], weights=values[ok], minlength=out.size)
    return out.reshape(N, C, H, W)


def coordinate_terms(grad_output, input, offset, weight, bias, stride, padding, dilation,
                     mask):
    """What float32 coordinates and weights add to each element's bound (derivation above).

    Returns a dict keyed by :data:`QUANTITIES` (``bias`` 0, ``mask`` None when absent).
    """
    from .geometry import check_arguments
    f64 = lambda a: None if a is None else np.abs(np.asarray(a, dtype=np.float64))
    ax, aw, am, ag = f64(input), f64(weight), f64(mask), f64(grad_output)
    geom = check_arguments(ax, np.asarray(offset, np.float64), aw, f64(bias), stride, padding,
                           dilation, am)
    N, C, D, K = geom.batch, geom.in_channels, geom.offset_groups, geom.taps
    G, P, Cd = geom.groups, geom.out_pixels, geom.in_per_offset_group
    y, x, e_y, e_x, _ = _coordinate_errors(geom, offset)
    shape = (N, D, K, P)
    y, x, e_y, e_x = (a.reshape(shape) for a in (y, x, e_y, e_x))
    m = np.ones(shape) if am is None else am.reshape(shape)
    plane_max = 4 * ax.reshape(N, D, Cd, geom.height * geom.width).max(axis=3)   # (N, D, Cd)
    # the move of every sample, per input channel: (N, D, Cd, K, P) -> (N, C, K, P)
    move = (plane_max[:, :, :, None, None] * (e_y + e_x)[:, :, None]).reshape(N, C, K, P)
    moved_m = move * np.repeat(m, Cd, axis=1)
    wg = aw.reshape(G, geom.out_per_group, geom.in_per_group * K)
    mg = moved_m.reshape(N, G, geom.in_per_group * K, P)
    gg = ag.reshape(N, G, geom.out_per_group, P)
    terms = {"output": np.einsum("gor,ngrp->ngop", wg, mg).reshape(N, geom.out_channels,
                                                                     geom.out_h, geom.out_w),
             "weight": np.einsum("ngop,ngrp->gor", gg, mg).reshape(aw.shape),
             "bias": np.zeros(geom.out_channels)}
    col = np.einsum("gor,ngop->ngrp", wg, gg).reshape(N, C, K, P)        # |columns|
    terms["mask"] = None if am is None else \
        (col * move).reshape(N, D, Cd, K, P).sum(axis=2).reshape(am.shape)
    col_m = col * np.repeat(m, Cd, axis=1)
    rep = lambda a: np.repeat(a, Cd, axis=1)
    terms["input"] = _scatter_touched(col_m * rep(e_y + e_x), rep(y), rep(x), rep(e_y),
                                      rep(e_x), geom)
    per_channel = (col_m.reshape(N, D, Cd, K, P) * plane_max[:, :, :, None, None]).sum(axis=2)
    jump_y = _near_grid_line(y, e_y) & (e_y > 0)
    jump_x = _near_grid_line(x, e_x) & (e_x > 0)
    g_off = np.stack([per_channel * (e_x + jump_y), per_channel * (e_y + jump_x)], axis=3)
    terms["offset"] = g_off.reshape(np.shape(offset))
    return terms


def float32_implementation_bounds(grad_output, input, offset, weight, bias, stride, padding,
                                  dilation, mask):
    """Element-wise bounds on a correct float32 implementation's errors, per quantity.

    :func:`float32_bounds` (rounded products and sums) plus
    :func:`coordinate_terms` (float32 coordinates, fractions and corner weights
    in any of the common algebraic forms); derivation in the module docstring.
    """
    strict = float32_bounds(grad_output, input, offset, weight, bias, stride, padding,
                            dilation, mask)
    extra = coordinate_terms(grad_output, input, offset, weight, bias, stride, padding,
                             dilation, mask)
    return {q: None if b is None else b + extra[q] * (1 + 4 * UNIT_ROUNDOFF[np.dtype(np.float32)])
            for q, b in strict.items()}
