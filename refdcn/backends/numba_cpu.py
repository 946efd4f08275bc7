"""Backend ``"numba"``: channels-last deformable im2col / col2im compiled by Numba, in parallel.

The computation is the one of :mod:`refdcn.driver` (deformable im2col, one
matrix product per image and group with NumPy's BLAS, col2im and the
coordinate gradients, over tiles whose column buffer stays under
:func:`refdcn.column_memory`); this module supplies the kernels, with the images and the column matrix
stored *channels last*, so that the channel loop, the innermost loop of every
kernel, reads and writes contiguous memory and is vectorised by LLVM:

``padded``  (B, (H+3)*(W+3), C_stride)
    The images, transposed to channels last and zero-padded with two
    rows/columns before and one after (see "Zero border" below); pixel
    ``(y, x)`` is row ``(y+2)*(W+3) + x+2``.  ``C_stride >= C_in`` makes a row
    an odd number of cache lines (:func:`refdcn.backends._tasks.row_stride`).
``columns`` (B, groups, P, K * C_in/groups)
    ``columns[b, g, p, k*Cg + cl] = m * S(input[b, g*Cg + cl], y, x)`` for
    output pixel ``p``, tap ``k`` (``K = kh*kw``, ``Cg = C_in/groups``).  It is the
    transpose of the NumPy reference's column matrix (rows ``c*K + k``,
    columns ``p``), with each group's block contiguous.
``weight``  as (groups, C_out/groups, K * Cg), the same (tap, channel) order.

Per image ``b`` and group ``g``:

* forward: ``out[b, g] = W_g @ columns[b, g].T``, fused: the driver samples
  tiles of output pixels with :func:`im2col_pixels` and multiplies each while
  it is in cache (:func:`refdcn.driver.pixel_tile`);
* backward: ``grad_W_g += G[b, g] @ columns[b, g]`` (images in batch order) and
  ``grad_columns[b, g] = G[b, g].T @ W_g``.

In a channels-first layout the four corners of one sample are four values
scattered in each channel's plane, and the per-channel loop is a gather (which
LLVM does not vectorise on this CPU); channels last, the corners of all the
channels of a sample are four contiguous vectors.

The scalar mathematics is not written here: :func:`refdcn.bilinear.locate`,
:func:`~refdcn.bilinear.sampling_point`, :func:`~refdcn.bilinear.interpolate`,
:func:`~refdcn.bilinear.corner_weights` and
:func:`~refdcn.bilinear.interpolate_gradient` are compiled from their one
source with ``njit(inline="always")``
(:func:`refdcn.backends._shared_math.compile_bilinear`).  The sampling
point is located once per (image, offset group, tap, pixel); the corner
weights, being loop invariants of the channel loop, are computed once per
sample too (LLVM hoists them).

Zero border
-----------
Every corner of an active sample (``-1 < y < H``) lies inside the padded
plane, and so does the corner :data:`refdcn.bilinear.OUTSIDE` ``= -2`` that
``locate`` gives inactive and NaN points: a read there returns 0 and a write
there is discarded.  This is exactly :func:`refdcn.bilinear.pixel`'s rule
(0 outside the image), without a branch per corner.

Parallel, race-free, deterministic
----------------------------------
Every kernel is a serial Numba function (``nogil=True``) over a range of
*tasks*; :class:`_Kernel` hands the ranges to refdcn's own worker threads
(:mod:`refdcn.parallel`: sleeping when idle, dynamic scheduling, fork-safe).
Numba's threading layers are never started, so nothing another library or
the user does with Numba's threads (``numba.set_num_threads()`` first, a
layer already chosen) changes this backend's speed, and only serial code is
compiled (half the compile time of a ``parallel=True`` build).

* ``im2col`` and ``coordinate_gradients``: tasks are (image, chunk of
  output pixels); every output element is written by one task
  (``im2col_pixels``: one task, in the calling thread, which the driver's
  fused forward runs on refdcn's threads).  The channel
  sums of the coordinate gradients are formed in float64 in a fixed order
  (eight interleaved partial sums, :func:`_fixed_order_sum`).
* ``col2im``: tasks are (image, block of input channels).  The input
  gradient of channel ``c`` only receives from the column entries of channel
  ``c``, so each task owns its channels: it scatters into its own float64
  padded channels-last plane in a fixed (pixel, tap) order and writes its
  channels out.  No atomics, no reduction across threads.

Every element is computed by the same operations in the same order whatever
the number of threads, the chunking, the channel blocks or the block of images
(``fastmath=False``: no reassociation, no FMA contraction), so the results are
bitwise reproducible and the same for every block size and thread count.
Problems below :data:`SERIAL_WORK` run all their tasks in the calling thread
(waking workers would cost more), with the same results.

Precision: sampling coordinates and fractional parts in float64 (as the
reference); bilinear products and channel sums in float64; the columns, the
input gradient and the coordinate gradients are rounded once to the compute
dtype.

Memory per block of B images, besides the column buffers that
:func:`refdcn.column_memory` bounds: the padded channels-last copy of the input (about the input's size)
and, in the backward, col2im's float64 planes (about twice the float32
input's size).

Threads: :func:`refdcn.parallel.set_num_threads` for the kernels (default:
the CPUs this process may use), NumPy's BLAS threads for the products.

Compilation is cached on disk, keyed on the SHA-256 of every source file the
kernels depend on (:mod:`refdcn.backends._numba_cache`): editing
:mod:`refdcn.bilinear` (or this file, or the geometry record) can never leave
machine code compiled from the old source in use.  Without a writable cache
directory the kernels are compiled at every start (one warning).
"""

