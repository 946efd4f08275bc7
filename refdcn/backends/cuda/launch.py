"""Launch configurations of the kernels (cached on the GPU)."""

import threading
import warnings

from . import settings
from .probe import SIMULATED

_configs = {}
_lock = threading.Lock()


def clear():
    """Forget the cached launch configurations."""
    with _lock:
        _configs.clear()


def configured(kernel, key, blocks, threads):
    """``kernel[blocks, threads]``, cached under ``key`` (not on the simulator, whose
    ``kernel[...]`` reconfigures and returns the kernel object itself)."""
    if SIMULATED:
        return kernel[blocks, threads]
    cfg = _configs.get(key)
    if cfg is None:
        with warnings.catch_warnings():
            # small grids are deliberate here (tiny problems, one block per channel)
            warnings.filterwarnings("ignore", message="Grid size .* under-utilization")
            cfg = kernel[blocks, threads]
        with _lock:
            if len(_configs) > 4096:
                _configs.clear()
            _configs[key] = cfg
    return cfg


def launch(kernel, n):
    """``kernel[blocks, threads]`` for ``n`` work items (grid-stride kernels).

    :data:`~.settings.THREADS_PER_BLOCK` threads per block, at most
    :data:`~.settings.MAX_BLOCKS` blocks; the configured launcher is cached per
    (kernel, n, settings).

    Raises
    ------
    ValueError
        If ``THREADS_PER_BLOCK`` is not in ``1..1024``.
    """
    threads = settings.THREADS_PER_BLOCK
    if not 1 <= threads <= settings.MAX_THREADS:
        raise ValueError(f"THREADS_PER_BLOCK must be in 1..{settings.MAX_THREADS}; "
                         f"got {threads}")
    blocks = max(1, min(settings.MAX_BLOCKS, -(-n // threads)))
    return configured(kernel, (kernel, n, threads, settings.MAX_BLOCKS), blocks, threads)


def launch_blocks(kernel, blocks, threads):
    """``kernel[blocks, threads]`` with an explicit grid, cached."""
    return configured(kernel, (kernel, "grid", blocks, threads), blocks, threads)
