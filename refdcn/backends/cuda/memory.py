"""Device memory: allocation, and the per-call workspaces of scratch buffers.

Inputs are copied or converted to the device in the compute dtype
(:func:`to_device`).  Outputs and scratch buffers come from CuPy's memory pool when CuPy is
installed (no ``cudaMalloc``/``cudaFree`` per call), else from
``numba.cuda.device_array``.

Scratch buffers (the column buffer, temporaries, the buckets of the
deterministic gather) belong to a :class:`Workspace`, and a workspace belongs
to one call at a time: :func:`workspace` hands each call a workspace no other
call is using (a new one if all are busy) and takes it back when the call
returns, so two calls running at once (two host threads, or one call started
while another is between its im2col and its matrix product) never share a
buffer.  Idle workspaces are kept for the next call (creating device arrays
and views costs Python time on every call); a call that reuses one queues its
work behind the previous user's on the same stream (all refdcn work is on the
legacy default stream), so the reuse is ordered on the device too.
:func:`clear` frees them.
"""

import contextlib
import threading

import numpy as np

from .interop import cupy, is_device, wrap
from .kernels import convert1, convert4, fill
from .launch import launch
from .probe import SIMULATED, cuda

#: At most this many idle workspaces are kept.
MAX_IDLE = 4

_idle = []
_lock = threading.Lock()


def empty(shape, dtype):
    """A new device array (contents undefined)."""
    cp = None if SIMULATED else cupy()
    if cp is not None:
        return wrap(cp.empty(shape, dtype))
    return cuda.device_array(shape, dtype)


def zeros(shape, dtype):
    """A new device array of zeros."""
    arr = empty(shape, dtype)
    size = int(np.prod(shape))
    if size:
        launch(fill, size)(arr.reshape(size), np.dtype(dtype).type(0))
    return arr


def to_device(array, dtype):
    """``array`` as a C-contiguous device array of ``dtype`` (no copy if it already is one).

    Host arrays are copied to the device; device arrays of another dtype
    (float16) or with other strides are converted on the device.  None stays None.
    """
    if array is None:
        return None
    if not is_device(array):
        return cuda.to_device(np.ascontiguousarray(array, dtype=dtype))
    if array.dtype == dtype and array.is_c_contiguous():
        return array
    if array.ndim not in (1, 4):   # pragma: no cover - the API only passes 1-D and 4-D
        raise ValueError(f"cannot convert a {array.ndim}-D device array")
    out = empty(array.shape, dtype)
    if array.size:
        launch(convert4 if array.ndim == 4 else convert1, array.size)(array, out)
    return out


class Workspace:
    """The scratch device buffers of one call, by name; they grow when needed."""

    def __init__(self):
        self._buffers = {}
        self._views = {}
        self._dummies = {}

    def scratch(self, name, shape, dtype):
        """Buffer ``name`` viewed as ``shape`` of ``dtype`` (contents undefined).

        Views of one name share memory: a second view of the same buffer
        (another shape) is the same bytes, which the callers use on purpose
        (the columns as ``(R, B*P)`` and as ``(groups, R/groups, B*P)``).
        """
        dtype = np.dtype(dtype)
        key = (name, tuple(shape), dtype)
        view = self._views.get(key)
        if view is not None:
            return view
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.shape[0] < size:
            self._buffers[name] = buf = empty((max(size, 1),), dtype)
            for k in [k for k in self._views if k[0] == name]:
                del self._views[k]
        if len(self._views) > 256:
            self._views.clear()
        view = self._views[key] = buf[:size].reshape(shape)
        return view

    def dummy(self, ndim, dtype):
        """A 1-element array standing in for a missing mask/bias (never read)."""
        key = (ndim, np.dtype(dtype))
        arr = self._dummies.get(key)
        if arr is None:
            arr = self._dummies[key] = cuda.to_device(np.zeros((1,) * ndim, dtype))
        return arr


@contextlib.contextmanager
def workspace():
    """A :class:`Workspace` that no other call uses until this ``with`` block ends."""
    with _lock:
        ws = _idle.pop() if _idle else None
    if ws is None:
        ws = Workspace()
    try:
        yield ws
    finally:
        with _lock:
            if len(_idle) < MAX_IDLE:
                _idle.append(ws)


def clear():
    """Free the idle workspaces."""
    with _lock:
        _idle.clear()
