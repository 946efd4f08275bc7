"""Backend ``"numpy"``: deformable im2col / col2im in vectorised NumPy.

This is how every fast implementation is organised
(torchvision, mmcv, refdcn's compiled backends): the deformable sampling
writes a *column matrix*, one row per (input channel, kernel tap) and one
column per output pixel, and the convolution itself becomes a matrix product
(:mod:`refdcn.driver` drives both).  Here each step is whole-array NumPy, so
it reads as the math: gather four corners, weight them, sum.

The arithmetic (sampling points, the corners and weights of the adjoint
:func:`~refdcn.bilinear.scatter_corners`, interpolation and its derivatives)
is the scalar code of :mod:`refdcn.bilinear` applied to arrays; only the
comparisons -- :func:`locate_all` (the vectorised ``locate``) and the
inside-the-image test of :func:`corner_targets` -- and the gather/scatter
(``take_along_axis``, ``bincount``) are array-specific.  The corners the
forward gathers from are the corners the backward scatters to: both come from
:func:`corner_targets`.  It computes in the inputs' dtype (float32 or float64), with
sampling coordinates in float64, and agrees with the loop reference to
~1e-15 relative in float64.
"""

import numpy as np

from .. import driver
from ..backends import Capabilities
from ..bilinear import (BORDER_TORCHVISION, OUTSIDE, interpolate, interpolate_gradient,
                        sampling_point, scatter_corners)

NAME = "numpy"
CAPABILITIES = Capabilities(device="cpu", compute_dtype="input", blocked=True)
DESCRIPTION = "vectorised NumPy im2col/col2im + one matrix product per group"

