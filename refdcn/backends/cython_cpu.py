"""Backend ``"cython"``: compiled Cython column kernels + one matrix product per group.

The deformable sampling steps (im2col, col2im, coordinate gradients) are the
typed-memoryview, ``nogil`` kernels of ``refdcn/_cy/kernels.pyx``, parallel
with OpenMP ``prange`` when the extension was compiled with ``-fopenmp``
(:data:`OPENMP`); their scalar math is ``refdcn/_cy/bilinear.pxd``, the
line-for-line mirror of :mod:`refdcn.bilinear`.  The matrix products and the
tiling over images are :mod:`refdcn.driver` (NumPy's BLAS), as for the
other CPU backends.

The extension ``refdcn._cy.kernels`` is built by ``pip install .`` (see
``setup.py``).  When it is missing, importing this module raises ImportError
with the reason, and :func:`refdcn.backends.unavailable` reports it; importing
refdcn itself never fails.
"""

import ctypes
import os
import threading

import numpy as np

from .. import driver
from . import Capabilities


def _import_kernels():
    """Import the extension with OpenMP threads that sleep, rather than spin, when idle.

    GNU OpenMP reads ``OMP_WAIT_POLICY`` once, when it is loaded (here, by
    this import).  Its default lets idle threads spin for milliseconds after
    every parallel loop, which steals a core from the BLAS threads of the
    matrix products that follow (and, on a shared machine, from everyone).
    ``PASSIVE`` is set only for the duration of the import and only if the
    user chose nothing.

    This cannot help if a libgomp is already loaded: torch ships one with the
    same soname, which the extension then shares, with torch's (spinning)
    policy -- measured on 2 cores, a small forward pass takes 8 ms instead of
    0.3 ms.  Import refdcn's backends before torch, or set
    ``OMP_WAIT_POLICY=PASSIVE`` in the environment.
    """
    chosen = "OMP_WAIT_POLICY" in os.environ
    if not chosen:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from .._cy import kernels
    finally:
        if not chosen:
            del os.environ["OMP_WAIT_POLICY"]
    return kernels


try:
    _kernels = _import_kernels()
except ImportError as exc:          # not built (no compiler), or built for another Python
    from ..install_hints import cython_hint
    raise ImportError(f"the Cython extension refdcn._cy.kernels was not built ({exc}): "
                      f"{cython_hint()}") from None


NAME = "cython"
DEVICE = "cpu"

#: Whether the compiled kernels run in parallel (OpenMP); False for a serial build.
OPENMP = bool(_kernels.OPENMP)

CAPABILITIES = Capabilities(device="cpu", compute_dtype="input", blocked=True, threads=OPENMP)

DESCRIPTION = ("compiled Cython im2col/col2im kernels "
               + (f"(OpenMP, {_kernels.max_threads()} threads)" if OPENMP
                  else "(serial build: compiled without OpenMP)")
               + " + one matrix product per group")


def threads():
    """Number of threads the kernels use (1 for a serial build; ``OMP_NUM_THREADS`` sets it)."""
    return _kernels.max_threads()


def _openmp_set_num_threads():
    """``omp_set_num_threads`` of the OpenMP runtime the extension is linked to, or None.

    Looked up through the extension's own handle, so it is the runtime the
    kernels use even when another library (torch) loaded a libgomp first.
    """
    if not OPENMP:
        return None
    try:
        function = ctypes.CDLL(_kernels.__file__).omp_set_num_threads
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], None
    return function


_OMP_SET_NUM_THREADS = _openmp_set_num_threads()


