"""What the compiled channels-last CPU backends share: task dispatch and the padded planes.

The ``"numba"`` and ``"cython"`` backends compute the same kernels
(channels-last im2col, col2im and coordinate gradients, see
:mod:`refdcn.backends.numba_cpu`) from two compilers.  Each kernel is a
serial, GIL-free function over a range of *tasks* ``[first, last)``; this
module hands the ranges to refdcn's worker threads (:func:`run`) and owns
the layout both backends agree on: the zero-padded channels-last planes
(:data:`PAD_BEFORE`, :data:`PAD_AFTER`, :func:`row_stride`,
:func:`padded_shape`), the tasks of each kernel (:data:`CHUNK` output pixels,
:func:`channel_block` channels of col2im) and the memory they hold
(:func:`workspace`).
"""

import functools
import math

import numpy as np

from .. import parallel

#: Kernels with less work than this (column elements) run in the calling thread
#: alone: below it, waking the worker threads costs more than they save
#: (measured on a 2-core AMD EPYC, 2026-12-08: im2col of 2^17..2^18.2 column
#: elements took 1.2-1.4x longer on two threads than on one; at 2^19.2, 0.8x).
SERIAL_WORK = 1 << 19

#: What one column element of ``coordinate_gradients`` counts for against
#: :data:`SERIAL_WORK` (in im2col's elements): its work per element is about
#: twice im2col's, and on the same machine it ran 1.3x faster on two threads
#: than on one already at 2^17.2 elements.
COORDINATE_GRADIENTS_COST = 4

#: Ranges of tasks handed out per thread of a parallel kernel: more ranges
#: balance the load (and let the threads that run take over from a starved
#: one) at a cost of a few microseconds each.
RANGES_PER_THREAD = 4

#: Output pixels per task of ``im2col`` and ``coordinate_gradients``.
CHUNK = 32

#: Zero rows/columns before and after each padded plane (``OUTSIDE = -2`` must land inside).
PAD_BEFORE = 2
PAD_AFTER = 1
PAD = PAD_BEFORE + PAD_AFTER


def run(kernel, args, work, tasks, serial_work=SERIAL_WORK):
    """Run ``kernel(*args, first, last)`` over the tasks ``0 .. tasks-1``.

    In the calling thread alone when ``work`` (column elements) is below
    ``serial_work`` (or with one thread, or one task); else in
    :data:`RANGES_PER_THREAD` ranges per thread on :func:`refdcn.parallel.run`.
    ``kernel`` must release the GIL and give every task its own outputs and
    scratch, so that the results do not depend on the ranges or the threads.

    Parameters
    ----------
    kernel : callable
        ``kernel(*args, first, last)`` runs tasks ``first .. last-1``.
    args : tuple
        The kernel's other arguments.
    work : int
        Column elements of the call (the serial threshold's measure).
    tasks : int
        Number of tasks.
    serial_work : int
        The caller's threshold (a backend's ``SERIAL_WORK``, which tests set).
    """
    threads = parallel.num_threads()
    if work < serial_work or threads == 1 or tasks < 2:
        kernel(*args, 0, tasks)
        return
    size = -(-tasks // (threads * RANGES_PER_THREAD))
    parallel.run(-(-tasks // size),
                 lambda r: kernel(*args, r * size, min(tasks, (r + 1) * size)), threads)


@functools.lru_cache(maxsize=64)
def kernel_record(geom):
    """``geom.kernel_record()``, remembered (a layer calls its kernels with the same geometry)."""
    return geom.kernel_record()


def flat(array, geom):
    """(B, X, H_out, W_out) viewed as (B, X, P); None stays None."""
    if array is None:
        return None
    return array.reshape(array.shape[0], array.shape[1], geom.out_pixels)


def one_image(input, offset, mask, geom, image, padded, copy):
    """Image ``image`` of a block as one-image arrays, for a serial kernel call.

    Returns ``(padded, offset, mask)``: its padded channels-last plane
    (``padded[image]``, or ``copy(input[image])`` when ``padded`` is None, with
    ``copy`` a backend's :func:`channels_last`), and its offset and mask as
    (1, X, P) (None stays None).
    """
    if padded is None:
        padded, first = copy(input[image:image + 1]), 0
    else:
        first = image
    mask = flat(mask, geom)
    return (padded[first:first + 1], flat(offset, geom)[image:image + 1],
            None if mask is None else mask[image:image + 1])


def row_stride(length, itemsize):
    """Row length >= ``length`` spanning an odd number of 64-byte cache lines.

    Rows of channels-last planes are read four at a time at scattered places;
    with a power-of-two row size (256 float32 channels = 1 KiB) every row
    falls into the same few cache sets and evicts the others.
    """
    per_line = 64 // itemsize
    lines = -(-length // per_line)
    return (lines + 1 - lines % 2) * per_line


def padded_shape(batch, channels, height, width, itemsize):
    """Shape (B, (H+3)*(W+3), C_stride) of the padded channels-last planes of B images.

    Pixel ``(y, x)`` is row ``(y+2)*(W+3) + x+2``; ``C_stride`` is
    :func:`row_stride` of the channels.
    """
    return (batch, (height + PAD) * (width + PAD), row_stride(channels, itemsize))


def channels_last(input, kernel):
    """``input`` (B, C, H, W) as zero-padded channels-last planes, copied by ``kernel``.

    Returns an array of shape (B, (H+3)*(W+3), C_stride) (:func:`padded_shape`):
    pixel ``(y, x)`` is row ``(y+2)*(W+3) + x+2``; the two rows/columns before
    and the one after the image are zero.  ``kernel(work, tasks, input,
    padded)`` is a backend's copy kernel over the tasks (image, padded row).
    """
    B, C, H, W = input.shape
    padded = np.empty(padded_shape(B, C, H, W, input.itemsize), input.dtype)
    if padded.size:
        kernel(input.size, B * (H + PAD), input, padded)
    return padded


def pixel_tasks(batch, geom, chunk):
    """Tasks of ``im2col`` and ``coordinate_gradients``: (image, ``chunk`` output pixels)."""
    return batch * -(-geom.out_pixels // chunk)


def channel_block(batch, channels):
    """Channels per ``col2im`` task: one task per thread and image at least, >= 16 wide."""
    per_image = max(1, -(-parallel.num_threads() // max(batch, 1)))
    return max(16, -(-channels // per_image))


def col2im_scratch(batch, geom, block):
    """col2im's accumulators: one float64 padded plane of ``block`` channels per task.

    Shape (B * blocks, (H+3)*(W+3), stride >= block) for ``B = batch`` images
    and ``blocks`` channel blocks per image; task ``t`` owns ``[t]``.
    """
    tasks = batch * -(-geom.in_channels // block)
    return np.empty(padded_shape(tasks, block, geom.height, geom.width, 8))


def workspace(geom, itemsize):
    """Bytes held per block of ``geom.batch`` images besides the columns.

    The padded channels-last copy of the images and, in the backward,
    col2im's float64 planes (:func:`col2im_scratch`).
    """
    B, C = geom.batch, geom.in_channels
    block = channel_block(B, C)
    return (math.prod(padded_shape(B, C, geom.height, geom.width, itemsize)) * itemsize
            + math.prod(padded_shape(B * -(-C // block), block, geom.height, geom.width, 8)) * 8)
