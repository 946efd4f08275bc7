"""Backend ``"cython"``: channels-last Cython kernels on refdcn's threads + one GEMM per group.

The deformable sampling steps (the padded channels-last copy of the input,
im2col, col2im, coordinate gradients) are the kernels of
``refdcn/_cy/kernels.pyx``: the numba backend's kernels
(:mod:`refdcn.backends.numba_cpu`, whose docstring describes the layout, the
tasks and the precision) compiled by Cython, with the same operations in the
same order, so that both backends give bitwise the same results.  Their
scalar math is ``refdcn/_cy/bilinear.pxd``, the line-for-line mirror of
:mod:`refdcn.bilinear`.  The matrix products and the tiling over images are
:mod:`refdcn.driver` (``"channels_last"`` layout, NumPy's BLAS), as for the
other CPU backends.

Threads: each kernel is a ``def`` function over a range of tasks whose body
runs without the GIL; :func:`refdcn.backends._tasks.run` (the numba
backend's dispatch too) runs small problems (below :data:`SERIAL_WORK`
column elements) in the calling thread and larger ones in ranges on
refdcn's own worker threads (:mod:`refdcn.parallel`:
:func:`refdcn.parallel.set_num_threads`; idle workers sleep; fork-safe).
No OpenMP: nothing another library does with its OpenMP runtime (torch's
libgomp, ``OMP_WAIT_POLICY``, ``fork()``) changes this backend.

The extension ``refdcn._cy.kernels`` is built by ``pip install .`` (see
``setup.py``).  When it is missing, importing this module raises ImportError
with the reason, and :func:`refdcn.backends.unavailable` reports it; importing
refdcn itself never fails.
"""

import threading

import numpy as np

from .. import bilinear, driver, parallel
from . import Capabilities, _tasks

try:
    from .._cy import kernels as _kernels
except ImportError as exc:          # not built (no compiler), or built for another Python
    from ..install_hints import cython_hint
    raise ImportError(f"the Cython extension refdcn._cy.kernels was not built ({exc}): "
                      f"{cython_hint()}") from None


NAME = "cython"
DEVICE = "cpu"
CAPABILITIES = Capabilities(device="cpu", compute_dtype="input", blocked=True, threads=True)
DESCRIPTION = ("compiled Cython channels-last im2col/col2im on refdcn's threads"
               " + one matrix product per group")

#: Kernels with less work than this (column elements) run in the calling thread
#: alone (:func:`refdcn.backends._tasks.run`; tests set it to 0 to run every kernel
#: on the worker threads).
SERIAL_WORK = _tasks.SERIAL_WORK

#: Output pixels per task of ``im2col`` and ``coordinate_gradients`` (tests make it small).
CHUNK = _tasks.CHUNK


def threads():
    """Number of threads the kernels use (:func:`refdcn.parallel.num_threads`)."""
    return parallel.num_threads()


def _run(kernel, work, tasks, *args):
    """``kernel(*args, first, last)`` over tasks ``0 .. tasks-1``.

    :func:`refdcn.backends._tasks.run`, with this module's :data:`SERIAL_WORK`.
    """
    _tasks.run(kernel, args, work, tasks, SERIAL_WORK)


class _Lease:
    """The owner of a column buffer handed out by :func:`_columns_buffer`.

    The returned array and all its views keep the lease alive; when the last
    of them dies, the buffer becomes the spare again.  (Lifetime, not
    reference counts, decides: a buffer in use is never handed out twice.)
    """

    def __init__(self, buffer):
        self.buffer = buffer
        self.__array_interface__ = buffer.__array_interface__

    def __del__(self):
        global _spare
        _spare = self.buffer


#: One spare column buffer (at most :data:`SPARE_LIMIT` bytes) for the next im2col
#: of the same shape: a fresh buffer costs a page fault per 4 KiB on every call
#: (about 2 ms per 36 MiB, 4% of a forward pass).  The spare stays allocated
#: between calls; ``SPARE_LIMIT = 0`` disables it.
_spare = None
_spare_lock = threading.Lock()
SPARE_LIMIT = 64 * 2**20


def _columns_buffer(size, dtype):
    """An uninitialised 1-D array of ``size`` elements of ``dtype``, the spare one if it fits."""
    global _spare
    shape = (size,)
    with _spare_lock:
        buf, _spare = _spare, None
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = None                      # free the spare before allocating (the bound)
        buf = np.empty(shape, dtype)
        if buf.nbytes > SPARE_LIMIT:
            return buf
    return np.asarray(_Lease(buf))


_flat = _tasks.flat


