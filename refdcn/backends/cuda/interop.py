"""Arrays from and to other libraries: NumPy, CuPy, PyTorch, ``__cuda_array_interface__``.

:func:`coerce` decides what the public API hands to the backend:

* NumPy arrays (and anything :func:`numpy.asarray` accepts) stay on the host;
  the backend copies them to the device in the compute dtype and copies the
  results back: it returns NumPy arrays.
* Any object with ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA
  tensors, Numba device arrays, ...) is wrapped with
  ``numba.cuda.from_cuda_array_interface``: no copy and no host round trip.
  When any input is a device array the results are **Numba device arrays**;
  they export ``__cuda_array_interface__`` themselves, so ``cupy.asarray(r)``
  or ``torch.as_tensor(r, device="cuda")`` view them without a copy, and
  ``r.copy_to_host()`` gives a NumPy array.

All work is queued on the CUDA legacy default stream (the one CuPy and
PyTorch use unless told otherwise).  Arrays exported on another stream are
synchronised with that stream once, when they are wrapped.
"""

import importlib.util

import numpy as np

from .probe import SIMULATED, DeviceArray, cuda

_CUPY = []


def cupy():
    """The cupy module, or None if it is not installed (or unusable); imported once."""
    if not _CUPY:
        module = None
        if not SIMULATED and importlib.util.find_spec("cupy") is not None:
            try:
                import cupy as module
                import cupy.cublas   # noqa: F401  (cuBLAS bindings, imported lazily by CuPy)
            except Exception:   # pragma: no cover - broken CuPy install
                module = None
        _CUPY.append(module)
    return _CUPY[0]


def wrap(obj):
    """A Numba device array viewing ``obj``'s ``__cuda_array_interface__`` (no copy)."""
    desc = dict(obj.__cuda_array_interface__)
    stream = desc.pop("stream", None)
    array = cuda.from_cuda_array_interface(desc, owner=obj, sync=False)
    if stream not in (None, 1):
        # Produced on a stream other than the legacy default one, on which
        # refdcn works: wait for it once.
        cuda.external_stream(stream).synchronize()
    return array


def coerce(array):
    """What the public API validates and hands to the backend's forward/backward.

    Numba device arrays are returned as they are; other objects with
    ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors) are wrapped as
    Numba device arrays without a copy; everything else goes through
    :func:`numpy.asarray` (copied to the device later).

    Raises
    ------
    TypeError
        If the CUDA array interface cannot be read (a PyTorch tensor that
        requires grad), or a real device array is given to the simulator.
    """
    if array is None or isinstance(array, DeviceArray):
        return array
    if isinstance(array, np.ndarray):
        return array
    try:
        has_interface = getattr(array, "__cuda_array_interface__", None) is not None
    except Exception as exc:   # e.g. a PyTorch tensor that requires grad
        raise TypeError(f"cannot read {type(array).__name__} as a CUDA array: {exc} "
                        f"(for a PyTorch tensor that requires grad, pass tensor.detach())"
                        ) from exc
    if has_interface:
        if SIMULATED:
            raise TypeError(f"the CUDA simulator cannot read real device memory "
                            f"({type(array).__name__}); pass NumPy arrays or simulator "
                            f"device arrays (numba.cuda.to_device)")
        return wrap(array)
    return np.asarray(array)


def is_device(array):
    """Whether ``array`` is a Numba device array."""
    return isinstance(array, DeviceArray)


def results(arrays, on_device):
    """The results as they are (device inputs) or copied to the host (NumPy inputs)."""
    if on_device:
        return arrays
    return tuple(None if a is None else a.copy_to_host() for a in arrays)
