"""Can the "cuda" backend run here?  numba-cuda, and a GPU or the CUDA simulator.

Imported first by :mod:`refdcn.backends.cuda`; it is the only module of refdcn
that imports ``numba.cuda``.  Raises :class:`ImportError` when numba-cuda is
not installed and :class:`~refdcn.backends.BackendUnavailable` when there is
no usable GPU and the simulator is off (``NUMBA_ENABLE_CUDASIM=1`` turns it
on: every kernel then runs as Python threads, slow but exact).
"""

import importlib.util

from .. import BackendUnavailable

try:
    _spec = importlib.util.find_spec("numba_cuda")
except (ImportError, ValueError):   # blocked or half-installed
    _spec = None
if _spec is None:
    raise ImportError("numba-cuda is not installed (pip install numba-cuda, "
                      "or pip install 'refdcn[cuda]')")
try:
    from numba import cuda
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError(f"numba.cuda cannot be imported ({exc})") from exc

__all__ = ["cuda", "SIMULATED", "DeviceArray", "numba_cuda_version"]

#: True when the kernels run on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATED = bool(cuda.config.ENABLE_CUDASIM)

if not SIMULATED and not cuda.is_available():
    raise BackendUnavailable(
        "no usable NVIDIA GPU: numba.cuda.is_available() is False (no CUDA driver or no "
        "device here); set NUMBA_ENABLE_CUDASIM=1 to run the kernels on the CUDA simulator")

if SIMULATED:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as DeviceArray
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArrayBase as DeviceArray


def numba_cuda_version():
    """The installed numba-cuda version string (``"?"`` if unknown)."""
    try:
        from importlib.metadata import version
        return version("numba-cuda")
    except Exception:   # pragma: no cover
        return "?"