import numpy as np

try:
    import numba
    from numba import njit
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError(f"numba is not installed ({exc})") from exc

from .. import bilinear, driver
from . import Capabilities, _numba_cache, _tasks
from ._shared_math import compile_bilinear

NAME = "numba"
DESCRIPTION = (f"Numba {numba.__version__}: channels-last im2col/col2im on refdcn's "
               f"threads (cached) + one matrix product per group")
DEVICE = "cpu"
CAPABILITIES = Capabilities(device="cpu", compute_dtype="input", blocked=True, threads=True)

#: Output pixels per task of ``im2col`` and ``coordinate_gradients``; the zero border
#: of the padded planes (``OUTSIDE = -2`` must land inside): shared with the "cython" backend.
CHUNK, PAD_BEFORE, PAD = _tasks.CHUNK, _tasks.PAD_BEFORE, _tasks.PAD

_SHARED = ("sampling_point", "locate", "corner_weights", "interpolate", "interpolate_gradient")


_shared = compile_bilinear(njit(inline="always"), _SHARED)[1]
sampling_point = _shared["sampling_point"]
locate = _shared["locate"]
corner_weights = _shared["corner_weights"]
interpolate = _shared["interpolate"]
interpolate_gradient = _shared["interpolate_gradient"]

#: Kernels with less work than this (column elements) run in the calling thread
#: alone (:func:`refdcn.backends._tasks.run`).
SERIAL_WORK = _tasks.SERIAL_WORK

class _Kernel:
    """A serial, GIL-free kernel over a range of tasks, run on :mod:`refdcn.parallel`.

    The kernel's last two arguments are the task range ``[first, last)``;
    ``kernel(work, tasks, *args)`` runs tasks ``0 .. tasks-1`` with
    :func:`refdcn.backends._tasks.run`: in the calling thread when ``work``
    (column elements) is below :data:`SERIAL_WORK`, else in ranges on
    refdcn's worker threads.  Every task writes its own
    outputs, so the results do not depend on the ranges or the threads.
    Numba's threading layers (and ``numba.set_num_threads``) are not used.
    """

    def __init__(self, function):
        self.serial = _numba_cache.enable(njit(fastmath=False, nogil=True)(function))
        self.__doc__ = function.__doc__

    def __call__(self, work, tasks, *args):
        _tasks.run(self.serial, args, work, tasks, SERIAL_WORK)


