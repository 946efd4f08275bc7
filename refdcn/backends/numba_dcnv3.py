"""DCNv3 / DCNv4 compiled by Numba: channels-last, parallel, deterministic (backend ``"numba"``).

The layout is already channels-last (input (N, H, W, G*D)), so the innermost
loop of every kernel runs over the D contiguous channels of a group, sharing
one sampling point, its corner weights and its modulation weight.  The input is
zero-padded like :func:`refdcn.backends.numba_cpu.channels_last` (two
rows/columns before, one after: the corner :data:`refdcn.bilinear.OUTSIDE`
``= -2`` of an inactive or NaN point and every corner of an active point lie
inside the padded plane, and read 0), so no corner needs a branch.

The scalar mathematics is compiled from :mod:`refdcn.bilinear` by
:func:`refdcn.backends._shared_math.compile_bilinear`
(``scaled_sampling_point``, ``locate``, ``corner_weights``, ``interpolate``,
``interpolate_gradient``, and ``weighted_targets`` for the adjoint's four
targets); nothing is re-derived here.

Parallel, race-free, deterministic:

* forward: tasks (on :mod:`refdcn.parallel`) over (image, chunk of output pixels); each output element
  is written by one task, summed over the taps in order in float64;
* offset and mask gradients: tasks over (image, chunk of output pixels),
  like the forward; each element is one task's channel sum, formed in order;
* input gradient: tasks over (image, group).  A group's channels receive
  input gradient only from that group's samples, so each task owns the
  channels ``g*D .. (g+1)*D`` of a float64 padded gradient plane: no atomics,
  and the same result for every thread count (``fastmath=False``).

Precision: sampling points, fractions, bilinear products and sums in float64,
rounded once to the compute dtype (float32 or float64).
"""

import numpy as np

try:
    from numba import njit
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError(f"numba is not installed ({exc})") from exc

from .. import bilinear
from . import Capabilities, numba_cpu
from .numba_cpu import _fixed_order_sum
from ._shared_math import compile_bilinear

NAME = "numba"
DESCRIPTION = ("Numba: channels-last DCNv3/DCNv4 kernels on refdcn's threads (tasks over "
               "pixels / groups)")
CAPABILITIES = Capabilities(device="cpu", compute_dtype="input", blocked=False, threads=True)

#: Output pixels per forward task.
CHUNK = 16

_shared = compile_bilinear(njit(inline="always"),
                           ("scaled_sampling_point", "locate", "corner_weights",
                            "interpolate", "interpolate_gradient", "weighted_targets"))[1]
scaled_sampling_point = _shared["scaled_sampling_point"]
locate = _shared["locate"]
corner_weights = _shared["corner_weights"]
interpolate = _shared["interpolate"]
interpolate_gradient = _shared["interpolate_gradient"]
weighted_targets = _shared["weighted_targets"]

# ``geo`` = ModernGeometry.ints(): (H, W, G, D, sh, sw, ph, pw, dh, dw, H_out, W_out, ch, cw)


@njit(inline="always")
def _locate_tap(offset, n, p, g, t, rows, cols, geo, scale, closed):
    """Row of the floor corner in the padded image, and the fractions, of tap ``t``."""
    height, width = geo[0], geo[1]
    out_w = geo[11]
    oy = p // out_w
    ox = p - oy * out_w
    y = scaled_sampling_point(oy, geo[4], geo[6], rows[t], geo[8],
                              np.float64(offset[n, p, g, t, 1]), geo[12], scale)
    x = scaled_sampling_point(ox, geo[5], geo[7], cols[t], geo[9],
                              np.float64(offset[n, p, g, t, 0]), geo[13], scale)
    active, y0, x0, ly, lx = locate(y, x, height, width, closed)
    return (y0 + 2) * (width + 3) + (x0 + 2), ly, lx


