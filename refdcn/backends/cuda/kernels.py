"""The element-wise kernels: im2col, the atomic input scatter, coordinate gradients, bias, copies.

Columns have the driver's ``"rows"`` layout (:mod:`refdcn.driver`):
``columns[b, c*K + k, p]`` holds channel ``c``, tap ``k`` of output pixel ``p``
of image ``b`` of the tile (``K`` taps, ``P`` output pixels).  ``geo`` is the
tile's :class:`refdcn.geometry.KernelGeometry`; the arrays hold the tile's
images (and output rows) only.  One thread per sample ``(b, d, k, p)``, ``p``
fastest, so offset reads and column writes coalesce; every kernel loops
grid-stride, so any launch configuration computes the same result.
"""

import numpy as np

from .probe import cuda
from .sampling import (corner_weights, corners, in_image, interpolate, interpolate_gradient,
                       locate, sample, sample_count, scatter_corners, unravel, weighted_sum)
from .settings import REDUCE_LANES
from ... import bilinear

_TORCHVISION = bilinear.BORDER_TORCHVISION


@cuda.jit
def im2col(input, offset, mask, has_mask, columns, geo):
    """columns[b, c*K + k, p] = m * S(input[b, c], y, x)  (shape (B, C_in*K, P)).

    One thread per sample: one ``locate`` and one ``corner_weights`` per
    sample, then a loop over the channels of its offset group (``weighted_sum``).
    """
    H, W, K = geo.height, geo.width, geo.taps
    for t in range(cuda.grid(1), sample_count(geo), cuda.gridsize(1)):
        b, d, k, p, kk, oy, ox, y, x, m = sample(t, offset, mask, has_mask, geo)
        active, y0, x0, ly, lx = locate(y, x, H, W, False)
        w00, w01, w10, w11 = corner_weights(ly, lx)     # the same for every channel
        for ci in range(geo.in_per_offset_group):
            c = d * geo.in_per_offset_group + ci
            s = 0.0
            if active:
                v00, v01, v10, v11 = corners(input[b, c], y0, x0, H, W)
                s = weighted_sum(v00, v01, v10, v11, w00, w01, w10, w11)
            columns[b, c * K + k, p] = m * s


@cuda.jit
def scatter_input_gradient(offset, mask, has_mask, grad_columns, geo, grad_input):
    """col2im by atomic adds: grad_input[b, c, row, col] += G_c * m * weight.

    Per sample (b, d, k, p), with ``G_c = grad_columns[b, c*K + k, p]``, for
    the four ``(row, col, weight)`` of :func:`refdcn.bilinear.scatter_corners`
    that lie inside the image.  The order of the additions into one pixel
    depends on the scheduling: not bitwise reproducible (see :mod:`.gather`).
    """
    H, W, K = geo.height, geo.width, geo.taps
    for t in range(cuda.grid(1), sample_count(geo), cuda.gridsize(1)):
        b, d, k, p, kk, oy, ox, y, x, m = sample(t, offset, mask, has_mask, geo)
        active, y0, x0, ly, lx = locate(y, x, H, W, False)
        if not active:
            continue
        targets = scatter_corners(y0, x0, ly, lx)
        for ci in range(geo.in_per_offset_group):
            c = d * geo.in_per_offset_group + ci
            gm = float(grad_columns[b, c * K + k, p]) * m
            for row, column, weight in targets:
                if in_image(row, column, H, W):
                    cuda.atomic.add(grad_input, (b, c, row, column), gm * weight)


