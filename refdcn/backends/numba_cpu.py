"""Backend ``"numba"``: the deformable column kernels compiled by Numba, in parallel.

The same three column kernels as the NumPy reference (:mod:`refdcn.reference.im2col`),
driven by the same im2col + GEMM loop over blocks of images
(:mod:`refdcn.blocking`), but compiled with ``numba.njit(parallel=True)``:

``im2col``
    ``columns[b, c*K + k, p] = m * S(input[b, c], y, x)``, shape (B, C_in*K, P).
``col2im``
    ``grad_input[b, c] = sum_{k, p} m * grad_columns[b, c*K + k, p] * w_ab``
    scattered to the four corners of each sample (the adjoint of ``im2col``).
``coordinate_gradients``
    ``grad_offset = m * sum_c grad_columns * dS/d(y, x)`` and
    ``grad_mask = sum_c grad_columns * S`` (channels of one offset group).

The scalar mathematics is not written here: :func:`refdcn.bilinear.locate`,
:func:`~refdcn.bilinear.sampling_point`, :func:`~refdcn.bilinear.interpolate`,
:func:`~refdcn.bilinear.corner_weights` and
:func:`~refdcn.bilinear.interpolate_gradient` are compiled from their one
source with ``njit(inline="always")`` (see :func:`_compile_shared`).

How the work is organised
-------------------------
*Sampling table.*  The sampling point, its floor corner and its fractional
parts depend on (image ``b``, offset group ``d``, tap ``k``, output pixel ``p``)
but not on the channel, so they are computed once into a table
(``corner[b, d, k, p]``, ``ly``, ``lx``; :func:`_sampling_table`) and reused by
all ``C_in / D`` channels of the offset group.  The table is ``1 / (C_in/D)``
of the column work.

*Zero border by padding.*  The image planes are copied into planes padded with
zeros: two rows/columns before and one after (shape ``(H+3, W+3)``).  Every
corner of an active sample (``-1 < y < H``) then lies inside the padded plane,
and so does the corner :data:`refdcn.bilinear.OUTSIDE` ``= -2`` that ``locate``
gives inactive and NaN points: a read there returns 0 and a write there is
discarded.  This is exactly :func:`refdcn.bilinear.pixel`'s rule ("0 outside
the image"), without a branch per corner and per channel.

*Parallel, race-free, deterministic.*

* ``im2col`` and ``coordinate_gradients``: ``prange`` over (image, offset
  group, chunk of output pixels); every output element is written by exactly
  one task, and the channel sums of ``coordinate_gradients`` run in channel
  order in float64.
* ``col2im``: ``prange`` over (image, input channel).  ``grad_input[b, c]``
  only receives from the column rows of channel ``c``, so each task owns its
  plane: it scatters into a private float64 padded plane, in a fixed
  (tap, pixel) order, and copies the interior out.  No atomics, no reduction
  across threads.

Each element is computed by the same instructions whatever the number of
threads, the chunking or the block of images (``fastmath=False``: no
reassociation, no FMA contraction), so the results are bitwise reproducible
and independent of the block size of :mod:`refdcn.blocking`.

Precision: sampling coordinates and fractional parts in float64 (as the
reference); products and channel sums in float64; the columns, the input
gradient and the coordinate gradients are rounded once to the compute dtype.

Compilation is cached on disk (``cache=True``, in ``__pycache__`` or
``NUMBA_CACHE_DIR``).  Numba checks only this file's time stamp: after editing
:mod:`refdcn.bilinear`, delete the cache (``find refdcn -name '*.nb[ci]'
-delete``) or touch this file.
"""

import types

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError(f"numba is not installed ({exc})") from exc

from .. import bilinear, blocking

NAME = "numba"
DESCRIPTION = (f"Numba {numba.__version__} parallel im2col/col2im (prange, cached) "
               f"+ one matrix product per group")
DEVICE = "cpu"

#: Output pixels per task of ``im2col`` and ``coordinate_gradients``.
CHUNK = 64

#: Zero rows/columns before (``PAD_BEFORE``) and after each padded plane.
PAD_BEFORE = 2
PAD_AFTER = 1

_SHARED = ("sampling_point", "locate", "corner_weights", "interpolate", "interpolate_gradient")