@numba_cpu._Kernel
def _forward(padded, offset, mask, geo, rows, cols, scale, out, chunk, first, last):
    """out[n, p, g*D + d] = sum_t m * S.

    padded : (N, (H+3)*(W+3), C); offset : (N, P, G, K, 2); mask : (N, P, G, K);
    out : (N, P, C), written.
    """
    N, P = out.shape[0], out.shape[1]
    G, D = geo[2], geo[3]
    K = rows.shape[0]
    Wp = geo[1] + 3
    chunks = (P + chunk - 1) // chunk
    for task in range(first, last):
        n = task // chunks
        p0 = (task - n * chunks) * chunk
        image = padded[n]
        acc = np.empty(D)
        for p in range(p0, min(P, p0 + chunk)):
            for g in range(G):
                c0 = g * D
                acc[:] = 0.0
                for t in range(K):
                    q, ly, lx = _locate_tap(offset, n, p, g, t, rows, cols, geo, scale, False)
                    m = np.float64(mask[n, p, g, t])
                    v00 = image[q, c0:c0 + D]
                    v01 = image[q + 1, c0:c0 + D]
                    v10 = image[q + Wp, c0:c0 + D]
                    v11 = image[q + Wp + 1, c0:c0 + D]
                    for d in range(D):
                        acc[d] += m * interpolate(v00[d], v01[d], v10[d], v11[d], ly, lx)
                dst = out[n, p, c0:c0 + D]
                for d in range(D):
                    dst[d] = acc[d]


@njit(inline="always")
def _channel_terms(image, q, Wp, c0, D, go, ly, lx, terms):
    """``terms[0, d] = go[d] * S_d``, ``terms[1, d] = go[d] * dS_d/dy``, ``terms[2, d] = go[d] *
    dS_d/dx`` for the channels ``c0 .. c0+D`` (no dependence between channels: vectorised)."""
    v00 = image[q, c0:c0 + D]
    v01 = image[q + 1, c0:c0 + D]
    v10 = image[q + Wp, c0:c0 + D]
    v11 = image[q + Wp + 1, c0:c0 + D]
    tm, ty, tx = terms[0], terms[1], terms[2]
    for d in range(D):
        gd = np.float64(go[d])
        tm[d] = gd * interpolate(v00[d], v01[d], v10[d], v11[d], ly, lx)
        d_dy, d_dx = interpolate_gradient(v00[d], v01[d], v10[d], v11[d], ly, lx)
        ty[d] = gd * d_dy
        tx[d] = gd * d_dx


@numba_cpu._Kernel
def _coordinate_gradients(padded, offset, mask, grad_out, geo, rows, cols, scale, closed,
                          grad_offset, grad_mask, chunk, first, last):
    """Offset and mask gradients: channel sums per (image, pixel, group, tap).

    One task per (image, chunk of output pixels), all groups of a pixel together
    (the order that reads each padded image row once for all groups).
    grad_out : (N, P, C); grad_offset : (N, P, G, K, 2), grad_mask : (N, P, G, K), written.
    """
    N, P = grad_out.shape[0], grad_out.shape[1]
    G, D = geo[2], geo[3]
    K = rows.shape[0]
    Wp = geo[1] + 3
    chunks = (P + chunk - 1) // chunk
    for task in range(first, last):
        n = task // chunks
        p0 = (task - n * chunks) * chunk
        image = padded[n]
        terms = np.empty((3, D))
        for p in range(p0, min(P, p0 + chunk)):
            for g in range(G):
                c0 = g * D
                go = grad_out[n, p, c0:c0 + D]
                for t in range(K):
                    q, ly, lx = _locate_tap(offset, n, p, g, t, rows, cols, geo, scale, False)
                    _channel_terms(image, q, Wp, c0, D, go, ly, lx, terms)
                    grad_mask[n, p, g, t] = _fixed_order_sum(terms[0])
                    if closed:   # torchvision's rule: y = -1 / x = -1 active for the derivative
                        q, ly, lx = _locate_tap(offset, n, p, g, t, rows, cols, geo, scale, True)
                        _channel_terms(image, q, Wp, c0, D, go, ly, lx, terms)
                    sum_y = _fixed_order_sum(terms[1])
                    sum_x = _fixed_order_sum(terms[2])
                    m = np.float64(mask[n, p, g, t])
                    grad_offset[n, p, g, t, 1] = m * sum_y * scale
                    grad_offset[n, p, g, t, 0] = m * sum_x * scale