# --------------------------------------------------------------------------- compiled kernels
#
# ``geo`` is a :class:`refdcn.geometry.KernelGeometry` (``geom.kernel_record()``).
# Images are (B, (H+3)*(W+3), C_stride) channels-last padded planes (:func:`channels_last`).

@njit(inline="always")
def _sample(offset, b, kk, p, k, geo, closed):
    """Locate the sample of tap ``k`` (offset channels ``2*kk``, ``2*kk+1``) of pixel ``p``.

    Returns ``(q, ly, lx)``: the row of the floor corner in the padded
    channels-last image, and the fractional parts.
    """
    oy = p // geo.out_w
    ox = p - oy * geo.out_w
    i = k // geo.kw
    j = k - i * geo.kw
    y = sampling_point(oy, geo.stride_h, geo.pad_h, i, geo.dilation_h,
                       np.float64(offset[b, 2 * kk, p]))
    x = sampling_point(ox, geo.stride_w, geo.pad_w, j, geo.dilation_w,
                       np.float64(offset[b, 2 * kk + 1, p]))
    active, y0, x0, ly, lx = locate(y, x, geo.height, geo.width, closed)
    return (y0 + PAD_BEFORE) * (geo.width + PAD) + (x0 + PAD_BEFORE), ly, lx


@njit(inline="always")
def _fixed_order_sum(terms):
    """Sum of a 1-D float64 array in a fixed order: eight interleaved partial sums.

    ``s_r = terms[r] + terms[r + 8] + ...`` for ``r < 8`` over the whole
    blocks of eight, combined as ``((s0+s1)+(s2+s3)) + ((s4+s5)+(s6+s7))``,
    then the tail in order.  Eight independent chains run at full speed
    where one chain would wait on each addition.
    """
    n = terms.shape[0]
    whole = n - n % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for u in range(0, whole, 8):
        s0 += terms[u]
        s1 += terms[u + 1]
        s2 += terms[u + 2]
        s3 += terms[u + 3]
        s4 += terms[u + 4]
        s5 += terms[u + 5]
        s6 += terms[u + 6]
        s7 += terms[u + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for u in range(whole, n):
        total += terms[u]
    return total


@njit(inline="always")
def _segment(c, end, k, in_per_group):
    """The run of channels ``[c, stop)`` of one convolution group, and its column.

    Returns ``(g, stop, col)``: group ``g`` of channel ``c``, the end of the run
    (at most ``end``), and the column of ``(tap k, channel c)`` in group ``g``'s
    block of the column matrix.
    """
    g = c // in_per_group
    stop = min(end, (g + 1) * in_per_group)
    return g, stop, k * in_per_group + c - g * in_per_group


@_Kernel
def _channels_last(input, padded, first, last):
    """``padded[b, (y+2)*(W+3) + x+2, c] = input[b, c, y, x]``, zero border.

    input : (B, C, H, W); padded : (B, (H+3)*(W+3), C_stride), out
    (channels ``C..C_stride`` are left unset).
    """
    B, C, H, W = input.shape
    Wp = W + 3
    Hp = padded.shape[1] // Wp
    for t in range(first, last):
        b = t // Hp
        yy = t - b * Hp
        row = padded[b, yy * Wp:(yy + 1) * Wp]
        y = yy - 2
        if y < 0 or y >= H:
            row[:, :C] = 0.0
            continue
        row[:2, :C] = 0.0
        row[W + 2:, :C] = 0.0
        for c in range(C):
            src = input[b, c, y]
            for x in range(W):
                row[x + 2, c] = src[x]


@_Kernel
def _im2col(padded, offset, mask, geo, columns, pixel0, chunk, first, last):
    """``columns[b, g, p - pixel0, k*Cg + cl] = m * interpolate(corners of channel g*Cg + cl)``.

    padded : (B, (H+3)*(W+3), C_stride); offset : (B, 2*D*K, P);
    mask : (B, D*K, P) or None; columns : (B, G, n, K*Cg), out: the output
    pixels ``pixel0 .. pixel0+n-1`` (all of them: ``pixel0 = 0``, ``n = P``).
    Tasks: (image ``b``, pixels ``pixel0 + [i*chunk, (i+1)*chunk)``).
    """
    Wp = geo.width + PAD
    B, n = columns.shape[0], columns.shape[2]
    K, D = geo.taps, geo.offset_groups
    in_per_group, in_per_offset_group = geo.in_per_group, geo.in_per_offset_group
    chunks = (n + chunk - 1) // chunk
    for t in range(first, last):
        b = t // chunks
        p0 = pixel0 + (t - b * chunks) * chunk
        image = padded[b]
        for p in range(p0, min(pixel0 + n, p0 + chunk)):
            for d in range(D):
                for k in range(K):
                    kk = d * K + k
                    q, ly, lx = _sample(offset, b, kk, p, k, geo, False)
                    m = 1.0 if mask is None else mask[b, kk, p]
                    c = d * in_per_offset_group
                    end = c + in_per_offset_group
                    while c < end:       # the channels of offset group d, split by group
                        g, stop, col = _segment(c, end, k, in_per_group)
                        v00 = image[q, c:stop]
                        v01 = image[q + 1, c:stop]
                        v10 = image[q + Wp, c:stop]
                        v11 = image[q + Wp + 1, c:stop]
                        dst = columns[b, g, p - pixel0, col:col + stop - c]
                        for u in range(stop - c):
                            s = interpolate(v00[u], v01[u], v10[u], v11[u], ly, lx)
                            if mask is None:
                                dst[u] = s
                            else:
                                dst[u] = m * s
                        c = stop


@_Kernel
def _col2im(grad_columns, offset, mask, geo, grad_input, block, scratch, first, last):
    """Scatter ``m * grad_columns * w_ab`` to the corners; one task per (image, channel block).

    grad_columns : (B, G, P, K*Cg); offset : (B, 2*D*K, P); mask : (B, D*K, P)
    or None; grad_input : (B, C, H, W), out; block : channels per task;
    scratch : (B * blocks, (H+3)*(W+3), stride >= block) float64, each task's
    accumulator (channel ``c`` in column ``c - c0``).
    """
    height, width, C = geo.height, geo.width, geo.in_channels
    Wp = width + PAD
    B, P = grad_columns.shape[0], grad_columns.shape[2]
    K, D = geo.taps, geo.offset_groups
    in_per_group, in_per_offset_group = geo.in_per_group, geo.in_per_offset_group
    blocks = (C + block - 1) // block
    for t in range(first, last):
        b = t // blocks
        c0 = (t - b * blocks) * block
        c1 = min(C, c0 + block)
        acc = scratch[t]
        acc[:, :c1 - c0] = 0.0
        for p in range(P):
            for d in range(c0 // in_per_offset_group, (c1 - 1) // in_per_offset_group + 1):
                for k in range(K):
                    kk = d * K + k
                    q, ly, lx = _sample(offset, b, kk, p, k, geo, False)
                    w00, w01, w10, w11 = corner_weights(ly, lx)
                    m = 1.0 if mask is None else mask[b, kk, p]
                    c = max(c0, d * in_per_offset_group)
                    end = min(c1, (d + 1) * in_per_offset_group)
                    while c < end:
                        g, stop, col = _segment(c, end, k, in_per_group)
                        src = grad_columns[b, g, p, col:col + stop - c]
                        a00 = acc[q, c - c0:stop - c0]
                        a01 = acc[q + 1, c - c0:stop - c0]
                        a10 = acc[q + Wp, c - c0:stop - c0]
                        a11 = acc[q + Wp + 1, c - c0:stop - c0]
                        for u in range(stop - c):
                            if mask is None:
                                v = np.float64(src[u])
                            else:
                                v = np.float64(src[u] * m)
                            a00[u] += w00 * v
                            a01[u] += w01 * v
                            a10[u] += w10 * v
                            a11[u] += w11 * v
                        c = stop
        for c in range(c0, c1):         # the interior, back to channels first
            dst = grad_input[b, c]
            for y in range(height):
                for x in range(width):
                    dst[y, x] = acc[(y + 2) * Wp + x + 2, c - c0]


@_Kernel
def _coordinate_gradients(grad_columns, padded, offset, mask, geo, closed, grad_offset,
                          grad_mask, chunk, first, last):
    """Channel sums of ``grad_columns * dS/dy``, ``* dS/dx`` and ``* S`` of every sample.

    grad_columns : (B, G, P, K*Cg); padded : (B, (H+3)*(W+3), C_stride);
    offset : (B, 2*D*K, P); mask : (B, D*K, P) or None; closed : the
    ``locate`` rule; grad_offset : (B, 2*D*K, P), out; grad_mask : (B, D*K, P)
    or None, out.
    """
    Wp = geo.width + PAD
    B, P = grad_columns.shape[0], grad_columns.shape[2]
    K, D = geo.taps, geo.offset_groups
    in_per_group, in_per_offset_group = geo.in_per_group, geo.in_per_offset_group
    chunks = (P + chunk - 1) // chunk
    for t in range(first, last):
        b = t // chunks
        p0 = (t - b * chunks) * chunk
        image = padded[b]
        terms_y = np.empty(in_per_offset_group)
        terms_x = np.empty(in_per_offset_group)
        terms_m = np.empty(in_per_offset_group)
        for p in range(p0, min(P, p0 + chunk)):
            for d in range(D):
                for k in range(K):
                    kk = d * K + k
                    q, ly, lx = _sample(offset, b, kk, p, k, geo, closed)
                    c = d * in_per_offset_group
                    end = c + in_per_offset_group
                    while c < end:
                        g, stop, col = _segment(c, end, k, in_per_group)
                        src = grad_columns[b, g, p, col:col + stop - c]
                        v00 = image[q, c:stop]
                        v01 = image[q + 1, c:stop]
                        v10 = image[q + Wp, c:stop]
                        v11 = image[q + Wp + 1, c:stop]
                        first = c - d * in_per_offset_group
                        ty = terms_y[first:first + stop - c]
                        tx = terms_x[first:first + stop - c]
                        tm = terms_m[first:first + stop - c]
                        for u in range(stop - c):
                            gu = np.float64(src[u])
                            d_dy, d_dx = interpolate_gradient(v00[u], v01[u], v10[u], v11[u],
                                                              ly, lx)
                            ty[u] = gu * d_dy
                            tx[u] = gu * d_dx
                            if grad_mask is not None:
                                tm[u] = gu * interpolate(v00[u], v01[u], v10[u], v11[u], ly, lx)
                        c = stop
                    sum_y = _fixed_order_sum(terms_y)
                    sum_x = _fixed_order_sum(terms_x)
                    if mask is None:
                        grad_offset[b, 2 * kk, p] = sum_y
                        grad_offset[b, 2 * kk + 1, p] = sum_x
                    else:
                        m = mask[b, kk, p]
                        grad_offset[b, 2 * kk, p] = m * sum_y
                        grad_offset[b, 2 * kk + 1, p] = m * sum_x
                    if grad_mask is not None:
                        grad_mask[b, kk, p] = _fixed_order_sum(terms_m)


# --------------------------------------------------------------------------- column kernels

_flat = _tasks.flat


def channels_last(input):
    """``input`` (B, C, H, W) as zero-padded channels-last planes.

    (:func:`refdcn.backends._tasks.channels_last` with this backend's copy kernel.)
    """
    return _tasks.channels_last(input, _channels_last)


def im2col(input, offset, mask, geom, columns, padded=None):
    """Channels-last deformable im2col.

    Parameters
    ----------
    input : ndarray, shape (B, C_in, H, W)
    offset : ndarray, shape (B, 2*D*K, H_out, W_out)
    mask : ndarray, shape (B, D*K, H_out, W_out), or None
    columns : ndarray, shape (B, groups, H_out*W_out, K * C_in/groups), out
        ``columns[b, g, p, k*Cg + cl]`` is the NumPy reference's
        ``columns[b, (g*Cg + cl)*K + k, p]``.
    padded : ndarray, optional
        ``channels_last(input)``, if the caller already has it.
    """
    if columns.size:
        _im2col(columns.size, _tasks.pixel_tasks(columns.shape[0], geom, CHUNK),
                channels_last(input) if padded is None else padded,
                _flat(offset, geom), _flat(mask, geom), _tasks.kernel_record(geom), columns, 0,
                CHUNK)


def im2col_pixels(input, offset, mask, geom, tile, image, pixel0, padded=None):
    """:func:`im2col` of output pixels ``pixel0 .. pixel0+n-1`` of one image, in this thread.

    The fused forward's sampling step (:attr:`refdcn.driver.KernelSet.im2col_pixels`):
    the same kernel and values as :func:`im2col`, serially.

    Parameters
    ----------
    input, offset, mask, padded : as for :func:`im2col` (all the images of the block)
    geom : Geometry
        The block's geometry (whole images).
    tile : ndarray, shape (groups, n, K * C_in/groups), C-contiguous, out
        ``tile[g, i]`` is :func:`im2col`'s ``columns[image, g, pixel0 + i]``.
    image : int
        The image within the block.
    pixel0 : int
        The first output pixel (``oy*W_out + ox``).
    """
    _im2col.serial(*_tasks.one_image(input, offset, mask, geom, image, padded, channels_last),
                   _tasks.kernel_record(geom), tile[None], pixel0, max(1, tile.shape[1]), 0, 1)


channel_block = _tasks.channel_block


def col2im(grad_columns, offset, mask, geom, grad_input, padded=None, block=None):
    """Adjoint of :func:`im2col`: writes ``grad_input`` (B, C_in, H, W).

    ``padded`` is not used (the driver passes it to every kernel).
    ``block`` (channels per task, default :func:`channel_block`) changes the
    work split, never the result.  Scratch memory: one float64 padded plane
    per channel, ``B * C_in * (H+3) * (W+3) * 8`` bytes (plus row padding).
    """
    if grad_input.size == 0:
        return
    B, C = grad_input.shape[0], geom.in_channels
    block = block or channel_block(B, C)
    scratch = _tasks.col2im_scratch(B, geom, block)
    _col2im(grad_columns.size, scratch.shape[0], grad_columns, _flat(offset, geom),
            _flat(mask, geom), _tasks.kernel_record(geom), grad_input, block, scratch)


def coordinate_gradients(grad_columns, input, offset, mask, geom, convention,
                         grad_offset, grad_mask, padded=None):
    """Offset and mask gradients from channels-last ``grad_columns`` (layout of :func:`im2col`).

    Writes ``grad_offset`` (B, 2*D*K, H_out, W_out) and ``grad_mask``
    (B, D*K, H_out, W_out) (if not None).  ``padded``: as for :func:`im2col`.
    """
    if grad_offset.size == 0:
        return
    if padded is None:
        padded = channels_last(input)
    _coordinate_gradients(grad_columns.size * _tasks.COORDINATE_GRADIENTS_COST,
                          _tasks.pixel_tasks(grad_columns.shape[0], geom, CHUNK),
                          grad_columns, padded, _flat(offset, geom), _flat(mask, geom),
                          _tasks.kernel_record(geom), convention == bilinear.BORDER_TORCHVISION,
                          _flat(grad_offset, geom), _flat(grad_mask, geom), CHUNK)


# --------------------------------------------------------------------------- the kernel set

#: The kernels of this backend for :mod:`refdcn.driver` (``"channels_last"`` layout; the
#: padded channels-last copy of each block's images is shared by im2col and the
#: coordinate gradients).
KERNELS = driver.KernelSet(im2col, col2im, coordinate_gradients, layout="channels_last",
                           prepare_input=lambda input, geom: channels_last(input),
                           workspace=_tasks.workspace, im2col_pixels=im2col_pixels)
forward, backward = KERNELS.forward, KERNELS.backward