def _single_threaded_after_fork():
    """In a child made by ``fork()``: run the kernels on one thread from now on.

    GNU OpenMP's thread team does not survive ``fork()`` (only the forking
    thread is copied; the team's threads are not), so the child's first
    parallel loop would wait forever for them (issue 12, item 1: PyTorch
    DataLoader workers, ``multiprocessing`` with the default start method on
    Linux).  With one thread the runtime never touches the team.  The kernels
    compute every element in the same order whatever the thread count, so the
    child's results are bitwise those of the parent.  Registered with
    :func:`os.register_at_fork` at import (``tests/test_hardening.py::test_fork``).
    """
    if _OMP_SET_NUM_THREADS is not None:
        _OMP_SET_NUM_THREADS(1)


if OPENMP:
    os.register_at_fork(after_in_child=_single_threaded_after_fork)


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


def _flat(array, batch):
    """(B, channels, H_out, W_out) -> (B, channels, H_out*W_out), a view."""
    return array.reshape(batch, array.shape[1], -1)


def _mask_args(mask, offset_flat, batch):
    """(mask array, has_mask); the offset stands in for an absent mask (never read)."""
    if mask is None:
        return offset_flat, False
    return _flat(mask, batch), True


def im2col(input, offset, mask, geom, columns, prepared=None):
    """Deformable im2col (the ``"rows"`` layout of :mod:`refdcn.driver`).

    Shapes: input (B, C_in, H, W), offset (B, 2*D*kh*kw, H_out, W_out), mask
    (B, D*kh*kw, H_out, W_out) or None; writes columns (B, C_in*kh*kw, H_out*W_out).
    """
    B = geom.batch
    off = _flat(offset, B)
    m, has_mask = _mask_args(mask, off, B)
    _kernels.im2col_into(input, off, m, has_mask, columns, geom)


def col2im(grad_columns, offset, mask, geom, grad_input, prepared=None):
    """Adjoint of :func:`im2col`: writes ``grad_input`` (B, C_in, H, W)."""
    B = geom.batch
    off = _flat(offset, B)
    m, has_mask = _mask_args(mask, off, B)
    _kernels.col2im_into(grad_columns, off, m, has_mask, grad_input, geom)


def coordinate_gradients(grad_columns, input, offset, mask, geom, convention, grad_offset,
                         grad_mask, prepared=None):
    """Writes ``grad_offset`` (B, 2*D*kh*kw, H_out, W_out) and ``grad_mask`` (if not None)."""
    B = geom.batch
    off = _flat(offset, B)
    m, has_mask = _mask_args(mask, off, B)
    go = _flat(grad_offset, B)
    if (grad_mask is None) != (mask is None):
        raise ValueError("grad_mask must be given exactly when mask is given")
    gm = go if grad_mask is None else _flat(grad_mask, B)
    _kernels.coordinate_gradients_into(grad_columns, input, off, m, has_mask, int(convention),
                                       go, gm, geom)


#: ``sizeof(Point)`` of ``kernels.pyx``: one sampling point's table entry (an index, six doubles).
_POINT_BYTES = 56
#: Upper bound of col2im's table of sampling points (``COL2IM_TABLE_BYTES`` of ``kernels.pyx``).
_COL2IM_TABLE_BYTES = 16 * 2**20


def workspace(geom, itemsize):
    """Bytes the kernels ``malloc`` per block of ``geom.batch`` images besides the columns.

    im2col and the coordinate gradients: the zero-padded images (and small
    per-thread tables); col2im: one image's float64 padded planes and its table
    of sampling points.  An upper bound (they are not all held at once).
    """
    plane = (geom.height + 3) * (geom.width + 3)
    tables = _kernels.max_threads() * geom.taps * 256 * _POINT_BYTES * 5
    col2im = (geom.in_channels * plane * 8
              + min(geom.offset_groups * geom.taps * geom.out_pixels * _POINT_BYTES,
                    _COL2IM_TABLE_BYTES))
    return geom.batch * geom.in_channels * plane * itemsize + tables + col2im


KERNELS = driver.KernelSet(im2col, col2im, coordinate_gradients, layout="rows",
                           column_buffer=_columns_buffer, workspace=workspace)
forward, backward = KERNELS.forward, KERNELS.backward