def sampling_grid(offset, geom):
    """Sampling points of every (image, offset group, tap, output pixel).

    Parameters
    ----------
    offset : ndarray, shape (B, 2*D*kh*kw, H_out, W_out)

    Returns
    -------
    y, x : ndarray, shape (B, D, kh*kw, H_out*W_out), float64
    """
    B, D, K = offset.shape[0], geom.offset_groups, geom.taps
    off = offset.reshape(B, D, K, 2, geom.out_h, geom.out_w).astype(np.float64)
    tap = np.arange(K)
    i = (tap // geom.kw)[:, None, None]
    j = (tap % geom.kw)[:, None, None]
    oy = np.arange(geom.out_h)[:, None]
    ox = np.arange(geom.out_w)[None, :]
    y = sampling_point(oy, geom.stride[0], geom.padding[0], i, geom.dilation[0], off[:, :, :, 0])
    x = sampling_point(ox, geom.stride[1], geom.padding[1], j, geom.dilation[1], off[:, :, :, 1])
    shape = (B, D, K, geom.out_pixels)
    return y.reshape(shape), x.reshape(shape)


def locate_all(y, x, height, width, closed_at_minus_one):
    """Vectorised :func:`refdcn.bilinear.locate`.

    Returns ``(y0, x0, ly, lx)``; an inactive point gets ``y0 = x0 = OUTSIDE``
    and ``ly = lx = 0`` (so no corner is inside and its value is 0), a NaN
    point gets ``OUTSIDE`` and NaN fractions.
    """
    with np.errstate(invalid="ignore"):
        if closed_at_minus_one:
            inside = (y >= -1) & (y < height) & (x >= -1) & (x < width)
        else:
            inside = (y > -1) & (y < height) & (x > -1) & (x < width)
        nan = np.isnan(y) | np.isnan(x)
        y0 = np.where(inside, np.floor(np.where(inside, y, 0.0)), OUTSIDE).astype(np.intp)
        x0 = np.where(inside, np.floor(np.where(inside, x, 0.0)), OUTSIDE).astype(np.intp)
        # ``y - y0`` with the integer corner, as in locate (so -0.0 keeps its sign there too)
        ly = np.where(inside, y - y0, np.where(nan, np.nan, 0.0))
        lx = np.where(inside, x - x0, np.where(nan, np.nan, 0.0))
    return y0, x0, ly, lx


def corner_targets(y0, x0, ly, lx, height, width):
    """Vectorised :func:`refdcn.bilinear.scatter_corners`, as flat pixel indices.

    Parameters
    ----------
    y0, x0 : ndarray of intp, shape (B, D, L)
        Floor corners from :func:`locate_all`.
    ly, lx : ndarray of float64, shape (B, D, L)
        Fractional parts from :func:`locate_all`.
    height, width : int
        Size of the image plane.

    Returns
    -------
    list of four ``(flat, inside, weight)``
        For the corners ``00, 01, 10, 11`` of ``scatter_corners``: the flat
        index ``row * width + col`` into an ``(H*W)`` plane (0 where the
        corner is outside), whether the corner is inside the image (the
        vectorised :func:`refdcn.bilinear.in_image`), and its bilinear weight.
    """
    targets = []
    for row, col, weight in scatter_corners(y0, x0, ly, lx):
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        targets.append((np.where(inside, row * width + col, 0), inside, weight))
    return targets


def gather_corners(planes, targets):
    """Vectorised :func:`refdcn.bilinear.corners` for a stack of planes.

    planes : (B, D, C/D, H*W); targets : from :func:`corner_targets` on (B, D, L)
    -> the four corner values ``v00, v01, v10, v11``, each (B, D, C/D, L), 0 outside.
    """
    values = []
    for flat, inside, _ in targets:
        v = np.take_along_axis(planes, flat[:, :, None, :], axis=3)
        values.append(np.where(inside[:, :, None, :], v, 0.0))
    return values


def _by_offset_group(array, geom):
    """(B, C_in, ...) viewed as (B, D, C_in/D, rest)."""
    return array.reshape(array.shape[0], geom.offset_groups, geom.in_per_offset_group, -1)


def _mask_or_one(mask, geom):
    if mask is None:
        return 1.0
    return mask.reshape(mask.shape[0], geom.offset_groups, 1, -1)


def im2col(input, offset, mask, geom, columns=np.float64, prepared=None):
    """Deformable im2col: ``columns[b, c*K + k, p] = m * S(input[b, c], y, x)``.

    Shapes: input (B, C_in, H, W), offset (B, 2*D*K, H_out, W_out),
    mask (B, D*K, H_out, W_out) or None.  ``columns`` is the array
    (B, C_in*K, H_out*W_out) to write (the driver's buffer), or the dtype of a
    new one.  Returns the columns.
    """
    if not isinstance(columns, np.ndarray):
        columns = np.empty((input.shape[0], geom.in_channels * geom.taps, geom.out_pixels),
                           columns)
    y, x = sampling_grid(offset, geom)
    B, D, K, P = y.shape
    y0, x0, ly, lx = locate_all(y.reshape(B, D, K * P), x.reshape(B, D, K * P),
                                geom.height, geom.width, False)
    targets = corner_targets(y0, x0, ly, lx, geom.height, geom.width)
    v00, v01, v10, v11 = gather_corners(_by_offset_group(input, geom), targets)
    value = interpolate(v00, v01, v10, v11, ly[:, :, None], lx[:, :, None])
    columns.reshape(value.shape)[...] = _mask_or_one(mask, geom) * value
    return columns


def col2im(grad_columns, offset, mask, geom, grad_input, prepared=None):
    """Adjoint of :func:`im2col`: scatter ``m * w_ab * grad_columns`` to the corners.

    Writes ``grad_input`` (B, C_in, H, W) (assumed zero on entry).  Sums with
    ``np.bincount``: sequential, so deterministic.
    """
    y, x = sampling_grid(offset, geom)
    B, D, K, P = y.shape
    y0, x0, ly, lx = locate_all(y.reshape(B, D, K * P), x.reshape(B, D, K * P),
                                geom.height, geom.width, False)
    contrib = _by_offset_group(grad_columns, geom) * _mask_or_one(mask, geom)
    HW = geom.height * geom.width
    plane_index = np.arange(B * geom.in_channels).reshape(B, D, -1, 1) * HW
    total = np.zeros(B * geom.in_channels * HW)
    for flat, inside, weight in corner_targets(y0, x0, ly, lx, geom.height, geom.width):
        values = np.where(inside[:, :, None, :], weight[:, :, None, :] * contrib, 0.0)
        total += np.bincount((plane_index + flat[:, :, None, :]).ravel(),
                             weights=values.ravel(), minlength=total.size)
    grad_input[...] = total.reshape(grad_input.shape)


def coordinate_gradients(grad_columns, input, offset, mask, geom, convention,
                         grad_offset, grad_mask, prepared=None):
    """Offset and mask gradients, summed over the channels of each offset group.

    ``grad_offset[b, 2kk]   = m * sum_c grad_columns[b, c, k] * dS_c/dy``
    ``grad_offset[b, 2kk+1] = m * sum_c grad_columns[b, c, k] * dS_c/dx``
    ``grad_mask[b, kk]      =     sum_c grad_columns[b, c, k] * S_c``
    """
    y, x = sampling_grid(offset, geom)
    B, D, K, P = y.shape
    y0, x0, ly, lx = locate_all(y.reshape(B, D, K * P), x.reshape(B, D, K * P),
                                geom.height, geom.width, convention == BORDER_TORCHVISION)
    targets = corner_targets(y0, x0, ly, lx, geom.height, geom.width)
    v = gather_corners(_by_offset_group(input, geom), targets)
    ly, lx = ly[:, :, None], lx[:, :, None]
    d_dy, d_dx = interpolate_gradient(*v, ly, lx)
    g = _by_offset_group(grad_columns, geom)
    m = _mask_or_one(mask, geom)
    go = grad_offset.reshape(B, D, K, 2, P)
    go[:, :, :, 0] = (m * (g * d_dy).sum(axis=2, keepdims=True)).reshape(B, D, K, P)
    go[:, :, :, 1] = (m * (g * d_dx).sum(axis=2, keepdims=True)).reshape(B, D, K, P)
    if grad_mask is not None:
        value = interpolate(*v, ly, lx)
        grad_mask.reshape(B, D, K * P)[...] = (g * value).sum(axis=2)


#: Bytes of transient arrays (float64 and index arrays) the kernels allocate at their peak
#: (the backward's coordinate gradients) besides the columns, per column element and per
#: sampling point (image, offset group, tap, output pixel); the driver counts them against
#: the bound.  Upper bounds of what tracemalloc measures (about 50-75 bytes per element
#: and 150 per sampling point, float32 and float64); ``tests/test_memory.py`` checks them.
TEMPORARY_BYTES_PER_ELEMENT = 96
TEMPORARY_BYTES_PER_SAMPLE = 192


def workspace(geom, itemsize):
    """Transient bytes per block that scale with the sampling points, not the columns."""
    return TEMPORARY_BYTES_PER_SAMPLE * geom.batch * geom.offset_groups * geom.taps \
        * geom.out_pixels


KERNELS = driver.KernelSet(im2col, col2im, coordinate_gradients, layout="rows",
                           temporary_bytes=TEMPORARY_BYTES_PER_ELEMENT, workspace=workspace)
forward, backward = KERNELS.forward, KERNELS.backward
