"""Device memory: allocation, copies and conversions.

Outputs, the column buffer and the buckets of the deterministic gather come
from CuPy's memory pool when CuPy is installed (no ``cudaMalloc``/``cudaFree``
per call), else from ``numba.cuda.device_array``.  Nothing is cached between
calls: the driver (:mod:`refdcn.driver`) allocates one column buffer per call
and the gather its buckets per tile, so two calls running at once (two host
threads, or a call started while another is between its im2col and its
matrix product) never share a buffer.
"""

import numpy as np

from .interop import cupy, is_device, wrap
from .kernels import convert1, convert2, convert4, fill
from .launch import launch
from .probe import SIMULATED, cuda

_CONVERT = {1: convert1, 2: convert2, 4: convert4}


def empty(shape, dtype):
    """A new device array (contents undefined)."""
    cp = None if SIMULATED else cupy()
    if cp is not None:
        return wrap(cp.empty(shape, dtype))
    return cuda.device_array(shape, dtype)


def column_buffer(size, dtype):
    """The driver's 1-D column buffer, on the device (one per call)."""
    return empty((size,), dtype)


def zeros(shape, dtype):
    """A new device array of zeros."""
    arr = empty(shape, dtype)
    size = int(np.prod(shape))
    if size:
        launch(fill, size)(arr.reshape(size), np.dtype(dtype).type(0))
    return arr


def assign(dst, src):
    """``dst[...] = src`` for 1-, 2- or 4-D device arrays of any strides and dtypes."""
    if dst.size:
        launch(_CONVERT[dst.ndim], dst.size)(src, dst)


def contiguous(array):
    """``array`` (a strided device view) as a C-contiguous device array (a copy if needed)."""
    return to_device(array, array.dtype)


def to_device(array, dtype):
    """``array`` as a C-contiguous device array of ``dtype``.

    Host arrays are copied to the device; device arrays of another dtype
    (float16) or with other strides are converted on the device; a device
    array that already is one is returned as it is.  None stays None.
    """
    if array is None:
        return None
    if not is_device(array):
        return cuda.to_device(np.ascontiguousarray(array, dtype=dtype))
    if array.dtype == dtype and array.is_c_contiguous():
        return array
    if array.ndim not in _CONVERT:   # pragma: no cover - the API only passes 1-D and 4-D
        raise ValueError(f"cannot convert a {array.ndim}-D device array")
    out = empty(array.shape, dtype)
    assign(out, array)
    return out