@numba_cpu._Kernel
def _scatter(offset, mask, grad_out, geo, rows, cols, scale, grad_padded, first, last):
    """Input gradient: the adjoint of sampling; one task per (image, group).

    A group's channels receive only from that group's samples, so each task
    owns the channels ``g*D .. (g+1)*D`` of the float64 padded gradient
    ``grad_padded`` (N, (H+3)*(W+3), C), zeroed by the caller.
    """
    N, P = grad_out.shape[0], grad_out.shape[1]
    G, D = geo[2], geo[3]
    K = rows.shape[0]
    Wp = geo[1] + 3
    for task in range(first, last):
        n = task // G
        g = task - n * G
        c0 = g * D
        acc = grad_padded[n]
        for p in range(P):
            go = grad_out[n, p, c0:c0 + D]
            for t in range(K):
                q, ly, lx = _locate_tap(offset, n, p, g, t, rows, cols, geo, scale, False)
                m = np.float64(mask[n, p, g, t])
                w00, w01, w10, w11 = corner_weights(ly, lx)
                # the adjoint's four targets, relative to the floor corner's row q
                for dy, dx, w in weighted_targets(0, 0, w00, w01, w10, w11):
                    target = acc[q + dy * Wp + dx, c0:c0 + D]
                    for d in range(D):
                        target[d] += w * (np.float64(go[d]) * m)


def _padded(input):
    """(N, H, W, C) -> (N, (H+3)*(W+3), C), zero border of 2 before and 1 after."""
    n, h, w, c = input.shape
    padded = np.zeros((n, h + 3, w + 3, c), input.dtype)
    padded[:, 2:h + 2, 2:w + 2] = input
    return padded.reshape(n, (h + 3) * (w + 3), c)


def _flat(geom, array):
    """(N, H_out, W_out, ...) viewed as (N, P, ...)."""
    return array.reshape((geom.batch, geom.out_pixels) + array.shape[3:])


def forward(input, offset, mask, geom, dtype):
    """DCNv3/DCNv4 forward (layouts of :mod:`refdcn.reference.dcnv3_loops`); output in ``dtype``."""
    out = np.empty((geom.batch, geom.out_pixels, geom.channels), dtype)
    if out.size:
        _forward(out.size * geom.taps, geom.batch * -(-geom.out_pixels // CHUNK), _padded(input),
                 _flat(geom, offset), _flat(geom, mask),
                 geom.ints(), geom.tap_rows, geom.tap_cols, geom.offset_scale, out, CHUNK)
    return out.reshape(geom.batch, geom.out_h, geom.out_w, geom.channels)


def backward(grad_output, input, offset, mask, geom, dtype, convention=bilinear.BORDER_MMCV):
    """``(grad_input, grad_offset, grad_mask)`` in ``dtype`` (see :func:`forward`)."""
    n, h, w, c = input.shape
    grad_padded = np.zeros((n, (h + 3) * (w + 3), c))
    grad_offset = np.zeros(offset.shape, dtype)
    grad_mask = np.zeros(mask.shape, dtype)
    if grad_output.size:
        padded, off, msk, go = (_padded(input), _flat(geom, offset), _flat(geom, mask),
                                _flat(geom, grad_output))
        work = grad_output.size * geom.taps
        _coordinate_gradients(2 * work, n * -(-geom.out_pixels // CHUNK), padded, off, msk, go,
                              geom.ints(), geom.tap_rows,
                              geom.tap_cols, geom.offset_scale,
                              convention == bilinear.BORDER_TORCHVISION,
                              _flat(geom, grad_offset), _flat(geom, grad_mask), CHUNK)
        _scatter(work, n * geom.group, off, msk, go, geom.ints(), geom.tap_rows, geom.tap_cols,
                 geom.offset_scale, grad_padded)
    grad_input = grad_padded.reshape(n, h + 3, w + 3, c)[:, 2:h + 2, 2:w + 2].astype(dtype)
    return grad_input, grad_offset, grad_mask