@cuda.jit
def coordinate_gradients(input, offset, mask, has_mask, grad_columns, geo, convention,
                         grad_offset, grad_mask):
    """Offset and mask gradients.

    Per sample (b, d, k, p), with ``G_c = grad_columns[b, c*K + k, p]``::

        grad_offset[b, 2kk]   = m * sum_c G_c * dS_c/dy      (convention's border rule)
        grad_offset[b, 2kk+1] = m * sum_c G_c * dS_c/dx
        grad_mask[b, kk]      =     sum_c G_c * S_c          (if ``has_mask``)

    each sum in float64, over the channels of offset group ``d`` in order.
    """
    H, W, K = geo.height, geo.width, geo.taps
    closed = convention == _TORCHVISION
    for t in range(cuda.grid(1), sample_count(geo), cuda.gridsize(1)):
        b, d, k, p, kk, oy, ox, y, x, m = sample(t, offset, mask, has_mask, geo)
        # The gradient rule may also admit the lines y = -1 / x = -1; where the
        # forward rule admits the point too, both give the same corner and fractions.
        active, y0, x0, ly, lx = locate(y, x, H, W, closed)
        forward_active = locate(y, x, H, W, False)[0]
        acc_y = 0.0
        acc_x = 0.0
        acc_m = 0.0
        for ci in range(geo.in_per_offset_group):
            c = d * geo.in_per_offset_group + ci
            gv = float(grad_columns[b, c * K + k, p])
            d_dy = 0.0
            d_dx = 0.0
            s = 0.0
            if active:
                v00, v01, v10, v11 = corners(input[b, c], y0, x0, H, W)
                d_dy, d_dx = interpolate_gradient(v00, v01, v10, v11, ly, lx)
                if forward_active:
                    s = interpolate(v00, v01, v10, v11, ly, lx)
            acc_y += gv * d_dy
            acc_x += gv * d_dx
            acc_m += gv * s
        grad_offset[b, 2 * kk, oy, ox] = m * acc_y
        grad_offset[b, 2 * kk + 1, oy, ox] = m * acc_x
        if has_mask:
            grad_mask[b, kk, oy, ox] = acc_m


@cuda.jit
def add_bias(out, bias):
    """out[b, o, p] += bias[o]  (out shape (N, C_out, P))."""
    B, O, P = out.shape
    for t in range(cuda.grid(1), B * O * P, cuda.gridsize(1)):
        p = t % P
        r = t // P
        out[r // O, r % O, p] += bias[r % O]


@cuda.jit
def bias_gradient(grad_output, grad_bias):
    """grad_bias[o] = sum over (b, p) of grad_output[b, o, p]; one block per channel.

    The ``B*P`` terms are split into :data:`~.settings.REDUCE_LANES` fixed lanes
    (lane ``L`` sums terms ``L, L + lanes, ...`` in order, in float64), then
    thread 0 adds the lanes in order: the same sums in the same order whatever
    the block size, so the result is deterministic.
    """
    partial = cuda.shared.array(REDUCE_LANES, np.float64)
    B, O, P = grad_output.shape
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for o in range(cuda.blockIdx.x, O, cuda.gridDim.x):
        for lane in range(tid, REDUCE_LANES, nt):
            acc = 0.0
            for t in range(lane, B * P, REDUCE_LANES):
                b = t // P
                acc += float(grad_output[b, o, t - b * P])
            partial[lane] = acc
        cuda.syncthreads()
        if tid == 0:
            total = 0.0
            for q in range(REDUCE_LANES):
                total += partial[q]
            grad_bias[o] = total
        cuda.syncthreads()


@cuda.jit
def fill(array, value):
    """array[:] = value for a 1-D array."""
    for t in range(cuda.grid(1), array.shape[0], cuda.gridsize(1)):
        array[t] = value


@cuda.jit
def convert4(src, dst):
    """dst[...] = src[...] for 4-D arrays of any strides and dtypes."""
    n0, n1, n2, n3 = dst.shape
    for t in range(cuda.grid(1), n0 * n1 * n2 * n3, cuda.gridsize(1)):
        i0, i1, i2, i3 = unravel(t, n1, n2, n3)
        dst[i0, i1, i2, i3] = src[i0, i1, i2, i3]


@cuda.jit
def convert2(src, dst):
    """dst[...] = src[...] for 2-D arrays of any strides and dtypes."""
    n0, n1 = dst.shape
    for t in range(cuda.grid(1), n0 * n1, cuda.gridsize(1)):
        dst[t // n1, t % n1] = src[t // n1, t % n1]


@cuda.jit
def convert1(src, dst):
    """dst[:] = src[:] for 1-D arrays of any stride and dtype."""
    for t in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[t] = src[t]