def _mask(mask, stand_in, geom):
    """(mask as (B, X, P), has_mask); ``stand_in`` (never read) replaces an absent mask."""
    if mask is None:
        return stand_in, False
    return _flat(mask, geom), True


def channels_last(input):
    """``input`` (B, C, H, W) as zero-padded channels-last planes.

    (:func:`refdcn.backends._tasks.channels_last` with this backend's copy kernel.)
    """
    return _tasks.channels_last(
        input, lambda work, tasks, *args: _run(_kernels.channels_last, work, tasks, *args))


def im2col(input, offset, mask, geom, columns, padded=None):
    """Channels-last deformable im2col (the ``"channels_last"`` layout of :mod:`refdcn.driver`).

    Arguments, shapes and values as :func:`refdcn.backends.numba_cpu.im2col`.
    """
    if columns.size == 0:
        return
    offset = _flat(offset, geom)
    mask, has_mask = _mask(mask, offset, geom)
    _run(_kernels.im2col, columns.size, _tasks.pixel_tasks(columns.shape[0], geom, CHUNK),
         channels_last(input) if padded is None else padded, offset, mask, has_mask,
         _tasks.kernel_record(geom), columns, 0, CHUNK)


def im2col_pixels(input, offset, mask, geom, tile, image, pixel0, padded=None):
    """:func:`im2col` of output pixels ``pixel0 .. pixel0+n-1`` of one image, in this thread.

    The fused forward's sampling step (:attr:`refdcn.driver.KernelSet.im2col_pixels`);
    arguments as for :func:`refdcn.backends.numba_cpu.im2col_pixels`.
    """
    padded, offset, mask = _tasks.one_image(input, offset, mask, geom, image, padded,
                                            channels_last)
    mask, has_mask = _mask(mask, offset, geom)
    _kernels.im2col(padded, offset, mask, has_mask, _tasks.kernel_record(geom), tile[None],
                    pixel0, max(1, tile.shape[1]), 0, 1)


def col2im(grad_columns, offset, mask, geom, grad_input, padded=None, block=None):
    """Adjoint of :func:`im2col`: writes ``grad_input`` (B, C_in, H, W).

    ``padded`` is not used (the driver passes it to every kernel).
    ``block`` (channels per task, default :func:`refdcn.backends._tasks.channel_block`)
    changes the work split, never the result.  Scratch memory: one float64
    padded plane per channel (:func:`refdcn.backends._tasks.col2im_scratch`).
    """
    if grad_input.size == 0:
        return
    B = grad_input.shape[0]
    block = block or _tasks.channel_block(B, geom.in_channels)
    scratch = _tasks.col2im_scratch(B, geom, block)
    offset = _flat(offset, geom)
    mask, has_mask = _mask(mask, offset, geom)
    _run(_kernels.col2im, grad_columns.size, scratch.shape[0], grad_columns, offset, mask,
         has_mask, _tasks.kernel_record(geom), grad_input, block, scratch)


def coordinate_gradients(grad_columns, input, offset, mask, geom, convention, grad_offset,
                         grad_mask, padded=None):
    """Offset and mask gradients from channels-last ``grad_columns`` (layout of :func:`im2col`).

    Writes ``grad_offset`` (B, 2*D*K, H_out, W_out) and ``grad_mask``
    (B, D*K, H_out, W_out) (if not None).  ``padded``: as for :func:`im2col`.
    """
    if grad_offset.size == 0:
        return
    if padded is None:
        padded = channels_last(input)
    offset, grad_offset = _flat(offset, geom), _flat(grad_offset, geom)
    mask, has_mask = _mask(mask, offset, geom)
    grad_mask, has_grad_mask = _mask(grad_mask, grad_offset, geom)
    _run(_kernels.coordinate_gradients, grad_columns.size * _tasks.COORDINATE_GRADIENTS_COST,
         _tasks.pixel_tasks(grad_columns.shape[0], geom, CHUNK), grad_columns, padded, offset,
         mask, has_mask, _tasks.kernel_record(geom), convention == bilinear.BORDER_TORCHVISION,
         grad_offset, grad_mask, has_grad_mask, CHUNK)


#: The kernels of this backend for :mod:`refdcn.driver` (``"channels_last"`` layout; the
#: padded channels-last copy of each block's images is shared by im2col and the
#: coordinate gradients; the column buffer is the reused spare of :func:`_columns_buffer`).
KERNELS = driver.KernelSet(im2col, col2im, coordinate_gradients, layout="channels_last",
                           prepare_input=lambda input, geom: channels_last(input),
                           column_buffer=_columns_buffer, workspace=_tasks.workspace,
                           im2col_pixels=im2col_pixels)
forward, backward = KERNELS.forward, KERNELS.backward