def _compile_shared(names):
    """``njit(inline="always")`` versions of functions of :mod:`refdcn.bilinear`.

    Each function is compiled from its own code object, in a copy of the
    bilinear module's namespace where the other shared functions are replaced
    by their compiled versions (a compiled function can only call compiled
    functions: ``interpolate`` calls ``corner_weights``).
    """
    namespace = dict(vars(bilinear))
    compiled = {}
    for name in names:
        source = getattr(bilinear, name)
        clone = types.FunctionType(source.__code__, namespace, source.__name__,
                                   source.__defaults__, source.__closure__)
        clone.__doc__ = source.__doc__
        clone.__qualname__ = source.__qualname__
        compiled[name] = namespace[name] = njit(inline="always")(clone)
    return compiled


_shared = _compile_shared(_SHARED)
sampling_point = _shared["sampling_point"]
locate = _shared["locate"]
corner_weights = _shared["corner_weights"]
interpolate = _shared["interpolate"]
interpolate_gradient = _shared["interpolate_gradient"]

_KERNEL = dict(parallel=True, cache=True, fastmath=False, nogil=True)


# --------------------------------------------------------------------------- kernels

@njit(**_KERNEL)
def _pad_planes(input, padded):
    """Copy ``input`` (B, C, H, W) into the interior of ``padded`` (B, C, H+3, W+3)."""
    B, C, H, W = input.shape
    Hp, Wp = padded.shape[2], padded.shape[3]
    for t in prange(B * C):
        b = t // C
        c = t - b * C
        dst = padded[b, c]
        src = input[b, c]
        for yy in range(Hp):
            for xx in range(Wp):
                dst[yy, xx] = 0.0
        for yy in range(H):
            for xx in range(W):
                dst[yy + 2, xx + 2] = src[yy, xx]


