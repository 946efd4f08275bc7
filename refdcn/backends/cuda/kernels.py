"""The element-wise kernels: im2col, coordinate gradients with the atomic input scatter, stores.

Columns have the layout of the whole block of images side by side:
``columns[c*K + k, bl*P + p]`` holds channel ``c``, tap ``k`` of output pixel
``p`` of image ``bl`` of the block (``K`` taps, ``P`` output pixels).  ``geo``
is the :class:`refdcn.geometry.KernelGeometry` record; every kernel loops
grid-stride, so any launch configuration computes the same result.
"""

import numpy as np

from .probe import cuda
from .sampling import (corners, interpolate, interpolate_gradient, locate, sample_index,
                       scatter_corners, in_image, tap_sample)
from .settings import REDUCE_LANES
from ... import bilinear

_TORCHVISION = bilinear.BORDER_TORCHVISION


@cuda.jit
def im2col(input, offset, mask, has_mask, columns, b0, nb, geo):
    """columns[c*K + k, bl*P + p] = m * S(input[b0 + bl, c], y, x)  (shape (C_in*K, nb*P)).

    One thread per sample: one ``locate`` per sample, then a loop over the
    channels of its offset group (the corner weights are loop-invariant).
    """
    H, W, K, P = geo.height, geo.width, geo.taps, geo.out_pixels
    n = nb * geo.offset_groups * K * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        bl, d, k, p = sample_index(t, geo)
        b = b0 + bl
        kk, oy, ox, y, x, m = tap_sample(offset, mask, has_mask, b, d, k, p, geo)
        active, y0, x0, ly, lx = locate(y, x, H, W, False)
        col = bl * P + p
        for ci in range(geo.in_per_offset_group):
            c = d * geo.in_per_offset_group + ci
            s = 0.0
            if active:
                v00, v01, v10, v11 = corners(input[b, c], y0, x0, H, W)
                s = interpolate(v00, v01, v10, v11, ly, lx)
            columns[c * K + k, col] = m * s


@cuda.jit
def coordinate_gradients(input, offset, mask, has_mask, grad_columns, b0, nb, geo, convention,
                         scatter, grad_input, grad_offset, grad_mask):
    """Offset and mask gradients of one block of images, and the atomic input scatter.

    Per sample (bl, d, k, p), with ``G_c = grad_columns[c*K + k, bl*P + p]``::

        grad_offset[b, 2kk]   = m * sum_c G_c * dS_c/dy      (convention's border rule)
        grad_offset[b, 2kk+1] = m * sum_c G_c * dS_c/dx
        grad_mask[b, kk]      =     sum_c G_c * S_c
        grad_input[b, c, row, col] += G_c * m * weight       (if ``scatter``; atomic)

    for the four ``(row, col, weight)`` of :func:`refdcn.bilinear.scatter_corners`
    that lie inside the image.
    """
    H, W, K, P = geo.height, geo.width, geo.taps, geo.out_pixels
    closed = convention == _TORCHVISION
    n = nb * geo.offset_groups * K * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        bl, d, k, p = sample_index(t, geo)
        b = b0 + bl
        kk, oy, ox, y, x, m = tap_sample(offset, mask, has_mask, b, d, k, p, geo)
        # The gradient rule may also admit the lines y = -1 / x = -1; where the
        # forward rule admits the point too, both give the same corner and fractions.
        active, y0, x0, ly, lx = locate(y, x, H, W, closed)
        forward_active = locate(y, x, H, W, False)[0]
        targets = scatter_corners(y0, x0, ly, lx)
        col = bl * P + p
        acc_y = 0.0
        acc_x = 0.0
        acc_m = 0.0
        for ci in range(geo.in_per_offset_group):
            c = d * geo.in_per_offset_group + ci
            gv = float(grad_columns[c * K + k, col])
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
            if scatter and forward_active:
                gm = gv * m
                for row, column, weight in targets:
                    if in_image(row, column, H, W):
                        cuda.atomic.add(grad_input, (b, c, row, column), gm * weight)
        grad_offset[b, 2 * kk, oy, ox] = m * acc_y
        grad_offset[b, 2 * kk + 1, oy, ox] = m * acc_x
        if has_mask:
            grad_mask[b, kk, oy, ox] = acc_m


@cuda.jit
def store_output(tmp, bias, has_bias, out, b0, nb, out_w):
    """out[b0 + bl, o, oy, ox] = tmp[o, bl*P + p] + bias[o]  (tmp shape (C_out, nb*P))."""
    O = out.shape[1]
    P = out.shape[2] * out_w
    n = nb * O * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        p = t % P
        r = t // P
        o = r % O
        bl = r // O
        v = tmp[o, bl * P + p]
        if has_bias:
            v += bias[o]
        oy = p // out_w
        out[b0 + bl, o, oy, p - oy * out_w] = v


@cuda.jit
def gather_grad_output(grad_output, gt, b0, nb, out_w):
    """gt[o, bl*P + p] = grad_output[b0 + bl, o, oy, ox]  (gt shape (C_out, nb*P))."""
    O = grad_output.shape[1]
    P = grad_output.shape[2] * out_w
    n = nb * O * P
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        p = t % P
        r = t // P
        o = r % O
        bl = r // O
        oy = p // out_w
        gt[o, bl * P + p] = grad_output[b0 + bl, o, oy, p - oy * out_w]


@cuda.jit
def bias_gradient(grad_output, grad_bias):
    """grad_bias[o] = sum over (n, y, x) of grad_output[n, o, y, x]; one block per channel.

    The ``B*P`` terms are split into :data:`~.settings.REDUCE_LANES` fixed lanes
    (lane ``L`` sums terms ``L, L + lanes, ...`` in order, in float64), then
    thread 0 adds the lanes in order: the same sums in the same order whatever
    the block size, so the result is deterministic.
    """
    partial = cuda.shared.array(REDUCE_LANES, np.float64)
    B, O, Ho, Wo = grad_output.shape
    P = Ho * Wo
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for o in range(cuda.blockIdx.x, O, cuda.gridDim.x):
        for lane in range(tid, REDUCE_LANES, nt):
            acc = 0.0
            for t in range(lane, B * P, REDUCE_LANES):
                b = t // P
                p = t - b * P
                oy = p // Wo
                acc += float(grad_output[b, o, oy, p - oy * Wo])
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
    """dst[...] = src[...] for 4-D arrays of any strides and dtypes (dst C-contiguous)."""
    n0, n1, n2, n3 = dst.shape
    n = n0 * n1 * n2 * n3
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        i3 = t % n3
        r = t // n3
        i2 = r % n2
        r = r // n2
        i1 = r % n1
        i0 = r // n1
        dst[i0, i1, i2, i3] = src[i0, i1, i2, i3]


@cuda.jit
def convert1(src, dst):
    """dst[:] = src[:] for 1-D arrays of any stride and dtype."""
    for t in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[t] = src[t]