@njit(**_KERNEL)
def _sampling_table(offset, kh, kw, sh, sw, ph, pw, dh, dw, height, width, closed,
                    corner, ly, lx):
    """Locate every sampling point once.

    Parameters
    ----------
    offset : (B, 2*D*K, H_out, W_out)
    closed : bool
        ``closed_at_minus_one`` of :func:`refdcn.bilinear.locate`.
    corner : (B, D, K, P) int64, out
        Flat index of the floor corner in the padded plane
        (``(y0 + 2) * (W + 3) + x0 + 2``); the OUTSIDE corner maps to 0.
    ly, lx : (B, D, K, P) float64, out
        Fractional parts (0 for inactive points, NaN for NaN points).
    """
    B, D, K, P = corner.shape
    out_w = offset.shape[3]
    Wp = width + 3
    for t in prange(B * D * K):
        b = t // (D * K)
        dk = t - b * (D * K)
        k = dk % K
        i = k // kw
        j = k - i * kw
        for p in range(P):
            oy = p // out_w
            ox = p - oy * out_w
            y = sampling_point(oy, sh, ph, i, dh, np.float64(offset[b, 2 * dk, oy, ox]))
            x = sampling_point(ox, sw, pw, j, dw, np.float64(offset[b, 2 * dk + 1, oy, ox]))
            active, y0, x0, fy, fx = locate(y, x, height, width, closed)
            corner[b, dk // K, k, p] = (y0 + 2) * Wp + (x0 + 2)
            ly[b, dk // K, k, p] = fy
            lx[b, dk // K, k, p] = fx


@njit(**_KERNEL)
def _im2col(padded, corner, ly, lx, mask, columns, chunk):
    """``columns[b, c*K + k, p] = m * interpolate(corners of padded[b, c], ly, lx)``.

    padded : (B, C, H+3, W+3); corner, ly, lx : (B, D, K, P);
    mask : (B, D*K, P) or None; columns : (B, C*K, P), out.
    """
    B, C, Hp, Wp = padded.shape
    D, K, P = corner.shape[1], corner.shape[2], corner.shape[3]
    per = C // D
    chunks = (P + chunk - 1) // chunk
    for t in prange(B * D * chunks):
        b = t // (D * chunks)
        r = t - b * (D * chunks)
        d = r // chunks
        p0 = (r - d * chunks) * chunk
        p1 = min(P, p0 + chunk)
        for cl in range(per):
            c = d * per + cl
            plane = padded[b, c].reshape(Hp * Wp)
            for k in range(K):
                row = columns[b, c * K + k]
                idx = corner[b, d, k]
                fy = ly[b, d, k]
                fx = lx[b, d, k]
                for p in range(p0, p1):
                    q = idx[p]
                    s = interpolate(plane[q], plane[q + 1], plane[q + Wp], plane[q + Wp + 1],
                                    fy[p], fx[p])
                    if mask is None:
                        row[p] = s
                    else:
                        row[p] = mask[b, d * K + k, p] * s


@njit(**_KERNEL)
def _col2im(grad_columns, corner, ly, lx, mask, grad_input):
    """Scatter ``m * grad_columns * w_ab`` to the corners, one task per (image, channel).

    grad_columns : (B, C*K, P); corner, ly, lx : (B, D, K, P);
    mask : (B, D*K, P) or None; grad_input : (B, C, H, W), out (overwritten).
    """
    B, C, H, W = grad_input.shape
    D, K, P = corner.shape[1], corner.shape[2], corner.shape[3]
    Wp = W + 3
    per = C // D
    for t in prange(B * C):
        b = t // C
        c = t - b * C
        d = c // per
        acc = np.zeros((H + 3) * Wp)
        for k in range(K):
            g = grad_columns[b, c * K + k]
            idx = corner[b, d, k]
            fy = ly[b, d, k]
            fx = lx[b, d, k]
            for p in range(P):
                if mask is None:
                    v = np.float64(g[p])
                else:
                    v = np.float64(g[p] * mask[b, d * K + k, p])
                w00, w01, w10, w11 = corner_weights(fy[p], fx[p])
                q = idx[p]
                acc[q] += w00 * v
                acc[q + 1] += w01 * v
                acc[q + Wp] += w10 * v
                acc[q + Wp + 1] += w11 * v
        dst = grad_input[b, c]
        for yy in range(H):
            for xx in range(W):
                dst[yy, xx] = acc[(yy + 2) * Wp + xx + 2]


@njit(**_KERNEL)
def _coordinate_gradients(grad_columns, padded, corner, ly, lx, mask, grad_offset, grad_mask,
                          chunk):
    """Channel sums of ``grad_columns * dS/dy``, ``* dS/dx`` and ``* S`` per sample.

    grad_columns : (B, C*K, P); padded : (B, C, H+3, W+3); corner, ly, lx :
    (B, D, K, P); mask : (B, D*K, P) or None; grad_offset : (B, 2*D*K, P), out;
    grad_mask : (B, D*K, P) or None, out.
    """
    B, C, Hp, Wp = padded.shape
    D, K, P = corner.shape[1], corner.shape[2], corner.shape[3]
    per = C // D
    chunks = (P + chunk - 1) // chunk
    for t in prange(B * D * chunks):
        b = t // (D * chunks)
        r = t - b * (D * chunks)
        d = r // chunks
        p0 = (r - d * chunks) * chunk
        n = min(P, p0 + chunk) - p0
        acc_y = np.zeros((K, n))
        acc_x = np.zeros((K, n))
        acc_m = np.zeros((K, n))
        for cl in range(per):
            c = d * per + cl
            plane = padded[b, c].reshape(Hp * Wp)
            for k in range(K):
                g = grad_columns[b, c * K + k]
                idx = corner[b, d, k]
                fy = ly[b, d, k]
                fx = lx[b, d, k]
                ay = acc_y[k]
                ax = acc_x[k]
                am = acc_m[k]
                for u in range(n):
                    p = p0 + u
                    q = idx[p]
                    v00 = plane[q]
                    v01 = plane[q + 1]
                    v10 = plane[q + Wp]
                    v11 = plane[q + Wp + 1]
                    gp = np.float64(g[p])
                    d_dy, d_dx = interpolate_gradient(v00, v01, v10, v11, fy[p], fx[p])
                    ay[u] += gp * d_dy
                    ax[u] += gp * d_dx
                    if grad_mask is not None:
                        am[u] += gp * interpolate(v00, v01, v10, v11, fy[p], fx[p])
        for k in range(K):
            kk = d * K + k
            for u in range(n):
                p = p0 + u
                if mask is None:
                    grad_offset[b, 2 * kk, p] = acc_y[k, u]
                    grad_offset[b, 2 * kk + 1, p] = acc_x[k, u]
                else:
                    m = mask[b, kk, p]
                    grad_offset[b, 2 * kk, p] = m * acc_y[k, u]
                    grad_offset[b, 2 * kk + 1, p] = m * acc_x[k, u]
                if grad_mask is not None:
                    grad_mask[b, kk, p] = acc_m[k, u]


# --------------------------------------------------------------------------- column kernels

def sampling_table(offset, geom, closed_at_minus_one):
    """Floor corners (flat padded index) and fractional parts of every sample.

    Returns ``corner`` (B, D, K, P) int64 and ``ly``, ``lx`` (B, D, K, P) float64.
    """
    shape = (offset.shape[0], geom.offset_groups, geom.taps, geom.out_pixels)
    corner = np.empty(shape, np.int64)
    ly = np.empty(shape, np.float64)
    lx = np.empty(shape, np.float64)
    if offset.shape[0]:
        _sampling_table(offset, geom.kh, geom.kw, geom.stride[0], geom.stride[1],
                        geom.padding[0], geom.padding[1], geom.dilation[0], geom.dilation[1],
                        geom.height, geom.width, bool(closed_at_minus_one), corner, ly, lx)
    return corner, ly, lx


def padded_planes(input):
    """``input`` (B, C, H, W) zero-padded to (B, C, H+3, W+3): 2 before, 1 after."""
    B, C, H, W = input.shape
    padded = np.empty((B, C, H + PAD_BEFORE + PAD_AFTER, W + PAD_BEFORE + PAD_AFTER),
                      input.dtype)
    if padded.size:
        _pad_planes(input, padded)
    return padded


def _flat(array, geom):
    """(B, X, H_out, W_out) viewed as (B, X, P); None stays None."""
    if array is None:
        return None
    return array.reshape(array.shape[0], array.shape[1], geom.out_pixels)


def im2col(input, offset, mask, geom, dtype):
    """Deformable im2col; see :func:`refdcn.reference.im2col.im2col`.

    Shapes: input (B, C_in, H, W), offset (B, 2*D*K, H_out, W_out),
    mask (B, D*K, H_out, W_out) or None -> columns (B, C_in*K, H_out*W_out).
    """
    B = input.shape[0]
    columns = np.empty((B, geom.in_channels * geom.taps, geom.out_pixels), dtype)
    if columns.size == 0:
        return columns
    corner, ly, lx = sampling_table(offset, geom, False)
    _im2col(padded_planes(input), corner, ly, lx, _flat(mask, geom), columns, CHUNK)
    return columns


def col2im(grad_columns, offset, mask, geom, grad_input):
    """Adjoint of :func:`im2col`: writes ``grad_input`` (B, C_in, H, W)."""
    if grad_input.size == 0:
        return
    corner, ly, lx = sampling_table(offset, geom, False)
    _col2im(grad_columns, corner, ly, lx, _flat(mask, geom), grad_input)


def coordinate_gradients(grad_columns, input, offset, mask, geom, convention,
                         grad_offset, grad_mask):
    """Offset and mask gradients; see :func:`refdcn.reference.im2col.coordinate_gradients`.

    Writes ``grad_offset`` (B, 2*D*K, H_out, W_out) and ``grad_mask``
    (B, D*K, H_out, W_out) (if not None).
    """
    if grad_offset.size == 0:
        return
    corner, ly, lx = sampling_table(offset, geom, convention == bilinear.BORDER_TORCHVISION)
    _coordinate_gradients(grad_columns, padded_planes(input), corner, ly, lx, _flat(mask, geom),
                          _flat(grad_offset, geom), _flat(grad_mask, geom), CHUNK)


class _Kernels:
    im2col = staticmethod(im2col)
    col2im = staticmethod(col2im)
    coordinate_gradients = staticmethod(coordinate_gradients)


KERNELS = _Kernels()


def forward(input, offset, mask, weight, bias, geom, dtype):
    """Forward pass (see :func:`refdcn.blocking.forward`); output (N, C_out, H_out, W_out)."""
    return blocking.forward(KERNELS, input, offset, mask, weight, bias, geom, dtype)


def backward(grad_output, input, offset, mask, weight, bias, geom, dtype, convention):
    """The five gradients (see :func:`refdcn.blocking.backward`)."""
    return blocking.backward(KERNELS, grad_output, input, offset, mask, weight, bias, geom,
                             dtype, convention)
